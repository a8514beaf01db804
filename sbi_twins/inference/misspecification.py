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

    @classmethod
    def from_estimator(cls, estimator: Estimator, n_cells: int, seed: int) -> Reference:
        """Summaries of ``n_cells`` fresh cells: half standardise, half calibrate."""
        check_integer("n_cells", n_cells, minimum=20, what="reference cells")
        _, traces = estimator.simulate_cells(n_cells, seed=seed)
        summaries = summaries_of(estimator, estimator.reduce(traces))
        half = n_cells // 2
        mean = summaries[:half].mean(axis=0)
        scale = np.maximum(summaries[:half].std(axis=0), 1e-9)
        standardised = cls(mean, scale, calibration=np.empty(0))
        return replace(standardised, calibration=np.sort(standardised.statistic(summaries[half:])))

    def statistic(self, summaries: np.ndarray) -> np.ndarray:
        """Mean squared z-score of summaries (N, C) -> (N,)."""
        return np.mean(((summaries - self.mean) / self.scale) ** 2, axis=1)

    def p_value(self, statistic: float) -> float:
        """Share of the calibration cells with a statistic at least ``statistic``."""
        larger = self.calibration.size - np.searchsorted(self.calibration, statistic, "left")
        return float((1 + larger) / (1 + self.calibration.size))


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
