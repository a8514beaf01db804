"""Drug screens of digital twins: EADs per twin and dose, and their incidence.

The protocol of :func:`screen`
------------------------------
1. Every twin is settled without drug (:mod:`sbi_twins.twins.population`: ``settle_ms`` of
   spontaneous or paced activity from the model's initial state), as a recording starts in
   control solution. Every dose of a twin starts from that state.
2. The drug acts at full strength from t = 0: each channel the drug blocks has its parameters
   (as the model declares them, :func:`~sbi_twins.twins.drugs.channel_parameters`) multiplied
   by the fraction of current remaining at the dose. The twin is simulated for
   ``duration_ms``; only the last ``window_ms`` are judged, the first part absorbing the
   transient of the abrupt block (a real wash-in is gradual).
3. The window is classified by :func:`~sbi_twins.physiology.eads.detect_eads` (normal, EAD,
   repolarisation failure, no beats) and, if it holds APs (normal or EAD), measured by
   :func:`~sbi_twins.twins.population.trace_features`.

What an incidence means
-----------------------
Among the twins of *one* cell (posterior draws given its recording and the prior), the fraction
with an EAD at a dose is the posterior probability that this cell shows an EAD at that dose:
the uncertainty about the cell's parameters propagated to its drug response. Its interval
(Wilson) is the Monte-Carlo error of that fraction from a finite number of twins, and shrinks
as twins are added; the probability itself does not shrink, it is a property of what the
recording tells about the cell. Pooled over cells (each cell's probability, averaged), it
estimates the incidence in the population the cells were drawn from; its interval comes from a
bootstrap over cells and so reflects how many cells were recorded, not how many twins each has.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from statistics import NormalDist

import numpy as np
import pandas as pd

from .._util import check_choice, check_integer, check_number, check_positive, is_number
from ..engine import CellModel
from ..physiology.eads import EADCriterion
from .drugs import Drug, channel_parameters, load_drug
from .population import make_twins
from .screen_run import ScreenPlan, screen_block, screen_in_chunks

__all__ = ["ScreenResult", "cells_needed", "screen", "wilson_interval"]

#: What :meth:`ScreenResult.incidence` can count.
EVENTS: tuple[str, ...] = ("ead", "repolarisation_failure", "abnormal")
#: Accepted dose units and their factor to nM.
UNITS = {"nM": 1.0, "uM": 1000.0, "µM": 1000.0, "μM": 1000.0}


@dataclass(frozen=True)
class ScreenResult:
    """The outcome of :func:`screen` for every (twin, dose).

    Attributes
    ----------
    outcomes : pandas.DataFrame
        One row per twin and dose: ``cell``, ``twin``, ``dose_nM``, ``outcome``, ``ead``,
        ``repolarisation_failure``, ``n_ead_events``, ``n_beats`` (of
        :func:`~sbi_twins.physiology.eads.detect_eads`), the AP features of the judged window
        (``CL``, ``APD20``, ``APD50``, ``APD90``, ``MDP``, ``peak``, ``amplitude``,
        ``dVdt_max``; NaN unless the outcome is normal or EAD) and ``<channel>_remaining``, the
        fraction of each blocked channel's current left.
    drug : Drug
        The drug screened.
    doses_nM : tuple of float
        The doses, in nM.
    settings : dict
        Everything else that determined the result (model and its sha256, protocol times,
        criterion, ignored channels, potency spreads, seed).
    """

    outcomes: pd.DataFrame
    drug: Drug
    doses_nM: tuple[float, ...]
    settings: dict = field(default_factory=dict)

    def incidence(
        self,
        by_cell: bool = True,
        *,
        event: str = "ead",
        confidence: float = 0.95,
        n_boot: int = 2000,
        seed: int = 0,
    ) -> pd.DataFrame:
        """EAD incidence per dose, per cell or pooled over cells (module docstring).

        Twins whose simulation failed are left out (counted in ``n_failed_sim``).

        Parameters
        ----------
        by_cell : bool, default True
            True: one row per (cell, dose), the posterior probability that the cell shows an
            EAD, with a Wilson interval. False: one row per dose, the mean of the cells'
            probabilities, with a bootstrap interval: cells are drawn with replacement and each
            drawn cell's probability is redrawn from its twins (binomially), so the interval
            holds both the spread between cells and each cell's Monte-Carlo error. It needs at
            least two cells (NaN otherwise: one cell says nothing about a population).
        event : {"ead", "repolarisation_failure", "abnormal"}, default "ead"
            What is counted: an EAD (the ``ead`` column: EAD events in the judged window,
            including the oscillations of a cell that fails to repolarise), a repolarisation
            failure, or either ("abnormal" repolarisation).
        confidence : float, default 0.95
            Level of the intervals.
        n_boot : int, default 2000
            Bootstrap replicates (pooled only).
        seed : int, default 0
            Seed of the bootstrap.

        Returns
        -------
        pandas.DataFrame
            Columns ``cell`` (per cell only) or ``n_cells`` (pooled), ``dose_nM``, ``n``
            (twins judged), ``n_<event>``, ``p_<event>`` (e.g. ``n_ead``, ``p_ead``),
            ``ci_low``, ``ci_high`` and ``n_failed_sim``.
        """
        level = _check_confidence(confidence)
        check_choice("event", event, EVENTS)
        per_cell = self._per_cell(level, event)
        if by_cell:
            return per_cell
        n_boot = check_integer("n_boot", n_boot, minimum=1)
        rng = np.random.default_rng(seed)
        rows = []
        for dose, group in per_cell.groupby("dose_nM", sort=True):
            group = group[group["n"] > 0]
            low = high = math.nan
            if len(group) >= 2:
                counts = group[f"n_{event}"].to_numpy()
                draws = _cluster_bootstrap(group["n"].to_numpy(), counts, n_boot, rng)
                low, high = np.quantile(draws, [(1 - level) / 2, (1 + level) / 2])
            rows.append({
                "dose_nM": dose,
                "n_cells": len(group),
                "n": int(group["n"].sum()),
                f"n_{event}": int(group[f"n_{event}"].sum()),
                f"p_{event}": float(group[f"p_{event}"].mean()) if len(group) else math.nan,
                "ci_low": low,
                "ci_high": high,
                "n_failed_sim": int(per_cell.loc[per_cell["dose_nM"] == dose,
                                                 "n_failed_sim"].sum()),
            })
        return pd.DataFrame(rows)

    def _per_cell(self, level: float, event: str) -> pd.DataFrame:
        rows = []
        for (cell, dose), group in self.outcomes.groupby(["cell", "dose_nM"], sort=True):
            judged = group[group["outcome"] != "simulation_failed"]
            if event == "abnormal":
                hits = judged["ead"] | judged["repolarisation_failure"]
            else:
                hits = judged[event]
            n, k = len(judged), int(hits.sum())
            low, high = wilson_interval(k, n, level) if n else (math.nan, math.nan)
            rows.append({
                "cell": cell,
                "dose_nM": dose,
                "n": n,
                f"n_{event}": k,
                f"p_{event}": k / n if n else math.nan,
                "ci_low": low,
                "ci_high": high,
                "n_failed_sim": len(group) - n,
            })
        return pd.DataFrame(rows)


def screen(
    model: CellModel,
    twins: pd.DataFrame,
    drug: Drug | str | os.PathLike,
    doses_nM: Sequence[float] | np.ndarray,
    *,
    unit: str = "nM",
    cycle_length_ms: float | None = None,
    settle_ms: float = 10_000.0,
    duration_ms: float = 20_000.0,
    window_ms: float = 10_000.0,
    sample_interval_ms: float = 0.5,
    criterion: EADCriterion | None = None,
    ignore_channels: Iterable[str] = (),
    ic50_log10_sd: float = 0.0,
    hill_log_sd: float = 0.0,
    seed: int = 0,
    batch_size: int = 256,
    progress: bool = False,
    out: str | os.PathLike | None = None,
    workers: int = 1,
    dask_address: str | None = None,
    chunk_twins: int | None = None,
) -> ScreenResult:
    """Simulate every twin at every dose of a drug and classify its activity (EADs).

    The protocol is in the module docstring. Simulations run in batches of `batch_size`
    (twin, dose) pairs through :meth:`CellModel.simulate_ap`. With `out`, `workers` > 1 or
    `dask_address`, the twins are screened in chunks of `chunk_twins`
    (:mod:`sbi_twins.twins.screen_run`): on local worker processes or a Dask cluster, each
    finished chunk written to `out`, so that an interrupted screen resumes where it stopped.
    The outcomes are the same either way.

    Parameters
    ----------
    model : CellModel
        The twins' model; it must declare the drug's channels.
    twins : pandas.DataFrame
        Parameter draws, e.g. ``posterior.sample(300, seed=1)``; several cells pooled with a
        ``cell`` column (:func:`~sbi_twins.twins.population.make_twins`).
    drug : Drug, str or path
        A :class:`~sbi_twins.twins.drugs.Drug`, a bundled drug name or a drug file.
    doses_nM : sequence of float
        Concentrations, >= 0 (0 is the control), in `unit`.
    unit : {"nM", "uM"}, default "nM"
        Unit of `doses_nM`; ``"uM"`` (or ``"µM"``) doses are converted to nM. The results are
        always in nM. Doses that block no channel by even 0.1 % warn (µM given as nM?).
    cycle_length_ms : float, optional
        Pace at this cycle length; None (default): spontaneous activity.
    settle_ms, duration_ms, window_ms : float
        Drug-free settling, drug simulation and its judged final part (window <= duration).
    sample_interval_ms : float, default 0.5
        Sampling of the drug simulation.
    criterion : EADCriterion, optional
        EAD thresholds (default ``EADCriterion()``).
    ignore_channels : iterable of str
        Channels of the drug to leave out, e.g. ``("INaL",)`` for a model without late sodium
        current. Every other channel of the drug must be declared by the model.
    ic50_log10_sd, hill_log_sd : float, default 0
        Per-twin spread of the drug's potency (:meth:`Drug.potencies`), drawn once per twin.
    seed : int, default 0
        Seed of the potency draws (the only random draws of a screen).
    batch_size : int, default 256
        (twin, dose) pairs simulated together.
    progress : bool, default False
        Show tqdm progress bars.
    out : str or path, optional
        Directory that keeps the finished chunks and, at the end, ``outcomes.csv``; rerunning
        the same screen into it resumes (another screen is refused).
    workers : int, default 1
        Local worker processes, one per core (started with ``spawn``: guard a script's top
        level with ``if __name__ == "__main__":``).
    dask_address : str, optional
        Address of a Dask scheduler to run the chunks on (overrides `workers`).
    chunk_twins : int, optional
        Twins per chunk (each is settled and screened at every dose by one worker); default:
        the `out` directory's if it holds this screen, else 256.

    Returns
    -------
    ScreenResult

    Raises
    ------
    FileNotFoundError
        Unknown drug name (the bundled drugs are listed).
    ValueError
        Doses that are negative, NaN, not numbers, empty or repeated; an unknown `unit`; a drug
        channel the model does not declare (or an ignored channel the drug does not block);
        twins of another model or an empty twin table; invalid times; an `out` directory that
        holds another screen, something else, or a damaged chunk (the message says the cure).
    """
    if not isinstance(drug, Drug):
        drug = load_drug(drug)
    doses = _doses(doses_nM, unit, drug)
    check_positive("settle_ms", settle_ms)
    check_positive("duration_ms", duration_ms)
    check_positive("window_ms", window_ms)
    if window_ms > duration_ms:
        raise ValueError(f"window_ms ({window_ms:g}) must not exceed duration_ms "
                         f"({duration_ms:g})")
    batch_size = check_integer("batch_size", batch_size, minimum=1)
    if chunk_twins is not None:
        chunk_twins = check_integer("chunk_twins", chunk_twins, minimum=1)
    criterion = EADCriterion() if criterion is None else criterion
    twins = make_twins(model, twins)
    channels, active = _active_channels(model, drug, ignore_channels)
    plan = ScreenPlan(
        twins=twins,
        potencies=drug.potencies(
            len(twins), seed, ic50_log10_sd=ic50_log10_sd, hill_log_sd=hill_log_sd
        ),
        doses=doses,
        channels={c: channels[c] for c in active},
        criterion=criterion,
        cycle_length_ms=cycle_length_ms,
        settle_ms=float(settle_ms),
        duration_ms=float(duration_ms),
        window_ms=float(window_ms),
        sample_interval_ms=float(sample_interval_ms),
        batch_size=batch_size,
    )
    settings = {
        "model": model.name,
        "model_sha256": model.file_hash,
        "cycle_length_ms": cycle_length_ms,
        "settle_ms": float(settle_ms),
        "duration_ms": float(duration_ms),
        "window_ms": float(window_ms),
        "sample_interval_ms": float(sample_interval_ms),
        "criterion": asdict(criterion),
        "channels": plan.channels,
        "ignored_channels": sorted(set(drug.channels) - set(active)),
        "ic50_log10_sd": float(ic50_log10_sd),
        "hill_log_sd": float(hill_log_sd),
        "seed": int(seed),
    }
    if out is None and workers == 1 and dask_address is None:
        outcomes = screen_block(model, plan, progress=progress, label=f"screen {drug.name}")
    else:
        outcomes = screen_in_chunks(
            model, plan, drug, settings, out=out, workers=workers, dask_address=dask_address,
            chunk_twins=chunk_twins, progress=progress,
        )
    return ScreenResult(outcomes, drug, tuple(float(d) for d in doses), settings)


def wilson_interval(successes: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion ``successes / n``.

    Unlike the normal (Wald) interval it stays inside [0, 1] and keeps its coverage near 0 and
    1, where EAD incidences often are.
    """
    n = check_integer("n", n, minimum=1, what="trials")
    k = check_integer("successes", successes, minimum=0)
    if k > n:
        raise ValueError(f"successes ({k}) must not exceed n ({n})")
    z = NormalDist().inv_cdf(0.5 + _check_confidence(confidence) / 2)
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    # exactly 0 (1) when no (every) twin has it: rounding would put the bound past p
    low = 0.0 if k == 0 else max(0.0, centre - half)
    high = 1.0 if k == n else min(1.0, centre + half)
    return low, high


