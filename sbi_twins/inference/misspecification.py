"""Is a recording one the estimator was trained for? A calibrated misspecification test.

A neural posterior is only trustworthy on recordings like its training cells. The statistic is
the distance of a recording's learned summary (the summary network's features and predicted
parameter positions, the flow's condition) from those of in-distribution recordings: the mean
of its squared z-scores, standardised by one half of a reference set of fresh cells made exactly
like the training cells (:meth:`Estimator.simulate_cells`). The other half calibrates it: the
p-value is the share of those held-out reference cells whose statistic is at least as large
(with the usual +1 correction), so it is uniform for in-distribution recordings and small for
recordings the estimator cannot have seen (a unit mistake, a flat trace, another model...).

A recording can also look like the training cells and still be one no cell of the prior could
give: a cell without IKr resembles one with little IKr, and its features average into the
crowd. The summary network's predicted positions say it more directly. Each is a posterior
mean of a parameter's position within its prior, so for in-distribution recordings it lies in
(0, 1) up to the regression's small errors; a recording that only a cell beyond the prior could
give makes the network extrapolate past a bound (a cell without IKr: ``ikr.g_Kr`` below it).
The prior-excess statistic (:class:`ExcessReference`) sums the squared distances of the
positions outside (0, 1), each in units of its in-distribution root-mean-square excess, and is
calibrated like the first; the verdict names the parameters pushed out (``beyond_prior``).

The third, posterior-predictive
statistic asks whether the posterior can reproduce the recording: :data:`PREDICTIVE_DRAWS`
posterior draws, seeded from the recording itself, are re-simulated through the recording model
(:func:`~sbi_twins.inference.predictive.predictive_check`), and the statistic is
:func:`predictive_statistic` of the residuals. It is calibrated like the first, on fresh
in-distribution cells each with its own posterior and predictive simulations
(:class:`PredictiveReference`, kept in a bundle's manifest with the summary reference).

The p-values are combined by Bonferroni: with k statistics, the recording is flagged when one
is below ``alpha / k``. A predictive check costs :data:`PREDICTIVE_DRAWS` simulations (seconds
on the clark2022 protocol), so :meth:`Estimator.fit` warns from the two cheap statistics, and
the predictive one is computed only when :meth:`CellPosterior.misspecification` is asked for
and the bundle has a predictive reference. A bundle written before the prior-excess statistic
existed goes without it; the verdict's note says which statistics it rests on.

How often each flags such recordings is measured by ``benchmarks/misspecification.py``.

Some recordings are not a matter of degree: a flat trace, a current in pA given as pA/pF, a
flipped sign convention. :func:`implausibility` names them from the same reference cells (their
RMS current and their average recording), so that :meth:`Estimator.fit` refuses them with the
fix instead of returning a confident posterior.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

import numpy as np
import torch

from .._util import check_integer, check_number
from .predictive import PredictiveCheck, predictive_check

if TYPE_CHECKING:  # annotations only
    from .estimator import Estimator
    from .posterior import CellPosterior

#: p-value below which a recording is flagged.
ALPHA = 0.01

#: Posterior draws re-simulated for the predictive statistic (about 3 s on clark2022). The same
#: for a recording and for its reference cells, since the statistic's spread depends on it.
PREDICTIVE_DRAWS = 20

#: Protocol segments the predictive statistic averages over: the worst fitted ones. Measured
#: on 30 in-distribution cells and 15 without IKr (clark2022, 25 segments, 30 draws), 3
#: separated them best of 1, 2, 3 and 5 (and better than all windows' mean of the squared
#: z-scores or the share of windows outside the 90 % band).
WORST_SEGMENTS = 3

#: Smallest in-distribution RMS excess (in position units) a parameter's excess is divided by:
#: parameters whose reference cells never leave the prior still need a finite unit. In a pilot
#: on the bundled default (the prior-excess statistic alone, 4000 reference cells, 200 cells
#: without IKr; BENCHMARKS.md), floors 0.003, 0.01 and 0.03 flagged 78 %, 70 % and 67 % of the
#: cells without IKr at the same false-alarm rate.
EXCESS_FLOOR = 0.003

#: Share of the prior-excess statistic a parameter must carry to be named in ``beyond_prior``.
BEYOND_SHARE = 0.1

#: A recording whose RMS current is this many times above the largest (or below the smallest)
#: of the reference cells is refused as a unit mistake: over the clark2022 reference the
#: cells' RMS spans a factor of about 7, and a pA trace of a 50 pF cell lies 7-50x above it.
RMS_FACTOR = 4.0

#: Correlation with the reference cells' average recording below which a recording is refused
#: as sign-flipped (in-distribution cells: 0.53 to 0.93; misspecified ones measured: >= 0.05).
MIN_CORRELATION = -0.2


class ImplausibleRecordingError(ValueError):
    """A recording the estimator cannot fit: flat, in the wrong unit or with a flipped sign."""


class MisspecificationWarning(UserWarning):
    """A recording unlike the estimator's training cells (:func:`misspecification` flags it)."""


