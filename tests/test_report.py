"""Reports: posterior-predictive checks, the misspecification flag, and the HTML pages and CLI."""

from __future__ import annotations

import base64
import io
import re

import numpy as np
import pandas as pd
import pytest
from conftest import DATA

from sbi_twins import diagnose, load_estimator, load_recording
from sbi_twins.cli import main
from sbi_twins.report import cell_report, estimator_report
from sbi_twins.report.action_potentials import aligned_window
from sbi_twins.twins import twin_features
from sbi_twins.twins.population import TRACE_FEATURES

#: A current-clamp recording of a beating iPSC-CM (6 APs in 3 s, CL about 480 ms).
BEATING = DATA / "clark_ipsc" / "4_021921_1_Pre-drug_spont_3s.csv.gz"
#: A voltage-clamp recording of the same cell.
CLAMPED = DATA / "clark_ipsc" / "Compensation_rspre_0.csv.gz"


@pytest.fixture(scope="module")
def estimator():
    return load_estimator(DATA / "format2_bundle")


@pytest.fixture(scope="module")
def cells(estimator):
    return estimator.simulate_cells(3, seed=21)


def _images_and_tables(path):
    text = path.read_text()
    images = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', text)
    import matplotlib.image

    for data in images:  # every embedded figure decodes to a real image
        image = matplotlib.image.imread(io.BytesIO(base64.b64decode(data)), format="png")
        assert image.shape[0] > 100 and image.shape[1] > 100
    tables = pd.read_html(io.StringIO(text))
    return text, images, tables


def test_predictive_check_and_misspecification(estimator, cells):
    _, traces = cells
    posterior = estimator.fit(traces[0])
    check = posterior.predictive(50, seed=1)
    assert check.traces.shape == (50 - check.failed, len(estimator.scheme))
    low, high = check.band(0.9)
    assert (low <= high).all() and 0 <= check.coverage(0.9) <= 1
    assert list(check.residuals.index) == list(range(1, len(estimator.protocol.segments) + 1))
    again = posterior.predictive(50, seed=1)
    np.testing.assert_array_equal(again.traces, check.traces)
    verdict = posterior.misspecification()
    assert 0 < verdict.p_value <= 1 and verdict.flag == (verdict.p_value < verdict.alpha)
    # a trace in pA of a 100 pF cell given as pA/pF is far outside what the estimator saw
    wrong = estimator.fit(traces[1] * 100, check_plausibility=False).misspecification()
    assert wrong.flag and wrong.statistic > verdict.statistic


def test_cell_report_is_self_contained(estimator, cells, tmp_path):
    theta, traces = cells
    posterior = estimator.fit(traces[0])
    path = cell_report(posterior, tmp_path, n=500, n_predictive=40, truth=theta.iloc[0])
    text, images, tables = _images_and_tables(path)
    modes = pd.read_csv(tmp_path / "multimodality.csv", index_col="parameter")
    assert list(modes.index) == list(estimator.names)
    # predictive, posterior, correlations (and the multimodal marginals, if any)
    assert len(images) == 3 + modes["multimodal"].any()
    assert "Pinned down by this recording" in text and "misspecification p =" in text
    assert "Multimodal marginals" in text
    summary = [t for t in tables if len(t) == len(estimator.names) and "modes" in t]
    assert summary and (summary[0]["modes"].to_numpy() == modes["n_modes"].to_numpy()).all()
    assert (tmp_path / "posterior.nc").exists() and (tmp_path / "samples.csv").exists()
    # the twins' APs only when asked: the default report stays fast
    assert "spontaneous action potentials" not in text
    assert not (tmp_path / "twins_ap.csv").exists()


