"""Screens in chunks: the same outcomes as one block, resumed from a directory after an
interruption, on worker processes; `sbi-twins screen`; and the errors of a reused directory.
"""

from __future__ import annotations

import json

import matplotlib.image
import numpy as np
import pandas as pd
import pytest
from test_report import _images_and_tables

from sbi_twins import load_prior, screen
from sbi_twins.cli import main
from sbi_twins.twins import screen_run
from sbi_twins.twins.screen import wilson_interval

SHORT = {"settle_ms": 2_000.0, "duration_ms": 4_000.0, "window_ms": 3_000.0}
DOSES = [0, 100, 300]


@pytest.fixture(scope="module")
def twins():
    """Seven ±40 % cells with their recording.* columns, as posterior draws have them."""
    return load_prior("kernik2019_pm40").sample(7, seed=11)


@pytest.fixture(scope="module")
def whole(kernik, twins):
    """The screen as one block, in this process."""
    return screen(kernik, twins, "E-4031", DOSES, **SHORT).outcomes


def _chunked(kernik, twins, out, **options):
    return screen(kernik, twins, "E-4031", DOSES, out=out, chunk_twins=3, **SHORT, **options)


def test_chunks_give_the_outcomes_of_one_block_and_are_written(kernik, twins, whole, tmp_path):
    result = _chunked(kernik, twins, tmp_path / "s")
    pd.testing.assert_frame_equal(result.outcomes, whole)
    assert sorted(p.name for p in (tmp_path / "s" / "chunks").iterdir()) == [
        "00000.csv", "00001.csv", "00002.csv"
    ]
    manifest = json.loads((tmp_path / "s" / "screen.json").read_text())
    assert manifest["doses_nM"] == [0.0, 100.0, 300.0] and manifest["twins"] == 7
    assert manifest["model_sha256"] == kernik.file_hash and manifest["chunk_twins"] == 3
    written = pd.read_csv(tmp_path / "s" / "outcomes.csv")
    np.testing.assert_array_equal(written["APD90"], whole["APD90"])
    assert list(written["outcome"]) == list(whole["outcome"])


def test_an_interrupted_screen_resumes_and_computes_only_what_is_missing(
    kernik, twins, whole, tmp_path, monkeypatch
):
    real, calls = screen_run._screen_chunk, []

    def interrupted_at_the_second_chunk(*args):
        calls.append(args[-1].twins["twin"].iloc[0])
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args)

    monkeypatch.setattr(screen_run, "_screen_chunk", interrupted_at_the_second_chunk)
    with pytest.raises(KeyboardInterrupt):
        _chunked(kernik, twins, tmp_path / "s")
    kept = sorted(p.name for p in (tmp_path / "s" / "chunks").iterdir())
    assert "00000.csv" in kept and "00001.csv" not in kept  # finished chunks are kept
    assert not (tmp_path / "s" / "outcomes.csv").exists()
    calls.clear()
    monkeypatch.setattr(screen_run, "_screen_chunk", lambda *args: calls.append(1) or real(*args))
    resumed = _chunked(kernik, twins, tmp_path / "s")
    assert len(calls) == 3 - len(kept)  # only the missing chunks are screened
    pd.testing.assert_frame_equal(resumed.outcomes, whole)
    calls.clear()
    again = _chunked(kernik, twins, tmp_path / "s")  # finished: nothing to simulate
    assert calls == [] and again.outcomes.equals(resumed.outcomes)


def test_ctrl_c_in_the_first_chunk_stops_the_run_at_once(kernik, twins, tmp_path, monkeypatch):
    calls = []

    def interrupted(*args):
        calls.append(1)
        raise KeyboardInterrupt

    monkeypatch.setattr(screen_run, "_screen_chunk", interrupted)
    with pytest.raises(KeyboardInterrupt):
        _chunked(kernik, twins, tmp_path / "s")
    assert len(calls) == 1  # no further chunk was started in this process