def cells_needed(p: float, half_width: float, confidence: float = 0.95) -> int:
    """How many real cells must be recorded to pin an incidence down to ``± half_width``.

    The smallest number of independent cells for which, if a fraction `p` of them shows the
    event (e.g. an EAD at a dose), the Wilson interval of the observed incidence has a
    half-width of at most `half_width`. Use a screen's pooled or per-cell incidence as `p` to
    plan the wet-lab experiment that would confirm it; ``p = 0.5`` is the worst case.

    Parameters
    ----------
    p : float
        Expected incidence, in [0, 1].
    half_width : float
        Wanted half-width of the interval, in (0, 0.5].
    confidence : float, default 0.95
        Level of the interval.

    Returns
    -------
    int
        Number of cells.

    Examples
    --------
    >>> cells_needed(0.3, 0.1)
    78
    """
    if not (is_number(p) and 0 <= p <= 1):
        raise ValueError(f"p must be a probability in [0, 1], got {p!r}")
    h = check_number("half_width", half_width, minimum=0.0, inclusive=False)
    if h > 0.5:
        raise ValueError(f"half_width must be at most 0.5 (an interval within [0, 1]), got {h}")
    z = NormalDist().inv_cdf(0.5 + _check_confidence(confidence) / 2)

    def half(n: int) -> float:
        return z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))

    low, high = 1, 1
    while half(high) > h:  # the half-width falls monotonically with n
        low, high = high, 2 * high
    while low < high:
        mid = (low + high) // 2
        low, high = (mid + 1, high) if half(mid) > h else (low, mid)
    return high


