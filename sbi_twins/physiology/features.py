"""Action-potential features of sampled membrane-potential traces.

Definitions (those of the reference study's AP features)
--------------------------------------------------------
Let ``V[i]`` be sampled at ``t_i = i * dt`` and ``thr`` the threshold (default -20 mV).

*Beat*
    Every upward crossing of ``thr``, i.e. every ``i`` with ``V[i-1] < thr <= V[i]``, starts a
    beat. A trace that starts above the threshold does not start with a beat. ``n_beats`` is the
    number of such crossings.
*Complete beat*
    A beat that is followed by another beat. Only complete beats have a well-defined following
    diastole, so peak, MDP and APD are measured on complete beats only: the last beat of a trace
    (which may be cut off, or may never repolarise, as in a cell that fires once and arrests) never
    contributes to them.
*Upstroke time*
    The time of maximum dV/dt of the beat. dV/dt is the forward difference
    ``(V[i+1] - V[i]) / dt``, attributed to the midpoint ``t_i + dt/2``. It is searched from the
    lowest sample between the previous beat's crossing (or the trace start) and this crossing, up
    to the beat's highest sample; the location of the largest difference is refined to sub-sample
    precision by the vertex of the parabola through it and its two neighbours (shifted by at most
    half a sample). The refinement makes the upstroke time a continuous function of the trace, so
    a small shift of the AP moves it by about as much, instead of by 0 or one sample.
*Peak*
    The highest sample of a complete beat (between its crossing and the next beat's crossing).
*MDP*
    The lowest sample between a complete beat's crossing and the next beat's crossing (the
    diastole that follows the beat).
*APDx*
    From the upstroke time to the first time after the peak at which V falls to
    ``peak - x/100 * (peak - MDP)`` (peak and MDP of the same complete beat), linearly
    interpolated between samples.
*CL*
    The mean time between successive upstrokes (all beats, complete or not); it needs two beats.

Per cell, ``peak``, ``MDP``, ``APD90`` and ``APD50`` are means over the complete beats (NaN without
a complete beat, i.e. with fewer than two beats). A row that contains any non-finite value gives
NaN for every feature, ``n_beats`` included.

Differences from the features stored in the reference ``summary.json``: there ``n_beats`` counts
the complete beats (``n_beats - 1`` here), CL is averaged over the intervals between complete
beats only, and a cell without complete beats still reports the trace's MDP and peak.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from .._util import check_number, check_positive

__all__ = ["FEATURE_COLUMNS", "ap_features", "crossing_time", "upstroke_times", "upward_crossings"]

#: Columns of the table returned by :func:`ap_features`, in order.
FEATURE_COLUMNS: tuple[str, ...] = (
    "n_beats",
    "first_upstroke_ms",
    "CL",
    "APD90",
    "APD50",
    "MDP",
    "peak",
)


def ap_features(
    V: np.ndarray, sample_interval_ms: float, threshold_mV: float = -20.0
) -> pd.DataFrame:
    """Compute action-potential features of one or many membrane-potential traces.

    Parameters
    ----------
    V : numpy.ndarray
        Membrane potential (mV), shape ``(T,)`` for one trace or ``(N, T)`` for N traces, sampled
        every `sample_interval_ms` starting at t = 0.
    sample_interval_ms : float
        Sample interval in ms (positive).
    threshold_mV : float, default -20
        An upward crossing of this level starts a beat.

    Returns
    -------
    pandas.DataFrame
        One row per trace (N rows, or 1 for a 1-D input) with the columns of
        :data:`FEATURE_COLUMNS`, all float:

        ``n_beats``
            number of beats (upward threshold crossings);
        ``first_upstroke_ms``
            upstroke time of the first beat (ms);
        ``CL``
            mean interval between successive upstrokes (ms);
        ``APD90``, ``APD50``
            mean action-potential durations of the complete beats (ms);
        ``MDP``, ``peak``
            mean maximum diastolic and peak potentials of the complete beats (mV).

        Undefined features are NaN: ``first_upstroke_ms`` without beats, everything else but
        ``n_beats`` with fewer than two beats, and every column (``n_beats`` too) for a trace
        that contains NaN or infinite values. See the module docstring for the exact definitions.

    Raises
    ------
    ValueError
        If `V` is not 1-D or 2-D, or `sample_interval_ms` or `threshold_mV` is not a finite
        number (the interval also positive).

    Examples
    --------
    >>> t = np.arange(0, 3000, 0.5)
    >>> V = np.where((t % 1000) < 300, 20.0, -80.0)
    >>> ap_features(V, 0.5)[["n_beats", "CL"]]
       n_beats      CL
    0      2.0  1000.0
    """
    dt = check_positive("sample_interval_ms", sample_interval_ms)
    thr = check_number("threshold_mV", threshold_mV)
    arr = np.asarray(V, dtype=float)
    if arr.ndim == 1:
        arr = arr[None, :]
    if arr.ndim != 2:
        raise ValueError(f"V must have shape (T,) or (N, T), got shape {np.shape(V)}")
    table = np.full((arr.shape[0], len(FEATURE_COLUMNS)), np.nan)
    finite = np.isfinite(arr).all(axis=1)
    # Crossings of all rows at once; the per-row loop then only visits the beats.
    rows, cols = np.nonzero(upward_crossings(arr, thr))
    starts = np.searchsorted(rows, np.arange(arr.shape[0] + 1))
    for n in np.flatnonzero(finite):
        crossings = cols[starts[n] : starts[n + 1]] + 1
        table[n] = _row_features(arr[n], crossings, dt)
    return pd.DataFrame(table, columns=list(FEATURE_COLUMNS))


def upstroke_times(
    V_row: np.ndarray, sample_interval_ms: float, threshold_mV: float = -20.0
) -> np.ndarray:
    """Return the upstroke time of every beat of one trace.

    Parameters
    ----------
    V_row : numpy.ndarray
        Membrane potential (mV), shape ``(T,)``, sampled every `sample_interval_ms` from t = 0.
    sample_interval_ms : float
        Sample interval in ms (positive).
    threshold_mV : float, default -20
        An upward crossing of this level starts a beat.

    Returns
    -------
    numpy.ndarray
        Upstroke times in ms (time of maximum dV/dt, see the module docstring), one per beat,
        increasing. Empty if there is no beat or the trace contains non-finite values.

    Raises
    ------
    ValueError
        If `V_row` is not 1-D, or the interval or threshold is invalid.
    """
    dt = check_positive("sample_interval_ms", sample_interval_ms)
    thr = check_number("threshold_mV", threshold_mV)
    v = np.asarray(V_row, dtype=float)
    if v.ndim != 1:
        raise ValueError(f"V_row must have shape (T,), got shape {np.shape(V_row)}")
    if not np.isfinite(v).all():
        return np.empty(0)
    crossings = _crossings(v, thr)
    peaks = _peak_indices(v, crossings)
    return np.array([_upstroke_time(v, crossings, peaks, k, dt) for k in range(crossings.size)])


# -- implementation ----------------------------------------------------------------------------


def upward_crossings(v: np.ndarray, threshold_mV: float) -> np.ndarray:
    """Where traces cross a level upwards: the definition of a beat throughout the package.

    Parameters
    ----------
    v : numpy.ndarray
        Traces (..., T), e.g. membrane potential in mV.
    threshold_mV : float
        The level.

    Returns
    -------
    numpy.ndarray
        Boolean (..., T - 1), True at ``j`` where ``v[..., j] < threshold <= v[..., j + 1]``:
        sample ``j + 1`` is the first at or above the level.
    """
    return (v[..., :-1] < threshold_mV) & (v[..., 1:] >= threshold_mV)


def crossing_time(v: np.ndarray, i: int, threshold_mV: float, dt: float) -> float:
    """Time (ms, sample 0 at 0) at which ``v`` reaches the level between samples ``i - 1`` and
    ``i``, by linear interpolation (``i`` is the first sample at or above it).
    """
    return (i - 1 + (threshold_mV - v[i - 1]) / (v[i] - v[i - 1])) * dt


def _crossings(v: np.ndarray, thr: float) -> np.ndarray:
    """Indices of the first sample at or above ``thr`` of each upward crossing of a trace (T,)."""
    return np.flatnonzero(upward_crossings(v, thr)) + 1


def _peak_indices(v: np.ndarray, crossings: np.ndarray) -> np.ndarray:
    """Index of the highest sample of each beat (up to the next crossing or the trace end)."""
    ends = np.append(crossings[1:], v.size)
    # without crossings, `ends` still holds the trace end: zip stops at the shorter
    peaks = [c + int(np.argmax(v[c:e])) for c, e in zip(crossings, ends, strict=False)]
    return np.array(peaks, dtype=np.int64)


def _upstroke_time(
    v: np.ndarray, crossings: np.ndarray, peaks: np.ndarray, k: int, dt: float
) -> float:
    """Time (ms) of maximum dV/dt of beat ``k``, refined by a parabola (see module docstring)."""
    previous = crossings[k - 1] if k > 0 else 0
    foot = previous + int(np.argmin(v[previous : crossings[k]]))
    d = np.diff(v[foot : peaks[k] + 1])  # d[j] belongs to time (foot + j + 0.5) * dt
    j = int(np.argmax(d))
    shift = 0.0
    if 0 < j < d.size - 1:
        curvature = d[j - 1] - 2.0 * d[j] + d[j + 1]
        if curvature < 0.0:
            shift = min(0.5, max(-0.5, 0.5 * (d[j - 1] - d[j + 1]) / curvature))
    return (foot + j + 0.5 + shift) * dt


def _level_time(v: np.ndarray, start: int, stop: int, level: float, dt: float) -> float:
    """First time in ``[start, stop)`` at which ``v`` falls to ``level`` (linear interpolation).

    ``v[start]`` must be above ``level``; NaN if ``v`` stays above it.
    """
    below = np.flatnonzero(v[start:stop] <= level)
    if below.size == 0:
        return math.nan
    i = start + int(below[0])
    v0, v1 = v[i - 1], v[i]
    return (i - 1 + (v0 - level) / (v0 - v1)) * dt


def _row_features(v: np.ndarray, crossings: np.ndarray, dt: float) -> np.ndarray:
    """Feature vector (order of :data:`FEATURE_COLUMNS`) of one finite trace."""
    out = np.full(len(FEATURE_COLUMNS), np.nan)
    n = crossings.size
    out[0] = n
    if n == 0:
        return out
    peaks = _peak_indices(v, crossings)
    ups = np.array([_upstroke_time(v, crossings, peaks, k, dt) for k in range(n)])
    out[1] = ups[0]
    if n < 2:
        return out
    out[2] = float(np.mean(np.diff(ups)))
    apd90, apd50, mdp, peak = [], [], [], []
    for k in range(n - 1):  # complete beats: followed by beat k + 1
        p, nxt = peaks[k], crossings[k + 1]
        v_peak = v[p]
        v_min = float(np.min(v[p:nxt]))
        peak.append(v_peak)
        mdp.append(v_min)
        for x, store in ((0.9, apd90), (0.5, apd50)):
            t_level = _level_time(v, p, nxt, v_peak - x * (v_peak - v_min), dt)
            store.append(t_level - ups[k])
    out[3] = np.mean(apd90)
    out[4] = np.mean(apd50)
    out[5] = np.mean(mdp)
    out[6] = np.mean(peak)
    return out
