"""The recording model's parameters: their names, ideal-clamp values and valid ranges.

Recording (nuisance) parameters describe the amplifier and the seal, not the cell; in parameter
tables (prior draws, datasets, posteriors) they are the columns named ``recording.<name>``. This
module holds only their vocabulary, so that priors can check them without loading the recording
simulator (:mod:`sbi_twins.recording.artefacts`).
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from .._util import RECORDING_PREFIX

#: Prefix of recording (nuisance) parameter names in priors and datasets.
PREFIX = RECORDING_PREFIX

#: Values that switch every artefact off (an ideal clamp with a noise-free, unfiltered record).
IDEAL: dict[str, float] = {
    "cm_pF": 60.0,  # irrelevant when Rs and the leak are off
    "rs_MOhm": 0.0,
    "rs_compensation": 0.0,
    "r_seal_GOhm": math.inf,
    "e_leak_mV": 0.0,
    "v_offset_mV": 0.0,
    "noise_pA_per_pF": 0.0,
    "lowpass_kHz": math.inf,
}

#: Valid range of each recording parameter: (lowest, highest, whether the ends are included).
RANGES: dict[str, tuple[float, float, bool]] = {
    "cm_pF": (0.0, math.inf, False),
    "rs_MOhm": (0.0, math.inf, True),
    "rs_compensation": (0.0, 1.0, True),
    "r_seal_GOhm": (0.0, math.inf, True),
    "e_leak_mV": (-math.inf, math.inf, False),
    "v_offset_mV": (-math.inf, math.inf, False),
    "noise_pA_per_pF": (0.0, math.inf, True),
    "lowpass_kHz": (0.0, math.inf, True),
}


def recording_table(values: pd.DataFrame | None, n: int) -> pd.DataFrame:
    """Complete recording parameters for ``n`` cells: columns of ``values`` named
    ``recording.<name>`` (or ``<name>``), :data:`IDEAL` for the rest.

    Raises
    ------
    ValueError
        Unknown recording parameter, wrong number of rows, or a value outside its range.
    """
    table = pd.DataFrame({name: np.full(n, value) for name, value in IDEAL.items()})
    if values is None:
        return table
    for column in values.columns:
        name = column.removeprefix(PREFIX)
        if name not in IDEAL:
            if column.startswith(PREFIX):
                raise ValueError(
                    f"unknown recording parameter '{column}'; valid ones are "
                    + ", ".join(PREFIX + k for k in IDEAL)
                )
            continue  # a cell parameter
        if len(values) != n:
            raise ValueError(f"recording parameters have {len(values)} rows, expected {n}")
        table[name] = values[column].to_numpy(dtype=float)
    for name, (low, high, closed) in RANGES.items():
        v = table[name].to_numpy()
        inside = (v >= low) & (v <= high) if closed else (v > low) & (v < high)
        if name == "r_seal_GOhm":
            inside &= v > 0
        if not inside.all():
            bad = v[~inside][0]
            raise ValueError(f"recording parameter '{PREFIX}{name}' = {bad} is outside its range")
    return table
