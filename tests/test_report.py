"""Reports: posterior-predictive checks, the misspecification flag, and the HTML pages and CLI."""

from __future__ import annotations

import base64
import io
import re

import numpy as np
import pandas as pd
import pytest
from conftest import DATA

from sbi_twins import diagnose, load_estimator
from sbi_twins.cli import main
from sbi_twins.report import cell_report, estimator_report


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
    wrong = estimator.fit(traces[1] * 100).misspecification()
    assert wrong.flag and wrong.statistic > verdict.statistic


def test_cell_report_is_self_contained(estimator, cells, tmp_path):
    theta, traces = cells
    posterior = estimator.fit(traces[0])
    path = cell_report(posterior, tmp_path, n=500, n_predictive=40, truth=theta.iloc[0])
    text, images, tables = _images_and_tables(path)
    assert len(images) == 3  # predictive, posterior, correlations
    assert "Pinned down by this recording" in text and "misspecification p =" in text
    assert any(len(t) == len(estimator.names) for t in tables)  # the summary, one row each
    assert (tmp_path / "posterior.nc").exists() and (tmp_path / "samples.csv").exists()


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
    assert main([*args, "--samples", "300"]) == 0
    printed = capsys.readouterr().out
    assert "divided the current by Cm = 20 pF" in printed and "command checked" in printed
    assert main(["report", "cell", str(out), "--out", str(tmp_path / "rep")]) == 0
    _images_and_tables(tmp_path / "rep" / "report.html")
    assert main(["report", "cell", str(tmp_path), "--out", str(tmp_path / "x")]) == 2
    assert "is not a fit directory" in capsys.readouterr().err