def test_cell_report_names_and_draws_multimodal_marginals(estimator, cells, tmp_path):
    _, traces = cells
    posterior = estimator.fit(traces[0])
    # draws with a two-mode g_Kr (multipliers 0.7 and 1.25 of the prior's 0.6-1.4), passed as
    # the saved draws the report lays out
    samples = estimator.prior.sample(3000, seed=3)
    baseline = estimator.prior.baselines[list(estimator.names).index("ikr.g_Kr")]
    rng = np.random.default_rng(4)
    samples["ikr.g_Kr"] = baseline * np.where(
        rng.random(len(samples)) < 0.35, rng.normal(0.7, 0.02, 3000), rng.normal(1.25, 0.03, 3000)
    )
    summary = posterior.summary(500, seed=0)
    path = cell_report(posterior, tmp_path, n=3000, n_predictive=20, saved=(samples, summary))
    text, images, _ = _images_and_tables(path)
    assert len(images) == 4  # predictive, posterior, multimodal marginals, correlations
    assert "Several separate modes" in text and "1 parameter:" in text
    found = re.search(r"ikr.g_Kr has 2 modes, near ([0-9.]+) \((\d+)% of draws\) and "
                      r"([0-9.]+) \((\d+)% of draws\)", text)
    assert found, "the modes of ikr.g_Kr in plain language"
    low, low_share, high, high_share = (float(g) for g in found.groups())
    assert low == pytest.approx(0.7 * baseline, rel=0.02)
    assert high == pytest.approx(1.25 * baseline, rel=0.02)
    assert low_share + high_share == 100 and abs(low_share - 35) <= 3  # 35 % of 3000 drawn
    modes = pd.read_csv(tmp_path / "multimodality.csv", index_col="parameter")
    assert modes["multimodal"].tolist() == [name == "ikr.g_Kr" for name in modes.index]


def test_cell_report_with_twins_aps_against_a_recorded_ap(estimator, cells, tmp_path):
    _, traces = cells
    posterior = estimator.fit(traces[1])
    recording = load_recording(BEATING, channel="Voltage (V)")
    path = cell_report(posterior, tmp_path, n=300, n_predictive=20, twins_ap=6,
                       recorded_ap=recording)
    text, images, tables = _images_and_tables(path)
    modes = pd.read_csv(tmp_path / "multimodality.csv", index_col="parameter")
    assert len(images) == 4 + modes["multimodal"].any()  # + the twins' APs
    assert "Twins&#x27; spontaneous action potentials" in text
    assert f"Recorded AP {BEATING.name}: 6 upstrokes in 3 s" in text
    assert "The recorded AP (" in text  # the comparison in words, also among the findings
    # every twin's features, as the twins layer measures them after the same settling
    features = pd.read_csv(tmp_path / "twins_ap.csv")
    assert list(features.columns) == ["twin", *TRACE_FEATURES]
    assert features["twin"].tolist() == list(range(6))
    samples = pd.read_csv(tmp_path / "samples.csv")
    expected = twin_features(estimator.cell_model(), estimator.prior.with_fixed(samples.head(6)))
    np.testing.assert_allclose(features[list(TRACE_FEATURES)], expected[list(TRACE_FEATURES)])
    # the table: medians and 90 % ranges over the twins, the recording's values and verdicts
    table = next(t for t in tables if "verdict" in t)
    table = table.set_index(table.columns[0])
    assert list(table.index) == ["CL", "APD50", "APD90", "MDP", "peak"]
    beat = features["CL"].notna()
    assert (table["twins"] == beat.sum()).all()
    assert table.loc["CL", "median"] == pytest.approx(features.loc[beat, "CL"].median(), rel=1e-3)
    assert table.loc["CL", "recorded"] == pytest.approx(481, abs=10)  # the fixture's CL
    for _, row in table.iterrows():
        inside = row["low"] <= row["recorded"] <= row["high"]
        assert row["verdict"] == ("inside" if inside else
                                  "below" if row["recorded"] < row["low"] else "above")


