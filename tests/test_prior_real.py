"""The prior shipped for real cells (priors/kernik2019_real.toml) against the ±40 % prior."""

import numpy as np
import pytest

from sbi_twins import load_prior

#: The only entries of kernik2019_real that differ from kernik2019_pm40:
#: name -> (distribution, low, high); multipliers for model parameters, values for recording ones.
CHANGED = {
    "ikr.g_Kr": ("log_uniform", 1.0, 8.0),
    "ical.tau_f_const": ("uniform", 0.2, 1.0),
    "recording.rs_MOhm": ("uniform", 5.0, 70.0),
}


@pytest.fixture(scope="module")
def priors():
    return load_prior("kernik2019_pm40"), load_prior("kernik2019_real")


def test_real_prior_differs_from_pm40_exactly_in_the_fast_repolarisation_and_rs_ranges(priors):
    pm40, real = priors
    assert real.model == pm40.model
    assert real.names == pm40.names  # same parameters in the same order
    assert real.fixed == pm40.fixed
    before = {p.name: p for p in pm40.parameters}
    after = {p.name: p for p in real.parameters}
    assert {name for name in after if after[name] != before[name]} == set(CHANGED)
    for name, (distribution, low, high) in CHANGED.items():
        entry = after[name]
        assert (entry.distribution, entry.low, entry.high) == (distribution, low, high)
        assert entry.baseline == before[name].baseline


def test_real_prior_samples_inside_its_bounds(priors):
    _, real = priors
    theta = real.sample(2000, seed=3)
    assert list(theta.columns[: len(real.names)]) == list(real.names)
    for p in real.parameters:
        if p.distribution == "fixed":
            assert (theta[p.name] == p.value).all()
            continue
        low, high = p.low * p.baseline, p.high * p.baseline
        lo, hi = min(low, high), max(low, high)
        values = theta[p.name].to_numpy()
        assert np.isfinite(values).all()
        assert ((values >= lo) & (values <= hi)).all(), p.name
    g_kr = theta["ikr.g_Kr"].to_numpy() / real.baselines[real.names.index("ikr.g_Kr")]
    # log-uniform on [1, 8]: half the draws below the geometric middle, sqrt(8)
    assert abs(np.mean(g_kr < np.sqrt(8.0)) - 0.5) < 0.05
    rs = theta["recording.rs_MOhm"].to_numpy()
    assert rs.max() > 60  # reaches the access resistances that pm40 (<= 40 MOhm) cannot
    assert np.isfinite(real.log_prob(theta)).all()
