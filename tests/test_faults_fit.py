"""Fitting recordings under faults (issue 20, the F cases and C21/C22): files in the wrong
shape or format, traces in the wrong unit or sign, wrong sample intervals, damaged estimator
files, impossible options. Each test gives `fit` (the command line, as the issue did, or the
API) an input made from a simulated cell the way the issue describes it, and checks the clean
outcome: one line that names the file or argument and the cure, or the right fit.

Cases that are not fixed yet are marked ``xfail(strict=True)`` with where the fix belongs: they
state the required behaviour, and fail loudly (XPASS) once it is there, so the mark is removed.
"""

from __future__ import annotations

import re
import warnings

import numpy as np
import pandas as pd
import pytest
from conftest import DATA

from sbi_twins import load_estimator
from sbi_twins.cli import main
from sbi_twins.inference import ImplausibleRecordingError, MisspecificationWarning

#: Posterior draws of each command-line fit (what is checked is the observation and messages).
DRAWS = "50"


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    """The tiny test estimator (3 parameters, a 520 ms protocol), in a directory of its own
    with its misspecification reference kept, so that each `fit` does not simulate it again.
    """
    estimator = load_estimator(DATA / "format2_bundle")
    reference = estimator.misspecification_reference()
    estimator.manifest["misspecification_reference"] = reference.to_dict()
    folder = tmp_path_factory.mktemp("estimator")
    estimator.save(folder / "estimator.pt")
    return folder


@pytest.fixture(scope="module")
def estimator(bundle):
    return load_estimator(bundle)


@pytest.fixture(scope="module")
def cell(estimator) -> np.ndarray:
    """A simulated cell's recording (pA/pF, on the protocol's 0.1 ms grid)."""
    return estimator.simulate_cells(1, seed=33)[1][0]


@pytest.fixture(scope="module")
def clean(estimator, cell) -> np.ndarray:
    """The observation the estimator sees of the clean cell."""
    return estimator.reduce(cell)


def _fit(capsys, bundle, out, recording, *extra) -> tuple[int, str, np.ndarray | None]:
    """`sbi-twins fit`: exit status, stderr, and the observation it fitted (None on error)."""
    args = ["fit", str(recording), "--estimator", str(bundle), "--samples", DRAWS]
    code = main([*args, "--out", str(out), *extra])
    err = capsys.readouterr().err
    observation = out / "observation.npy"
    return code, err, (np.load(observation) if code == 0 else None)


def _one_error_line(err: str) -> str:
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("sbi-twins fit: error: ")
    return lines[0]


def _table(estimator, trace) -> pd.DataFrame:
    """The table `sbi-twins demo` writes of its example cell (example_cell.csv)."""
    times = estimator.protocol.times(estimator.sample_interval_ms)
    return pd.DataFrame(
        {"time_ms": times, "command_mV": estimator.protocol.voltage(times), "current_pA_pF": trace}
    )


# -- F05, F06: a trace saved as a row or a column ----------------------------------------------


@pytest.mark.parametrize("shape", ["row", "column"], ids=["F05 (1, T)", "F06 (T, 1)"])
def test_a_trace_saved_as_a_row_or_a_column_is_fitted_as_one_trace(
    bundle, cell, clean, tmp_path, capsys, shape
):
    path = tmp_path / "trace.npy"
    np.save(path, cell[None, :] if shape == "row" else cell[:, None])
    code, err, observation = _fit(capsys, bundle, tmp_path / "out", path)
    assert code == 0 and "warning" not in err, err
    np.testing.assert_array_equal(observation, clean)


# -- F08 and other unreadable .npy files --------------------------------------------------------


def _npz(path, cell):
    np.savez(path.with_suffix(".npz"), trace=cell)
    path.with_suffix(".npz").rename(path)


@pytest.mark.parametrize(
    "write, what",
    [
        (lambda path, cell: path.write_bytes(b""), r"is empty \(0 bytes\)"),  # F08
        (lambda path, cell: path.write_bytes(b"\x93NUMPY garbage"), "is not a readable .npy"),
        (_npz, "is an .npz archive"),
        (lambda path, cell: np.save(path, np.array([cell, "x"], dtype=object)), "not a readable"),
        (lambda path, cell: np.save(path, cell.astype(str)), "values, not real numbers"),
        (lambda path, cell: np.save(path, np.stack([cell, cell])), r"shape \(2, \d+\)"),
    ],
    ids=["F08 zero bytes", "bad header", "npz", "pickled objects", "strings", "two traces"],
)
def test_an_unreadable_npy_file_is_named_with_how_to_save_a_trace(
    bundle, cell, tmp_path, capsys, write, what
):
    path = tmp_path / "trace.npy"
    write(path, cell)
    code, err, _ = _fit(capsys, bundle, tmp_path / "out", path)
    line = _one_error_line(err)
    assert code == 2 and str(path) in line and re.search(what, line), line
    assert "numpy.save(path, trace)" in line
    assert not (tmp_path / "out").exists()


