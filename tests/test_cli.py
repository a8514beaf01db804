"""The ``sbi-twins`` command line."""

import numpy as np
import pandas as pd

from sbi_twins.cli import TRAINING_OPTIONS, build_parser, main


def test_list_shows_bundled_models_and_protocols(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert "kernik2019" in out and "hh1952" in out and "clark2022" in out


def test_demo_fits_an_example_cell_with_the_bundled_estimator(tmp_path, capsys):
    """The main job end to end: the bundled default estimator's posterior of an unseen cell is
    consistent with its true parameters (about 94% of them inside the 94% HDI).
    """
    code = main(["demo", "--samples", "2000", "--twins", "3", "--out", str(tmp_path)])
    assert code == 0
    out = capsys.readouterr().out
    assert "pinned down" in out
    summary = pd.read_csv(tmp_path / "summary.csv", index_col="parameter")
    truth = pd.read_csv(tmp_path / "example_cell_parameters.csv", index_col="parameter")["value"]
    assert len(summary) == len(truth) == 59
    inside = (truth >= summary["hdi_low"]) & (truth <= summary["hdi_high"])
    assert inside.sum() >= 50  # expected 55.5 of 59 for a calibrated posterior, sd 1.8
    assert (summary["contraction"] > 0.5).sum() >= 5  # the recording pins several down
    samples = pd.read_csv(tmp_path / "samples.csv")  # ready to simulate: fixed values too
    assert samples.shape == (2000, 60) and (samples["recording.lowpass_kHz"] == 2.0).all()
    recording = pd.read_csv(tmp_path / "example_cell.csv")
    assert recording.shape == (114_552, 3) and np.isfinite(recording.to_numpy()).all()
    assert (tmp_path / "twins.png").stat().st_size > 20_000
    assert (tmp_path / "posterior.nc").exists()


def test_unknown_model_is_a_clean_error(tmp_path, capsys):
    assert main(["simulate", "-n", "1", "--model", "nope", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "unknown" in err and "kernik2019" in err and "Traceback" not in err


def test_simulate_bad_input_is_a_clean_error(tmp_path, capsys):
    assert main(["simulate", "-n", "0", "--out", str(tmp_path / "ds")]) == 2
    err = capsys.readouterr().err
    assert "n must be an integer >= 1" in err and "Traceback" not in err
    args = ["simulate", "-n", "1", "--out", str(tmp_path), "--prior", "missing_prior"]
    assert main(args) == 2
    assert "unknown prior 'missing_prior'" in capsys.readouterr().err


def test_fit_with_a_missing_estimator_is_a_clean_error(tmp_path, capsys):
    trace = tmp_path / "cell.npy"
    np.save(trace, np.zeros(10))
    assert main(["fit", str(trace), "--estimator", "nope", "--out", str(tmp_path / "o")]) == 2
    assert "unknown estimator 'nope'" in capsys.readouterr().err


def test_train_with_an_unknown_schedule_is_a_clean_error(tmp_path, capsys):
    args = ["train", str(tmp_path / "ds"), "--out", str(tmp_path / "e"), "--lr-schedule", "step"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "--lr-schedule must be one of 'constant', 'cosine', got 'step'" in err


def test_train_with_an_impossible_averaging_decay_is_a_clean_error(tmp_path, capsys):
    args = ["train", str(tmp_path / "ds"), "--out", str(tmp_path / "e"), "--ema-decay", "1.5"]
    assert main(args) == 2
    assert (
        "--ema-decay must be in [0, 1) (0: no weight averaging), got 1.5" in capsys.readouterr().err
    )


def test_train_defaults_are_those_of_training_config():
    # The CLI spells its defaults out (importing the training module would pull in torch for
    # `--help`); this keeps them from drifting apart.
    from sbi_twins.inference import TrainingConfig

    args = build_parser().parse_args(["train", "ds", "--out", "e"])
    for field in TRAINING_OPTIONS:
        assert getattr(args, field) == getattr(TrainingConfig, field), field


def test_train_validates_every_setting_before_touching_the_dataset(tmp_path, capsys):
    args = ["train", str(tmp_path / "ds"), "--out", str(tmp_path / "e"), "--batch-size", "0"]
    assert main(args) == 2
    assert "--batch-size must be an integer >= 1, got 0" in capsys.readouterr().err
    assert not (tmp_path / "e").exists()


def test_an_unexpected_error_is_one_line_and_debug_shows_the_traceback(monkeypatch, capsys):
    import pytest

    from sbi_twins import cli

    def broken(args):
        raise KeyError("boom")

    monkeypatch.setattr(cli, "_list", broken)
    assert main(["list"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "KeyError: 'boom' (unexpected: please report it" in err
    with pytest.raises(KeyError, match="boom"):
        main(["--debug", "list"])
