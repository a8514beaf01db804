"""Datasets under faults (issue 20): runs that cannot finish, damaged files, interrupted and
killed runs, absurd sizes. Each test reproduces a fault and checks the clean outcome: an error
that names the file and the cure, or the right result.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from sbi_twins.cli import main
from sbi_twins.data import DatasetSpec, open_dataset, simulate_dataset
from sbi_twins.data import generate as generate_module
from sbi_twins.data.dataset import DatasetDamagedError
from sbi_twins.data.generate import LowAcceptanceError

PROTOCOL = textwrap.dedent(
    """
    name = "short_steps"
    holding_mV = -80.0
    [[segment]]
    type = "step"
    duration_ms = 200
    v_mV = -80
    [[segment]]
    type = "step"
    duration_ms = 100
    v_mV = {step_mV}
    [[segment]]
    type = "ramp"
    duration_ms = 100
    v_start_mV = 20
    v_end_mV = -100
    """
)
#: A prior under which no Kernik cell beats: a strong I_K1 clamps the resting potential.
QUIET_PRIOR = textwrap.dedent(
    """
    model = "kernik2019"
    [[parameter]]
    name = "ik1.g_K1"
    distribution = "uniform"
    low = 8
    high = 10
    """
)
#: The chunk damaged in the tests below.
DAMAGED = 1


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, str]:
    folder = tmp_path_factory.mktemp("inputs")
    out = {}
    for name, text in {
        "protocol": PROTOCOL.format(step_mV=-10),
        "hot": PROTOCOL.format(step_mV=200),
        "wild": PROTOCOL.format(step_mV=1e6),
        "quiet": QUIET_PRIOR,
    }.items():
        (folder / f"{name}.toml").write_text(text)
        out[name] = str(folder / f"{name}.toml")
    return out


@pytest.fixture(scope="module")
def spec(files) -> DatasetSpec:
    return DatasetSpec(protocol=files["protocol"], chunk_size=8, seed=11)


@pytest.fixture(scope="module")
def reference(tmp_path_factory, spec):
    out = tmp_path_factory.mktemp("ref") / "ds"
    ds = simulate_dataset(out, 12, spec, workers=1, progress=False)
    assert len(ds._chunks) > DAMAGED + 1  # the damaged chunk is one the dataset uses
    return ds


@pytest.fixture
def copy(tmp_path, reference) -> Path:
    target = tmp_path / "copy"
    shutil.copytree(reference.directory, target)
    return target


@pytest.fixture
def judge_early(monkeypatch):
    """Judge acceptance after 8 chunks (not 2,000 draws), to keep the runs short."""
    monkeypatch.setattr(generate_module, "MIN_JUDGED_DRAWS", 0)


def _cure(directory: Path) -> str:
    folder = directory / "chunks" / f"{DAMAGED:06d}"
    return f"delete {folder} and rerun the same `sbi-twins simulate` command to redo it"


# -- D06, D07: runs that cannot finish stop -----------------------------------------------------


def test_no_beating_cell_stops_the_run_with_counts_by_outcome(tmp_path, files, judge_early):
    out = tmp_path / "quiet"
    spec = DatasetSpec(prior=files["quiet"], protocol=files["protocol"], chunk_size=8)
    with pytest.raises(LowAcceptanceError) as info:
        simulate_dataset(out, 5, spec, workers=1, progress=False)
    message = str(info.value)
    drawn = 8 * len(list(out.glob("chunks/*/done.json")))
    assert message.startswith(f"0 of {drawn} draws accepted (0.00%): {drawn} too_few_beats;")
    assert "none passed" in message and "Check the prior" in message
    assert drawn >= 64  # judged after 8 chunks, and the shards stay
    with pytest.raises(LowAcceptanceError):  # a rerun stops at once, drawing nothing more
        simulate_dataset(out, 5, spec, workers=1, progress=False)
    assert len(list(out.glob("chunks/*/done.json"))) * 8 == drawn


def test_every_cell_failing_to_simulate_stops_the_run(tmp_path, files, judge_early):
    # without the retry: the stiff kernel integrates +200 mV (within 0.002 pA/pF of CVODE)
    spec = DatasetSpec(
        protocol=files["hot"], chunk_size=8, viability=None, ideal_clamp=True, retry_failed=False
    )
    with pytest.raises(LowAcceptanceError, match=r"draws accepted .*simulation_failed.*protocol"):
        simulate_dataset(tmp_path / "hot", 5, spec, workers=1, progress=False)


def test_a_protocol_at_a_megavolt_is_refused_before_anything_is_written(tmp_path, files):
    spec = DatasetSpec(protocol=files["wild"], chunk_size=8)
    with pytest.raises(ValueError, match=r"wild.toml: segment 2 \(step\) .* \+1e\+06 mV"):
        simulate_dataset(tmp_path / "wild", 5, spec, workers=1, progress=False)
    assert not (tmp_path / "wild").exists()


def test_acceptance_too_low_for_max_draws_stops_the_run(tmp_path, spec, judge_early):
    with pytest.raises(LowAcceptanceError, match=r"40 cells need about [\d,]+ draws, more than "):
        simulate_dataset(tmp_path / "low", 40, spec, workers=1, progress=False, max_draws=50)


def test_max_draws_is_checked_and_reaches_the_cli(tmp_path, spec, files, capsys):
    with pytest.raises(ValueError, match="max_draws must be an integer >= 1"):
        simulate_dataset(tmp_path / "x", 5, spec, workers=1, progress=False, max_draws=0)
    args = ["simulate", "-n", "5", "--out", str(tmp_path / "y"), "--max-draws", "0"]
    assert main(args + ["--protocol", files["protocol"], "--quiet"]) == 2
    assert "max_draws must be an integer >= 1" in capsys.readouterr().err


# -- D10-D16: damaged shards are named with their cure -----------------------------------------


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _break_header(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[12:40] = b"{'descr': <<garbage>>, 'sha"
    path.write_bytes(bytes(data))


def _nan(path: Path) -> None:
    array = np.load(path)
    array[0, 3] = np.nan
    np.save(path, array)


def _garbage(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-64:] = np.random.default_rng(0).bytes(64)
    path.write_bytes(bytes(data))


def _ff_over_data(path: Path) -> None:
    """Up to 4 kB of the array's data overwritten with 0xFF bytes (NaN floats), header intact."""
    start = int(np.load(path, mmap_mode="r").offset)
    data = bytearray(path.read_bytes())
    stop = min(len(data), start + 4096)
    data[start:stop] = b"\xff" * (stop - start)
    path.write_bytes(bytes(data))


