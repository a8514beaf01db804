"""Is a recording one the estimator was trained for? A calibrated misspecification test.

A neural posterior is only trustworthy on recordings like its training cells. The statistic is
the distance of a recording's learned summary (the summary network's features and predicted
parameter positions, the flow's condition) from those of in-distribution recordings: the mean
of its squared z-scores, standardised by one half of a reference set of fresh cells made exactly
like the training cells (:meth:`Estimator.simulate_cells`). The other half calibrates it: the
p-value is the share of those held-out reference cells whose statistic is at least as large
(with the usual +1 correction), so it is uniform for in-distribution recordings and small for
recordings the estimator cannot have seen (a unit mistake, a flat trace, another model...).
How often it flags such recordings is measured by ``benchmarks/misspecification.py``.

Some recordings are not a matter of degree: a flat trace, a current in pA given as pA/pF, a
flipped sign convention. :func:`implausibility` names them from the same reference cells (their
RMS current and their average recording), so that :meth:`Estimator.fit` refuses them with the
fix instead of returning a confident posterior.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import numpy as np
import torch

from .._util import check_integer, check_number

if TYPE_CHECKING:  # annotations only
    from .estimator import Estimator

#: p-value below which a recording is flagged.
ALPHA = 0.01

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
        Share of in-distribution reference cells at least as far from the training summaries.
    statistic : float
        Mean squared z-score of the recording's summary.
    alpha : float
        The level of the flag.
    """

    flag: bool
    p_value: float
    statistic: float
    alpha: float


@dataclass(frozen=True)
class Reference:
    """In-distribution summaries that standardise and calibrate the statistic."""

    mean: np.ndarray
    scale: np.ndarray
    calibration: np.ndarray  # sorted statistics of the held-out half
    typical: np.ndarray  # the average observation vector
    rms_range: tuple[float, float]  # smallest and largest RMS of an observation vector
    source: str

    @classmethod
    def from_cells(cls, summaries: np.ndarray, observations: np.ndarray, source: str) -> Reference:
        """The reference of in-distribution cells: their summaries (N, C) and observation
        vectors (N, L). The first half of the summaries standardises, the second calibrates.
        """
        check_integer("summaries", len(summaries), minimum=20, what="reference cells")
        half = len(summaries) // 2
        mean = summaries[:half].mean(axis=0)
        scale = np.maximum(summaries[:half].std(axis=0), 1e-9)
        rms = _rms(observations)
        standardised = cls(
            mean, scale, np.empty(0), observations.mean(axis=0), (rms.min(), rms.max()), source
        )
        return replace(standardised, calibration=np.sort(standardised.statistic(summaries[half:])))

    @classmethod
    def from_estimator(cls, estimator: Estimator, n_cells: int, seed: int) -> Reference:
        """The reference of ``n_cells`` fresh cells made like the training cells."""
        check_integer("n_cells", n_cells, minimum=20, what="reference cells")
        _, traces = estimator.simulate_cells(n_cells, seed=seed)
        observations = estimator.reduce(traces)
        summaries = summaries_of(estimator, observations)
        return cls.from_cells(summaries, observations, f"{n_cells} fresh cells (seed {seed})")

    def to_dict(self) -> dict:
        """A JSON-able form, kept in an estimator bundle's manifest."""
        arrays = ("mean", "scale", "calibration", "typical")
        return {
            "source": self.source,
            "rms_range": [float(v) for v in self.rms_range],
            **{key: getattr(self, key).tolist() for key in arrays},
        }

    @classmethod
    def from_dict(cls, data: dict) -> Reference:
        """The inverse of :meth:`to_dict`."""
        arrays = {key: np.asarray(data[key], dtype=float) for key in ("mean", "scale", "typical")}
        low, high = data["rms_range"]
        return cls(
            **arrays,
            calibration=np.sort(data["calibration"]),
            rms_range=(float(low), float(high)),
            source=data["source"],
        )

    def statistic(self, summaries: np.ndarray) -> np.ndarray:
        """Mean squared z-score of summaries (N, C) -> (N,)."""
        return np.mean(((summaries - self.mean) / self.scale) ** 2, axis=1)

    def p_value(self, statistic: float) -> float:
        """Share of the calibration cells with a statistic at least ``statistic``."""
        larger = self.calibration.size - np.searchsorted(self.calibration, statistic, "left")
        return float((1 + larger) / (1 + self.calibration.size))


def implausibility(reference: Reference, observation: np.ndarray) -> str | None:
    """What makes an observation vector one no training cell could give, or None.

    Flat (no current recorded), an RMS current :data:`RMS_FACTOR` times outside the reference
    cells' range (a unit mistake), or a recording that runs opposite to the reference cells'
    average (a flipped sign convention). Each answer says how to fix the recording.
    """
    x = np.asarray(observation, dtype=float)
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


def misspecification(
    estimator: Estimator, observation: np.ndarray, alpha: float = ALPHA
) -> Misspecification:
    """The misspecification verdict on one observation vector (see the module docstring)."""
    alpha = check_number("alpha", alpha, minimum=0.0, inclusive=False)
    reference = estimator.misspecification_reference()
    statistic = float(reference.statistic(summaries_of(estimator, observation))[0])
    p_value = reference.p_value(statistic)
    return Misspecification(p_value < alpha, p_value, statistic, alpha)
