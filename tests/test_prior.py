"""Prior files: the bundled ±40 % prior, sampling, densities, the unbounded space, bad files."""

import csv
import textwrap

import numpy as np
import pytest
import torch
from conftest import DATA
from scipy import stats

from sbi_twins import Prior, load_model, load_prior
from sbi_twins.inference.torch_prior import StandardPrior


@pytest.fixture(scope="module")
def pm40():
    """The cell part of the bundled prior (its recording section is tested separately)."""
    return load_prior("kernik2019_pm40").without_recording()


def _write(tmp_path, body, name="p.toml"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(body))
    return path


def test_bundled_prior_is_the_52_parameter_set_at_model_baselines(pm40):
    with open(DATA / "kernik2019_parameters.csv") as handle:
        rows = [r for r in csv.DictReader(handle) if r["in_52_default"].strip() == "1"]
    assert pm40.names == tuple(r["model_name"] for r in rows)
    model = load_model("kernik2019")
    defaults = dict(zip(model.parameter_names, model.default_parameters, strict=True))
    np.testing.assert_array_equal(pm40.baselines, [defaults[n] for n in pm40.names])
    assert pm40.fixed == {}


def test_samples_are_reproducible_and_inside_the_bounds(pm40):
    a, b = pm40.sample(2000, seed=7), pm40.sample(2000, seed=7)
    assert list(a.columns) == list(pm40.names)
    np.testing.assert_array_equal(a.to_numpy(), b.to_numpy())
    assert not np.array_equal(a.to_numpy(), pm40.sample(2000, seed=8).to_numpy())
    m = a.to_numpy() / pm40.baselines  # multipliers (baselines may be negative)
    assert m.min() >= 0.6 and m.max() <= 1.4
    # uniform multipliers: Kolmogorov-Smirnov against U(0.6, 1.4) for a few columns
    for k in (0, 17, 51):
        assert stats.kstest(m[:, k], stats.uniform(0.6, 0.8).cdf).pvalue > 1e-3


@pytest.mark.parametrize("n", [0, -3, 2.5])
def test_sample_size_must_be_positive_integer(pm40, n):
    with pytest.raises(ValueError, match="n must be an integer >= 1"):
        pm40.sample(n)


def test_unbounded_round_trip_and_extremes_stay_inside(pm40):
    theta = pm40.sample(100, seed=1)
    z = pm40.to_unbounded(theta)
    np.testing.assert_allclose(pm40.from_unbounded(z), theta.to_numpy(), rtol=1e-12)
    extreme = pm40.from_unbounded(np.array([[-1e3] * 52, [-40.0] * 52, [40.0] * 52, [1e3] * 52]))
    assert np.isfinite(pm40.log_prob(extreme)).all()  # on or inside the bounds, never outside


def test_log_prob_is_uniform_inside_and_minus_inf_outside(pm40):
    theta = pm40.sample(10, seed=2).to_numpy()
    expected = -np.log(0.8 * np.abs(pm40.baselines)).sum()
    np.testing.assert_allclose(pm40.log_prob(theta), expected)
    outside = theta.copy()
    outside[3, 5] = pm40.baselines[5] * 1.41
    assert pm40.log_prob(outside)[3] == -np.inf


@pytest.fixture()
def mixed(tmp_path):
    """A prior on the HH model using every distribution."""
    path = _write(
        tmp_path,
        """
        model = "hh1952"
        [[parameter]]
        name = "ina.g_Na"
        distribution = "uniform"
        low = 0.5
        high = 2.0
        [[parameter]]
        name = "ik.g_K"
        distribution = "log_uniform"
        low = 0.1
        high = 10.0
        [[parameter]]
        name = "il.E_L"
        distribution = "log_normal"
        sigma = 0.2
        [[parameter]]
        name = "membrane.Cm"
        distribution = "fixed"
        value = 2.0
        """,
    )
    return load_prior(path)


