"""Quality control of recordings (:mod:`sbi_twins.physiology.qc`): synthetic recordings with known
seal leak, noise, drift and rhythm against each rule's threshold, real iPSC-CM recordings, rules
that cannot be checked, the ``sbi-twins qc`` command and the messages of bad input.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from sbi_twins import cli
from sbi_twins.physiology import QC_COLUMNS, QC_RULES, QCRules, qc, recording_ap_features
from sbi_twins.prior import load_prior
from sbi_twins.protocol import load_protocol
from sbi_twins.recording import Recording, load_recording

CLARK = Path(__file__).parent / "data" / "clark_ipsc"
BEATING = CLARK / "4_021921_1_Pre-drug_spont_3s.csv.gz"
QUIESCENT = CLARK / "5_031221_1_Pre-drug_spont_3s.csv.gz"
AP_RULES = [
    "beats_present",
    "cycle_length_cv",
    "alternans",
    "diastolic_potential",
    "peak_potential",
]


def row(table: pd.DataFrame, rule: str) -> pd.Series:
    return table.set_index("rule").loc[rule]


# --------------------------------------------------------------------------- synthetic cells


def voltage_clamp(
    *,
    seal_GOhm: float = 1.0,
    noise_pA_per_pF: float = 0.2,
    drift_pA: float = 0.0,
    cm_pF: float | None = 50.0,
    unit: str = "pA",
    seed: int = 0,
) -> Recording:
    """clark_na_iv at 0.1 ms; the current is a seal leak (E = 0 mV), white noise and a drift
    growing linearly over the recording (no cell: the holding level's current is the leak).
    """
    protocol = load_protocol("clark_na_iv")
    times = protocol.times(0.1)[:-1]
    command = protocol.voltage(times)
    rng = np.random.default_rng(seed)
    current = command / seal_GOhm + drift_pA * times / times[-1]  # mV / GOhm = pA
    current = current + rng.normal(0.0, noise_pA_per_pF * 50.0, times.size)  # 50 pF cell
    if unit == "pA/pF":
        current = current / 50.0
    metadata = {} if cm_pF is None else {"cm_pF": cm_pF}
    return Recording.from_arrays(current, 0.1, unit, command=command, metadata=metadata)


def action_potentials(
    onsets_ms,
    apd_ms,
    *,
    duration_ms: float = 6000.0,
    mdp_mV: float = -70.0,
    peak_mV: float = 30.0,
    noise_mV: float = 0.0,
    interval_ms: float = 0.1,
    seed: int = 0,
) -> Recording:
    """APs that rise in about a millisecond and fall sigmoidally around ``apd`` after onset."""
    t = np.arange(round(duration_ms / interval_ms)) * interval_ms
    shape = np.zeros(t.size)
    for onset, apd in zip(onsets_ms, np.broadcast_to(apd_ms, len(onsets_ms)), strict=True):
        s = t - onset
        after = s >= 0
        falling = 0.5 * (1 - np.tanh((s[after] - apd) / 16.0))  # 1 / (1 + exp((s - apd) / 8))
        shape[after] += (1 - np.exp(-s[after] / 0.5)) * falling
    v = mdp_mV + (peak_mV - mdp_mV) * shape
    v += np.random.default_rng(seed).normal(0.0, noise_mV, t.size)
    return Recording.from_arrays(v, interval_ms, "mV", mode="current_clamp")


REGULAR = np.arange(100.0, 5800.0, 500.0)  # 12 beats, CL 500 ms


def test_the_table_has_one_row_per_rule_in_order():
    table = qc(voltage_clamp())
    assert list(table.columns) == list(QC_COLUMNS)
    assert table["rule"].tolist() == list(QC_RULES)
    assert str(table["passed"].dtype) == "boolean"
    assert table["value"].dtype == float


def test_a_clean_voltage_clamp_recording_passes_with_its_values():
    table = qc(
        voltage_clamp(drift_pA=10.0),
        protocol=load_protocol("clark_na_iv"),
        measured={"r_seal_GOhm": 1.0, "rs_MOhm": 20.0},
    )
    assert table.attrs["passed"] and table.attrs["failed"] == []
    assert table.attrs["summary"] == "pass (7 of 12 rules checked)"
    assert row(table, "holding_current")["value"] == pytest.approx(-80.0, abs=1.0)
    assert row(table, "noise")["value"] == pytest.approx(0.2, rel=0.05)
    # first window 5-400 ms, last 5405-5500 ms: the linear drift between their centres
    assert row(table, "holding_drift")["value"] == pytest.approx(10.0 * 5250 / 5499.9, abs=1.0)
    assert row(table, "command_matches_protocol")["passed"]
    assert table.set_index("rule").loc[AP_RULES, "passed"].isna().all()


@pytest.mark.parametrize(
    ("kwargs", "rule", "reason"),
    [
        ({"noise_pA_per_pF": 0.8}, "noise", "pA/pF RMS is above 0.5 pA/pF RMS"),
        ({"drift_pA": 100.0}, "holding_drift", "more than 50 pA: the seal or the cell is not"),
        ({"seal_GOhm": 0.25}, "holding_current", "holding current -320 pA at -80 mV is outside"),
    ],
)
def test_noise_drift_and_leak_beyond_their_thresholds_fail(kwargs, rule, reason):
    table = qc(voltage_clamp(**kwargs))
    assert table.attrs["failed"] == [rule]
    assert reason in row(table, rule)["reason"]
    assert table.attrs["summary"].startswith("fail: ") and reason in table.attrs["summary"]


def test_thresholds_are_configurable():
    recording = voltage_clamp(noise_pA_per_pF=0.8)
    assert not qc(recording).attrs["passed"]
    assert qc(recording, QCRules(max_noise_pA_per_pF=1.0)).attrs["passed"]


def test_a_current_density_without_cm_leaves_the_current_rules_unchecked():
    table = qc(voltage_clamp(unit="pA/pF", cm_pF=None))
    for rule in ("holding_current", "holding_drift"):
        assert pd.isna(row(table, rule)["passed"]) and math.isnan(row(table, rule)["value"])
        assert "measured={'cm_pF': ...}" in row(table, rule)["reason"]
    assert row(table, "noise")["passed"]  # pA/pF needs no conversion
    assert table.attrs["passed"]
    with_cm = qc(voltage_clamp(unit="pA/pF", cm_pF=None), measured={"cm_pF": 50.0})
    assert row(with_cm, "holding_current")["value"] == pytest.approx(-80.0, abs=1.0)


def test_a_command_that_is_not_the_protocol_fails():
    table = qc(voltage_clamp(), protocol=load_protocol("kernik_steps"))
    assert not row(table, "command_matches_protocol")["passed"]
    assert (
        "differs from protocol 'kernik_steps'" in row(table, "command_matches_protocol")["reason"]
    )


def test_without_command_or_protocol_the_holding_rules_are_not_checked():
    recording = dataclasses.replace(voltage_clamp(), command=None)
    table = qc(recording)
    for rule in ("command_matches_protocol", "holding_current", "noise", "holding_drift"):
        assert pd.isna(row(table, rule)["passed"])
    assert "no protocol given and none could be rebuilt" in row(table, "noise")["reason"]
    assert (
        qc(recording, protocol=load_protocol("clark_na_iv"))
        .set_index("rule")
        .loc[["holding_current", "noise", "holding_drift"], "passed"]
        .all()
    )


@pytest.mark.parametrize(
    ("measured", "rule", "reason"),
    [
        ({"r_seal_GOhm": 0.05}, "seal_resistance", "0.05 GΩ is below 0.1 GΩ: the seal leaks"),
        ({"cm_pF": 200.0}, "membrane_capacitance", "outside 10 to 150 pF: probably coupled"),
        ({"cm_pF": 4.0}, "membrane_capacitance", "not a whole cardiomyocyte"),
        ({"rs_MOhm": 65.0}, "series_resistance", "65 MΩ is above 40 MΩ"),
    ],
)
def test_membrane_test_values_beyond_their_thresholds_fail(measured, rule, reason):
    table = qc(voltage_clamp(), measured=measured)
    assert rule in table.attrs["failed"] and reason in row(table, rule)["reason"]


def test_the_series_resistance_limit_follows_the_estimators_prior():
    """65 MΩ fails the default 40 MΩ but lies inside kernik2019_real_rs0's 5-70 MΩ; a prior
    without an Rs range keeps the default, and other thresholds can be overridden too.
    """
    real = QCRules.for_prior(load_prior("kernik2019_real_rs0"))
    assert real.max_rs_MOhm == 70.0
    assert row(qc(voltage_clamp(), real, measured={"rs_MOhm": 65.0}), "series_resistance")["passed"]
    ideal = load_prior("kernik2019_pm40").without_recording()
    assert QCRules.for_prior(ideal).max_rs_MOhm == QCRules().max_rs_MOhm
    assert QCRules.for_prior(ideal, max_noise_pA_per_pF=1.0).max_noise_pA_per_pF == 1.0


def test_missing_membrane_test_values_are_not_checked_not_failed():
    table = qc(voltage_clamp(cm_pF=None))
    for rule in ("seal_resistance", "membrane_capacitance", "series_resistance"):
        assert pd.isna(row(table, rule)["passed"])
        assert row(table, rule)["reason"].startswith("not checked: no ")


# --------------------------------------------------------------------------- action potentials


def test_noisy_aps_are_counted_once_after_the_low_pass_filter():
    recording = action_potentials(REGULAR, 200.0, noise_mV=1.0)
    raw = recording_ap_features(recording, lowpass_kHz=math.inf)
    assert raw["n_beats"].iloc[0] > len(REGULAR)  # noise re-crosses -20 mV on repolarisation
    filtered = recording_ap_features(recording)
    assert filtered["n_beats"].iloc[0] == len(REGULAR)
    assert filtered["CL"].iloc[0] == pytest.approx(500.0, abs=0.5)


def test_regular_aps_pass_every_ap_rule():
    table = qc(action_potentials(REGULAR, 200.0, noise_mV=1.0))
    verdicts = table.set_index("rule").loc[AP_RULES, "passed"]
    assert verdicts.all() and table.attrs["passed"]
    assert row(table, "beats_present")["value"] == len(REGULAR) - 1
    assert row(table, "cycle_length_cv")["value"] < 0.01
    assert row(table, "diastolic_potential")["value"] == pytest.approx(-70.0, abs=2.0)
    assert pd.isna(row(table, "series_resistance")["passed"])  # no current flows through Rs


@pytest.mark.parametrize(
    ("onsets", "apd", "kwargs", "rule", "reason"),
    [
        ([], 200.0, {"mdp_mV": -75.0}, "beats_present", "quiescent: no action potential in 6 s"),
        ([100.0, 2500.0], 200.0, {}, "beats_present", "too few beats: 2 upstroke(s) in 6 s"),
        (np.cumsum([100] + [300, 900] * 5), 150.0, {}, "cycle_length_cv", "irregular rhythm"),
        (REGULAR, [150.0, 250.0] * 6, {}, "alternans", "alternans (more than 10%)"),
        (REGULAR, 200.0, {"mdp_mV": -45.0}, "diastolic_potential", "sign of seal leak"),
        (REGULAR, 200.0, {"peak_mV": -5.0}, "peak_potential", "the APs do not overshoot"),
    ],
)
def test_each_ap_rule_fails_on_its_own_defect(onsets, apd, kwargs, rule, reason):
    table = qc(action_potentials(onsets, apd, noise_mV=0.5, **kwargs))
    assert table.attrs["failed"] == [rule]
    assert reason in row(table, rule)["reason"]


def test_a_quiescent_cell_has_no_rhythm_to_check():
    table = qc(action_potentials([], 200.0, mdp_mV=-75.0))
    for rule in ("cycle_length_cv", "alternans", "peak_potential"):
        assert pd.isna(row(table, rule)["passed"])
    assert row(table, "diastolic_potential")["passed"]
    assert "resting potential" in row(table, "diastolic_potential")["reason"]


# --------------------------------------------------------------------------- real cells


def test_the_real_beating_cell_passes_the_ap_rules():
    recording = load_recording(BEATING, channel="Voltage (V)")
    table = qc(recording, measured={"cm_pF": 72.2, "r_seal_GOhm": 1.2225, "rs_MOhm": 65.0})
    assert table.set_index("rule").loc[AP_RULES, "passed"].all()
    assert table.attrs["passed"]
    features = recording_ap_features(recording).iloc[0]
    assert features["n_beats"] == 6 and features["CL"] == pytest.approx(482, abs=5)
    assert features["MDP"] == pytest.approx(-69, abs=1.5) and features["peak"] > 35


def test_the_real_quiescent_cell_fails_beats_present():
    table = qc(load_recording(QUIESCENT, channel="Voltage (V)"))
    assert not row(table, "beats_present")["passed"]
    assert row(table, "beats_present")["reason"].startswith("quiescent: no action potential")


def test_the_real_voltage_clamp_recording_passes():
    current = load_recording(CLARK / "Compensation_rspre_0.csv.gz", channel="Current (pA/pF)")
    command = load_recording(CLARK / "Compensation_rspre_0.csv.gz", channel="Voltage (V)")
    recording = dataclasses.replace(current, command=command.to_unit("mV").signal)
    table = qc(
        recording,
        protocol=load_protocol("clark_na_iv"),
        measured={"cm_pF": 51.5, "rs_MOhm": 25.0, "r_seal_GOhm": 1.312},
    )
    assert table.attrs["summary"] == "pass (7 of 12 rules checked)"
    assert row(table, "holding_current")["value"] == pytest.approx(-87, abs=2)
    assert row(table, "noise")["value"] == pytest.approx(0.124, abs=0.01)


# --------------------------------------------------------------------------- bad input, CLI


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"min_cm_pF": 200.0}, r"min_cm_pF \(200\) must be below max_cm_pF \(150\)"),
        ({"min_beats": 0}, "min_beats must be an integer >= 1"),
        ({"ap_lowpass_kHz": 0.0}, "ap_lowpass_kHz must be a finite number > 0"),
        ({"max_noise_pA_per_pF": float("nan")}, "max_noise_pA_per_pF must be a finite number"),
    ],
)
def test_invalid_rules_are_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        QCRules(**kwargs)
    assert QCRules(ap_lowpass_kHz=math.inf).ap_lowpass_kHz == math.inf


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: qc(np.zeros(5)), "recording must be a Recording"),
        (lambda: qc(voltage_clamp(), rules={}), "rules must be a QCRules"),
        (lambda: qc(voltage_clamp(), measured={"rseal": 1.0}), r"unknown key\(s\) 'rseal'"),
        (lambda: qc(voltage_clamp(), measured={"cm_pF": -3.0}), "measured cm_pF must be a fin"),
        (
            lambda: recording_ap_features(voltage_clamp()),
            "action-potential features need a current-clamp recording",
        ),
    ],
)
def test_bad_arguments_are_named(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_cli_prints_one_line_per_recording_and_writes_the_table(tmp_path, capsys):
    out = tmp_path / "qc.csv"
    code = cli.main(
        ["qc", str(BEATING), str(QUIESCENT), "--channel", "Voltage (V)", "--out", str(out)]
    )
    lines = capsys.readouterr().out.strip().splitlines()
    assert code == 0
    assert lines[0].startswith(f"{BEATING}: pass")
    assert lines[1].startswith(f"{QUIESCENT}: fail: quiescent: no action potential")
    table = pd.read_csv(out)
    assert len(table) == 2 * len(QC_RULES) and table.columns[0] == "recording"


def test_cli_reports_unreadable_files_and_goes_on(tmp_path, capsys):
    bad = tmp_path / "bad.csv"
    bad.write_text("no,units\n1,2\n3,4\n")
    code = cli.main(["qc", str(bad), str(BEATING), "--channel", "Voltage (V)"])
    captured = capsys.readouterr()
    assert code == 2
    assert f"{BEATING}: pass" in captured.out
    assert f"{bad}: error:" in captured.err and "1 of 2 file(s) could not be read" in captured.err
