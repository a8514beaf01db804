"""The bundled estimator for real recordings, ``clark_na_iv``: what it was trained for, a real
recording fitted end to end, and its calibration on fresh simulated cells.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

import sbi_twins as st
from sbi_twins._resources import resolve

DATA = Path(__file__).parent / "data" / "clark_ipsc"
#: Membrane test of the fixture's cell before this trial (README of tests/data/clark_ipsc).
AMPLIFIER_CM_PF, AMPLIFIER_RS_MOHM = 51.5, 25.0


@pytest.fixture(scope="module")
def estimator() -> st.Estimator:
    return st.load_estimator("clark_na_iv")


@pytest.fixture(scope="module")
def recording() -> st.Recording:
    """The real sodium I-V recording, with its command column as the command."""
    path = DATA / "Compensation_rspre_0.csv.gz"
    current = st.load_recording(path, channel="Current (pA/pF)")
    command = st.load_recording(path, channel="Voltage (V)").to_unit("mV").signal
    return dataclasses.replace(current, command=command)


def test_it_is_trained_for_uncompensated_sodium_iv_recordings(estimator):
    assert estimator.protocol.name == "clark_na_iv"
    assert estimator.sample_interval_ms == 0.1
    prior = estimator.prior
    assert prior.fixed["recording.rs_compensation"] == 0.0  # kernik2019_real_rs0
    rs = next(p for p in prior.parameters if p.name == "recording.rs_MOhm")
    assert (rs.low, rs.high) == (5.0, 70.0)
    g_kr = next(p for p in prior.parameters if p.name == "ikr.g_Kr")
    assert (g_kr.distribution, g_kr.low, g_kr.high) == ("log_uniform", 1.0, 8.0)
    assert resolve("clark_na_iv", "estimators", ".pt").stat().st_size <= 25e6


def test_a_real_recording_is_fitted_and_its_clamp_time_constant_matches_the_amplifier(
    estimator, recording
):
    """The recording (in pA/pF, already divided by the amplifier's Cm) fixes the clamp's time
    constant Rs x Cm rather than Rs and Cm apart: its 90 % interval holds the amplifier's
    product and spans less than a factor 2, against the prior's 75-7000 µs. Real cells are
    flagged as unlike the simulated ones (BENCHMARKS.md, "The real-data estimator").
    """
    with pytest.warns(st.inference.MisspecificationWarning, match="unlike every cell"):
        post = estimator.fit(recording)
    assert "command checked against protocol 'clark_na_iv'" in post.preprocessing
    draws = post.sample(2000, seed=0)
    assert np.isfinite(draws.to_numpy()).all()
    tau = draws["recording.rs_MOhm"] * draws["recording.cm_pF"]
    low, high = tau.quantile([0.05, 0.95])
    assert low <= AMPLIFIER_RS_MOHM * AMPLIFIER_CM_PF <= high
    assert high / low < 2.0


def test_fresh_simulated_cells_are_covered_by_their_90_percent_intervals(estimator):
    """20 fresh cells (seed not in the training set) of the estimator's own prior and recording
    model: over the 52 cell and 7 recording parameters, the central 90 % intervals hold the
    truth about 90 % of the time (BENCHMARKS.md has the 300-cell figures).
    """
    theta, observations = estimator.simulate_cells(20, seed=424242)
    inside = []
    for k, post in enumerate(estimator.posteriors(estimator.reduce(observations))):
        draws = post.sample(1000, seed=k)[list(estimator.names)]
        low, high = draws.quantile(0.05), draws.quantile(0.95)
        truth = theta.iloc[k][list(estimator.names)]
        inside.append(((low <= truth) & (truth <= high)).to_numpy())
    coverage = np.mean(inside)
    print(f"pooled 90 % coverage over 20 fresh cells: {coverage:.3f}")
    assert 0.84 <= coverage <= 0.96