@dataclass(frozen=True)
class Misspecification:
    """The verdict on one recording.

    Attributes
    ----------
    flag : bool
        True when ``p_value < alpha``: the recording is unlike the training cells.
    p_value : float
        The combined p-value: the smallest of the statistics' p-values times their number
        (Bonferroni, at most 1); :attr:`summary_p_value` when it is the only one.
    statistic : float
        Mean squared z-score of the recording's summary.
    alpha : float
        The level of the flag.
    summary_p_value : float
        Share of in-distribution reference cells at least as far from the training summaries.
    predictive_p_value : float or None
        Share of in-distribution reference cells whose posterior reproduces their recording
        at most as well (:func:`predictive_statistic`); None when not computed.
    predictive_statistic : float or None
        :func:`predictive_statistic` of the recording; None when not computed.
    note : str
        Which statistics the verdict rests on, and why one is missing if it is.
    excess_p_value : float or None
        Share of in-distribution reference cells whose predicted positions stray at least as far
        outside the prior (:class:`ExcessReference`); None for a reference without it.
    excess_statistic : float or None
        The recording's prior-excess statistic; None for a reference without it.
    beyond_prior : dict
        For a flagged recording, the parameters whose predicted position lies outside the
        prior and carries at least :data:`BEYOND_SHARE` of the prior-excess statistic, largest
        first: ``"below"`` or ``"above"`` the prior's range (e.g. ``{"ikr.g_Kr": "below"}`` for
        a cell without IKr); empty when not flagged (small excesses are regression noise).
    """

    flag: bool
    p_value: float
    statistic: float
    alpha: float
    summary_p_value: float = float("nan")
    predictive_p_value: float | None = None
    predictive_statistic: float | None = None
    note: str = ""
    excess_p_value: float | None = None
    excess_statistic: float | None = None
    beyond_prior: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class PredictiveReference:
    """Predictive statistics of in-distribution cells, which calibrate the predictive p-value."""

    calibration: np.ndarray  # sorted statistics
    draws: int
    source: str

    @classmethod
    def from_estimator(
        cls, estimator: Estimator, n_cells: int, seed: int, draws: int = PREDICTIVE_DRAWS
    ) -> PredictiveReference:
        """The statistics of ``n_cells`` fresh cells made like the training cells
        (:meth:`Estimator.simulate_cells` with ``seed``), each from its own posterior.

        The smallest p-value is ``1 / (n_cells + 1)``: to flag at ``alpha / 2`` (the
        Bonferroni share of :data:`ALPHA`) it takes at least 200 cells.
        """
        check_integer("n_cells", n_cells, minimum=20, what="reference cells")
        _, traces = estimator.simulate_cells(n_cells, seed=seed)
        posteriors = estimator.posteriors(estimator.reduce(traces))
        statistics = [predictive_statistic(posterior, draws) for posterior in posteriors]
        return cls(
            np.sort(statistics), draws, f"{n_cells} fresh cells (seed {seed}), {draws} draws each"
        )

    def to_dict(self) -> dict:
        """A JSON-able form (kept under ``"predictive"`` in the summary reference's)."""
        calibration = self.calibration.tolist()
        return {"source": self.source, "draws": self.draws, "calibration": calibration}

    @classmethod
    def from_dict(cls, data: dict) -> PredictiveReference:
        """The inverse of :meth:`to_dict`."""
        return cls(np.sort(data["calibration"]), int(data["draws"]), data["source"])

    def p_value(self, statistic: float) -> float:
        """Share of the reference cells with a statistic at least ``statistic``."""
        return _p_value(self.calibration, statistic)


