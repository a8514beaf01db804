"""Diagnostics of a trained estimator on cells it never saw: calibration and identifiability.

:func:`diagnose` fits cells whose true parameters are known (fresh simulations made exactly like
the estimator's training cells, or a test dataset) and reports, per parameter, marginal
calibration, accuracy and identifiability, and for whole parameter sets the expected coverage of
the posterior's highest-density regions (:mod:`sbi_twins.diagnostics.calibration`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from .._util import check_integer
from ..data import Dataset
from ..inference import Estimator
from .calibration import (
    LEVELS,
    central_coverage,
    coverage_interval,
    coverage_table,
    gaussian_hpd_ranks,
    hpd_ranks,
    marginal_ranks,
    tarp_ranks,
    uniformity_p_value,
)

#: Contraction thresholds of the identifiability labels: a parameter is "identified" when the
#: recording removes at least half of its prior variance (on average over cells), "not" when it
#: removes less than a tenth, "weakly" in between.
IDENTIFIED, NOT_IDENTIFIED = 0.5, 0.1


@dataclass
class Diagnostics:
    """What :func:`diagnose` found.

    Attributes
    ----------
    table : pandas.DataFrame
        One row per parameter: ``coverage50`` and ``coverage90`` (central intervals, marginal)
        with Clopper-Pearson 95 % bounds, ``sbc_p`` (KS test of the marginal ranks), mean
        ``contraction``, ``r2`` of the posterior mean, and ``identifiability``.
    joint : pandas.DataFrame
        Expected coverage of the highest-posterior-density regions, by level (joint calibration).
    joint_p : float
        KS p-value of the HPD ranks against uniform.
    hpd_ranks : numpy.ndarray
        (N,) the HPD rank of each cell.
    tarp : pandas.DataFrame
        TARP expected coverage by level (random reference points from the prior; distances in
        prior standard deviations), a test of the joint that needs no density.
    tarp_p : float
        KS p-value of the TARP ranks against uniform.
    gaussian_ranks : numpy.ndarray
        (N,) the HPD rank of each truth under a Gaussian with its posterior's mean and
        covariance: tells whether the defect of a miscalibrated joint lies in the first two
        moments or in the shape beyond them.
    density_gap : numpy.ndarray
        (N,) mean log density of the draws minus that of the truth (nats); for an exact
        posterior its mean over cells is ~0.
    n_cells, n_draws : int
        Cells fitted, posterior draws per cell.
    """

    table: pd.DataFrame
    joint: pd.DataFrame
    joint_p: float
    hpd_ranks: np.ndarray
    tarp: pd.DataFrame
    tarp_p: float
    gaussian_ranks: np.ndarray
    density_gap: np.ndarray
    n_cells: int
    n_draws: int

    def miscalibrated(self, tolerance: float = 0.05) -> list[str]:
        """Parameters whose 50 % or 90 % marginal coverage misses nominal by more than
        ``tolerance``.
        """
        off = (self.table["coverage50"] - 0.5).abs().gt(tolerance) | (
            self.table["coverage90"] - 0.9
        ).abs().gt(tolerance)
        return list(self.table.index[off])


def diagnose(
    estimator: Estimator,
    n_cells: int = 300,
    seed: int = 0,
    *,
    dataset: Dataset | None = None,
    cells: tuple[pd.DataFrame, np.ndarray] | None = None,
    n_draws: int = 1000,
    levels: tuple[float, ...] = LEVELS,
    batch_size: int = 10,
) -> Diagnostics:
    """Calibration and identifiability of an estimator on cells with known parameters.

    Parameters
    ----------
    estimator : Estimator
        The estimator to check.
    n_cells : int
        Cells to fit.
    seed : int
        Seed of the fresh cells (:meth:`Estimator.simulate_cells`) and of the posterior draws.
        Use seeds the training set did not use.
    dataset : Dataset, optional
        Test cells instead of fresh simulations: its first ``n_cells`` cells (it must be made
        like the estimator's training set; checked).
    cells : (pandas.DataFrame, numpy.ndarray), optional
        Test cells as :meth:`Estimator.simulate_cells` returns them (parameters, recorded
        traces), e.g. to check several estimators on the same cells: the first ``n_cells``.
    n_draws : int
        Posterior draws per cell.
    levels : tuple of float
        Credibility levels of the joint coverage table.
    batch_size : int
        Cells per call of the flow.

    Returns
    -------
    Diagnostics
    """
    check_integer("n_cells", n_cells, minimum=2, what="cells")
    check_integer("n_draws", n_draws, minimum=10, what="draws per cell")
    names = list(estimator.names)
    if dataset is None:
        theta, traces = cells or estimator.simulate_cells(n_cells, seed=seed)
        n_cells = min(n_cells, len(theta))
        truth = theta[names].to_numpy()[:n_cells]
        observations = estimator.reduce(traces[:n_cells])
    else:
        estimator.check_dataset(dataset)
        n_cells = min(n_cells, len(dataset))
        truth = dataset.parameters[names].to_numpy()[:n_cells]
        observations = np.asarray(dataset.observations[:n_cells], dtype=float)
    draws, log_draws, log_truth = draws_and_densities(
        estimator, observations, truth, n_draws, seed, batch_size
    )
    ranks = hpd_ranks(log_draws, log_truth)
    references = estimator.prior.sample(n_cells, seed=[seed, 2])[names].to_numpy()
    scale = np.sqrt(estimator.prior_variance.to_numpy())
    tarp = tarp_ranks(draws, truth, references, scale)
    return Diagnostics(
        table=_parameter_table(estimator, draws, truth),
        joint=coverage_table(ranks, levels),
        joint_p=uniformity_p_value(ranks),
        hpd_ranks=ranks,
        tarp=coverage_table(tarp, levels),
        tarp_p=uniformity_p_value(tarp),
        gaussian_ranks=gaussian_hpd_ranks(draws, truth),
        density_gap=log_draws.mean(axis=0) - log_truth,
        n_cells=n_cells,
        n_draws=n_draws,
    )


def draws_and_densities(
    estimator: Estimator,
    observations: np.ndarray,
    truth: np.ndarray,
    n_draws: int,
    seed: int,
    batch_size: int = 10,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Posterior draws of cells with known parameters, and the densities that rank them.

    Parameters
    ----------
    observations : numpy.ndarray
        (N, L) the cells' observation vectors.
    truth : numpy.ndarray
        (N, D) their true parameters, in :attr:`Estimator.names` order.

    Returns
    -------
    draws : numpy.ndarray
        (S, N, D) ``n_draws`` draws per cell; cell ``i`` of batch ``b`` drawn with seed
        ``seed + b * batch_size``.
    log_draws : numpy.ndarray
        (S, N) their posterior log density.
    log_truth : numpy.ndarray
        (N,) the posterior log density of each truth.
    """
    draws, log_draws, log_truth = [], [], []
    for start in range(0, len(observations), batch_size):
        x = observations[start : start + batch_size]
        z = estimator.sample_z(x, n_draws, seed + start)  # (S, B, D)
        theta_draws = estimator.prior.from_unbounded(z.reshape(-1, z.shape[-1])).reshape(z.shape)
        draws.append(theta_draws)
        log_draws.append(estimator.log_prob(theta_draws, x))
        log_truth.append(estimator.log_prob(truth[start : start + batch_size][None], x)[0])
    return (
        np.concatenate(draws, axis=1),
        np.concatenate(log_draws, axis=1),
        np.concatenate(log_truth),
    )


def _parameter_table(estimator: Estimator, draws: np.ndarray, truth: np.ndarray) -> pd.DataFrame:
    n = truth.shape[0]
    columns = {}
    for level in (0.5, 0.9):
        hits = central_coverage(draws, truth, level).sum(axis=0)
        bounds = np.array([coverage_interval(k, n) for k in hits])
        key = f"coverage{round(100 * level)}"
        columns[key] = hits / n
        columns[f"{key}_low"], columns[f"{key}_high"] = bounds[:, 0], bounds[:, 1]
    ranks = marginal_ranks(draws, truth)
    columns["sbc_p"] = [uniformity_p_value(ranks[:, d]) for d in range(truth.shape[1])]
    prior_variance = estimator.prior_variance.to_numpy()
    contraction = 1.0 - draws.var(axis=0, ddof=1).mean(axis=0) / prior_variance
    columns["contraction"] = contraction
    error = ((draws.mean(axis=0) - truth) ** 2).mean(axis=0)
    columns["r2"] = 1.0 - error / truth.var(axis=0)
    columns["identifiability"] = np.where(
        contraction >= IDENTIFIED,
        "identified",
        np.where(contraction >= NOT_IDENTIFIED, "weakly", "not"),
    )
    return pd.DataFrame(columns, index=pd.Index(list(estimator.names), name="parameter"))
