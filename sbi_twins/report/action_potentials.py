"""The twins' spontaneous action potentials for a cell's report, and a recorded AP against them.

Twins are simulated with the twins layer's machinery and its settling rule
(:mod:`sbi_twins.twins.population`: checked by ``make_twins``, settled for ``settle_ms`` from
the model file's initial state, then simulated for ``window_ms`` more), and their features are
those of :func:`sbi_twins.twins.trace_features` on that window. A recorded current-clamp trace is
measured by :func:`sbi_twins.physiology.recording_ap_features` (the same definitions, after the
1 kHz low-pass filter that keeps noise from counting as beats). This module only computes what
the report lays out; :func:`sbi_twins.report.figures.plot_twin_aps` draws it.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from .._util import check_positive
from ..engine import SimulationWarning
from ..physiology import recording_ap_features, upstroke_times
from ..recording import Recording
from ..twins import make_twins, trace_features
from ..twins.population import fill_failed_states, parameter_columns, settle

if TYPE_CHECKING:  # annotations only
    from ..inference import Estimator

__all__ = [
    "COMPARED",
    "RANGE",
    "RecordedAP",
    "TwinAPs",
    "aligned_window",
    "compare_features",
    "measure_recording",
    "twin_aps",
]

#: Features compared between the twins and a recorded AP, with their units.
COMPARED: dict[str, str] = {
    "CL": "ms",
    "APD50": "ms",
    "APD90": "ms",
    "MDP": "mV",
    "peak": "mV",
}

#: Central range of the twins' features the report states (and a recorded value is judged in).
RANGE = 0.9


@dataclass(frozen=True)
class TwinAPs:
    """Spontaneous activity of a cell's twins after settling (:func:`twin_aps`).

    Attributes
    ----------
    voltages : numpy.ndarray
        (N, S) membrane potential (mV) of the window after settling; NaN rows for twins whose
        simulation failed.
    sample_interval_ms : float
        Sampling of ``voltages``.
    features : pandas.DataFrame
        One row per twin: ``twin`` (its row among the draws) and the columns of
        :data:`sbi_twins.twins.population.TRACE_FEATURES`.
    settle_ms : float
        Simulated time before the window.
    """

    voltages: np.ndarray
    sample_interval_ms: float
    features: pd.DataFrame
    settle_ms: float

    @property
    def beating(self) -> np.ndarray:
        """True for twins with at least two beats in the window (a cycle length)."""
        return np.isfinite(self.features["CL"].to_numpy())

    @property
    def failed(self) -> int:
        """Twins whose simulation failed."""
        return int((~np.isfinite(self.voltages).all(axis=1)).sum())


@dataclass(frozen=True)
class RecordedAP:
    """A recorded current-clamp trace (:func:`measure_recording`).

    Attributes
    ----------
    time_ms, potential_mV : numpy.ndarray
        The recorded membrane potential (unfiltered) and its times.
    features : pandas.Series
        Its features (:func:`sbi_twins.physiology.recording_ap_features`, low-pass filtered).
    name : str
        What to call it (the file's name).
    """

    time_ms: np.ndarray
    potential_mV: np.ndarray
    features: pd.Series
    name: str


def twin_aps(
    estimator: Estimator,
    draws: pd.DataFrame,
    *,
    settle_ms: float = 10_000.0,
    window_ms: float = 10_000.0,
    sample_interval_ms: float = 0.5,
) -> TwinAPs:
    """Simulate the spontaneous activity of posterior draws (twins) after settling.

    Parameters
    ----------
    estimator : Estimator
        Supplies the cell model and the prior's fixed values.
    draws : pandas.DataFrame
        One row per twin, at least the columns :attr:`Estimator.names` (``recording.*``
        columns are ignored: spontaneous activity is unclamped).
    settle_ms : float
        Simulated before the window, from the model file's initial state (the twins layer's
        settling rule, default 10 s).
    window_ms : float
        Length of the simulated window whose features are measured (default 10 s).
    sample_interval_ms : float
        Sampling of the window.

    Returns
    -------
    TwinAPs
        The window's traces and the features of each twin.
    """
    check_positive("window_ms", window_ms)
    check_positive("sample_interval_ms", sample_interval_ms)
    model = estimator.cell_model()
    twins = make_twins(model, estimator.prior.with_fixed(draws.reset_index(drop=True)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SimulationWarning)  # failures are counted (NaN rows)
        states = settle(model, twins, settle_ms=settle_ms)
        voltages = model.simulate_ap(
            twins[parameter_columns(twins)],
            duration_ms=window_ms,
            sample_interval_ms=sample_interval_ms,
            initial_state=fill_failed_states(states, model),
        )
    voltages[~np.isfinite(states).all(axis=1)] = np.nan
    features = trace_features(voltages, sample_interval_ms)
    features.insert(0, "twin", twins["twin"].to_numpy())
    return TwinAPs(voltages, float(sample_interval_ms), features, float(settle_ms))


def measure_recording(recording: Recording, name: str | None = None) -> RecordedAP:
    """A current-clamp recording's potential and features, for comparison with twins.

    Raises
    ------
    ValueError
        If `recording` is not a current-clamp recording (a potential in mV or V).
    """
    features = recording_ap_features(recording).iloc[0]  # refuses a voltage-clamp recording
    mv = recording.to_unit("mV")
    source = recording.metadata.get("source")
    label = name or (Path(str(source)).name if source else "recorded AP")
    return RecordedAP(np.asarray(mv.time_ms), np.asarray(mv.signal), features, label)


def compare_features(aps: TwinAPs, recorded: RecordedAP | None = None) -> pd.DataFrame:
    """The twins' features (median and central :data:`RANGE`) and, if given, a recorded AP's.

    Returns
    -------
    pandas.DataFrame
        One row per feature of :data:`COMPARED`: ``unit``, ``twins`` (those that beat),
        ``median``, ``low``, ``high`` (the 5 % and 95 % quantiles over those twins), and with a
        recording ``recorded`` and ``verdict`` (``inside``, ``below`` or ``above`` the twins'
        range; ``not measured`` when the recording or too few twins give no value).
    """
    rows = {}
    tail = (1 - RANGE) / 2
    for feature, unit in COMPARED.items():
        values = aps.features[feature].to_numpy(dtype=float)
        values = values[np.isfinite(values)]
        if values.size:
            low, median, high = np.quantile(values, [tail, 0.5, 1 - tail])
        else:
            low = median = high = np.nan
        row = {"unit": unit, "twins": values.size, "median": median, "low": low, "high": high}
        if recorded is not None:
            value = float(recorded.features[feature])
            row["recorded"] = value
            row["verdict"] = _verdict(value, low, high)
        rows[feature] = row
    table = pd.DataFrame.from_dict(rows, orient="index")
    table.index.name = "feature"
    return table


def aligned_window(
    voltage: np.ndarray, sample_interval_ms: float, show_ms: float, lead_ms: float, *, last: bool
) -> tuple[np.ndarray, float | None]:
    """A stretch of ``show_ms`` of one trace starting ``lead_ms`` before an upstroke.

    The upstroke is the last one that leaves a full stretch (``last=True``) or the first one;
    without a beat, the last ``show_ms`` of the trace, unaligned.

    Returns
    -------
    stretch : numpy.ndarray
        The samples (shorter than ``show_ms`` if the trace ends first).
    upstroke_ms : float or None
        Where in ``voltage`` the aligned upstroke lies, None when unaligned.
    """
    dt = check_positive("sample_interval_ms", sample_interval_ms)
    count = max(1, int(round(check_positive("show_ms", show_ms) / dt)))
    ups = upstroke_times(voltage, dt) if np.isfinite(voltage).all() else np.empty(0)
    duration = voltage.size * dt
    fits = ups[(ups >= lead_ms) & (ups - lead_ms + show_ms <= duration)]
    if last and fits.size:
        upstroke = float(fits[-1])
    elif ups[ups >= lead_ms].size:
        upstroke = float(ups[ups >= lead_ms][0])
    else:
        return voltage[-count:], None
    start = int(round((upstroke - lead_ms) / dt))
    return voltage[start : start + count], upstroke


def _verdict(value: float, low: float, high: float) -> str:
    if not (np.isfinite(value) and np.isfinite(low)):
        return "not measured"
    if value < low:
        return "below"
    return "above" if value > high else "inside"