# -- implementation ----------------------------------------------------------------------------


def _doses(doses_nM, unit: str, drug: Drug) -> np.ndarray:
    """Doses as a checked float array in nM."""
    if unit not in UNITS:
        raise ValueError(f"unit must be one of {', '.join(map(repr, UNITS))}, got {unit!r}")
    values = list(np.atleast_1d(np.asarray(doses_nM, dtype=object)))
    if not values:
        raise ValueError("doses_nM is empty: give at least one dose (0 is the control)")
    for value in values:
        if not is_number(value):
            raise ValueError(f"doses must be numbers, got {value!r}")
        if math.isnan(value):
            raise ValueError("a dose is NaN")
        if value < 0 or math.isinf(value):
            raise ValueError(f"doses must be finite and >= 0, got {value!r}")
    doses = np.array(values, dtype=float) * UNITS[unit]
    if len(np.unique(doses)) < doses.size:
        raise ValueError(f"doses are repeated: {sorted(doses.tolist())}")
    strongest = max(1 - drug.block(float(doses.max()))[c] for c in drug.channels)
    if doses.max() > 0 and strongest < 1e-3:
        warnings.warn(
            f"the highest dose ({doses.max():g} nM) blocks no channel of {drug.name} by even "
            f"0.1 % (IC50s: {', '.join(f'{c} {b.ic50_nM:g} nM' for c, b in drug.channels.items())}"
            "); were the doses in uM? pass unit='uM'",
            UserWarning,
            stacklevel=3,
        )
    return doses


