"""Viability filter: keep only cells that beat spontaneously and regularly.

The reference study trained on spontaneously beating cells only, and most random parameter draws
do not beat (about a third of the ±40 % draws show regular APs). This module states that filter
as an explicit rule set, :class:`ViabilityRules`, and applies it cheaply with
:func:`check_viability`.

The rule
--------
Each cell is simulated spontaneously from the model's initial state. Activity during the first
``settle_ms`` is ignored; the *window* is ``[settle_ms, settle_ms + window_ms]``. In the window a
*beat* is an upward crossing of ``threshold_mV`` (samples ``V[i-1] < thr <= V[i]``, both in the
window, as in :mod:`sbi_twins.physiology.features`), timed by linear interpolation between the
two samples.
Beat ``j`` is *complete* when beat ``j + 1`` follows it; its peak and MDP are the highest and
lowest samples from its crossing up to (not including) the next crossing, as in
:func:`sbi_twins.physiology.features.ap_features`.

Only the first ``min_beats + 1`` beats of the window are evaluated. The cell is viable when

1. they all occur in the window, each less than ``max_interval_ms`` after the previous one (the
   first: after the window start); otherwise the reason is ``too_few_beats``;
2. the mean peak of the first ``min_beats`` (complete) beats is above ``min_peak_mV``
   (``low_peak``);
3. their mean MDP is below ``max_mdp_mV`` (``high_mdp``);
4. the coefficient of variation (population standard deviation / mean) of the ``min_beats``
   intervals between these beats is at most ``max_cl_cv`` (``irregular``).

The first failing condition gives the ``reason``; ``simulation_failed`` marks cells whose
integration blew up.

Why the first beats only: the verdict is then final as soon as beat ``min_beats + 1`` is seen
(accept or reject), or as soon as ``max_interval_ms`` passes without a beat (reject: any later
beat would come too late), so stopping a cell's simulation there gives exactly the verdict of
the whole window. An accepted cell is simulated to its 4th window beat, a quiescent one to
``settle_ms + max_interval_ms``. The interval limit also makes the verdict a property of the
rhythm, not of where the window happens to start: with ``max_interval_ms = window_ms /
(min_beats + 1)`` (the default) a cell with a cycle length under 2.5 s always fits its beats in
the window, whatever its phase, and a slower one never does.

Defaults
--------
They mirror the reference study's rule, "≥ 3 beats, peak > 0 mV, MDP < -50 mV" in a 10 s window
after settling, with beats counted as complete beats like its feature summaries. The study judged
50-60 s of activity, which costs about 10 times more to simulate; how often the two verdicts agree,
for these and other settle times and solver settings, is measured by ``benchmarks/viability.py``
(BENCHMARKS.md, "Viability filter"). The settle is not shorter than 3 s because a cell's first
AP from the initial state can come late and differs from the later ones.
"""

from __future__ import annotations

import itertools
import math
import sys
import warnings
from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np
import pandas as pd

from .._util import check_integer, check_number, check_positive, whole_multiple
from ..engine import CellModel, ParamsLike, SimulationWarning
from .features import crossing_time, upward_crossings

__all__ = ["REASONS", "ViabilityRules", "acceptance_summary", "check_viability"]

#: Possible values of the ``reason`` column of :func:`check_viability`, in order of precedence.
REASONS: tuple[str, ...] = (
    "ok",
    "too_few_beats",
    "low_peak",
    "high_mdp",
    "irregular",
    "simulation_failed",
)


def _check_multiple(name: str, value: float, step: float) -> None:
    whole_multiple(
        value, step, name=name, step_name="sample_interval_ms", hint="change one of them"
    )


_POSITIVE = ("window_ms", "max_interval_ms", "sample_interval_ms", "atol_mV", "rtol", "dt_max_ms")


