"""Tempered flows: one exact density for draws and log_prob; the temperature chosen on cells."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from conftest import DATA

from sbi_twins import load_estimator
from sbi_twins.diagnostics import calibrate_temperature


@pytest.fixture(scope="module")
def estimator():
    return load_estimator(DATA / "format2_bundle")


@pytest.fixture(scope="module")
def observations(estimator):
    return estimator.reduce(estimator.simulate_cells(3, seed=8)[1])


def _noise(estimator, z, x):
    """The flow's base-space image of z (S, B, D) for observations x (B, L)."""
    network = estimator._network
    context, anchor = network.summary.context(torch.as_tensor(x, dtype=torch.float32))
    flow = network.flows[0]
    u = torch.as_tensor(z, dtype=torch.float32) - anchor
    embedded = flow.net._embedding_net(context.expand(u.shape[0], *context.shape))
    noise, logabsdet = flow.net._transform(
        u.reshape(-1, u.shape[-1]), context=embedded.reshape(-1, embedded.shape[-1])
    )
    return noise.reshape(u.shape), logabsdet.reshape(u.shape[:2])


def test_tempered_density_is_the_closed_form_of_the_tempered_base(estimator, observations):
    temperature = 1.3
    tempered = estimator.tempered(temperature)
    x = observations[:2]
    z = estimator.sample_z(x, 400, seed=1)
    with torch.no_grad():
        noise, logabsdet = _noise(estimator, z, x)
        log_q = estimator._network.log_prob(
            torch.as_tensor(z, dtype=torch.float32), torch.as_tensor(x, dtype=torch.float32)
        )
        log_q_t = tempered._network.log_prob(
            torch.as_tensor(z, dtype=torch.float32), torch.as_tensor(x, dtype=torch.float32)
        )
    d = z.shape[-1]
    r2 = (noise.double() ** 2).sum(-1)
    expected = -0.5 * r2 / temperature**2 - d * (
        0.5 * math.log(2 * math.pi) + math.log(temperature)
    )
    np.testing.assert_allclose(log_q_t.numpy(), (expected + logabsdet).numpy(), atol=1e-3)
    np.testing.assert_allclose(
        (log_q_t - log_q).numpy(),
        (0.5 * r2 * (1 - temperature**-2) - d * math.log(temperature)).numpy(),
        atol=1e-3,
    )


def test_tempered_draws_are_temperature_times_standard_noise(estimator, observations):
    x = observations[:1]
    for temperature in (1.0, 1.5):
        z = estimator.tempered(temperature).sample_z(x, 4000, seed=2)
        with torch.no_grad():
            noise, _ = _noise(estimator, z, x)
        assert abs(noise.std().item() - temperature) < 0.05 * temperature


def test_temperature_one_is_the_estimator_as_trained_and_is_saved(
    estimator, observations, tmp_path
):
    x = observations[:1]
    np.testing.assert_array_equal(
        estimator.tempered(1.0).sample_z(x, 50, 3), estimator.sample_z(x, 50, 3)
    )
    tempered = estimator.tempered(1.2, note="by hand")
    again = load_estimator(tempered.save(tmp_path / "tempered.pt"))
    assert again.temperature == 1.2 and again.manifest["calibration"]["note"] == "by hand"
    np.testing.assert_array_equal(again.sample_z(x, 50, 3), tempered.sample_z(x, 50, 3))
    assert estimator.temperature == 1.0  # the original is untouched
    with pytest.raises(ValueError, match="temperature"):
        estimator.tempered(0.0)


def test_calibration_finds_where_the_mean_hpd_rank_is_one_half(estimator):
    fit = calibrate_temperature(
        estimator, n_cells=20, seed=5, n_draws=50, tolerance=0.05, progress=False
    )
    assert "20 fresh cells (seed 5)" in fit.note and 0.8 <= fit.temperature <= 1.4
    trials = fit.trials.set_index("temperature")["mean_rank"] - 0.5
    assert fit.temperature == trials.abs().idxmin()  # the trial nearest calibration
    ends = trials.loc[[0.8, 1.4]]
    if ends.iloc[0] * ends.iloc[1] < 0:  # bracketed: the search went on until close
        assert abs(trials.loc[fit.temperature]) <= 0.005 or len(trials) > 2


def test_calibrate_command_writes_a_tempered_bundle_with_its_reference(tmp_path, capsys):
    from sbi_twins.cli import main

    args = ["calibrate", str(DATA / "format2_bundle"), "--cells", "20", "--draws", "50"]
    args += ["--reference-cells", "40", "--seed", "9", "--quiet"]
    assert main([*args, "--out", str(tmp_path / "tempered.pt")]) == 0
    printed = capsys.readouterr().out
    written = load_estimator(tmp_path / "tempered.pt")
    assert f"temperature {written.temperature:.4f}" in printed
    assert written.manifest["calibration"]["note"].startswith("mean HPD rank 1/2 on 20 fresh")
    assert written.misspecification_reference().source == "40 fresh cells (seed 1000003)"
    assert main([*args, "--out", str(tmp_path)]) == 2
    assert "must name the estimator file to write" in capsys.readouterr().err
