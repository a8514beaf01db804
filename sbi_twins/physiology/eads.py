"""Early afterdepolarisations (EADs) and repolarisation failure in membrane-potential traces.

The criterion
-------------
Let ``V`` be sampled every ``dt`` ms. With the defaults of :class:`EADCriterion`:

*Beat*
    An upward crossing of ``threshold_mV`` (-20 mV; samples ``V[i-1] < thr <= V[i]``, the beat
    of :mod:`sbi_twins.physiology.features`) that follows a *repolarised* state: V was below
    ``repolarised_mV`` (-50 mV) at some sample since the previous beat's crossing (for the first
    beat: since the trace start). A crossing without repolarisation in between is not a new
    action potential but part of the previous one (an EAD that overshoots the threshold).
*EAD search window of a beat*
    From the first sample at which V has fallen ``search_from`` (30 %) of the way from its
    highest value since the crossing back to the beat's rest (the lowest sample between the
    previous beat's crossing, or the trace start, and this crossing), to the first sample below
    ``repolarised_mV`` (or the trace end).
*EAD*
    In the window V is followed as a zigzag with hysteresis ``min_rise_mV`` (2 mV): every rise
    of at least ``min_rise_mV`` above the lowest value since the window start or since the last
    top (a top being followed by a fall of at least ``min_rise_mV``) is one EAD event. So an EAD
    is a depolarisation (dV/dt > 0) of at least 2 mV during repolarisation, after V has fallen
    30 % of the AP amplitude and before it is back below -50 mV; the plateau oscillations of a
    cell that never repolarises are EADs too.
*Repolarisation failure*
    V stays at or above ``repolarised_mV`` for longer than ``max_depolarised_ms`` (2000 ms)
    without interruption, including a stretch still going on at the trace end (one that is
    shorter at the trace end is not judged: the AP may simply be cut off).
*Outcome*
    ``"repolarisation_failure"`` if there is one, else ``"ead"`` if there is an EAD event, else
    ``"no_beats"`` if there is no beat, else ``"normal"``; ``"simulation_failed"`` for a trace
    with NaN or infinite values (a cell whose integration blew up). A failing cell may have EAD
    events too (``ead`` is then True): the outcome names the more severe abnormality.

With ``start_ms`` only what happens from that time on is judged (beats that start there, EAD
events that complete there, failures that last into it); the earlier part of the trace still
tells where a beat started and for how long V has been depolarised.

Why this criterion
------------------
Population-of-models drug studies classify simulated APs as normal, with EADs, or with
repolarisation failure (Passini et al. 2017, Front Physiol 8:668, doi:10.3389/fphys.2017.00668;
Britton et al. 2017, Front Physiol 8:278, doi:10.3389/fphys.2017.00278). The window is the one
of the CiPA in silico model (Li et al. 2017, Circ Arrhythm Electrophysiol 10:e004628; code:
github.com/FDA/CiPA, ``AP_simulation/AP_simulation.R``), which counts an EAD when dV/dt > 0
between 30 % and 90 % repolarisation and a repolarisation failure when the AP does not reach
90 % repolarisation. Starting at 30 % repolarisation skips the spike-notch-dome of the early
plateau, a rise of a few mV that many viable Kernik 2019 cells show. Three adaptations
(measurements in drugs/README.md, "Measurements"):

- *An amplitude, not just a sign.* dV/dt > 0 alone flags any ripple of a noisy (recorded)
  trace; a rise must reach 2 mV, far below the EADs of IKr-blocked Kernik cells (tens of mV)
  and far above the ripple of simulated traces.
- *-50 mV, not 90 % repolarisation, as the end.* It is the maximum diastolic potential the
  viability rules require of a beating cell (:mod:`sbi_twins.physiology.viability`, after the
  reference study), so every viable cell's AP ends below it, and it does not depend on a
  beat's rest, which drifts up when a drug depolarises a spontaneously beating cell.
  Oscillations that turn around above it (IKr-blocked Kernik cells oscillate between about
  -40 and 0 mV) stay EADs of one AP instead of becoming beats.
- *2 s above -50 mV as a failure.* A viable cell beats at least every 2.5 s, with APs that
  spend well under 1 s above -50 mV.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from .._util import check_number, check_positive, is_number
from .features import upward_crossings

__all__ = ["EAD_COLUMNS", "OUTCOMES", "EADCriterion", "detect_eads"]

#: Possible values of the ``outcome`` column of :func:`detect_eads`.
OUTCOMES: tuple[str, ...] = (
    "normal",
    "ead",
    "repolarisation_failure",
    "no_beats",
    "simulation_failed",
)

#: Columns of the table returned by :func:`detect_eads`, in order.
EAD_COLUMNS: tuple[str, ...] = (
    "ead",
    "repolarisation_failure",
    "outcome",
    "n_ead_events",
    "n_beats",
)


@dataclass(frozen=True)
class EADCriterion:
    """The thresholds of the EAD and repolarisation-failure criterion (module docstring).

    Parameters
    ----------
    min_rise_mV : float, default 2
        Smallest rise of V after a fall (and the fall after a top) that counts.
    search_from : float, default 0.3
        The EAD search of a beat starts once V has repolarised this fraction of the way from
        its highest value so far back to the beat's rest (the preceding diastolic minimum).
    repolarised_mV : float, default -50
        Below this V counts as repolarised: it ends a beat's EAD search and allows a new beat.
    max_depolarised_ms : float, default 2000
        V at or above ``repolarised_mV`` for longer than this is a repolarisation failure.
    threshold_mV : float, default -20
        An upward crossing of this level (after repolarisation) starts a beat.
    """

    min_rise_mV: float = 2.0
    search_from: float = 0.3
    repolarised_mV: float = -50.0
    max_depolarised_ms: float = 2000.0
    threshold_mV: float = -20.0

    def __post_init__(self) -> None:
        check_positive("min_rise_mV", self.min_rise_mV)
        if not (is_number(self.search_from) and 0 < self.search_from < 1):
            raise ValueError(f"search_from must be a fraction in (0, 1), got {self.search_from!r}")
        check_positive("max_depolarised_ms", self.max_depolarised_ms)
        check_number("repolarised_mV", self.repolarised_mV)
        check_number("threshold_mV", self.threshold_mV)
        if not self.repolarised_mV < self.threshold_mV:
            raise ValueError(
                f"repolarised_mV ({self.repolarised_mV:g}) must be below threshold_mV "
                f"({self.threshold_mV:g}): a beat rises from a repolarised state"
            )


def detect_eads(
    V: np.ndarray,
    sample_interval_ms: float,
    criterion: EADCriterion | None = None,
    *,
    start_ms: float = 0.0,
) -> pd.DataFrame:
    """Classify membrane-potential traces: normal, EADs, repolarisation failure or no beats.

    Parameters
    ----------
    V : numpy.ndarray
        Membrane potential (mV), shape ``(T,)`` or ``(N, T)``, sampled every
        `sample_interval_ms` from t = 0.
    sample_interval_ms : float
        Sample interval in ms (positive).
    criterion : EADCriterion, optional
        The thresholds (default: ``EADCriterion()``; the criterion is in the module docstring).
    start_ms : float, default 0
        Judge only what happens from this time on (module docstring); must lie in the trace.

    Returns
    -------
    pandas.DataFrame
        One row per trace, columns :data:`EAD_COLUMNS`:

        ``ead`` (bool)
            at least one EAD event;
        ``repolarisation_failure`` (bool)
            V held above ``repolarised_mV`` for longer than ``max_depolarised_ms``;
        ``outcome`` (str)
            one of :data:`OUTCOMES`, by the precedence of the module docstring;
        ``n_ead_events``, ``n_beats`` (nullable int)
            counts from `start_ms` on; missing for a failed (non-finite) trace.

    Raises
    ------
    ValueError
        `V` not 1-D or 2-D, an invalid interval, or `start_ms` outside the trace.

    Examples
    --------
    >>> t = np.arange(0, 3000, 0.5)
    >>> V = np.where((t % 1000) < 300, 20.0, -80.0)
    >>> detect_eads(V, 0.5)[["outcome", "n_beats"]]
      outcome  n_beats
    0  normal        2
    """
    dt = check_positive("sample_interval_ms", sample_interval_ms)
    criterion = EADCriterion() if criterion is None else criterion
    arr = np.asarray(V, dtype=float)
    if arr.ndim == 1:
        arr = arr[None, :]
    if arr.ndim != 2:
        raise ValueError(f"V must have shape (T,) or (N, T), got shape {np.shape(V)}")
    duration = (arr.shape[1] - 1) * dt
    check_number("start_ms", start_ms, minimum=0.0)
    if start_ms > duration:
        raise ValueError(f"start_ms ({start_ms:g}) is after the trace end ({duration:g} ms)")
    start = math.ceil(start_ms / dt - 1e-9)
    rows = [_judge(row, dt, criterion, start) for row in arr]
    table = pd.DataFrame(rows, columns=list(EAD_COLUMNS))
    for column in ("n_ead_events", "n_beats"):
        table[column] = table[column].astype("Int64")
    return table


# -- implementation ----------------------------------------------------------------------------


def _judge(v: np.ndarray, dt: float, c: EADCriterion, start: int) -> tuple:
    """One row of :func:`detect_eads` for one trace, judged from sample ``start`` on."""
    if not np.isfinite(v).all():
        return (False, False, "simulation_failed", pd.NA, pd.NA)
    beats = _beats(v, c.threshold_mV, c.repolarised_mV)
    below = np.flatnonzero(v < c.repolarised_mV)
    n_events = 0
    for k, crossing in enumerate(beats):
        later = below[np.searchsorted(below, crossing) :]
        end = int(later[0]) if later.size else v.size
        if end <= start:
            continue  # this AP was over before the judged part
        rest = float(np.min(v[(beats[k - 1] if k else 0) : crossing]))
        window = _search_start(v[crossing:end], rest, c.search_from)
        if window is None:
            continue  # never repolarised that far: a failure, if long enough
        first = crossing + window
        rises = _rise_indices(v[first:end], c.min_rise_mV) + first
        n_events += int(np.count_nonzero(rises >= start))
    failure = _longest_depolarisation(v, c.repolarised_mV, start) * dt > c.max_depolarised_ms
    n_beats = int(np.count_nonzero(beats >= start))
    if failure:
        outcome = "repolarisation_failure"
    elif n_events:
        outcome = "ead"
    elif n_beats == 0:
        outcome = "no_beats"
    else:
        outcome = "normal"
    return (n_events > 0, bool(failure), outcome, n_events, n_beats)


def _beats(v: np.ndarray, threshold: float, repolarised: float) -> np.ndarray:
    """Crossing indices (first sample at or above the threshold) of the beats of a trace."""
    crossings = np.flatnonzero(upward_crossings(v, threshold)) + 1
    below_count = np.concatenate(([0], np.cumsum(v < repolarised)))  # below in v[:i]
    beats, since = [], 0
    for crossing in crossings:
        if below_count[crossing] > below_count[since]:  # repolarised since the last beat
            beats.append(crossing)
            since = crossing
    return np.array(beats, dtype=np.int64)


def _search_start(segment: np.ndarray, rest: float, fraction: float) -> int | None:
    """First sample of an AP segment (from its crossing) at which V has fallen ``fraction`` of
    the way from its highest value so far back to ``rest``; None if it never does.
    """
    top = np.maximum.accumulate(segment)
    fallen = segment <= top - fraction * (top - rest)
    return int(np.argmax(fallen)) if fallen.any() else None


def _rise_indices(segment: np.ndarray, min_rise: float) -> np.ndarray:
    """Where the EAD events of a repolarising segment reach ``min_rise`` above their trough.

    The zigzag of the module docstring starts falling at the segment's first sample. It changes
    state only at turning points of the trace, so it is run over those (after merging runs of
    equal values); the sample at which a counted rise first reaches ``min_rise`` above its
    trough is then looked up in the segment.
    """
    run_starts = np.concatenate(([0], np.flatnonzero(np.diff(segment)) + 1))
    values = segment[run_starts]
    if values.size < 2:
        return np.empty(0, dtype=np.int64)
    slope = np.sign(np.diff(values))
    turns = np.flatnonzero(slope[1:] != slope[:-1]) + 1
    points = np.concatenate((turns, [values.size - 1]))
    rises = []
    rising, top, bottom, trough = False, -math.inf, values[0], 0
    for point in points:
        value = values[point]
        if rising:
            if value > top:
                top = value
            elif top - value >= min_rise:
                rising, bottom, trough = False, value, point
        elif value < bottom:
            bottom, trough = value, point
        elif value - bottom >= min_rise:
            first, last = run_starts[trough], run_starts[point]
            reach = first + int(np.argmax(segment[first : last + 1] >= bottom + min_rise))
            rises.append(reach)
            rising, top = True, value
    return np.array(rises, dtype=np.int64)


def _longest_depolarisation(v: np.ndarray, repolarised: float, start: int) -> int:
    """Length (samples) of the longest run of ``v >= repolarised`` that reaches sample
    ``start`` or later (a run ending before ``start`` is not judged).
    """
    above = np.concatenate(([False], v >= repolarised, [False]))
    edges = np.flatnonzero(np.diff(above.astype(np.int8)))
    run_starts, run_ends = edges[::2], edges[1::2]  # run = v[run_start:run_end]
    judged = run_ends > start
    if not judged.any():
        return 0
    return int((run_ends[judged] - run_starts[judged]).max())