@dataclass(frozen=True)
class ExcessReference:
    """How far in-distribution recordings' predicted positions stray outside the prior, which
    standardises and calibrates the prior-excess statistic.

    Positions of (log-)uniform parameters are uniform on (0, 1) under the prior; those of
    log-normal parameters are unbounded (standard normal) and have no range to leave, so they
    do not count (``bounded`` False).
    """

    scale: np.ndarray  # per parameter: in-distribution RMS excess, at least EXCESS_FLOOR
    bounded: np.ndarray  # per parameter: True where the position has the prior range (0, 1)
    calibration: np.ndarray  # sorted statistics of the held-out reference cells

    @classmethod
    def from_cells(cls, standardising: np.ndarray, calibrating: np.ndarray, bounded: np.ndarray
                   ) -> ExcessReference:
        """The reference of two disjoint sets of in-distribution summaries (N, C), whose last
        ``len(bounded)`` columns are the predicted positions: the first sets each parameter's
        unit, the second calibrates.
        """
        bounded = np.asarray(bounded, dtype=bool)
        in_positions = cls(np.ones(bounded.size), bounded, np.empty(0))
        rms = np.sqrt(np.mean(in_positions.excess(standardising) ** 2, axis=0))
        unit = replace(in_positions, scale=np.maximum(rms, EXCESS_FLOOR))
        return replace(unit, calibration=np.sort(unit.statistic(calibrating)))

    def to_dict(self) -> dict:
        """A JSON-able form (kept under ``"excess"`` in the summary reference's)."""
        return {
            "scale": self.scale.tolist(),
            "bounded": self.bounded.tolist(),
            "calibration": self.calibration.tolist(),
        }

    @classmethod
    def from_dict(cls, data: dict) -> ExcessReference:
        """The inverse of :meth:`to_dict`."""
        return cls(
            np.asarray(data["scale"], dtype=float),
            np.asarray(data["bounded"], dtype=bool),
            np.sort(data["calibration"]),
        )

    def excess(self, summaries: np.ndarray) -> np.ndarray:
        """Signed distance of each predicted position outside the prior range, in units of
        :attr:`scale`: (N, C) summaries -> (N, D); negative below, positive above, 0 inside.
        """
        positions = np.atleast_2d(summaries)[:, -self.bounded.size :]
        below = np.where(self.bounded, np.minimum(positions, 0.0), 0.0)
        above = np.where(self.bounded, np.maximum(positions - 1.0, 0.0), 0.0)
        return (below + above) / self.scale

    def statistic(self, summaries: np.ndarray) -> np.ndarray:
        """Sum of squared :meth:`excess` of summaries (N, C) -> (N,)."""
        return np.sum(self.excess(summaries) ** 2, axis=1)

    def p_value(self, statistic: float) -> float:
        """Share of the calibration cells with a statistic at least ``statistic``."""
        return _p_value(self.calibration, statistic)

    def beyond(
        self, summary: np.ndarray, names: tuple[str, ...], baselines: np.ndarray
    ) -> dict[str, str]:
        """The parameters carrying at least :data:`BEYOND_SHARE` of one summary's statistic,
        largest first: ``{name: "below" | "above"}`` the prior's range of values. Positions
        are those of a multiplier of the parameter's baseline, so for a negative baseline a
        position below the range is a value above it.
        """
        excess = self.excess(summary)[0] * np.where(np.asarray(baselines) < 0, -1.0, 1.0)
        squared = excess**2
        total = squared.sum()
        order = np.argsort(-squared)
        return {
            names[k]: "below" if excess[k] < 0 else "above"
            for k in order
            if total > 0 and squared[k] >= BEYOND_SHARE * total
        }


