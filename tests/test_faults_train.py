"""Training under faults (issue 20, the T cases and C14/C15/C19): damaged checkpoints, too few
cells, an output directory that holds something else, impossible settings. Each test reproduces
the fault on a tiny problem (3 conductances, a 520 ms protocol, 40 cells, 2 epochs) and checks
the clean outcome: an error naming the file or setting and the cure, with nothing overwritten.

Cases that are not fixed yet are marked ``xfail(strict=True)`` with where the fix belongs: they
state the required behaviour, and fail loudly (XPASS) once it is there, so the mark is removed.
"""

from __future__ import annotations

import shutil
import textwrap

import numpy as np
import pytest

from sbi_twins.cli import main
from sbi_twins.data import DatasetSpec, open_dataset, simulate_dataset
from sbi_twins.inference import TrainingConfig, train_estimator

PRIOR = """
model = "kernik2019"
[[parameter]]
name = "ina.g_Na"
distribution = "uniform"
low = 0.6
high = 1.4
[[parameter]]
name = "ikr.g_Kr"
distribution = "uniform"
low = 0.6
high = 1.4
[[parameter]]
name = "ik1.g_K1"
distribution = "uniform"
low = 0.6
high = 1.4
"""

PROTOCOL = """
name = "{name}"
holding_mV = -80.0
[[segment]]
type = "step"
duration_ms = 50
v_mV = -80
[[segment]]
type = "step"
duration_ms = 20
v_mV = {step_mV}
[[segment]]
type = "step"
duration_ms = 200
v_mV = 20
[[segment]]
type = "step"
duration_ms = 250
v_mV = -40
"""

TINY = TrainingConfig(
    hidden_features=16,
    num_transforms=2,
    num_bins=4,
    channels=(4, 8),
    kernel_size=5,
    pooled=8,
    dense=(16,),
    embedding_hidden=16,
    embedding_dim=8,
    batch_size=16,
    max_epochs=2,
)


@pytest.fixture(scope="module")
def problem(tmp_path_factory):
    """Datasets of 40 cells under two protocols, one of 2 cells, and a finished run on the
    first: the run's directory is copied by the tests that damage it.
    """
    root = tmp_path_factory.mktemp("problem")
    (root / "prior.toml").write_text(textwrap.dedent(PRIOR))
    for name, step in (("steps", -10), ("other_steps", 0)):
        (root / f"{name}.toml").write_text(
            textwrap.dedent(PROTOCOL).format(name=name, step_mV=step)
        )

    def dataset(name, n, protocol):
        spec = DatasetSpec(
            prior=str(root / "prior.toml"),
            protocol=str(root / f"{protocol}.toml"),
            seed=3,
            chunk_size=20,
            viability=None,
        )
        return simulate_dataset(root / name, n, spec, workers=1, progress=False).directory

    paths = {
        "dataset": dataset("dataset", 40, "steps"),
        "other": dataset("other", 40, "other_steps"),
        "two": dataset("two", 2, "steps"),
    }
    train_estimator(paths["dataset"], root / "run", TINY, progress=False)
    return {**paths, "run": root / "run"}


@pytest.fixture
def run_copy(problem, tmp_path):
    target = tmp_path / "run"
    shutil.copytree(problem["run"], target)
    return target


# -- T03, T04: damaged checkpoints ---------------------------------------------------------------


def _truncate(path):
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 3])


def _random(path):
    path.write_bytes(np.random.default_rng(0).bytes(path.stat().st_size))


DAMAGED_CHECKPOINTS = pytest.mark.parametrize(
    "file, damage",
    [("summary_checkpoint.pt", _truncate), ("flow_checkpoint.pt", _random)],
    ids=["T03 truncated summary checkpoint", "T04 random flow checkpoint"],
)


@DAMAGED_CHECKPOINTS
def test_a_damaged_checkpoint_is_named_when_the_run_is_resumed(problem, run_copy, file, damage):
    damage(run_copy / file)
    with pytest.raises(ValueError, match=rf"{run_copy / file} is damaged or not a torch file"):
        train_estimator(problem["dataset"], run_copy, TINY, progress=False)


@DAMAGED_CHECKPOINTS
def test_a_damaged_checkpoint_error_says_how_to_go_on(problem, run_copy, file, damage):
    damage(run_copy / file)
    with pytest.raises(ValueError, match=rf"{file}.*damaged.*(delete|remove)"):
        train_estimator(problem["dataset"], run_copy, TINY, progress=False)


# -- T06: too few cells ----------------------------------------------------------------------------


def test_a_dataset_too_small_to_train_on_is_refused_with_its_size(problem, tmp_path):
    with pytest.raises(ValueError, match=r"2 cells.*(at least|needs?|more)"):
        train_estimator(problem["two"], tmp_path / "est", TINY, progress=False)


# -- T09, T10: nothing that is not the run's own is overwritten ---------------------------------


def test_a_finished_estimator_of_another_run_is_not_overwritten(problem, run_copy):
    for path in [*run_copy.glob("*checkpoint*"), run_copy / "checkpoint.identity"]:
        path.unlink(missing_ok=True)
    before = (run_copy / "estimator.pt").read_bytes()
    try:
        with pytest.raises(ValueError, match=str(run_copy)):
            train_estimator(problem["other"], run_copy, TINY, progress=False)
    finally:
        assert (run_copy / "estimator.pt").read_bytes() == before


def test_training_into_the_dataset_directory_is_refused_and_the_dataset_kept(
    problem, tmp_path, capsys
):
    """T10: `train DATASET --out DATASET`."""
    dataset = tmp_path / "dataset"
    shutil.copytree(problem["dataset"], dataset)
    before = {p: p.read_bytes() for p in dataset.rglob("*") if p.is_file()}
    assert main(["train", str(dataset), "--out", str(dataset), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.strip() == (
        f"sbi-twins train: error: --out {dataset} is a dataset directory; write the estimator "
        "to a directory of its own"
    )
    assert {p: p.read_bytes() for p in dataset.rglob("*") if p.is_file()} == before
    assert len(open_dataset(dataset).candidates) >= 40  # still readable


# -- C14, C15, C19: impossible settings, refused before anything is read or written ------------


@pytest.mark.parametrize(
    "option, value, message",
    [
        ("--max-epochs", "0", "--max-epochs must be an integer >= 1 (epochs), got 0"),
        ("--batch-size", "0", "--batch-size must be an integer >= 1, got 0"),
        ("--device", "tpu", "device must be 'cpu' or 'cuda' (or 'cuda:N'), got 'tpu'"),
        ("--flows", "0", "--flows must be an integer >= 1 (flows in the ensemble), got 0"),
        ("--flow-max-epochs", "0", "--flow-max-epochs must be an integer >= 1, got 0"),
    ],
    ids=[
        "C14 --max-epochs 0",
        "C15 --batch-size 0",
        "C19 --device tpu",
        "--flows 0",
        "--flow-max-epochs 0",
    ],
)
def test_impossible_training_settings_are_refused_before_anything_is_written(
    problem, tmp_path, capsys, option, value, message
):
    out = tmp_path / "est"
    assert main(["train", str(problem["dataset"]), "--out", str(out), option, value]) == 2
    assert capsys.readouterr().err.strip() == f"sbi-twins train: error: {message}"
    assert not out.exists()


def test_the_tiny_problem_trains(problem):
    """The runs the tests above damage are real ones: both stages, with checkpoints."""
    for name in ("estimator.pt", "summary_checkpoint.pt", "flow_checkpoint.pt"):
        assert (problem["run"] / name).is_file()