# -- F10-F14: CSV files as spreadsheets and locales write them ------------------------------------


def _trailing_empty_column(table, path):
    table.assign(**{"": ""}).to_csv(path, index=False)


@pytest.mark.parametrize(
    "write",
    [
        lambda table, path: table.to_csv(path, index=False),
        lambda table, path: table.to_csv(path, index=False, sep=";"),
        lambda table, path: table.to_csv(path, index=False, sep="\t"),
        _trailing_empty_column,
        lambda table, path: table.to_csv(path, index=False, sep=";", decimal=","),
    ],
    ids=[
        "demo's example_cell.csv",
        "F11 ';' separator",
        "F12 tab-separated",
        "F13 empty trailing column",
        "F14 ';' and decimal commas",
    ],
)
def test_csv_dialects_are_fitted_as_the_trace_they_hold(
    bundle, estimator, cell, clean, tmp_path, capsys, write
):
    path = tmp_path / "cell.csv"
    write(_table(estimator, cell), path)
    code, err, observation = _fit(capsys, bundle, tmp_path / "out", path)
    assert code == 0 and "warning" not in err, err
    np.testing.assert_array_equal(observation, clean)


def test_a_headerless_single_column_says_which_options_read_it_and_then_fits(
    bundle, estimator, cell, clean, tmp_path, capsys
):
    """F10: a bare column of numbers. Its unit and sampling cannot be guessed: the error says
    which two options give them, and with them it is fitted like the trace itself.
    """
    path = tmp_path / "cell.csv"
    _table(estimator, cell).to_csv(path, columns=["current_pA_pF"], index=False, header=False)
    code, err, _ = _fit(capsys, bundle, tmp_path / "a", path)
    line = _one_error_line(err)
    assert code == 2 and f"{path}: line 1 is data, not a header" in line
    assert "--unit and --sample-interval" in line
    code, err, observation = _fit(
        capsys, bundle, tmp_path / "b", path, "--unit", "pA/pF", "--sample-interval", "0.1"
    )
    assert code == 0, err
    np.testing.assert_array_equal(observation, clean)


# -- F17-F22: recordings the estimator was never trained for --------------------------------------


@pytest.mark.parametrize(
    "change, what",
    [
        (lambda x: x * 100, r"is it in pA rather than pA/pF\? Divide it by the cell's capacitance"),
        (lambda x: x * 0.1, r"is it in nA, or A/F, rather than pA/pF\?"),
        (np.zeros_like, "the trace is flat"),
        (np.negative, r"is its sign convention flipped .*Negate it"),
        (lambda x: x * 1e40, "not one the estimator can fit"),
    ],
    ids=["F17 pA (x100)", "F18 nA of 100 pF (x0.1)", "F19 all zero", "F20 sign", "F21 x1e40"],
)
def test_implausible_recordings_are_refused_in_one_line_with_the_way_on(
    bundle, cell, tmp_path, capsys, change, what
):
    path = tmp_path / "trace.npy"
    np.save(path, change(cell))
    code, err, _ = _fit(capsys, bundle, tmp_path / "out", path)
    line = err.strip().splitlines()[-1]
    assert code == 2 and "Traceback" not in err
    assert line.startswith("sbi-twins fit: error: this recording is not one the estimator can")
    assert re.search(what, line) and line.endswith("`sbi-twins fit --no-plausibility-check`)")


def test_an_overflowing_trace_is_described_by_its_size_not_as_inf(bundle, cell, tmp_path, capsys):
    path = tmp_path / "trace.npy"
    np.save(path, cell * 1e40)
    code, err, _ = _fit(capsys, bundle, tmp_path / "out", path)
    line = _one_error_line(err)  # no stray numpy warning before it
    assert code == 2 and not re.search(r"\binf", line), line


def test_an_overflowing_trace_is_refused_without_the_plausibility_check_too(estimator, cell):
    with pytest.raises(ValueError, match="cannot be fitted even without the plausibility check"):
        estimator.fit(cell * 1e40, check_plausibility=False)


def test_a_recording_that_started_late_is_refused_or_flagged(estimator, cell):
    """F22: the recording starts 50 ms into the protocol."""
    late = np.concatenate([cell[500:], np.full(500, cell[-1])])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            posterior = estimator.fit(late)
        except ImplausibleRecordingError:
            return  # refused
    flagged = [w for w in caught if issubclass(w.category, MisspecificationWarning)]
    assert flagged and posterior.misspecification().flag


# -- F24, F27-F30: sample intervals -------------------------------------------------------------


def test_a_declared_interval_that_does_not_match_the_length_is_refused(estimator, cell):
    with pytest.raises(ValueError, match=r"sample.interval.*0\.2.*(samples|long|length)"):
        estimator.fit(cell, sample_interval_ms=0.2)