def test_density_is_the_change_of_variables_of_the_unbounded_density(mixed):
    """Log p(theta) = log p(z) + log |dz/dtheta|, with p(z) the torch distribution."""
    assert mixed.names == ("ina.g_Na", "ik.g_K", "il.E_L") and mixed.fixed == {"membrane.Cm": 2.0}
    theta = mixed.sample(50, seed=3)[list(mixed.names)].to_numpy()
    z = mixed.to_unbounded(theta)
    eps = 1e-7 * np.abs(theta)
    # the map is diagonal, so one central difference per coordinate gives dz_k/dtheta_k
    jac = (mixed.to_unbounded(theta + eps) - mixed.to_unbounded(theta - eps)) / (2 * eps)
    log_pz = StandardPrior(mixed.log_normal).log_prob(torch.as_tensor(z)).numpy()
    expected = log_pz + np.log(np.abs(jac)).sum(1)
    np.testing.assert_allclose(mixed.log_prob(theta), expected, atol=1e-5)


def test_log_uniform_and_log_normal_marginals(mixed):
    m = mixed.sample(20_000, seed=4)[list(mixed.names)].to_numpy() / mixed.baselines
    log_uniform = stats.uniform(np.log(0.1), np.log(100.0))
    assert stats.kstest(np.log(m[:, 1]), log_uniform.cdf).pvalue > 1e-3
    assert stats.kstest(np.log(m[:, 2]) / 0.2, "norm").pvalue > 1e-3


def test_torch_distribution_is_sbi_shaped_and_maps_inside_bounds(pm40):
    dist = StandardPrior(pm40.log_normal)
    torch.manual_seed(0)
    z = dist.sample((500,))
    assert z.shape == (500, 52) and dist.event_shape == (52,)
    assert dist.log_prob(z).shape == (500,)
    assert np.isfinite(pm40.log_prob(pm40.from_unbounded(z.double().numpy()))).all()


def test_content_hash_tracks_the_definition(tmp_path, mixed):
    text = (tmp_path / "p.toml").read_text()
    same = load_prior(_write(tmp_path, "# a comment\n" + text, "q.toml"))
    changed = load_prior(_write(tmp_path, text.replace("sigma = 0.2", "sigma = 0.3"), "r.toml"))
    assert same.content_hash() == mixed.content_hash() != changed.content_hash()


BAD = [
    (
        'name = "ina.gNa"\ndistribution = "uniform"\nlow = 0.5\nhigh = 2.0',
        "no parameter 'ina.gNa'.*ina.g_Na",
    ),
    ('name = "ina.g_Na"\ndistribution = "uniform"\nlow = 2.0\nhigh = 0.5', "bounds inverted"),
    ('name = "ina.g_Na"\ndistribution = "gaussian"', "must be one of uniform, log_uniform"),
    ('name = "ina.g_Na"\ndistribution = "uniform"\nlow = 0.5', r"missing field\(s\) \['high'\]"),
    ('name = "ina.g_Na"\ndistribution = "uniform"\nlow = 0.5\nhigh = 2.0\nhihg = 3', "unknown"),
    ('name = "ina.g_Na"\ndistribution = "log_uniform"\nlow = 0.0\nhigh = 2.0', "0 < low"),
    ('name = "ina.g_Na"\ndistribution = "log_normal"\nsigma = -1', "sigma must be > 0"),
    ('name = "ina.g_Na"\ndistribution = "uniform"\nlow = "a"\nhigh = 2.0', "finite number"),
]


@pytest.mark.parametrize(("entry", "message"), BAD)
def test_bad_parameter_entries(tmp_path, entry, message):
    path = _write(tmp_path, f'model = "hh1952"\n[[parameter]]\n{entry}\n')
    with pytest.raises(ValueError, match=message):
        load_prior(path)


def test_bad_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="kernik2019_pm40"):
        load_prior("no_such_prior")
    with pytest.raises(ValueError, match="invalid TOML"):
        load_prior(_write(tmp_path, "model = \n"))
    with pytest.raises(ValueError, match="missing 'model"):
        load_prior(_write(tmp_path, "[[parameter]]\nname = 'x'\n"))
    entry = '[[parameter]]\nname = "ina.g_Na"\ndistribution = "fixed"\n'
    with pytest.raises(ValueError, match="listed twice"):
        load_prior(_write(tmp_path, f'model = "hh1952"\n{entry}{entry}'))