def test_a_rerun_keeps_the_directory_s_chunk_size(kernik, twins, whole, tmp_path):
    _chunked(kernik, twins, tmp_path / "s")  # chunks of 3
    again = screen(kernik, twins, "E-4031", DOSES, out=tmp_path / "s", **SHORT)
    pd.testing.assert_frame_equal(again.outcomes, whole)  # read back in chunks of 3
    with pytest.raises(ValueError, match="chunk_twins: 3 vs 4"):
        screen(kernik, twins, "E-4031", DOSES, out=tmp_path / "s", chunk_twins=4, **SHORT)


def test_worker_processes_give_the_same_outcomes(kernik, twins, whole):
    result = screen(kernik, twins, "E-4031", DOSES, workers=2, chunk_twins=4, **SHORT)
    pd.testing.assert_frame_equal(result.outcomes, whole)


def test_a_dask_cluster_gives_the_same_outcomes(kernik, twins, whole, tmp_path):
    distributed = pytest.importorskip("distributed")
    with distributed.LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
    ) as cluster:
        result = _chunked(kernik, twins, tmp_path / "s", dask_address=cluster.scheduler_address)
    pd.testing.assert_frame_equal(result.outcomes, whole)


def test_a_directory_of_another_screen_or_of_something_else_is_refused(kernik, twins, tmp_path):
    _chunked(kernik, twins, tmp_path / "s")
    with pytest.raises(ValueError, match=r"holds another screen(.|\n)*doses_nM: \[0.0, 100.0, 300"):
        screen(kernik, twins, "E-4031", [0, 100], out=tmp_path / "s", chunk_twins=3, **SHORT)
    with pytest.raises(ValueError, match=r"holds another screen(.|\n)*twins: 7 vs 6"):
        _chunked(kernik, twins.iloc[:6], tmp_path / "s")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="not empty and holds no screen"):
        _chunked(kernik, twins, tmp_path / "other")


@pytest.mark.parametrize(
    ("damage", "why"),
    [
        (lambda t: t.iloc[:3], r"3 rows, expected 9"),
        (lambda t: t.drop(columns="ead"), "no column ead"),
        (lambda t: t.drop(columns="twin"), "no column twin"),
        (lambda t: t.assign(dose_nM=t["dose_nM"].replace(100.0, 5.0)), "other doses"),
        (lambda t: t.assign(twin=t["twin"][::-1].to_numpy()), "other twins than chunk 1"),
    ],
)
def test_a_damaged_chunk_is_named_with_the_cure(kernik, twins, whole, tmp_path, damage, why):
    _chunked(kernik, twins, tmp_path / "s")
    chunk = tmp_path / "s" / "chunks" / "00001.csv"
    damage(pd.read_csv(chunk)).to_csv(chunk, index=False)
    with pytest.raises(ValueError, match=rf"00001.csv is damaged \({why}.*\): delete it"):
        _chunked(kernik, twins, tmp_path / "s")
    chunk.unlink()
    pd.testing.assert_frame_equal(_chunked(kernik, twins, tmp_path / "s").outcomes, whole)


def test_twin_ids_that_look_missing_survive_the_chunk_files(kernik, twins, tmp_path):
    named = twins.assign(twin=["NA", "None", "nan", "a", "b", "c", "d"], cell="01")
    first = _chunked(kernik, named, tmp_path / "s").outcomes
    again = _chunked(kernik, named, tmp_path / "s").outcomes  # read back from the files
    pd.testing.assert_frame_equal(again, first)
    assert list(again["twin"][:3]) == ["NA", "None", "nan"] and set(again["cell"]) == {"01"}


def test_wilson_bounds_are_exact_when_no_or_every_twin_has_it():
    # rounding must not put a bound past the estimate (error bars of length < 0)
    for n in (7, 40, 1000):
        assert wilson_interval(0, n)[0] == 0.0 and wilson_interval(n, n)[1] == 1.0


