"""Multimodal marginals (sbi_twins.diagnostics.multimodality) on draws of known shape."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from sbi_twins import load_prior
from sbi_twins.diagnostics import find_modes, kernel_density, multimodal_parameters
from sbi_twins.diagnostics.multimodality import MODE_COLUMNS, prior_positions


def _mixture(rng, n, means, sds, weights):
    which = rng.choice(len(means), size=n, p=weights)
    return rng.normal(np.asarray(means)[which], np.asarray(sds)[which])


UNIMODAL = {
    "normal": (lambda rng, n: rng.normal(3.0, 2.0, n), None),
    "uniform within its bounds": (lambda rng, n: rng.uniform(0, 1, n), (0.0, 1.0)),
    "skewed (gamma 2)": (lambda rng, n: rng.gamma(2.0, 1.0, n), None),
    "skewed (log-normal)": (lambda rng, n: rng.lognormal(0.0, 0.8, n), None),
    "piled at a bound (beta 1, 5)": (lambda rng, n: rng.beta(1, 5, n), (0.0, 1.0)),
    "heavy tails (t, 3 dof)": (lambda rng, n: rng.standard_t(3, n), None),
    # two components 2 sd apart make one broad mode, not two
    "close mixture": (lambda rng, n: _mixture(rng, n, [-1, 1], [1, 1], [0.5, 0.5]), None),
}


@pytest.mark.parametrize("shape", list(UNIMODAL))
@pytest.mark.parametrize("n", [20, 100, 1000, 10_000])
def test_unimodal_draws_are_not_flagged(shape, n):
    draw, bounds = UNIMODAL[shape]
    rng = np.random.default_rng([n, len(shape)])
    for _ in range(10 if n < 10_000 else 3):
        modes = find_modes(draw(rng, n), bounds=bounds)
        assert modes.n_modes == 1 and not modes.multimodal
        assert modes.weights.tolist() == [1.0] and modes.dips.size == 0


def test_a_two_component_mixture_is_flagged_with_its_modes_in_place():
    rng = np.random.default_rng(0)
    draws = _mixture(rng, 5000, [-2.0, 2.0], [0.5, 0.5], [0.6, 0.4])
    modes = find_modes(draws)
    assert modes.multimodal and modes.n_modes == 2
    np.testing.assert_allclose(modes.locations, [-2.0, 2.0], atol=0.15)
    np.testing.assert_allclose(modes.weights, [0.6, 0.4], atol=0.03)
    assert modes.dips[0] < 0.05  # the density all but vanishes between them
    # unequal widths and weights, three components
    draws = _mixture(rng, 10_000, [0.0, 4.0, 9.0], [0.4, 1.0, 0.6], [0.2, 0.5, 0.3])
    modes = find_modes(draws)
    np.testing.assert_allclose(modes.locations, [0.0, 4.0, 9.0], atol=0.3)
    np.testing.assert_allclose(modes.weights, [0.2, 0.5, 0.3], atol=0.03)


def test_modes_at_the_bounds_of_a_bounded_support():
    rng = np.random.default_rng(1)
    u_shape = rng.beta(0.5, 0.5, 5000)  # piled against both bounds
    modes = find_modes(u_shape, bounds=(0.0, 1.0))
    assert modes.n_modes == 2
    assert modes.locations[0] < 0.03 and modes.locations[1] > 0.97
    # the valley between them is flat: where its lowest point falls (the cut) is noise
    np.testing.assert_allclose(modes.weights, [0.5, 0.5], atol=0.1)
    grid, density, _ = kernel_density(u_shape, bounds=(0.0, 1.0))
    assert grid[0] == pytest.approx(0.0, abs=1e-9) and grid[-1] == pytest.approx(1.0, abs=1e-9)
    assert np.trapezoid(density, grid) == pytest.approx(1.0, abs=0.01)  # reflection keeps mass
    with pytest.raises(ValueError, match="outside the bounds"):
        find_modes(u_shape * 2, bounds=(0.0, 1.0))


def test_the_density_estimate_integrates_to_one_and_uses_silvermans_bandwidth():
    rng = np.random.default_rng(2)
    x = rng.normal(0, 1, 4000)
    grid, density, h = kernel_density(x)
    assert np.trapezoid(density, grid) == pytest.approx(1.0, abs=1e-3)
    iqr = np.subtract(*np.percentile(x, [75, 25]))
    assert h == pytest.approx(0.9 * min(x.std(ddof=1), iqr / 1.34) * x.size**-0.2)
    assert np.diff(grid).max() <= h / 5 + 1e-12
    # close to the normal density itself (the estimate's bias and noise are small here)
    truth = np.exp(-0.5 * grid**2) / np.sqrt(2 * np.pi)
    assert np.abs(density - truth).max() < 0.03


def test_few_draws_count_only_a_glaring_separation():
    rng = np.random.default_rng(3)
    # 60 draws in two tight clusters far apart: two modes; of 30, each cluster holds too few
    # draws to pass the noise test (a mode needs about a dozen, see the module docstring)
    clusters = np.concatenate([rng.normal(0, 0.1, 30), rng.normal(10, 0.1, 30)])
    modes = find_modes(clusters)
    assert modes.n_modes == 2 and modes.weights.tolist() == [0.5, 0.5]
    assert find_modes(clusters[14:44]).n_modes == 1
    # 30 draws of a mixture whose modes 10,000 draws show: too few to tell
    draws = _mixture(rng, 10_000, [-2.0, 2.0], [1.0, 1.0], [0.5, 0.5])
    assert find_modes(draws).n_modes == 2
    assert find_modes(draws[:30]).n_modes == 1
    with pytest.raises(ValueError, match="at least 10 finite draws"):
        find_modes(np.r_[rng.normal(size=9), np.nan, np.inf])
    # every draw equal: one mode there, nothing to smooth
    same = find_modes(np.full(50, 2.5))
    assert same.n_modes == 1 and same.locations[0] == 2.5 and same.bandwidth == 0.0


def test_thresholds_decide_what_counts():
    rng = np.random.default_rng(4)
    small_cluster = _mixture(rng, 10_000, [0.0, 6.0], [1.0, 0.3], [0.97, 0.03])
    assert find_modes(small_cluster).n_modes == 1  # 3 % of the draws: below min_weight
    assert find_modes(small_cluster, min_weight=0.01).n_modes == 2
    # two components 3 sd apart: a dip of about a third, shallower than half
    shallow = _mixture(rng, 10_000, [-1.5, 1.5], [1.0, 1.0], [0.5, 0.5])
    assert find_modes(shallow).n_modes == 1
    assert find_modes(shallow, min_dip=0.2).n_modes == 2
    for bad in ({"min_weight": 0.6}, {"min_dip": 0.0}, {"min_dip": 1.5}, {"z": -1.0}):
        with pytest.raises(ValueError):
            find_modes(shallow, **bad)


def test_multimodal_parameters_of_posterior_like_draws_with_a_prior():
    prior = load_prior("kernik2019_pm40")
    draws = prior.sample(4000, seed=5)  # flat within the prior's range: no parameter flagged
    rng = np.random.default_rng(6)
    name = "ikr.g_Kr"
    baseline = prior.baselines[list(prior.names).index(name)]
    multipliers = _mixture(rng, len(draws), [0.8, 1.2], [0.03, 0.03], [0.3, 0.7])
    draws[name] = baseline * multipliers
    table = multimodal_parameters(draws, prior)
    assert list(table.columns) == list(MODE_COLUMNS)
    assert list(table.index) == list(prior.names) and table.index.name == "parameter"
    assert table.index[table["multimodal"]].tolist() == [name]
    row = table.loc[name]
    assert row["n_modes"] == 2
    np.testing.assert_allclose(row["modes"], [0.8 * baseline, 1.2 * baseline], rtol=0.02)
    np.testing.assert_allclose(row["positions"], [0.25, 0.75], atol=0.02)  # uniform 0.6-1.4
    np.testing.assert_allclose(row["weights"], [0.3, 0.7], atol=0.02)
    assert row["deepest_dip"] < 0.1 and np.isnan(table["deepest_dip"].drop(name)).all()
    positions = prior_positions(draws, prior)
    assert positions.to_numpy().min() >= 0 and positions.to_numpy().max() <= 1
    # without a prior, in the draws' own units; a subset of the columns
    own = multimodal_parameters(draws, names=[name, "ina.g_Na"])
    assert own["multimodal"].tolist() == [True, False]
    np.testing.assert_allclose(own.loc[name, "modes"], [0.8 * baseline, 1.2 * baseline],
                               rtol=0.02)
    assert own.loc[name, "modes"] == own.loc[name, "positions"]


def test_multimodal_parameters_refuses_what_it_cannot_judge():
    prior = load_prior("kernik2019_pm40")
    draws = prior.sample(100, seed=0)
    with pytest.raises(ValueError, match="no draws of nope"):
        multimodal_parameters(draws, names=["nope"])
    with pytest.raises(ValueError, match="not a varying parameter"):
        multimodal_parameters(draws.assign(extra=1.0), prior, names=["extra"])
    with pytest.raises(ValueError, match="ik1.g_K1: at least 10 finite draws"):
        multimodal_parameters(draws.head(5), prior)
    with pytest.raises(ValueError, match="DataFrame"):
        multimodal_parameters(draws.to_numpy())
    assert isinstance(multimodal_parameters(draws[["ikr.g_Kr"]]), pd.DataFrame)