@dataclass(frozen=True)
class Reference:
    """In-distribution summaries that standardise and calibrate the statistics."""

    mean: np.ndarray
    scale: np.ndarray
    calibration: np.ndarray  # sorted statistics of the held-out half
    typical: np.ndarray  # the average observation vector
    rms_range: tuple[float, float]  # smallest and largest RMS of an observation vector
    source: str
    predictive: PredictiveReference | None = None  # None: no posterior-predictive statistic
    excess: ExcessReference | None = None  # None: a reference from before the statistic

    @classmethod
    def from_cells(
        cls,
        summaries: np.ndarray,
        observations: np.ndarray,
        source: str,
        bounded: np.ndarray | None = None,
    ) -> Reference:
        """The reference of in-distribution cells: their summaries (N, C) and observation
        vectors (N, L). The first half of the summaries standardises, the second calibrates.
        ``bounded`` (D,) marks the parameters whose predicted positions (the summaries' last D
        columns) have the prior range (0, 1) (:class:`ExcessReference`); without it, the
        reference has no prior-excess part.
        """
        check_integer("summaries", len(summaries), minimum=20, what="reference cells")
        half = len(summaries) // 2
        mean = summaries[:half].mean(axis=0)
        scale = np.maximum(summaries[:half].std(axis=0), 1e-9)
        rms = _rms(observations)
        excess = (
            None
            if bounded is None
            else ExcessReference.from_cells(summaries[:half], summaries[half:], bounded)
        )
        standardised = cls(
            mean, scale, np.empty(0), observations.mean(axis=0), (rms.min(), rms.max()), source,
            excess=excess,
        )
        return replace(standardised, calibration=np.sort(standardised.statistic(summaries[half:])))

    @classmethod
    def from_estimator(cls, estimator: Estimator, n_cells: int, seed: int) -> Reference:
        """The reference of ``n_cells`` fresh cells made like the training cells."""
        check_integer("n_cells", n_cells, minimum=20, what="reference cells")
        _, traces = estimator.simulate_cells(n_cells, seed=seed)
        observations = estimator.reduce(traces)
        summaries = summaries_of(estimator, observations)
        bounded = ~estimator.prior.log_normal
        return cls.from_cells(
            summaries, observations, f"{n_cells} fresh cells (seed {seed})", bounded
        )

    def to_dict(self) -> dict:
        """A JSON-able form, kept in an estimator bundle's manifest."""
        arrays = ("mean", "scale", "calibration", "typical")
        parts = {
            key: part.to_dict()
            for key, part in [("predictive", self.predictive), ("excess", self.excess)]
            if part is not None
        }
        return {
            "source": self.source,
            "rms_range": [float(v) for v in self.rms_range],
            **{key: getattr(self, key).tolist() for key in arrays},
            **parts,
        }

    @classmethod
    def from_dict(cls, data: dict) -> Reference:
        """The inverse of :meth:`to_dict`."""
        arrays = {key: np.asarray(data[key], dtype=float) for key in ("mean", "scale", "typical")}
        low, high = data["rms_range"]
        # both parts are absent from bundles written before they existed
        predictive, excess = data.get("predictive"), data.get("excess")
        return cls(
            **arrays,
            calibration=np.sort(data["calibration"]),
            rms_range=(float(low), float(high)),
            source=data["source"],
            predictive=None if predictive is None else PredictiveReference.from_dict(predictive),
            excess=None if excess is None else ExcessReference.from_dict(excess),
        )

    def statistic(self, summaries: np.ndarray) -> np.ndarray:
        """Mean squared z-score of summaries (N, C) -> (N,)."""
        return np.mean(((summaries - self.mean) / self.scale) ** 2, axis=1)

    def p_value(self, statistic: float) -> float:
        """Share of the calibration cells with a statistic at least ``statistic``."""
        return _p_value(self.calibration, statistic)


