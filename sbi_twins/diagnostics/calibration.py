"""Calibration of posteriors against the truths they were fitted to: marginal and joint.

Given, for each of N cells with known parameters, S draws of its posterior and the posterior
log density of the draws and of the truth:

**Marginal** (one parameter at a time)
    * the rank of the truth among the draws (simulation-based calibration, Talts et al. 2018,
      arXiv:1804.06788): uniform on [0, 1] for every parameter when each marginal is exact;
    * the coverage of central intervals: the share of cells whose truth lies between the
      ``(1 - level) / 2`` and ``(1 + level) / 2`` quantiles of its draws.

**Joint** (whole parameter sets, as twins use them)
    * the HPD rank: the share of a cell's draws that are denser than its truth. The truth lies
      in the highest-posterior-density region of mass ``level`` exactly when its HPD rank is
      below ``level``, so the expected coverage of those regions is the share of cells with
      rank < level, and an exact posterior has uniform HPD ranks (Hermans et al. 2022, "A trust
      crisis in simulation-based inference?", TMLR; its expected-coverage test). Marginals
      can all be calibrated while the joint is not: draws that combine individually plausible
      values in ways the data rule out are denser-looking to nobody but the flow, and push the
      truth's rank up (over-confidence).

Coverages come with Clopper-Pearson 95 % intervals over cells; uniformity is tested with the
Kolmogorov-Smirnov test. These functions only count: they take arrays from any posterior.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import stats

#: Credibility levels at which joint coverage is reported by default.
LEVELS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95)


def hpd_ranks(log_prob_draws: np.ndarray, log_prob_truth: np.ndarray) -> np.ndarray:
    """Share of each cell's draws that are denser than its truth.

    Parameters
    ----------
    log_prob_draws : numpy.ndarray
        (S, N) posterior log density of S draws of each of N cells' posteriors.
    log_prob_truth : numpy.ndarray
        (N,) posterior log density of each cell's true parameters.

    Returns
    -------
    numpy.ndarray
        (N,) in [0, 1]; uniform for an exact posterior. Ties count half.
    """
    draws = np.asarray(log_prob_draws, dtype=float)
    truth = np.asarray(log_prob_truth, dtype=float)[None]
    if draws.ndim != 2 or truth.shape[1] != draws.shape[1]:
        raise ValueError(
            f"expected draws (S, N) and truths (N,), got {draws.shape} and {truth.shape[1:]}"
        )
    return ((draws > truth).sum(axis=0) + 0.5 * (draws == truth).sum(axis=0)) / draws.shape[0]


def gaussian_hpd_ranks(draws: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """HPD ranks of the truths under Gaussians with each posterior's mean and covariance.

    For a Gaussian the density falls with the Mahalanobis distance ``d``, and ``d^2`` of a draw
    is chi-squared with D degrees of freedom, so the share of draws denser than the truth is
    ``chi2.cdf(d^2(truth), D)``.

    Parameters
    ----------
    draws : numpy.ndarray
        (S, N, D) posterior draws of N cells (their mean and covariance define the Gaussians).
    truth : numpy.ndarray
        (N, D) true parameters.

    Returns
    -------
    numpy.ndarray
        (N,) in [0, 1].
    """
    draws = np.asarray(draws, dtype=float)
    ranks = np.empty(draws.shape[1])
    for i in range(draws.shape[1]):
        mean = draws[:, i].mean(axis=0)
        covariance = np.cov(draws[:, i], rowvar=False)
        offset = np.asarray(truth[i], dtype=float) - mean
        distance = offset @ np.linalg.solve(covariance, offset)
        ranks[i] = stats.chi2.cdf(distance, draws.shape[2])
    return ranks


def tarp_ranks(
    draws: np.ndarray, truth: np.ndarray, references: np.ndarray, scale: np.ndarray
) -> np.ndarray:
    """TARP ranks (Lemos et al. 2023, "Sampling-based accuracy testing of posterior estimators
    for general inference", ICML): the share of each cell's draws closer to a random reference
    point than its truth is, distances measured in units of ``scale`` per parameter.

    The truth lies in the ball around the reference that holds a share ``level`` of the draws
    exactly when its rank is below ``level``; for an exact posterior the ranks are uniform, for
    any choice of references drawn independently of the truth.

    Parameters
    ----------
    draws : numpy.ndarray
        (S, N, D) posterior draws of N cells.
    truth : numpy.ndarray
        (N, D) true parameters.
    references : numpy.ndarray
        (N, D) one reference point per cell (e.g. a prior draw).
    scale : numpy.ndarray
        (D,) units of the distance (e.g. the prior's standard deviations).

    Returns
    -------
    numpy.ndarray
        (N,) in [0, 1].
    """
    to_draws = np.sqrt((((draws - references[None]) / scale) ** 2).sum(axis=-1))  # (S, N)
    to_truth = np.sqrt((((truth - references) / scale) ** 2).sum(axis=-1))  # (N,)
    return (to_draws < to_truth[None]).mean(axis=0)


def marginal_ranks(draws: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Share of each cell's draws below its truth, per parameter (SBC ranks scaled to [0, 1]).

    Parameters
    ----------
    draws : numpy.ndarray
        (S, N, D) posterior draws of N cells.
    truth : numpy.ndarray
        (N, D) true parameters.

    Returns
    -------
    numpy.ndarray
        (N, D) in [0, 1]; uniform for every parameter when the marginals are exact.
    """
    return (np.asarray(draws) < np.asarray(truth)[None]).mean(axis=0)


def central_coverage(draws: np.ndarray, truth: np.ndarray, level: float) -> np.ndarray:
    """Whether each truth lies in its posterior's central interval of mass ``level``.

    Returns
    -------
    numpy.ndarray
        (N, D) booleans, for draws (S, N, D) and truths (N, D).
    """
    low, high = np.quantile(draws, [(1 - level) / 2, (1 + level) / 2], axis=0)
    return (low <= truth) & (truth <= high)


def coverage_interval(hits: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Clopper-Pearson interval of a coverage observed as ``hits`` of ``n`` cells."""
    interval = stats.binomtest(int(hits), int(n)).proportion_ci(confidence, method="exact")
    return float(interval.low), float(interval.high)


def coverage_table(ranks: np.ndarray, levels: tuple[float, ...] = LEVELS) -> pd.DataFrame:
    """Expected coverage of credible regions from ranks (HPD or marginal ones of one parameter).

    A truth is inside the region of mass ``level`` when its rank is below ``level``.

    Returns
    -------
    pandas.DataFrame
        Indexed by ``level``: ``coverage``, ``ci_low``, ``ci_high`` (Clopper-Pearson 95 %
        over cells) and ``n`` cells.
    """
    ranks = np.asarray(ranks, dtype=float)
    rows = []
    for level in levels:
        hits = int((ranks < level).sum())
        low, high = coverage_interval(hits, ranks.size)
        rows.append((level, hits / ranks.size, low, high, ranks.size))
    table = pd.DataFrame(rows, columns=["level", "coverage", "ci_low", "ci_high", "n"])
    return table.set_index("level")


def uniformity_p_value(ranks: np.ndarray) -> float:
    """Kolmogorov-Smirnov p-value of ranks against the uniform distribution on [0, 1]."""
    return float(stats.kstest(np.asarray(ranks, dtype=float), "uniform").pvalue)
