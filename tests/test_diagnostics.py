"""Calibration diagnostics: the counting against exact posteriors, and diagnose() end to end."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import DATA
from scipy import stats

from sbi_twins import diagnose, load_estimator
from sbi_twins.diagnostics import (
    coverage_table,
    gaussian_hpd_ranks,
    hpd_ranks,
    marginal_ranks,
    tarp_ranks,
    uniformity_p_value,
)

RHO = 0.95  # prior correlation; the exact posterior below is correlated 0.91


def _problem(n_cells=400, n_draws=1000, seed=0):
    """A conjugate problem with a known, strongly correlated posterior N(m, C) in 2-D.

    Prior N(0, P), one observation x = theta + noise, noise N(0, R); the posterior covariance
    C = (P^-1 + R^-1)^-1 and mean C R^-1 x are exact, and so is its density.
    """
    rng = np.random.default_rng(seed)
    prior_cov = np.array([[1.0, RHO], [RHO, 1.0]])
    noise_cov = 2.0 * np.eye(2)
    post_cov = np.linalg.inv(np.linalg.inv(prior_cov) + np.linalg.inv(noise_cov))
    truth = rng.multivariate_normal(np.zeros(2), prior_cov, n_cells)
    x = truth + rng.multivariate_normal(np.zeros(2), noise_cov, n_cells)
    means = x @ np.linalg.inv(noise_cov).T @ post_cov.T
    return rng, truth, means, post_cov, n_draws


def _draws_and_densities(rng, means, draw_cov, density_cov, n_draws):
    draws = means[None] + rng.multivariate_normal(np.zeros(2), draw_cov, (n_draws, len(means)))
    density = stats.multivariate_normal(np.zeros(2), density_cov)
    return draws, density


def test_an_exact_posterior_is_calibrated_marginally_and_jointly():
    rng, truth, means, cov, n_draws = _problem()
    draws, density = _draws_and_densities(rng, means, cov, cov, n_draws)
    ranks = hpd_ranks(density.logpdf(draws - means[None]), density.logpdf(truth - means))
    assert uniformity_p_value(ranks) > 0.01
    table = coverage_table(ranks)
    assert (table["ci_low"] <= table.index).all() and (table.index <= table["ci_high"]).all()
    for d in range(2):
        assert uniformity_p_value(marginal_ranks(draws, truth)[:, d]) > 0.01
    assert uniformity_p_value(gaussian_hpd_ranks(draws, truth)) > 0.01


def test_right_marginals_with_the_wrong_dependence_fail_only_the_joint_test():
    """Draws with the exact marginals but independent coordinates (the posterior's correlation
    0.91 lost): every marginal is calibrated, the joint HPD regions are not.
    """
    rng, truth, means, cov, n_draws = _problem()
    independent = np.diag(np.diag(cov))
    draws, density = _draws_and_densities(rng, means, independent, independent, n_draws)
    for d in range(2):
        assert uniformity_p_value(marginal_ranks(draws, truth)[:, d]) > 0.01
    ranks = hpd_ranks(density.logpdf(draws - means[None]), density.logpdf(truth - means))
    assert uniformity_p_value(ranks) < 1e-4
    half = coverage_table(ranks).loc[0.5]  # the 50 % regions hold the truth too often
    assert not half["ci_low"] <= 0.5 <= half["ci_high"]


def test_an_over_confident_posterior_under_covers():
    rng, truth, means, cov, n_draws = _problem()
    narrow = 0.25 * cov
    draws, density = _draws_and_densities(rng, means, narrow, narrow, n_draws)
    ranks = hpd_ranks(density.logpdf(draws - means[None]), density.logpdf(truth - means))
    assert coverage_table(ranks).loc[0.9, "coverage"] < 0.6


def test_tarp_ranks_are_uniform_for_an_exact_posterior_and_not_for_a_narrow_one():
    rng, truth, means, cov, n_draws = _problem()
    references = rng.multivariate_normal(np.zeros(2), [[1.0, RHO], [RHO, 1.0]], len(truth))
    exact, _ = _draws_and_densities(rng, means, cov, cov, n_draws)
    assert uniformity_p_value(tarp_ranks(exact, truth, references, np.ones(2))) > 0.01
    narrow, _ = _draws_and_densities(rng, means, 0.25 * cov, cov, n_draws)
    assert uniformity_p_value(tarp_ranks(narrow, truth, references, np.ones(2))) < 1e-4


def test_rank_inputs_are_checked():
    with pytest.raises(ValueError, match=r"expected draws \(S, N\) and truths \(N,\)"):
        hpd_ranks(np.zeros((10, 3)), np.zeros(4))


def test_diagnose_an_estimator_on_fresh_cells():
    estimator = load_estimator(DATA / "format2_bundle")
    diag = diagnose(estimator, n_cells=12, seed=5, n_draws=200, batch_size=5)
    table = diag.table
    assert list(table.index) == list(estimator.names)
    for column in ("coverage50", "coverage90", "sbc_p", "contraction", "r2"):
        assert np.isfinite(table[column]).all(), column
    assert ((table["coverage90_low"] <= table["coverage90"])
            & (table["coverage90"] <= table["coverage90_high"])).all()
    assert set(table["identifiability"]) <= {"identified", "weakly", "not"}
    assert diag.hpd_ranks.shape == (12,) and ((0 <= diag.hpd_ranks) & (diag.hpd_ranks <= 1)).all()
    assert list(diag.joint.index)[-2:] == [0.9, 0.95]
    assert list(diag.tarp.index) == list(diag.joint.index) and 0 <= diag.tarp_p <= 1
    again = diagnose(estimator, n_cells=12, seed=5, n_draws=200, batch_size=5)
    np.testing.assert_array_equal(again.hpd_ranks, diag.hpd_ranks)  # seeded