def test_cell_report_refuses_wrong_twins_ap_requests(estimator, cells, tmp_path):
    _, traces = cells
    posterior = estimator.fit(traces[0])
    clamped = load_recording(CLAMPED, channel="Current (pA/pF)")
    with pytest.raises(ValueError, match="current-clamp"):
        cell_report(posterior, tmp_path, n=100, recorded_ap=clamped)
    with pytest.raises(ValueError, match="twins_ap must be an integer >= 1"):
        cell_report(posterior, tmp_path, n=100, twins_ap=0)
    with pytest.raises(ValueError, match="cannot exceed the posterior draws"):
        cell_report(posterior, tmp_path, n=100, twins_ap=101)
    assert not any(tmp_path.iterdir())  # refused before anything was written


def test_aligned_window_starts_before_the_chosen_upstroke():
    dt = 0.5
    t = np.arange(0, 5000, dt)
    v = np.where((t % 1000) >= 900, 20.0, -80.0)  # upstrokes at 900, 1900, ... 4900 ms
    stretch, upstroke = aligned_window(v, dt, 2000, 100, last=True)
    assert upstroke == pytest.approx(2900, abs=1)  # the last one with 2 s to follow
    assert stretch.size == 4000 and stretch[199] == -80 and stretch[201] == 20
    stretch, upstroke = aligned_window(v, dt, 2000, 100, last=False)
    assert upstroke == pytest.approx(900, abs=1)
    stretch, upstroke = aligned_window(np.full(1000, -60.0), dt, 100, 10, last=True)
    assert upstroke is None and stretch.size == 200  # no beat: the end of the trace


def test_estimator_report(estimator, tmp_path):
    diagnostics = diagnose(estimator, n_cells=15, seed=2, n_draws=100)
    path = estimator_report(estimator, diagnostics, tmp_path)
    text, images, tables = _images_and_tables(path)
    assert len(images) == 1 and "Joint calibration" in text
    table = pd.read_csv(tmp_path / "diagnostics.csv", index_col="parameter")
    assert list(table.index) == list(estimator.names)
    assert any(len(t) == len(estimator.names) for t in tables)


def test_fit_and_report_from_the_command_line(estimator, cells, tmp_path, capsys):
    _, traces = cells
    times = estimator.protocol.times(estimator.sample_interval_ms)
    csv = tmp_path / "cell.csv"
    command = estimator.protocol.voltage(times)
    table = {"time_ms": times, "command_mV": command, "I (pA)": traces[2] * 20}
    pd.DataFrame(table).to_csv(csv, index=False)
    out = tmp_path / "fit"
    args = ["fit", str(csv), "--estimator", str(estimator.path), "--out", str(out), "--cm", "20"]
    assert main([*args, "--samples", "300", "--twins-ap", "3"]) == 2
    assert "add --report" in capsys.readouterr().err
    ap = ["--ap", str(BEATING), "--ap-channel", "Voltage (V)"]
    assert main([*args, "--samples", "300", "--report", "--twins-ap", "3", *ap]) == 0
    printed = capsys.readouterr().out
    assert "divided the current by Cm = 20 pF" in printed and "command checked" in printed
    assert len(pd.read_csv(out / "twins_ap.csv")) == 3
    assert BEATING.name in (out / "report.html").read_text()
    assert main(["report", "cell", str(out), "--out", str(tmp_path / "rep")]) == 0
    _images_and_tables(tmp_path / "rep" / "report.html")
    assert not (tmp_path / "rep" / "twins_ap.csv").exists()
    assert main(["report", "cell", str(tmp_path), "--out", str(tmp_path / "x")]) == 2
    assert "is not a fit directory" in capsys.readouterr().err
    clamped = ["--ap", str(CLAMPED), "--ap-channel", "Current (pA/pF)"]
    assert main(["report", "cell", str(out), "--out", str(tmp_path / "x"), *clamped]) == 2
    assert "current-clamp" in capsys.readouterr().err
    assert main(["report", "estimator", "default", "--out", str(tmp_path / "x"), *ap]) == 2
    assert "belong to a cell's report" in capsys.readouterr().err
