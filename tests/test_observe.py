"""The recording model: series resistance, leak, offset, noise and filter (sbi_twins.recording)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from conftest import DATA
from scipy import signal

from sbi_twins import Protocol, Segment, load_model, load_protocol
from sbi_twins.recording import IDEAL, recording_table, simulate_recordings
from sbi_twins.recording.artefacts import clamp_matrix

# passive_leak.mmt: I_ion = g (V - E)
G, E = 0.05, -10.0


@pytest.fixture(scope="module")
def passive():
    return load_model(DATA / "passive_leak.mmt")


@pytest.fixture(scope="module")
def step_protocol() -> Protocol:
    return Protocol(
        "step", -80.0, (Segment.step(10, -80), Segment.step(20, 0), Segment.step(10, -80))
    )


def _frame(**recording) -> pd.DataFrame:
    return pd.DataFrame({f"recording.{k}": [v] for k, v in recording.items()})


@pytest.mark.parametrize(
    "rs, cm, alpha", [(10.0, 50.0, 0.0), (20.0, 30.0, 0.8), (30.0, 100.0, 0.5)]
)
def test_membrane_voltage_lags_with_the_rs_cm_time_constant(passive, step_protocol, rs, cm, alpha):
    """Hand-solved: dV/dt = (V_cmd - V)/tau - g (V - E), tau = (1 - alpha) Rs Cm, so after the
    step to 0 mV, V relaxes exponentially with rate 1/tau + g to (V_cmd/tau + g E)/(1/tau + g);
    the recorded current is (V_est - V)/tau with V_est = V_cmd lagged by tau.
    """
    tau = (1 - alpha) * rs * cm * 1e-3
    table = recording_table(_frame(rs_MOhm=rs, cm_pF=cm, rs_compensation=alpha), 1)
    current, v = passive.simulate_vc_artefacts(step_protocol, None, clamp_matrix(table))
    t = step_protocol.times(0.1)
    rate = 1 / tau + G
    v_inf = lambda vc: (vc / tau + G * E) / rate  # noqa: E731
    on = (t >= 10) & (t < 30)
    s = t[on] - 10
    v_exact = v_inf(0.0) + (v_inf(-80.0) - v_inf(0.0)) * np.exp(-rate * s)
    v_est = -80.0 * np.exp(-s / tau)
    np.testing.assert_allclose(v[0, on], v_exact, atol=1e-6)
    np.testing.assert_allclose(current[0, on], (v_est - v_exact) / tau, atol=1e-5)
    # the lag is visible: 1/e of the way after tau_eff = 1/rate
    k = np.searchsorted(s, 1 / rate) if (1 / rate) in s else None
    if k is not None:
        assert (v[0, on][k] - v_inf(0.0)) / (v_inf(-80.0) - v_inf(0.0)) == pytest.approx(np.e**-1)


def test_leak_current_at_a_known_voltage(passive, step_protocol):
    """With no series resistance (the 0.1 us floor of tau) the membrane sits at the command, and
    the seal leak adds
    (V - E_leak) / (R_seal Cm) to the cell's current: at -80 mV with E_leak = 5 mV, R_seal =
    0.5 GOhm and Cm = 40 pF that is -85 / 20 = -4.25 pA/pF.
    """
    frame = _frame(cm_pF=40.0, r_seal_GOhm=0.5, e_leak_mV=5.0)
    recorded = simulate_recordings(passive, step_protocol, frame)[0]
    v = step_protocol.voltage(step_protocol.times(0.1))
    cell = G * (v - E)
    np.testing.assert_allclose(recorded[1:100], cell[1:100] - 4.25, rtol=2e-5)
    np.testing.assert_allclose(recorded[101:300], cell[101:300] + (0 - 5.0) / 20, rtol=2e-5)


def test_ideal_settings_reproduce_the_ideal_clamp(kernik):
    proto = load_protocol("kernik_steps")
    recorded = simulate_recordings(kernik, proto, pd.DataFrame(index=[0]))
    np.testing.assert_array_equal(recorded, kernik.simulate_vc(proto))


def test_offset_shifts_the_membrane_voltage(passive, step_protocol):
    """At steady state V = V_cmd + V_off - tau * I (the voltage escape)."""
    table = recording_table(_frame(rs_MOhm=10.0, cm_pF=20.0, v_offset_mV=3.0), 1)
    _, v = passive.simulate_vc_artefacts(step_protocol, None, clamp_matrix(table))
    tau = 10.0 * 20.0 * 1e-3
    expected = ((0.0 + 3.0) / tau + G * E) / (1 / tau + G)
    assert v[0, np.isclose(step_protocol.times(0.1), 29.9)][0] == pytest.approx(expected, abs=1e-9)


def test_noise_rms_after_the_filter_and_reproducible_seeds(passive):
    proto = Protocol("hold", -80.0, (Segment.step(2000, -80),))
    frame = pd.concat([_frame(noise_pA_per_pF=0.3, lowpass_kHz=2.0)] * 3, ignore_index=True)
    a = simulate_recordings(passive, proto, frame, seeds=np.array([1, 2, 1]))
    clean = passive.simulate_vc(proto)[0]
    residual = a - clean
    assert residual[:, 100:].std(axis=1) == pytest.approx([0.3, 0.3, 0.3], rel=0.05)
    np.testing.assert_array_equal(a[0], a[2])
    assert not np.array_equal(a[0], a[1])
    # band-limited: neighbouring samples are correlated (white noise would give ~0)
    assert np.corrcoef(residual[0, 1:], residual[0, :-1])[0, 1] > 0.5


def test_filter_is_the_4_pole_bessel_without_switch_on_transient(passive, step_protocol):
    recorded = simulate_recordings(passive, step_protocol, _frame(lowpass_kHz=1.0))[0]
    clean = passive.simulate_vc(step_protocol)[0]
    np.testing.assert_allclose(recorded[:95], clean[:95], rtol=1e-12)  # steady start
    sos = signal.bessel(4, 1.0, fs=10.0, norm="mag", output="sos")
    expected = signal.sosfilt(sos, clean, zi=signal.sosfilt_zi(sos) * clean[0])[0]
    np.testing.assert_allclose(recorded, expected, rtol=1e-12)
    assert np.abs(recorded - clean).max() > 1.0  # the 80 mV step is smoothed


@pytest.mark.parametrize(
    "frame, message",
    [
        (_frame(rs_compensation=1.5), "outside its range"),
        (_frame(cm_pF=0.0), "outside its range"),
        (pd.DataFrame({"recording.rs_ohm": [1.0]}), "unknown recording parameter"),
        (_frame(lowpass_kHz=6.0), "Nyquist"),
        (_frame(noise_pA_per_pF=0.1), "seeds are required"),
    ],
)
def test_bad_recording_parameters(passive, step_protocol, frame, message):
    with pytest.raises(ValueError, match=message):
        simulate_recordings(passive, step_protocol, frame)


def test_ideal_table_has_every_artefact_off():
    table = recording_table(None, 2)
    assert list(table.columns) == list(IDEAL)
    np.testing.assert_array_equal(clamp_matrix(table)[:, 1:], 0.0)
