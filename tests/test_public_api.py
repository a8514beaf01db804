"""The public API contract of DESIGN.md, run as a user would: names, call shapes and return
shapes. Lines of the contract that belong to capabilities not built yet (recordings from files,
drugs and screens, diagnostics) join this test with them.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import sbi_twins as st


@pytest.fixture(scope="module")
def model():
    return st.load_model("kernik2019")


def test_models_protocols_and_simulations(model):
    assert isinstance(model.parameter_names, tuple) and all(
        isinstance(n, str) and "." in n for n in model.parameter_names
    )
    assert model.default_parameters.shape == (len(model.parameter_names),)
    proto = st.load_protocol("clark2022")
    assert isinstance(proto.duration_ms, float)
    times = proto.times(0.1)
    assert times[0] == 0 and times.shape == (round(proto.duration_ms / 0.1) + 1,)
    assert proto.voltage(times).shape == times.shape

    current = model.simulate_vc(proto, params=None, sample_interval_ms=0.1)
    assert current.shape == (1, times.size)
    voltage = model.simulate_ap(
        params=None, duration_ms=2_000, sample_interval_ms=0.5, cycle_length_ms=None
    )
    assert voltage.shape == (1, 4001)


def test_params_as_mappings_and_frames_and_unknown_names(model):
    proto = st.load_protocol("kernik_steps")
    by_mapping = model.simulate_vc(proto, {"ina.g_Na": [9.7, 12.0]}, sample_interval_ms=0.5)
    by_frame = model.simulate_vc(
        proto, pd.DataFrame({"ina.g_Na": [9.7, 12.0]}), sample_interval_ms=0.5
    )
    np.testing.assert_array_equal(by_mapping, by_frame)
    assert by_mapping.shape[0] == 2
    with pytest.raises(ValueError, match="unknown parameter.*Valid names are"):
        model.simulate_vc(proto, {"ina.gNa": [1.0]}, sample_interval_ms=0.5)


def test_prior_draws_feed_every_simulator_unchanged(model):
    """The natural pipeline: a prior's draws (recording columns and fixed values included)
    go straight into the cell simulations and the recording simulator.
    """
    prior = st.load_prior("kernik2019_pm40")
    assert isinstance(prior.names, tuple)
    theta = prior.sample(3, seed=0)
    assert isinstance(theta, pd.DataFrame) and len(theta) == 3
    assert any(c.startswith("recording.") for c in theta.columns)
    proto = st.load_protocol("kernik_steps")
    ideal = model.simulate_vc(proto, theta, sample_interval_ms=0.1)
    cells_only = theta[list(prior.model_names)]
    np.testing.assert_array_equal(ideal, model.simulate_vc(proto, cells_only, 0.1))
    voltage = model.simulate_ap(theta, duration_ms=1_000)
    assert voltage.shape == (3, 2001)
    recorded = st.simulate_recordings(model, proto, theta, seeds=range(3), sample_interval_ms=0.1)
    assert recorded.shape == ideal.shape
    assert not np.allclose(recorded, ideal)  # the recording model acts: Rs, leak, noise...


def test_a_fixed_prior_value_is_simulated(model, tmp_path):
    """A fixed entry of a prior file reaches the simulation without any extra step."""
    path = tmp_path / "fixed.toml"
    path.write_text(
        'model = "kernik2019"\n'
        '[[parameter]]\nname = "ina.g_Na"\ndistribution = "uniform"\nlow = 0.9\nhigh = 1.1\n'
        '[[parameter]]\nname = "ikr.g_Kr"\ndistribution = "fixed"\nvalue = 0.0\n'
    )
    theta = st.load_prior(path).sample(2, seed=1)
    proto = st.load_protocol("kernik_steps")
    blocked = model.simulate_vc(proto, theta, sample_interval_ms=0.5)
    default_kr = theta.assign(**{"ikr.g_Kr": model.default_parameters[
        model.parameter_names.index("ikr.g_Kr")
    ]})
    assert not np.allclose(blocked, model.simulate_vc(proto, default_kr, 0.5))


def test_datasets(tmp_path):
    spec = st.DatasetSpec(protocol="kernik_steps", chunk_size=8)
    st.simulate_dataset(tmp_path / "ds", 2, spec, workers=1, progress=False)
    ds = st.open_dataset(tmp_path / "ds")
    assert len(ds) == 2
    assert isinstance(ds.parameters, pd.DataFrame) and ds.parameters.shape[0] == 2
    assert ds.observations.shape[0] == 2 and ds.observations[0].ndim == 1


def test_estimators_and_posteriors():
    est = st.load_estimator("default")
    assert isinstance(est.protocol, st.Protocol) and est.sample_interval_ms == 0.1
    theta, traces = est.simulate_cells(1, seed=0)
    assert traces.shape == (1, est.protocol.times(est.sample_interval_ms).size)
    post = est.fit(traces[0])
    assert isinstance(post, st.CellPosterior)
    draws = post.sample(1000, seed=0)
    assert isinstance(draws, pd.DataFrame) and len(draws) == 1000
    assert set(est.names) <= set(draws.columns)
    summary = post.summary()
    assert list(summary.columns) == ["mean", "sd", "hdi_low", "hdi_high", "contraction"]
    idata = post.to_inference_data(200)
    assert "posterior" in idata.groups()


def test_recordings_diagnostics_and_checks(tmp_path):
    from conftest import DATA

    est = st.load_estimator(DATA / "format2_bundle")
    theta, traces = est.simulate_cells(2, seed=0)
    times = est.protocol.times(est.sample_interval_ms)
    path = tmp_path / "cell.csv"
    table = {"time_ms": times, "command_mV": est.protocol.voltage(times), "I (pA/pF)": traces[0]}
    pd.DataFrame(table).to_csv(path, index=False)
    rec = st.load_recording(path)
    assert isinstance(rec, st.Recording) and rec.signal_unit == "pA/pF"
    assert rec.mode == "voltage_clamp" and rec.sample_interval_ms == pytest.approx(0.1)
    assert rec.command_mV.shape == rec.signal.shape and isinstance(rec.metadata, dict)
    post = est.fit(rec)
    X2 = st.simulate_recordings(est.cell_model(), est.protocol, theta, seeds=range(2))
    assert X2.shape == traces.shape
    diag = st.diagnose(est, n_cells=10, seed=0, n_draws=100)
    assert {"coverage50", "coverage90", "sbc_p", "contraction", "r2"} <= set(diag.table.columns)
    ppc = post.predictive(n=20, seed=0)
    assert ppc.traces.shape[1] == len(est.scheme) and len(ppc.band(0.9)) == 2
    assert isinstance(ppc.residuals, pd.DataFrame)
    mis = post.misspecification()
    assert isinstance(mis.flag, bool) and 0 < mis.p_value <= 1
