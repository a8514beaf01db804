"""The recording model: what a patch-clamp amplifier records from a simulated cell.

An ideal clamp holds the membrane at the command and records I_ion. A real whole-cell recording
differs in ways that are easy to mistake for biology (Lei et al. 2020, Phil Trans R Soc A 378:
20190348; Clark et al. 2023, Europace, "Leak current, even with gigaohm seals, ..."):

* **Series resistance** ``Rs`` with membrane capacitance ``Cm``: with a fraction ``alpha`` of
  ``Rs`` compensated (and the amplifier's prediction and capacitance cancellation set to match),
  the membrane potential follows the command through a first-order lag of time constant
  ``tau = (1 - alpha) Rs Cm`` and escapes from it while large currents flow
  (``V = V_cmd - tau * I`` at steady state). This is the simplified artefact model of Lei et al.
  2020 with an ideal, infinitely fast amplifier; the equations and their integration are in
  :meth:`sbi_twins.engine.codegen.KernelSource.artefact_kernel`.
* **Seal leak** ``I_leak = (V - E_leak) / (R_seal Cm)`` (pA/pF), part of the recorded current.
* **Voltage offset** ``V_off`` (liquid-junction and electrode offsets left after zeroing): the
  membrane is driven to ``V_cmd + V_off``.
* **Noise**: white Gaussian noise added before the filter, scaled so its RMS *after* the filter
  is ``noise`` (pA/pF) -- the figure one reads off a recorded baseline.
* **Low-pass filter**: the amplifier's 4-pole Bessel filter (-3 dB at ``lowpass``), applied
  causally on the sample grid.

These are nuisance parameters with their own prior: the ``[[recording]]`` section of a prior file
(see :mod:`sbi_twins.prior`), simulated jointly with the cell's parameters so that inference can
separate technical from biological variation. Parameters a prior does not list take the values in
:data:`~sbi_twins.recording.parameters.IDEAL`, which switch every artefact off; a prior
without a ``[[recording]]`` section (or ``ideal_clamp=True``) gives the ideal clamp.
"""

from __future__ import annotations

import functools
import math
import os

import numpy as np
import pandas as pd
from scipy import signal

from ..engine import CellModel
from ..protocol import Protocol, load_protocol
from .parameters import PREFIX, recording_table

#: Integration step (ms) of the series-resistance kernel; errors vs CVODE in BENCHMARKS.md.
DT_MS = 0.05
#: Shortest residual time constant (ms) simulated; below it the clamp is ideal for all purposes.
_TAU_FLOOR_MS = 1e-4


def clamp_matrix(table: pd.DataFrame) -> np.ndarray:
    """Per-cell ``(tau_ms, v_offset_mV, g_leak nS/pF, e_leak_mV)`` for the artefact kernel."""
    tau = (1.0 - table["rs_compensation"]) * table["rs_MOhm"] * table["cm_pF"] * 1e-3  # MOhm pF
    g_leak = 1.0 / (table["r_seal_GOhm"] * table["cm_pF"])  # 1/(GOhm pF) = nS/pF
    return np.column_stack(
        [
            np.maximum(tau.to_numpy(), _TAU_FLOOR_MS),
            table["v_offset_mV"].to_numpy(),
            g_leak.to_numpy(),
            table["e_leak_mV"].to_numpy(),
        ]
    )


def is_ideal(table: pd.DataFrame) -> bool:
    """True if no cell has series resistance, leak or offset (noise and filter may be on)."""
    clamp = clamp_matrix(table)
    return bool(
        (clamp[:, 0] <= _TAU_FLOOR_MS).all() and not clamp[:, 1].any() and not clamp[:, 2].any()
    )