def test_the_cli_screens_csv_twins_and_pools_two_cells(kernik, twins, tmp_path, capsys):
    first, second = tmp_path / "cellA.csv", tmp_path / "cellB.csv"
    twins.iloc[:4].to_csv(first, index=False)
    twins.iloc[4:].to_csv(second, index=False)
    options = ["--drug", "E-4031", "--doses", "0,100,300", "--model", "kernik2019",
               "--settle-ms", "2000", "--duration-ms", "4000", "--window-ms", "3000", "--quiet"]
    assert main(["screen", str(first), str(second), "--out", str(tmp_path / "s"), *options]) == 0
    out = tmp_path / "s"
    outcomes = pd.read_csv(out / "outcomes.csv")
    assert len(outcomes) == 7 * 3 and set(outcomes["cell"]) == {"cellA", "cellB"}
    per_cell = pd.read_csv(out / "incidence.csv")
    assert len(per_cell) == 2 * 3 and {"p_ead", "p_abnormal", "ead_low"} <= set(per_cell)
    pooled = pd.read_csv(out / "incidence_pooled.csv")
    assert list(pooled["n_cells"]) == [2, 2, 2] and list(pooled["n"]) == [7, 7, 7]
    assert matplotlib.image.imread(out / "screen.png").shape[2] in (3, 4)
    assert "wrote outcomes.csv, incidence.csv, incidence_pooled.csv, screen.png, report.html" in (
        capsys.readouterr().out
    )
    text, images, tables = _images_and_tables(out / "report.html")
    assert len(images) == 1 and "Pooled over 2 cells" in text and "300 nM: abnormal" in text
    incidence, outcome_counts = tables[0], tables[1]
    assert len(incidence) == 2 * 3 and len(outcome_counts) == 3
    assert "E-4031" in text and "ic50_nM" in text  # what produced it


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["{csv}"], "give their model with --model"),
        (["{csv}", "--model", "kernik2019", "--doses", "0,ten"], "--doses must be comma-separated"),
        (["{missing}", "--model", "kernik2019"], "nothing does not exist: give fit directories"),
        (["{csv}", "--model", "kernik2019", "--drug", "aspirin"], "aspirin"),
    ],
)
def test_cli_mistakes_end_in_one_line(twins, tmp_path, capsys, arguments, message):
    csv = tmp_path / "cell.csv"
    twins.to_csv(csv, index=False)
    paths = {"csv": str(csv), "missing": str(tmp_path / "nothing")}
    given = [a.format(**paths) for a in arguments]
    defaults = {"--doses": "0,100", "--drug": "E-4031"}
    for option, value in defaults.items():
        if option not in given:
            given += [option, value]
    assert main(["screen", *given, "--out", str(tmp_path / "s"), "--quiet"]) == 2
    error = capsys.readouterr().err
    assert message in error and error.count("\n") == 1


def test_several_recordings_are_fitted_into_their_own_directories_then_screened(
    tmp_path, capsys
):
    from sbi_twins import load_estimator

    _, traces = load_estimator("default").simulate_cells(2, seed=5)
    for name, trace in zip(("cell1", "cell2"), traces, strict=True):
        np.save(tmp_path / f"{name}.npy", trace)
    (tmp_path / "broken.npy").write_text("not an array")
    fits = tmp_path / "fits"
    recordings = [str(tmp_path / f) for f in ("cell1.npy", "broken.npy", "cell2.npy")]
    fit = ["fit", *recordings, "--estimator", "default", "--out", str(fits), "--samples", "50"]
    assert main(fit) == 2  # one recording could not be fitted: listed, the others are
    out, err = capsys.readouterr()
    assert "fitted 2 of 3 recordings" in out and "not fitted: broken.npy" in out
    assert "broken.npy: not fitted: " in err and sorted(p.name for p in fits.iterdir()) == [
        "cell1", "cell2"
    ]
    assert len(pd.read_csv(fits / "cell1" / "samples.csv")) == 50
    for option in (["--cm", "30"], ["--twins-ap", "5"]):
        assert main([*fit, *option]) == 2
        assert "belongs to one cell" in capsys.readouterr().err
    screen_args = ["screen", str(fits / "cell1"), str(fits / "cell2"), "--drug", "E-4031",
                   "--doses", "0,300", "--out", str(tmp_path / "s"), "--twins-per-cell", "4",
                   "--settle-ms", "2000", "--duration-ms", "4000", "--window-ms", "3000",
                   "--quiet"]
    assert main(screen_args) == 0
    outcomes = pd.read_csv(tmp_path / "s" / "outcomes.csv")
    assert len(outcomes) == 2 * 4 * 2 and set(outcomes["cell"]) == {"cell1", "cell2"}