def test_bundled_recording_section_values_ranges_and_density():
    full = load_prior("kernik2019_pm40")
    assert full.model_names == load_prior("kernik2019_pm40").without_recording().names
    assert "recording.rs_MOhm" in full.recording_names
    assert full.fixed == {"recording.lowpass_kHz": 2.0}
    theta = full.sample(4000, seed=5)
    offsets = theta["recording.v_offset_mV"]
    assert offsets.min() < -4 and offsets.max() > 4  # values, not multipliers: signs both ways
    assert theta["recording.rs_compensation"].between(0, 0.95).all()
    assert np.isfinite(full.log_prob(theta)).all()
    z = full.to_unbounded(theta)
    varying = theta[list(full.names)].to_numpy()
    np.testing.assert_allclose(full.from_unbounded(z), varying, rtol=1e-10, atol=1e-12)
    # draws are ready to simulate: the varying parameters, then the fixed ones
    assert list(theta.columns) == [*full.names, "recording.lowpass_kHz"]
    assert (theta["recording.lowpass_kHz"] == 2.0).all()


def test_moments_are_the_closed_forms(mixed, pm40):
    """Exact prior means and variances against 400,000 draws (uniform, log-uniform, log-normal,
    and the recording section's value-scale entries).
    """
    for prior in (mixed, load_prior("kernik2019_pm40")):
        draws = prior.sample(400_000, seed=11)[list(prior.names)]
        sd = draws.std()
        assert (np.abs(prior.mean() - draws.mean()) < 5 * sd / np.sqrt(len(draws))).all()
        np.testing.assert_allclose(prior.variance(), draws.var(), rtol=0.03)
    full = load_prior("kernik2019_pm40")
    draws = full.sample(400_000, seed=12)[list(full.names)]
    for q in (0.005, 0.5, 0.995):  # negative baselines too (the quantiles swap ends)
        assert (np.abs(full.quantile(q) - draws.quantile(q)) < 0.02 * draws.std()).all()
    # uniform(0.6, 1.4) multiplier of baseline b: variance b^2 0.8^2 / 12
    b = pm40.baselines[list(pm40.names).index("ina.g_Na")]
    assert pm40.variance()["ina.g_Na"] == pytest.approx(b**2 * 0.8**2 / 12, rel=1e-12)


def test_a_record_rebuilds_the_prior_and_an_edited_one_is_refused(pm40):
    record = {"hash": pm40.content_hash(), **pm40.to_dict()}
    rebuilt = Prior.from_dict(record)
    assert rebuilt.content_hash() == pm40.content_hash() and rebuilt.names == pm40.names
    record["parameters"][0]["high"] = 9.0
    with pytest.raises(ValueError, match="does not match its hash"):
        Prior.from_dict(record)
    with pytest.raises(ValueError, match="not a prior record"):
        Prior.from_dict({"model": "kernik2019"})


@pytest.mark.parametrize(
    "entry, message",
    [
        ('name = "rs_Ohm"\ndistribution = "fixed"', "recording model has no parameter"),
        (
            'name = "rs_compensation"\ndistribution = "uniform"\nlow = 0.2\nhigh = 1.5',
            "outside the valid range",
        ),
        ('name = "cm_pF"\ndistribution = "uniform"\nlow = 50\nhigh = 20', "bounds inverted"),
        ('name = "cm_pF"\ndistribution = "fixed"\nbaseline = 3', "no 'baseline'"),
    ],
)
def test_bad_recording_entries(tmp_path, entry, message):
    body = 'model = "hh1952"\n[[parameter]]\nname = "ina.g_Na"\ndistribution = "uniform"\n'
    body += "low = 0.5\nhigh = 2.0\n[[recording]]\n" + entry + "\n"
    with pytest.raises(ValueError, match=message):
        load_prior(_write(tmp_path, body))


def test_unknown_top_level_key(tmp_path):
    body = 'model = "hh1952"\n[[parameter]]\nname = "ina.g_Na"\ndistribution = "fixed"\n'
    body += '[[recordings]]\nname = "cm_pF"\ndistribution = "fixed"\n'
    with pytest.raises(ValueError, match="unknown key.*recordings"):
        load_prior(_write(tmp_path, body))
