"""The ``sbi-twins`` command line."""

import numpy as np

from sbi_twins.cli import main


def test_list_shows_bundled_models_and_protocols(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert "kernik2019" in out and "hh1952" in out and "clark2022" in out


def test_demo_writes_plot_and_traces(tmp_path, capsys):
    code = main(["demo", "--model", "hh1952", "--ap-duration", "100", "--out", str(tmp_path)])
    assert code == 0
    assert (tmp_path / "baseline_cell.png").stat().st_size > 10_000
    with np.load(tmp_path / "baseline_cell.npz") as data:
        assert data["i_ion"].shape == data["t_ms"].shape == (114_552,)
        assert np.isfinite(data["i_ion"]).all()
    assert "APD90" in capsys.readouterr().out


def test_unknown_model_is_a_clean_error(tmp_path, capsys):
    assert main(["demo", "--model", "nope", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "unknown" in err and "kernik2019" in err and "Traceback" not in err


def test_simulate_bad_input_is_a_clean_error(tmp_path, capsys):
    assert main(["simulate", "-n", "0", "--out", str(tmp_path / "ds")]) == 2
    err = capsys.readouterr().err
    assert "n must be a positive integer" in err and "Traceback" not in err
    args = ["simulate", "-n", "1", "--out", str(tmp_path), "--prior", "missing_prior"]
    assert main(args) == 2
    assert "unknown prior 'missing_prior'" in capsys.readouterr().err


def test_fit_with_a_missing_estimator_is_a_clean_error(tmp_path, capsys):
    trace = tmp_path / "cell.npy"
    np.save(trace, np.zeros(10))
    assert main(["fit", str(trace), "--estimator", "nope", "--out", str(tmp_path / "o")]) == 2
    assert "unknown estimator 'nope'" in capsys.readouterr().err