def _zero_header_start(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[:16] = bytes(16)
    path.write_bytes(bytes(data))


def _scale(path: Path) -> None:
    """Finite garbage in a valid .npy file: the values x1e6."""
    np.save(path, np.load(path) * np.float32(1e6))


@pytest.mark.parametrize(
    "file, damage, what",
    [
        ("observations.npy", _truncate, r"observations.npy: truncated \([\d,]+ of [\d,]+ bytes\)"),
        ("observations.npy", _break_header, r"observations.npy: damaged .npy header"),
        ("observations.npy", _nan, "observations.npy: checksum mismatch"),
        ("observations.npy", _ff_over_data, "observations.npy: checksum mismatch"),  # D12
        ("observations.npy", _garbage, "observations.npy: checksum mismatch"),
        ("theta.npy", _garbage, "theta.npy: checksum mismatch"),
        ("theta.npy", _zero_header_start, r"theta.npy: damaged .npy header"),  # D15
        ("status.npy", Path.unlink, "status.npy is missing"),
    ],
)
def test_a_damaged_shard_is_named_with_its_cure(copy, spec, reference, file, damage, what):
    damage(copy / "chunks" / f"{DAMAGED:06d}" / file)
    ds = open_dataset(copy)  # opening reads only the small records
    with pytest.raises(DatasetDamagedError) as info:
        ds.observations, ds.parameters  # noqa: B018 - reading is the test
    message = str(info.value)
    assert message.startswith(f"chunk {DAMAGED} of {copy} is damaged (")
    assert _cure(copy) in message
    assert re.search(what, message), message
    # the cure works: the redone chunk is bit-identical
    shutil.rmtree(copy / "chunks" / f"{DAMAGED:06d}")
    redone = simulate_dataset(copy, 12, spec, workers=1, progress=False)
    np.testing.assert_array_equal(redone.observations[:], reference.observations[:])


@pytest.mark.parametrize(
    "file, damage, what",
    [
        ("observations.npy", _truncate, r"observations.npy: truncated"),
        ("observations.npy", _ff_over_data, "observations.npy: checksum mismatch"),
        ("observations.npy", _scale, "observations.npy: checksum mismatch"),
        ("theta.npy", _zero_header_start, r"theta.npy: damaged .npy header"),
    ],
    ids=["D11 truncated", "D13 NaN bytes", "D14 x1e6", "D16 theta header"],
)
def test_training_on_a_damaged_shard_stops_before_anything_is_written(
    copy, tmp_path, capsys, file, damage, what
):
    damage(copy / "chunks" / f"{DAMAGED:06d}" / file)
    out = tmp_path / "estimator"
    assert main(["train", str(copy), "--out", str(out), "--max-epochs", "1", "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"sbi-twins train: error: chunk {DAMAGED} of {copy} is damaged (")
    assert re.search(what, err) and err.endswith(_cure(copy)) and "\n" not in err
    assert not out.exists()


def test_old_datasets_without_checksums_are_read_and_nan_is_caught(copy, reference):
    for marker in copy.glob("chunks/*/done.json"):
        record = json.loads(marker.read_text())
        del record["sha256"]  # as written before checksums were recorded
        marker.write_text(json.dumps(record))
    old = open_dataset(copy)
    np.testing.assert_array_equal(old.observations[:], reference.observations[:])
    assert old.verify() == {"chunks": len(reference._chunks), "checksummed": 0, "cells": 12}
    _nan(copy / "chunks" / f"{DAMAGED:06d}" / "observations.npy")
    with pytest.raises(DatasetDamagedError, match=r"NaN or infinite values in 1 of its \d+ rows"):
        open_dataset(copy).observations  # noqa: B018 - as the training reads it
    with pytest.raises(DatasetDamagedError, match=rf"1 damaged chunk\(s\) in {copy}:\n  chunk 1"):
        open_dataset(copy).verify()


def test_verify_rechecks_what_was_read_before(copy, reference):
    ds = open_dataset(copy)
    ds.observations  # noqa: B018 - checked now, once per process
    assert ds.verify()["checksummed"] == len(reference._chunks)
    (copy / "chunks" / f"{DAMAGED:06d}" / "viability.csv").write_text("edited")
    with pytest.raises(DatasetDamagedError, match="viability.csv: checksum mismatch"):
        ds.verify()


# -- D18-D23: damaged records ----------------------------------------------------------------


def test_a_chunk_without_done_json_is_redone(copy, spec, reference, caplog):
    chunk = copy / "chunks" / f"{DAMAGED:06d}"
    (chunk / "done.json").unlink()  # as a copy or a non-atomic file system may leave it
    assert not open_dataset(copy).complete
    redone = simulate_dataset(copy, 12, spec, workers=1, progress=False)
    assert f"{chunk} has no done.json: deleting it, its chunk is done again" in caplog.text
    np.testing.assert_array_equal(redone.observations[:], reference.observations[:])


@pytest.mark.parametrize(
    "content, what",
    [
        (b"{garbage", "done.json is not readable JSON"),
        (b"\x00\xff\xfe binary", "done.json is not readable JSON"),
        (b"[1, 2]", "done.json is not a JSON object"),
        (b'{"chunk": 1}', "done.json has no count 'candidates'"),
        (b'{"chunk": 7, "candidates": 8, "accepted": 2}', "done.json is the record of chunk 7"),
        (b'{"chunk": 1, "candidates": 8, "accepted": 9}', "more accepted cells than candidates"),
        (b'{"chunk": 1, "candidates": 5, "accepted": 2}', "5 candidates; the chunk size is 8"),
    ],
)
def test_a_garbage_done_json_is_named_with_its_cure(copy, spec, content, what):
    (copy / "chunks" / f"{DAMAGED:06d}" / "done.json").write_bytes(content)
    for read in (open_dataset, lambda d: simulate_dataset(d, 12, spec, workers=1, progress=False)):
        with pytest.raises(DatasetDamagedError) as info:
            read(copy)
        assert what in str(info.value) and _cure(copy) in str(info.value)


@pytest.mark.parametrize(
    "content, what",
    [
        (None, "is not a readable dataset manifest"),  # truncated
        ('{"format": 1}', "its field 'parameter_names' is missing"),
        ("[]", "no 'format' field"),
    ],
)
def test_a_damaged_manifest_is_named_with_what_to_do(copy, content, what):
    manifest = copy / "manifest.json"
    text = manifest.read_text()
    manifest.write_text(text[: len(text) // 2] if content is None else content)
    with pytest.raises(DatasetDamagedError) as info:
        open_dataset(copy)
    message = str(info.value)
    assert message.startswith(f"{manifest} is ") and what in message
    assert "restore it from a backup" in message and f"delete {copy}" in message


def test_a_truncated_manifest_stops_simulate_and_train_with_what_to_do(
    copy, spec, tmp_path, capsys
):
    """D21 (the same `simulate` again) and D23 (`train`) on a truncated manifest.json."""
    manifest = copy / "manifest.json"
    before = {p: p.read_bytes() for p in copy.rglob("*") if p.is_file() and p != manifest}
    manifest.write_text(manifest.read_text()[:100])
    with pytest.raises(DatasetDamagedError, match="manifest.json is not a readable dataset"):
        simulate_dataset(copy, 12, spec, workers=1, progress=False)
    out = tmp_path / "estimator"
    assert main(["train", str(copy), "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"sbi-twins train: error: {manifest} is not a readable dataset manifest")
    assert "restore it from a backup" in err and f"delete {copy}" in err
    assert not out.exists()
    assert {p: p.read_bytes() for p in copy.rglob("*") if p.is_file() and p != manifest} == before


def test_a_damaged_size_record_is_named_with_what_to_do(copy):
    (copy / "size.json").write_text('{"n": "twelve"}')
    with pytest.raises(DatasetDamagedError, match=r"size.json is damaged .* delete it and rerun"):
        open_dataset(copy)


# -- C24: absurd chunk sizes ------------------------------------------------------------------


def test_an_absurd_chunk_size_is_refused_before_anything_is_allocated(tmp_path, files, capsys):
    spec = DatasetSpec(protocol=files["protocol"], chunk_size=100_000_000)
    with pytest.raises(ValueError, match=r"chunk_size 100000000 is too large: .* memory"):
        simulate_dataset(tmp_path / "big", 5, spec, workers=1, progress=False)
    assert not (tmp_path / "big").exists()
    args = ["simulate", "-n", "5", "--chunk-size", "100000000", "--out", str(tmp_path / "cli")]
    assert main(args + ["--protocol", files["protocol"], "--workers", "1", "--quiet"]) == 2
    assert "a chunk is simulated as one batch" in capsys.readouterr().err


# -- D04, D05: interrupted and killed runs -------------------------------------------------------


def _command(files: dict[str, str], out: Path, n: int, workers: int) -> list[str]:
    return [
        sys.executable, "-m", "sbi_twins.cli", "simulate", "-n", str(n), "--protocol",
        files["protocol"], "--chunk-size", "8", "--workers", str(workers), "--quiet",
        "--out", str(out),
    ]  # fmt: skip


def _interruptible() -> None:
    """In the child, before Python starts: Ctrl-C's default action. A test run started in the
    background by a non-interactive shell inherits SIGINT ignored, and Python keeps an ignored
    SIGINT ignored, so without this the child would not see the Ctrl-C the test sends.
    """
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _start_and_wait_for_a_shard(files: dict[str, str], out: Path) -> subprocess.Popen:
    """A 2-worker run in its own process group, once its workers are busy."""
    process = subprocess.Popen(
        _command(files, out, 100_000, 2),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        preexec_fn=_interruptible,
    )
    deadline = time.time() + 300
    while not list(out.glob("chunks/*/done.json")) and time.time() < deadline:
        assert process.poll() is None, process.stderr.read()
        time.sleep(0.05)
    return process


def _children(pid: int) -> list[int]:
    """Processes whose parent is ``pid`` (from /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                found.append(int(entry.name))
    return found


def _alive(pid: int) -> bool:
    """Running (not gone, not a zombie waiting for its new parent to reap it)."""
    try:
        return (Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]) != "Z"
    except OSError:
        return False


def _survivors(pids: list[int], within_s: float) -> list[int]:
    deadline = time.time() + within_s
    while any(_alive(p) for p in pids) and time.time() < deadline:
        time.sleep(0.05)
    return [p for p in pids if _alive(p)]


needs_proc = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc")


@needs_proc
def test_ctrl_c_prints_one_line_stops_the_workers_and_can_be_resumed(tmp_path, files):
    out = tmp_path / "interrupted"
    process = _start_and_wait_for_a_shard(files, out)
    workers = _children(process.pid)
    assert len(workers) >= 2
    os.killpg(process.pid, signal.SIGINT)  # what the terminal sends on Ctrl-C
    try:
        _, stderr = process.communicate(timeout=60)
    finally:  # a run that ignored the Ctrl-C must not go on simulating 100,000 cells
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    assert process.returncode == 130
    assert stderr.strip() == (
        "sbi-twins simulate: interrupted: rerun the same command to continue where it stopped"
    )
    assert _survivors(workers, within_s=10) == []
    resumed = subprocess.run(_command(files, out, 3, 1), capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    assert len(open_dataset(out)) == 3 and not list(out.glob("chunks/*.tmp-*"))


@needs_proc
def test_kill_9_of_the_main_process_leaves_no_worker_behind(tmp_path, files):
    process = _start_and_wait_for_a_shard(files, tmp_path / "killed")
    workers = _children(process.pid)
    assert len(workers) >= 2
    os.kill(process.pid, signal.SIGKILL)
    process.wait(timeout=60)  # not communicate(): surviving workers would hold its pipes open
    survivors = _survivors(workers, within_s=5)
    for pid in survivors:
        os.kill(pid, signal.SIGKILL)
    assert survivors == []