@dataclass(frozen=True)
class ViabilityRules:
    """The viability rule set (see the module docstring for the exact rule).

    Parameters
    ----------
    settle_ms : float, default 3000
        Activity before this time is ignored (the transient from the model's initial state).
    window_ms : float, default 10000
        Length of the observation window after settling.
    min_beats : int, default 3
        Number of complete beats required (so ``min_beats + 1`` threshold crossings).
    max_interval_ms : float, default 2500
        Beats must follow each other (the first: the window start) in less than this: the
        slowest accepted rhythm (24 beats/min).
    min_peak_mV : float, default 0
        The mean peak of the evaluated beats must be above this.
    max_mdp_mV : float, default -50
        The mean maximum diastolic potential of the evaluated beats must be below this.
    max_cl_cv : float, default 0.2
        Largest coefficient of variation of the evaluated beat intervals ("beats regularly").
        A value of ``sqrt(min_beats - 1)`` or more never rejects.
    threshold_mV : float, default -20
        An upward crossing of this level is a beat.
    sample_interval_ms : float, default 1.0
        Sampling of V for beat detection, peak and MDP.
    atol_mV, rtol, dt_max_ms : float, default 0.02, 2e-3, 0.5
        Solver settings passed to :meth:`CellModel.simulate_ap`: its default tolerances, but a
        step cap of 0.5 ms instead of 0.2 ms (the cap keeps beat *timing* within 1 ms, which the
        verdict does not need; see the module docstring). Part of the rules because the verdict
        depends on them, so that :meth:`to_dict` is enough to reproduce a filtered population.

    Raises
    ------
    ValueError
        If a value has the wrong type or is out of range (the message says which and why).
    """

    settle_ms: float = 3000.0
    window_ms: float = 10_000.0
    min_beats: int = 3
    max_interval_ms: float = 2500.0
    min_peak_mV: float = 0.0
    max_mdp_mV: float = -50.0
    max_cl_cv: float = 0.2
    threshold_mV: float = -20.0
    sample_interval_ms: float = 1.0
    atol_mV: float = 0.02
    rtol: float = 2e-3
    dt_max_ms: float = 0.5

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "min_beats":
                check_integer("min_beats", value, minimum=1)
            elif f.name in _POSITIVE:
                check_positive(f.name, value)
            elif f.name in ("settle_ms", "max_cl_cv"):
                check_number(f.name, value, minimum=0.0)
            else:
                check_number(f.name, value)
        for name in ("settle_ms", "window_ms"):
            _check_multiple(name, getattr(self, name), self.sample_interval_ms)

    def to_dict(self) -> dict[str, Any]:
        """The rules as a JSON-serialisable dict (field name -> value)."""
        return {k: int(v) if k == "min_beats" else float(v) for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ViabilityRules:
        """Rules from a dict as written by :meth:`to_dict`; missing keys take the defaults.

        Raises
        ------
        ValueError
            Unknown keys (the valid ones are listed) or invalid values.
        """
        valid = [f.name for f in fields(cls)]
        unknown = sorted(set(data) - set(valid))
        if unknown:
            raise ValueError(
                f"unknown viability rule(s) {', '.join(map(repr, unknown))}; "
                f"valid keys are: {', '.join(valid)}"
            )
        return cls(**data)


def check_viability(
    model: CellModel,
    params: np.ndarray | ParamsLike,
    rules: ViabilityRules = ViabilityRules(),
    *,
    chunk_ms: float = 500.0,
    progress: bool = False,
) -> pd.DataFrame:
    """Decide for each cell whether it beats spontaneously and regularly.

    Cells are simulated in pieces of ``chunk_ms`` chained through their final state. After each
    piece, cells whose verdict is final (once beat ``min_beats + 1`` or a pause of
    ``max_interval_ms`` is seen, see the module docstring) are dropped: the verdicts are those
    of the whole window, at about half its cost. The function is deterministic.

    Parameters
    ----------
    model : CellModel
        The cell model (e.g. ``load_model("kernik2019")``).
    params : numpy.ndarray, pandas.DataFrame, mapping or None
        An ``(N, P)`` matrix in ``model.parameter_names`` order, or anything
        :meth:`CellModel.parameter_matrix` accepts (e.g. ``Prior.sample(...)``).
    rules : ViabilityRules
        The rule set.
    chunk_ms : float, default 500
        Simulated time between verdict checks; a multiple of ``rules.sample_interval_ms``.
        Shorter pieces stop decided cells sooner; each piece costs about 2 ms of overhead, so
        pass hundreds of cells or more at a time. Memory: about ``8 N chunk_ms /
        sample_interval_ms`` bytes for the traces of one piece.
    progress : bool, default False
        Print the number of undecided cells after each piece to stderr.

    Returns
    -------
    pandas.DataFrame
        One row per cell (with the index of `params` if it is a DataFrame):

        ``viable`` (bool), ``reason`` (one of :data:`REASONS`);
        ``n_beats``
            beats seen in the window until the verdict (at most ``min_beats + 1``);
        ``peak``, ``MDP``
            mean peak and MDP (mV) of the complete beats seen (NaN without one);
        ``CL``, ``CL_cv``
            mean and coefficient of variation of the intervals between the beats seen (ms; NaN
            with fewer than two beats), from threshold-crossing times (not the max-dV/dt
            upstroke times of :func:`sbi_twins.physiology.features.ap_features`);
        ``simulated_ms``
            how far the cell was simulated.

        Cells whose integration blew up get ``reason = "simulation_failed"`` and NaN ``peak``,
        ``MDP``, ``CL`` and ``CL_cv``; the simulator's :class:`SimulationWarning` is not passed
        on for them.

    Raises
    ------
    ValueError
        Invalid `params` (wrong shape or non-finite values) or `chunk_ms`.
    """
    theta = _parameter_matrix(model, params)
    dt = rules.sample_interval_ms
    check_positive("chunk_ms", chunk_ms)
    _check_multiple("chunk_ms", chunk_ms, dt)
    n = theta.shape[0]
    # Piece edges in samples (exact integers): every chunk_ms, counted from 0 and from the window
    # start, so that a pause check falls on settle_ms + max_interval_ms when they are multiples.
    settle = round(rules.settle_ms / dt)
    horizon = settle + round(rules.window_ms / dt)
    step = round(chunk_ms / dt)
    edges = np.unique(np.r_[np.arange(0, settle, step), np.arange(settle, horizon, step), horizon])
    beats = _Beats(n, rules.min_beats)
    reason = np.full(n, "", dtype=object)
    simulated = np.zeros(n)
    active = np.arange(n)
    y = np.tile(model.initial_state, (n, 1))
    for e0, e1 in itertools.pairwise(edges):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", SimulationWarning)  # reported as a reason instead
            V, y_end = model.simulate_ap(
                pd.DataFrame(theta[active], columns=model.parameter_names),
                duration_ms=(e1 - e0) * dt,
                sample_interval_ms=dt,
                initial_state=y[active],
                atol_mV=rules.atol_mV,
                rtol=rules.rtol,
                dt_max_ms=rules.dt_max_ms,
                return_final_state=True,
                # the per-cell kernel, whose verdicts datasets were made with: a dataset is
                # regenerated bit for bit, and the lane kernel's rounding could flip a verdict
                lane_blocks=False,
            )
        y[active] = y_end
        simulated[active] = e1 * dt
        failed = ~np.isfinite(V).all(axis=1)
        reason[active[failed]] = "simulation_failed"
        if e1 > settle:  # a piece of the window (the edges put e0 >= settle)
            cells = active[~failed]
            decided = beats.update(cells, V[~failed], (e0 - settle) * dt, dt, rules)
            reason[cells] = decided
        active = active[reason[active] == ""]
        if progress:
            print(
                f"check_viability: t = {e1 * dt:g} ms, {active.size}/{n} cells undecided",
                file=sys.stderr,
                flush=True,
            )
        if active.size == 0:
            break
    reason[active] = "too_few_beats"  # the window ended before the last beat
    failed = reason == "simulation_failed"
    out = beats.table()
    out.loc[failed, ["peak", "MDP", "CL", "CL_cv"]] = np.nan
    out.insert(0, "reason", reason.astype(str))
    out.insert(0, "viable", reason == "ok")
    out["simulated_ms"] = simulated
    if isinstance(params, pd.DataFrame):
        out.index = params.index
    return out


def acceptance_summary(df: pd.DataFrame) -> dict[str, Any]:
    """Counts per reason and the acceptance rate of a :func:`check_viability` table.

    Returns
    -------
    dict
        ``n_cells``, ``n_viable``, ``acceptance_rate`` (NaN for an empty table), ``reasons``
        (count per entry of :data:`REASONS`, zeros included) and ``mean_simulated_ms``.

    Raises
    ------
    ValueError
        If `df` lacks the ``viable``, ``reason`` or ``simulated_ms`` column.
    """
    missing = [c for c in ("viable", "reason", "simulated_ms") if c not in df.columns]
    if missing:
        raise ValueError(
            f"df lacks column(s) {', '.join(missing)}; pass the table returned by check_viability"
        )
    n = len(df)
    n_viable = int(df["viable"].sum())
    counts = df["reason"].value_counts()
    return {
        "n_cells": n,
        "n_viable": n_viable,
        "acceptance_rate": n_viable / n if n else math.nan,
        "reasons": {r: int(counts.get(r, 0)) for r in REASONS},
        "mean_simulated_ms": float(df["simulated_ms"].mean()) if n else math.nan,
    }


# -- implementation ----------------------------------------------------------------------------


def _parameter_matrix(model: CellModel, params: np.ndarray | ParamsLike) -> np.ndarray:
    if not isinstance(params, np.ndarray):
        return model.parameter_matrix(params)
    n_par = len(model.parameter_names)
    if params.ndim != 2 or params.shape[1] != n_par or params.shape[0] == 0:
        raise ValueError(
            f"a parameter matrix must have shape (N, {n_par}) with N >= 1 (columns in "
            f"model.parameter_names order), got {params.shape}; or pass a DataFrame or mapping"
        )
    theta = np.asarray(params, dtype=float)
    if not np.isfinite(theta).all():
        rows = np.flatnonzero(~np.isfinite(theta).all(axis=1))[:10].tolist()
        raise ValueError(f"the parameter matrix has non-finite values (rows {rows})")
    return theta


class _Beats:
    """Streaming record of the first ``k + 1`` window beats of each cell.

    Pieces of the window arrive one at a time; each starts with the last sample of the previous
    piece, so crossings are found at indices >= 1 and none is counted twice.
    """

    def __init__(self, n: int, k: int):
        self.k = k
        self.n_beats = np.zeros(n, dtype=np.int64)
        self.times = np.full((n, k + 1), np.nan)  # crossing times from the window start (ms)
        self.peaks = np.full((n, k), np.nan)
        self.mdps = np.full((n, k), np.nan)
        self.run_max = np.full(n, -np.inf)  # extremes of the current (incomplete) beat
        self.run_min = np.full(n, np.inf)

    def update(
        self, cells: np.ndarray, V: np.ndarray, t0: float, dt: float, rules: ViabilityRules
    ) -> np.ndarray:
        """Add a piece ``V`` (rows: ``cells``; window time ``t0`` at column 0).

        Returns the verdict reached for each row: a reason, or "" if still undecided.
        """
        thr = rules.threshold_mV
        verdict = np.full(cells.size, "", dtype=object)
        rows, cols = np.nonzero(upward_crossings(V, thr))
        starts = np.searchsorted(rows, np.arange(cells.size + 1))
        quiet = starts[:-1] == starts[1:]
        # Rows without a crossing only extend their current beat.
        qc = cells[quiet]
        self.run_max[qc] = np.maximum(self.run_max[qc], V[quiet].max(axis=1))
        self.run_min[qc] = np.minimum(self.run_min[qc], V[quiet].min(axis=1))
        for r in np.flatnonzero(~quiet):
            verdict[r] = self._add_crossings(
                cells[r], V[r], cols[starts[r] : starts[r + 1]] + 1, t0, dt, rules
            )
        # A later beat has a time >= t_end: once the pause reaches max_interval_ms it is too late.
        t_end = t0 + (V.shape[1] - 1) * dt
        last = np.where(self.n_beats[cells] > 0, self._last_time(cells), 0.0)
        pause = (verdict == "") & (t_end - last >= rules.max_interval_ms)
        verdict[pause] = "too_few_beats"
        return verdict

    def _last_time(self, cells: np.ndarray) -> np.ndarray:
        idx = np.clip(self.n_beats[cells] - 1, 0, self.k)
        return self.times[cells, idx]

    def _add_crossings(
        self,
        c: int,
        v: np.ndarray,
        idx: np.ndarray,
        t0: float,
        dt: float,
        rules: ViabilityRules,
    ) -> str:
        thr, k = rules.threshold_mV, self.k
        start = 0
        for i in idx:
            n = int(self.n_beats[c])
            if n >= 1:  # this crossing completes beat n - 1
                self.peaks[c, n - 1] = max(self.run_max[c], v[start:i].max())
                self.mdps[c, n - 1] = min(self.run_min[c], v[start:i].min())
            t = t0 + crossing_time(v, i, thr, dt)
            previous = self.times[c, n - 1] if n >= 1 else 0.0
            self.times[c, n] = t
            self.n_beats[c] = n + 1
            if t - previous >= rules.max_interval_ms:
                return "too_few_beats"
            if n + 1 == k + 1:
                return self._final_verdict(c, rules)
            self.run_max[c], self.run_min[c] = -np.inf, np.inf
            start = i
        self.run_max[c] = max(self.run_max[c], v[start:].max())
        self.run_min[c] = min(self.run_min[c], v[start:].min())
        return ""

    def _final_verdict(self, c: int, rules: ViabilityRules) -> str:
        intervals = np.diff(self.times[c])
        if not self.peaks[c].mean() > rules.min_peak_mV:
            return "low_peak"
        if not self.mdps[c].mean() < rules.max_mdp_mV:
            return "high_mdp"
        if intervals.std() / intervals.mean() > rules.max_cl_cv:
            return "irregular"
        return "ok"

    def table(self) -> pd.DataFrame:
        """Features of the beats seen so far (see :func:`check_viability`)."""
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN rows give NaN, as intended
            intervals = np.diff(self.times, axis=1)
            cl = np.nanmean(intervals, axis=1)
            return pd.DataFrame(
                {
                    "n_beats": self.n_beats,
                    "peak": np.nanmean(self.peaks, axis=1),
                    "MDP": np.nanmean(self.mdps, axis=1),
                    "CL": cl,
                    "CL_cv": np.nanstd(intervals, axis=1) / cl,
                }
            )