def _active_channels(
    model: CellModel, drug: Drug, ignore_channels: Iterable[str]
) -> tuple[dict[str, tuple[str, ...]], list[str]]:
    """The model's channel declaration and the drug channels to apply."""
    ignored = [str(c) for c in ignore_channels]
    not_blocked = [c for c in ignored if c not in drug.channels]
    if not_blocked:
        raise ValueError(
            f"ignore_channels names {not_blocked}, which {drug.name} does not block; it blocks "
            f"{', '.join(drug.channels)}"
        )
    channels = channel_parameters(model)
    active = [c for c in drug.channels if c not in ignored]
    missing = [c for c in active if c not in channels]
    if missing:
        raise ValueError(
            f"{drug.name} blocks {', '.join(missing)}, which model '{model.name}' does not "
            f"declare (it declares {', '.join(channels)}); pass ignore_channels="
            f"{tuple(missing)!r} to screen without {'them' if len(missing) > 1 else 'it'}"
        )
    if not active:
        raise ValueError(f"every channel of {drug.name} is ignored: nothing to screen")
    return channels, active


def _check_confidence(confidence: float) -> float:
    if not (is_number(confidence) and 0 < confidence < 1):
        raise ValueError(f"confidence must be in (0, 1), got {confidence!r}")
    return float(confidence)


def _cluster_bootstrap(
    n: np.ndarray, k: np.ndarray, n_boot: int, rng: np.random.Generator
) -> np.ndarray:
    """Bootstrap replicates of the mean of per-cell proportions ``k / n``: cells resampled with
    replacement, each drawn cell's proportion redrawn as Binomial(n, k / n) / n.
    """
    cells = rng.integers(0, n.size, size=(n_boot, n.size))
    redrawn = rng.binomial(n[cells], k[cells] / n[cells]) / n[cells]
    return redrawn.mean(axis=1)