def _p_value(calibration: np.ndarray, statistic: float) -> float:
    """Share of sorted reference statistics at least ``statistic``, with the +1 correction."""
    larger = calibration.size - np.searchsorted(calibration, statistic, "left")
    return float((1 + larger) / (1 + calibration.size))


def implausibility(reference: Reference, observation: np.ndarray) -> str | None:
    """What makes an observation vector one no training cell could give, or None.

    A current too large for the observation's float32 (a window mean beyond about 3.4e38, so
    the observation holds ±inf), flat (no current recorded), an RMS current
    :data:`RMS_FACTOR` times outside the reference cells' range (a unit mistake), or a
    recording that runs opposite to the reference cells' average (a flipped sign convention).
    Each answer says how to fix the recording.
    """
    x = np.asarray(observation, dtype=float)
    overflowed = np.isinf(x)  # window means past float32, the observations' type
    if overflowed.any():
        limit, high = float(np.finfo(np.float32).max), reference.rms_range[1]
        return (
            f"its current exceeds {limit:.2g} pA/pF in {overflowed.sum()} of its {x.size} "
            f"observation windows, over {limit / high:.0e} times the largest RMS current of the "
            f"training cells ({high:.3g} pA/pF) and past the single-precision numbers the "
            "estimator computes with: is it in the wrong unit, or scaled by mistake? Give the "
            "current in pA/pF"
        )
    if np.ptp(x) == 0:
        return (
            f"the trace is flat (a constant {x[0]:g} pA/pF): nothing was recorded; check the "
            "amplifier channel and the file's current column"
        )
    rms, (low, high) = float(_rms(x[None])[0]), reference.rms_range
    if rms > RMS_FACTOR * high:
        return (
            f"its RMS current is {rms:.3g} pA/pF, {rms / high:.0f}x the largest of the training "
            f"cells ({high:.3g} pA/pF): is it in pA rather than pA/pF? Divide it by the cell's "
            "capacitance, or give a Recording that states its unit and Cm"
        )
    if rms < low / RMS_FACTOR:
        return (
            f"its RMS current is {rms:.3g} pA/pF, {low / rms:.0f}x below the smallest of the "
            f"training cells ({low:.3g} pA/pF): is it in nA, or A/F, rather than pA/pF?"
        )
    correlation = float(np.corrcoef(x, reference.typical)[0, 1])
    if correlation < MIN_CORRELATION:
        return (
            "it runs opposite to the training cells' average recording (correlation "
            f"{correlation:.2f}): is its sign convention flipped (inward current positive)? "
            "Negate it"
        )
    return None


def _rms(observations: np.ndarray) -> np.ndarray:
    return np.sqrt(np.mean(np.square(observations), axis=1))


def summaries_of(estimator: Estimator, observations: np.ndarray) -> np.ndarray:
    """The flow's condition (summary features and predicted positions) of observations (N, L)."""
    with torch.no_grad():
        x = torch.as_tensor(np.atleast_2d(observations), dtype=torch.float32)
        return estimator._network.summary.context(x)[0].numpy().astype(float)


def recording_seed(observation: np.ndarray) -> int:
    """A seed drawn from an observation vector's bytes: the same recording always gets the
    same predictive draws, and different recordings independent ones.
    """
    data = np.ascontiguousarray(observation, dtype=float).tobytes()
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "little") >> 1


def predictive_statistic(posterior: CellPosterior, draws: int = PREDICTIVE_DRAWS) -> float:
    """How badly the posterior reproduces its recording (see :func:`residual_statistic`), from
    ``draws`` predictive simulations seeded by :func:`recording_seed`. Infinite when fewer than
    two draws simulate: the posterior then proposes cells the simulator cannot integrate.
    """
    check = predictive_check(posterior, draws, recording_seed(posterior.observation))
    return residual_statistic(check) if len(check.traces) >= 2 else float("inf")


