"""Populations of digital twins: parameter draws as twins, settled, and their AP features.

Twins
-----
A twin is one row of parameter values, e.g. one posterior draw of
:meth:`~sbi_twins.inference.CellPosterior.sample`. A twin table holds the model's parameters
(names not listed keep the model file's values), optionally ``recording.*`` columns (the
amplifier model's, ignored by the cell simulations) and two identifying columns: ``cell`` (which
recorded cell the twin belongs to, so that twins of several cells can be pooled) and ``twin`` (a
number within the table). :func:`make_twins` and :func:`pool_twins` build and check such tables.

Settling rule
-------------
Each twin is simulated from the model file's initial state for a fixed ``settle_ms`` (default
10 s), spontaneously or paced at ``cycle_length_ms``; what follows is its settled activity. A
fixed time rather than "until beat-to-beat CL and APD90 change by less than 1 ms" because

- the kernels integrate a batch of cells together, so stopping converged cells early saves
  little, while a fixed time makes each twin's result independent of its batch;
- cells with EADs or repolarisation failure, which a drug screen looks for, never converge,
  nor do drug-free cells with alternans or irregular pauses;
- the initial state lies on the default cell's limit cycle, close to most twins': after 10 s
  most viable ±40 % Kernik 2019 cells change CL by less than 1 ms from beat to beat, and
  waiting longer helps few of the others (drugs/README.md, "Measurements").

Features
--------
:func:`trace_features` extends :func:`~sbi_twins.physiology.features.ap_features` (whose beat,
peak, MDP and APD definitions it uses) with APD20, the AP amplitude and the maximum upstroke
velocity.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from .._util import RECORDING_PREFIX, check_integer, check_number, check_positive
from ..engine import CellModel
from ..physiology.features import ap_features, upstroke_times, upward_crossings

__all__ = [
    "META_COLUMNS",
    "TRACE_FEATURES",
    "fill_failed_states",
    "make_twins",
    "parameter_columns",
    "pool_twins",
    "settle",
    "trace_features",
    "twin_features",
]

#: Identifying columns of a twin table (not parameters).
META_COLUMNS: tuple[str, ...] = ("cell", "twin")

#: Columns of :func:`trace_features`.
TRACE_FEATURES: tuple[str, ...] = (
    "n_beats",
    "CL",
    "APD20",
    "APD50",
    "APD90",
    "MDP",
    "peak",
    "amplitude",
    "dVdt_max",
)


def make_twins(model: CellModel, draws: pd.DataFrame, *, cell: object = None) -> pd.DataFrame:
    """A checked twin table from parameter draws (see the module docstring).

    Parameters
    ----------
    model : CellModel
        The model the draws belong to.
    draws : pandas.DataFrame
        One row per twin: model parameters, optionally ``recording.*`` and the ``cell`` and
        ``twin`` columns.
    cell : optional
        The cell the twins belong to, if `draws` has no ``cell`` column (default 0).

    Returns
    -------
    pandas.DataFrame
        A copy with a fresh index, ``cell`` and ``twin`` first (``twin`` numbered 0.. when
        absent).

    Raises
    ------
    ValueError
        Not a DataFrame, no rows, columns that are not parameters of `model` (twins of another
        model; close names suggested), non-finite or negative-conductance values, a ``cell``
        column together with `cell`, or a (cell, twin) pair listed twice.
    """
    if not isinstance(draws, pd.DataFrame):
        raise ValueError(f"twins must be a pandas.DataFrame of parameter draws, not "
                         f"{type(draws).__name__}")
    if len(draws) == 0:
        raise ValueError("the twin table is empty (0 rows); draw some twins, e.g. "
                         "posterior.sample(200, seed=0)")
    twins = draws.reset_index(drop=True).copy()
    if "cell" in twins and cell is not None:
        raise ValueError("the draws have a 'cell' column; do not pass cell= as well")
    if "cell" not in twins:
        twins.insert(0, "cell", 0 if cell is None else cell)
    if "twin" not in twins:
        twins.insert(1, "twin", np.arange(len(twins)))
    duplicated = twins.duplicated(["cell", "twin"])
    if duplicated.any():
        first = twins.loc[duplicated, ["cell", "twin"]].iloc[0].tolist()
        raise ValueError(f"(cell, twin) = {tuple(first)} is listed more than once")
    try:
        model.parameter_matrix(twins[parameter_columns(twins)])
    except ValueError as error:
        raise ValueError(f"these twins do not fit model '{model.name}': {error}") from None
    ordered = [*META_COLUMNS, *(c for c in twins.columns if c not in META_COLUMNS)]
    return twins[ordered]


def pool_twins(model: CellModel, draws_by_cell: Mapping[object, pd.DataFrame]) -> pd.DataFrame:
    """One twin table from the twins of several cells, ``cell`` set to each mapping key."""
    if not draws_by_cell:
        raise ValueError("draws_by_cell is empty: give at least one cell's twins")
    tables = [make_twins(model, draws, cell=key) for key, draws in draws_by_cell.items()]
    return pd.concat(tables, ignore_index=True)


def parameter_columns(twins: pd.DataFrame) -> list[str]:
    """The columns of a twin table that the cell simulations read (not ``cell``/``twin``, not
    ``recording.*``).
    """
    return [
        str(c) for c in twins.columns
        if c not in META_COLUMNS and not str(c).startswith(RECORDING_PREFIX)
    ]


def settle(
    model: CellModel,
    twins: pd.DataFrame,
    *,
    cycle_length_ms: float | None = None,
    settle_ms: float = 10_000.0,
    batch_size: int = 256,
    progress: bool = False,
) -> np.ndarray:
    """The settled state of each twin (the module docstring's rule).

    Returns
    -------
    numpy.ndarray
        (N, S) states in ``model.state_names`` order; NaN rows for twins whose simulation
        failed (a :class:`~sbi_twins.engine.SimulationWarning` names them).
    """
    check_positive("settle_ms", settle_ms)
    batch_size = check_integer("batch_size", batch_size, minimum=1)
    params = twins[parameter_columns(twins)]
    states = np.empty((len(twins), len(model.state_names)))
    for rows in _batches(len(twins), batch_size, progress, "settling"):
        _, states[rows] = model.simulate_ap(
            params.iloc[rows],
            duration_ms=settle_ms,
            sample_interval_ms=settle_ms,
            cycle_length_ms=cycle_length_ms,
            return_final_state=True,
        )
    return states


def twin_features(
    model: CellModel,
    twins: pd.DataFrame,
    *,
    cycle_length_ms: float | None = None,
    settle_ms: float = 10_000.0,
    window_ms: float = 10_000.0,
    sample_interval_ms: float = 0.5,
    batch_size: int = 256,
    progress: bool = False,
) -> pd.DataFrame:
    """AP features of every twin after settling: ``cell``, ``twin`` and :data:`TRACE_FEATURES`.

    Each twin is settled (module docstring) and then simulated for `window_ms` more, sampled
    every `sample_interval_ms`; the features are those of that window (:func:`trace_features`).
    """
    check_positive("window_ms", window_ms)
    twins = make_twins(model, twins)
    states = settle(
        model, twins, cycle_length_ms=cycle_length_ms, settle_ms=settle_ms,
        batch_size=batch_size, progress=progress,
    )
    params = twins[parameter_columns(twins)]
    tables = []
    for rows in _batches(len(twins), batch_size, progress, "features"):
        V = model.simulate_ap(
            params.iloc[rows],
            duration_ms=window_ms,
            sample_interval_ms=sample_interval_ms,
            cycle_length_ms=cycle_length_ms,
            initial_state=fill_failed_states(states[rows], model),
        )
        V[~np.isfinite(states[rows]).all(axis=1)] = np.nan
        tables.append(trace_features(V, sample_interval_ms))
    features = pd.concat(tables, ignore_index=True)
    return pd.concat([twins[list(META_COLUMNS)], features], axis=1)


def trace_features(
    V: np.ndarray, sample_interval_ms: float, threshold_mV: float = -20.0
) -> pd.DataFrame:
    """AP features of traces: those of ``ap_features`` plus APD20, amplitude and dV/dt max.

    Parameters
    ----------
    V : numpy.ndarray
        (T,) or (N, T) membrane potential (mV) sampled every `sample_interval_ms`.
    sample_interval_ms : float
        Sample interval (ms).
    threshold_mV : float
        An upward crossing of this level starts a beat.

    Returns
    -------
    pandas.DataFrame
        One row per trace, columns :data:`TRACE_FEATURES`: ``n_beats``, ``CL``, ``APD50``,
        ``APD90``, ``MDP`` and ``peak`` of :func:`~sbi_twins.physiology.features.ap_features`;
        ``APD20`` defined like its APD90 (20 % repolarisation, mean over complete beats);
        ``amplitude`` = ``peak - MDP``; ``dVdt_max`` (mV/ms = V/s) the mean over beats of the
        largest sample-to-sample rise between a beat's foot (its lowest sample since the
        previous crossing) and its peak. A forward difference on the sample grid underestimates
        a fast upstroke: sample at 0.1 ms or finer for the physiological maximum.
    """
    dt = check_positive("sample_interval_ms", sample_interval_ms)
    check_number("threshold_mV", threshold_mV)
    arr = np.atleast_2d(np.asarray(V, dtype=float))
    base = ap_features(arr, dt, threshold_mV)
    extra = np.full((arr.shape[0], 2), np.nan)
    for n in np.flatnonzero(np.isfinite(arr).all(axis=1)):
        extra[n] = _apd20_and_dvdt(arr[n], dt, threshold_mV)
    table = base.assign(APD20=extra[:, 0], amplitude=base["peak"] - base["MDP"])
    table["dVdt_max"] = extra[:, 1]
    return table[list(TRACE_FEATURES)]


def fill_failed_states(states: np.ndarray, model: CellModel) -> np.ndarray:
    """Settled states with failed (NaN) rows replaced by the model's initial state, so that a
    batch can start from them; the caller blanks those rows' results.
    """
    bad = ~np.isfinite(states).all(axis=1)
    if not bad.any():
        return states
    filled = states.copy()
    filled[bad] = model.initial_state
    return filled


# -- implementation ----------------------------------------------------------------------------


def _apd20_and_dvdt(v: np.ndarray, dt: float, threshold: float) -> tuple[float, float]:
    """APD20 (mean over complete beats) and the mean upstroke dV/dt max of one finite trace."""
    crossings = np.flatnonzero(upward_crossings(v, threshold)) + 1
    if crossings.size == 0:
        return np.nan, np.nan
    ends = np.append(crossings[1:], v.size)
    starts = np.concatenate(([0], crossings[:-1]))
    slopes, apd20 = [], []
    ups = upstroke_times(v, dt, threshold) if crossings.size > 1 else None
    for k, (start, crossing, end) in enumerate(zip(starts, crossings, ends, strict=True)):
        foot = start + int(np.argmin(v[start:crossing]))
        peak = crossing + int(np.argmax(v[crossing:end]))
        slopes.append(np.max(np.diff(v[foot : peak + 1])) / dt)
        if ups is not None and k < crossings.size - 1:  # complete beats only
            level = v[peak] - 0.2 * (v[peak] - np.min(v[peak:end]))
            apd20.append(_level_time(v, peak, end, level, dt) - ups[k])
    return (float(np.mean(apd20)) if apd20 else np.nan), float(np.mean(slopes))


def _level_time(v: np.ndarray, start: int, stop: int, level: float, dt: float) -> float:
    """First time in ``[start, stop)`` at which ``v`` falls to ``level`` (linear interpolation),
    as in :mod:`sbi_twins.physiology.features`; NaN if it does not.
    """
    below = np.flatnonzero(v[start:stop] <= level)
    if below.size == 0:
        return np.nan
    i = start + int(below[0])  # > start: v[start] (a peak) is above the level
    v0, v1 = v[i - 1], v[i]
    return (i - 1 + (v0 - level) / (v0 - v1)) * dt


def _batches(n: int, size: int, progress: bool, what: str):
    """Row slices of ``size`` rows, with a tqdm bar when ``progress``."""
    starts = range(0, n, size)
    bar = tqdm(total=n, desc=what, unit="twin", disable=not progress, leave=False)
    for start in starts:
        stop = min(start + size, n)
        yield slice(start, stop)
        bar.update(stop - start)
    bar.close()