@pytest.mark.parametrize(
    "interval, what",
    [(0.0, "> 0"), (-0.1, "> 0"), (float("nan"), "finite")],
    ids=["F28 zero", "F29 negative", "F30 nan"],
)
def test_an_impossible_sample_interval_is_named(bundle, cell, tmp_path, capsys, interval, what):
    path = tmp_path / "trace.npy"
    np.save(path, cell)
    code, err, _ = _fit(capsys, bundle, tmp_path / "out", path, "--sample-interval", str(interval))
    line = _one_error_line(err)
    assert code == 2 and re.search(rf"(--sample-interval|sample_interval_ms).*{what}", line)


def test_a_genuine_recording_at_twice_the_interval_is_fitted():
    default = load_estimator("default")
    trace = default.simulate_cells(1, seed=5)[1][0]
    with pytest.warns(UserWarning, match="holding its last sample over the final 0.1 ms"):
        coarse = default.reduce(trace[::2], sample_interval_ms=0.2)  # ends at 11455.0 ms
    fine = default.reduce(trace)
    gap = np.sqrt(np.mean((coarse - fine) ** 2) / np.mean(fine**2))
    assert gap < 0.1  # measured 0.03 when resampled linearly onto the 0.1 ms grid


@pytest.mark.parametrize("interval", [0.3, 0.7])
def test_only_a_length_that_no_recording_at_the_interval_has_is_refused(estimator, cell, interval):
    """A recording at an interval that does not divide the protocol's 520 ms ends short of it
    by less than one interval; one sample more is a trace of another interval.
    """
    times = np.arange(0, estimator.protocol.duration_ms + 1e-9, interval)  # its samples
    grid = estimator.protocol.times(estimator.sample_interval_ms)
    trace = np.interp(times, grid, cell)
    held = estimator.protocol.duration_ms - times[-1]
    with pytest.warns(UserWarning, match=rf"holding its last sample over the final {held:.3g} ms"):
        estimator.reduce(trace, sample_interval_ms=interval)
    with pytest.raises(ValueError, match=rf"sample interval {interval} ms does not match"):
        estimator.reduce(np.append(trace, trace[-1]), sample_interval_ms=interval)


# -- F33, F34, F40: damaged estimator files --------------------------------------------------------


@pytest.mark.parametrize(
    "damage",
    [lambda data: data[: len(data) // 3], lambda data: bytes(range(256)) * 64],
    ids=["F33/F40 truncated", "F34 random bytes"],
)
@pytest.mark.parametrize("given", ["file", "directory"])
def test_a_damaged_estimator_file_is_named_in_one_line(
    bundle, cell, tmp_path, capsys, damage, given
):
    folder = tmp_path / "trained"
    folder.mkdir()
    (folder / "estimator.pt").write_bytes(damage((bundle / "estimator.pt").read_bytes()))
    target = folder if given == "directory" else folder / "estimator.pt"
    np.save(tmp_path / "trace.npy", cell)
    args = ["fit", str(tmp_path / "trace.npy"), "--estimator", str(target)]
    assert main([*args, "--out", str(tmp_path / "out")]) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert f"{folder / 'estimator.pt'} is damaged or not a torch file" in line


def test_a_damaged_estimator_file_error_says_how_to_replace_it(bundle, tmp_path):
    (tmp_path / "estimator.pt").write_bytes((bundle / "estimator.pt").read_bytes()[:5000])
    with pytest.raises(ValueError, match=r"damaged.*(copy|download|reinstall|retrain|restore)"):
        load_estimator(tmp_path)


# -- C21, C22: impossible numbers of draws and twins -------------------------------------------


def test_fit_with_one_draw_is_refused_naming_the_option(bundle, cell, tmp_path, capsys):
    path = tmp_path / "trace.npy"
    np.save(path, cell)
    args = ["fit", str(path), "--estimator", str(bundle), "--samples", "1"]
    code = main([*args, "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2 and re.search(r"--samples.*>= ?\d", _one_error_line(err))


@pytest.mark.parametrize(
    "option, value, message",
    [
        ("--twins", "0", "--twins (twins simulated for the figure) must be an integer >= 1, got 0"),
        ("--samples", "1", "--samples (posterior draws) must be an integer >= 2, got 1"),
        ("--seed", "-1", "--seed (the example cell's seed) must be an integer >= 0, got -1"),
    ],
    ids=["C22 --twins 0", "--samples 1", "--seed -1"],
)
def test_demo_checks_its_options_before_anything_is_simulated_or_written(
    tmp_path, capsys, option, value, message
):
    out = tmp_path / "demo"
    assert main(["demo", "--samples", "200", option, value, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.strip() == f"sbi-twins demo: error: {message}"
    assert not out.exists()


def test_demo_refuses_a_file_as_its_output_folder(tmp_path, capsys):
    out = tmp_path / "results.txt"
    out.write_text("mine")
    assert main(["demo", "--out", str(out)]) == 2
    assert "--out" in capsys.readouterr().err and out.read_text() == "mine"