def residual_statistic(check: PredictiveCheck) -> float:
    """Mean of the :data:`WORST_SEGMENTS` largest per-segment means of squared
    :attr:`~PredictiveCheck.z_scores`: a wrong model shows in the few protocol segments that
    probe what is wrong (a missing IKr in the steps that open it), which a mean over all
    windows dilutes; several segments are less noisy than the single worst one.
    """
    z2 = check.z_scores**2
    per_segment = np.sort([z2[check.segment == k].mean() for k in np.unique(check.segment)])
    return float(per_segment[-WORST_SEGMENTS:].mean())


def misspecification(
    posterior: CellPosterior, alpha: float = ALPHA, predictive: bool = True
) -> Misspecification:
    """The misspecification verdict on a posterior's recording (see the module docstring).

    The summary statistic always, the prior-excess statistic when the reference has it, and
    the posterior-predictive one with ``predictive`` and a predictive reference (it simulates);
    their p-values combined by Bonferroni. The verdict's note says which it rests on.
    """
    alpha = check_number("alpha", alpha, minimum=0.0, inclusive=False)
    estimator = posterior.estimator
    reference = estimator.misspecification_reference()
    summary = summaries_of(estimator, posterior.observation)
    statistic = float(reference.statistic(summary)[0])
    p_values = {"summary": reference.p_value(statistic)}
    missing = []
    excess = None
    if reference.excess is None:
        missing.append("prior-excess: the estimator's reference predates it")
    else:
        excess = float(reference.excess.statistic(summary)[0])
        p_values["prior-excess"] = reference.excess.p_value(excess)
    residual = None
    if not predictive or reference.predictive is None:
        why = "not asked for" if not predictive else "the estimator has no predictive reference"
        missing.append(f"predictive: {why}")
    else:
        residual = predictive_statistic(posterior, reference.predictive.draws)
        p_values["predictive"] = reference.predictive.p_value(residual)
    p_value = bonferroni(*p_values.values())
    names = list(p_values)
    listed = names[0] if len(names) == 1 else f"{', '.join(names[:-1])} and {names[-1]}"
    note = f"{listed} statistic" + ("s, Bonferroni-combined" if len(names) > 1 else " only")
    if missing:
        note += f" (not used: {'; '.join(missing)})"
    flag = p_value < alpha
    beyond = {}
    if flag and excess is not None:  # in distribution, small excesses are regression noise
        prior = estimator.prior
        beyond = reference.excess.beyond(summary, estimator.names, prior.baselines)
    return Misspecification(
        flag=flag,
        p_value=p_value,
        statistic=statistic,
        alpha=alpha,
        summary_p_value=p_values["summary"],
        predictive_p_value=p_values.get("predictive"),
        predictive_statistic=residual,
        note=note,
        excess_p_value=p_values.get("prior-excess"),
        excess_statistic=excess,
        beyond_prior=beyond,
    )


def beyond_prior_text(beyond_prior: dict[str, str]) -> str:
    """A sentence naming the parameters a verdict found pushed outside the prior ("" if none)."""
    pushed = [f"{name} {side}" for name, side in beyond_prior.items()]
    if not pushed:
        return ""
    listed = pushed[0] if len(pushed) == 1 else f"{', '.join(pushed[:-1])} and {pushed[-1]}"
    return f" Its fit pushes {listed} the prior's range."


def bonferroni(*p_values: float) -> float:
    """The p-value of "any of these tests rejects": the smallest times their number, at most
    1. Below ``alpha`` exactly when one of them is below ``alpha / len(p_values)``, so the
    false-alarm rate stays at most ``alpha`` whatever the tests' dependence.
    """
    return min(1.0, len(p_values) * min(p_values))