def simulate_recordings(
    model: CellModel,
    protocol: Protocol | str | os.PathLike,
    params: pd.DataFrame,
    seeds: np.ndarray | None = None,
    sample_interval_ms: float = 0.1,
    *,
    dt_ms: float = DT_MS,
    retry: bool = True,
) -> np.ndarray:
    """Simulate what the amplifier records for a batch of cells.

    Parameters
    ----------
    model : CellModel
        The cell model.
    protocol : Protocol or str or path
        The voltage-clamp protocol.
    params : DataFrame
        One row per cell: model parameters (by name) and recording parameters
        (``recording.<name>``, see :data:`~sbi_twins.recording.parameters.IDEAL`); missing
        ones take model defaults and ideal-clamp values.
    seeds : array of int, shape (N,), optional
        Per-cell seeds of the noise; required when any cell has noise.
    sample_interval_ms : float
        Sampling interval of the record.
    dt_ms : float
        Integration step of the series-resistance kernel (the ideal clamp uses its own).
    retry : bool, default True
        Simulate cells whose integration blew up once more with the stiff kernel (see
        :class:`~sbi_twins.engine.CellModel`). Datasets made before this existed pass False.

    Returns
    -------
    numpy.ndarray
        (N, T) recorded current, pA/pF, on ``protocol.times(sample_interval_ms)``. Cells whose
        simulation failed (after the retry) are NaN rows (a
        :class:`~sbi_twins.engine.SimulationWarning` names them).
    """
    if not isinstance(protocol, Protocol):
        protocol = load_protocol(protocol)
    recording_columns = [c for c in params.columns if c.startswith(PREFIX)]
    table = recording_table(params[recording_columns], len(params))
    # the cell simulations ignore the recording columns
    if is_ideal(table):
        current = model.simulate_vc(protocol, params, sample_interval_ms, retry=retry)
    else:
        current, _ = model.simulate_vc_artefacts(
            protocol, params, clamp_matrix(table), sample_interval_ms, dt_ms=dt_ms, retry=retry
        )
    return add_noise_and_filter(current, table, seeds, sample_interval_ms)


def add_noise_and_filter(
    current: np.ndarray,
    table: pd.DataFrame,
    seeds: np.ndarray | None,
    sample_interval_ms: float,
) -> np.ndarray:
    """Add band-limited noise and apply the amplifier's low-pass filter to each cell's record.

    Each cell's noise comes from its own seed, so a cell's record does not depend on the batch
    it was simulated in.
    """
    noise = table["noise_pA_per_pF"].to_numpy()
    cutoff = table["lowpass_kHz"].to_numpy()
    nyquist_khz = 0.5 / sample_interval_ms
    if np.any(np.isfinite(cutoff) & (cutoff >= nyquist_khz)):
        raise ValueError(
            f"recording.lowpass_kHz must be below the Nyquist frequency {nyquist_khz:g} kHz of "
            f"the {sample_interval_ms} ms sampling (or inf for no filter)"
        )
    if noise.any() and seeds is None:
        raise ValueError("seeds are required when the recording model adds noise")
    out = np.array(current, dtype=float)
    finite = np.isfinite(out).all(axis=1)
    for k in np.flatnonzero(finite & (noise > 0)):
        gain = _rms_gain(float(cutoff[k]), sample_interval_ms)
        white = np.random.default_rng(int(seeds[k])).standard_normal(out.shape[1])
        out[k] += white * (noise[k] / gain)
    for k in np.flatnonzero(finite & np.isfinite(cutoff)):
        sos, zi = _bessel(float(cutoff[k]), sample_interval_ms)
        # start the filter in its steady state for the first sample (no switch-on transient)
        out[k] = signal.sosfilt(sos, out[k], zi=zi * out[k, 0])[0]
    return out


@functools.lru_cache(maxsize=64)
def _bessel(cutoff_khz: float, sample_interval_ms: float) -> tuple[np.ndarray, np.ndarray]:
    """4-pole Bessel low-pass, -3 dB at ``cutoff_khz``, digitised at the sampling rate, and its
    steady-state initial conditions for a unit input.
    """
    sos = signal.bessel(4, cutoff_khz, fs=1.0 / sample_interval_ms, norm="mag", output="sos")
    return sos, signal.sosfilt_zi(sos)


@functools.lru_cache(maxsize=64)
def _rms_gain(cutoff_khz: float, sample_interval_ms: float) -> float:
    """RMS of the filter's output for unit white noise: the root energy of its impulse response."""
    if not math.isfinite(cutoff_khz):
        return 1.0
    sos, _ = _bessel(cutoff_khz, sample_interval_ms)
    impulse = np.zeros(4096)
    impulse[0] = 1.0
    return float(np.sqrt(np.sum(signal.sosfilt(sos, impulse) ** 2)))
