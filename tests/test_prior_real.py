"""The priors shipped for real cells (priors/kernik2019_real.toml and its uncompensated variant
kernik2019_real_rs0.toml) against the ±40 % prior, and prior files that `extends` another.
"""

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


def test_uncompensated_prior_extends_the_real_prior_with_compensation_fixed_at_zero(priors):
    _, real = priors
    rs0 = load_prior("kernik2019_real_rs0")
    assert rs0.model == real.model
    assert set(real.names) - set(rs0.names) == {"recording.rs_compensation"}
    assert rs0.fixed["recording.rs_compensation"] == 0.0
    inherited = {p.name: p for p in real.parameters if p.name != "recording.rs_compensation"}
    assert {p.name: p for p in rs0.parameters if p.name in inherited} == inherited
    assert (rs0.sample(50, seed=0)["recording.rs_compensation"] == 0.0).all()


def test_extends_replaces_entries_by_name_and_names_loops_and_model_clashes(tmp_path):
    base = tmp_path / "base.toml"
    base.write_text(
        'model = "kernik2019"\n[[parameter]]\nname = "ina.g_Na"\ndistribution = "uniform"\n'
        'low = 0.5\nhigh = 1.5\n[[parameter]]\nname = "ikr.g_Kr"\ndistribution = "uniform"\n'
        "low = 0.5\nhigh = 1.5\n"
    )
    child = tmp_path / "child.toml"
    child.write_text(
        'extends = "base.toml"\n[[parameter]]\nname = "ikr.g_Kr"\ndistribution = "log_uniform"\n'
        "low = 1\nhigh = 8\n"
    )
    prior = load_prior(child)
    assert prior.names == ("ina.g_Na", "ikr.g_Kr")
    assert prior.parameters[1].distribution == "log_uniform"
    loop = tmp_path / "loop.toml"
    loop.write_text('extends = "loop.toml"\n')
    with pytest.raises(ValueError, match="'extends' loops back to itself"):
        load_prior(loop)
    clash = tmp_path / "clash.toml"
    clash.write_text('extends = "base.toml"\nmodel = "hh1952"\n')
    with pytest.raises(ValueError, match="model 'hh1952' differs from 'kernik2019'"):
        load_prior(clash)
    missing = tmp_path / "missing.toml"
    missing.write_text('extends = "no_such_prior"\n')
    with pytest.raises(FileNotFoundError, match="no_such_prior"):
        load_prior(missing)
