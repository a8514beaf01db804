"""Datasets on disk: determinism, resumption, executors, refusal to mix, bad input."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from dataclasses import replace

import numpy as np
import pytest

from sbi_twins import Protocol, Segment, load_protocol
from sbi_twins.data import (
    STATUS,
    ChunkedArray,
    DatasetMismatchError,
    DatasetSpec,
    open_dataset,
    simulate_chunk,
    simulate_dataset,
)
from sbi_twins.data.spec import RETRY_KEY
from sbi_twins.recording import protocol_to_toml

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
    v_mV = -10
    [[segment]]
    type = "ramp"
    duration_ms = 100
    v_start_mV = 20
    v_end_mV = -100
    [[segment]]
    type = "step"
    duration_ms = 100
    v_mV = -80
    """
)


@pytest.fixture(scope="module")
def protocol_file(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("protocol") / "short_steps.toml"
    path.write_text(PROTOCOL)
    return str(path)


@pytest.fixture(scope="module")
def spec(protocol_file) -> DatasetSpec:
    return DatasetSpec(protocol=protocol_file, chunk_size=8, seed=11)


@pytest.fixture(scope="module")
def reference(tmp_path_factory, spec):
    """An uninterrupted run in this process."""
    return simulate_dataset(
        tmp_path_factory.mktemp("ref") / "ds", 12, spec, workers=1, progress=False
    )


def _same(a, b) -> None:
    assert len(a) == len(b)
    np.testing.assert_array_equal(a.observations[:], b.observations[:])
    np.testing.assert_array_equal(a.parameters.to_numpy(), b.parameters.to_numpy())
    np.testing.assert_array_equal(a.seeds, b.seeds)


def test_dataset_contents(reference, spec):
    ds = open_dataset(reference.directory)
    assert len(ds) == 12 and ds.complete
    assert ds.observations.shape == (12, ds.manifest["observation"]["length"])
    assert ds.observations.dtype == np.float32
    assert list(ds.parameters.columns) == ds.manifest["parameter_names"]
    assert "recording.rs_MOhm" in ds.parameters.columns
    assert np.isfinite(ds.observations[:]).all()
    cand = ds.candidates
    assert (cand["status"] == "accepted").sum() >= 12
    assert set(cand["status"]) <= {
        "accepted",
        "too_few_beats",
        "low_peak",
        "high_mdp",
        "irregular",
        "simulation_failed",
    }
    assert 0 < ds.acceptance_rate < 1
    manifest = ds.manifest
    assert manifest["model"]["file_sha256"] and manifest["prior"]["hash"]
    assert manifest["viability"]["min_beats"] >= 1 and manifest["versions"]["codegen"]
    # the stored parameters are exactly the accepted draws, in chunk order
    accepted = cand[cand["status"] == "accepted"].drop(columns=["chunk", "status"])
    np.testing.assert_array_equal(accepted.to_numpy()[:12], ds.parameters.to_numpy())


def test_chunked_array_indexing_matches_a_plain_array(reference):
    obs = reference.observations
    full = np.asarray(obs)
    assert isinstance(obs, ChunkedArray) and full.shape == obs.shape
    np.testing.assert_array_equal(obs[3], full[3])
    np.testing.assert_array_equal(obs[-1], full[-1])
    np.testing.assert_array_equal(obs[2:11:3], full[2:11:3])
    np.testing.assert_array_equal(obs[[11, 0, 5]], full[[11, 0, 5]])
    np.testing.assert_array_equal(obs[:, :7], full[:, :7])
    np.testing.assert_array_equal(np.concatenate(list(obs.batches(5))), full)
    with pytest.raises(IndexError):
        obs[12]


def test_workers_give_bit_identical_data(tmp_path, spec, reference):
    _same(simulate_dataset(tmp_path / "w2", 12, spec, workers=2, progress=False), reference)


def test_dask_local_cluster_equals_the_local_run(tmp_path, spec, reference):
    distributed = pytest.importorskip("distributed")
    with distributed.LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
    ) as cluster:
        ds = simulate_dataset(
            tmp_path / "dask", 12, spec, dask_address=cluster.scheduler_address, progress=False
        )
    _same(ds, reference)


def test_resume_after_kill_equals_an_uninterrupted_run(tmp_path, protocol_file):
    """Kill -9 the CLI once a shard is on disk, leave a half-written shard, rerun: identical
    to an uninterrupted run, and the finished shard was not redone.
    """
    out = tmp_path / "killed"
    command = [
        sys.executable,
        "-m",
        "sbi_twins.cli",
        "simulate",
        "-n",
        "14",
        "--protocol",
        protocol_file,
        "--chunk-size",
        "8",
        "--seed",
        "5",
        "--workers",
        "1",
        "--quiet",
        "--out",
        str(out),
    ]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    first = out / "chunks" / "000000" / "done.json"
    deadline = time.time() + 600
    while not first.exists() and time.time() < deadline and process.poll() is None:
        time.sleep(0.05)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert first.exists(), process.stderr.read().decode()
    first_written = first.stat().st_mtime_ns
    half = out / "chunks" / "000001.tmp-99999"
    half.mkdir(exist_ok=True)
    (half / "theta.npy").write_bytes(b"truncated")
    assert not open_dataset(out).complete
    result = subprocess.run(command, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert not half.exists()
    assert first.stat().st_mtime_ns == first_written  # kept, not recomputed
    spec = DatasetSpec(protocol=protocol_file, chunk_size=8, seed=5)
    _same(
        open_dataset(out), simulate_dataset(tmp_path / "whole", 14, spec, workers=1, progress=False)
    )


def test_rerun_extends_and_a_finished_run_is_not_redone(tmp_path, spec, reference):
    out = tmp_path / "grow"
    small = simulate_dataset(out, 5, spec, workers=1, progress=False)
    assert len(small) == 5
    stamps = {p: p.stat().st_mtime_ns for p in out.glob("chunks/*/done.json")}
    grown = simulate_dataset(out, 12, spec, workers=1, progress=False)
    _same(grown, reference)
    assert all(p.stat().st_mtime_ns == t for p, t in stamps.items())


def test_refuses_to_mix_settings_and_says_what_differs(tmp_path, spec, protocol_file):
    out = tmp_path / "mixed"
    simulate_dataset(out, 2, spec, workers=1, progress=False)
    other = DatasetSpec(protocol=protocol_file, chunk_size=8, seed=12)
    with pytest.raises(DatasetMismatchError, match=r"seed: 11 vs 12"):
        simulate_dataset(out, 2, other, workers=1, progress=False)
    ideal = DatasetSpec(protocol=protocol_file, chunk_size=8, seed=11, ideal_clamp=True)
    with pytest.raises(
        DatasetMismatchError, match=r"(?s)prior: .*recording.ideal_clamp: false vs true"
    ):
        simulate_dataset(out, 2, ideal, workers=1, progress=False)
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["model"]["file_sha256"] = "0" * 64
    (out / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(DatasetMismatchError, match="model.file_sha256"):
        simulate_dataset(out, 2, spec, workers=1, progress=False)


def test_filter_off_keeps_every_cell_that_simulates(tmp_path, protocol_file):
    spec = DatasetSpec(
        protocol=protocol_file, chunk_size=8, seed=2, viability=None, ideal_clamp=True
    )
    ds = simulate_dataset(tmp_path / "all", 8, spec, workers=1, progress=False)
    assert ds.manifest["viability"] is None and ds.manifest["recording"]["ideal_clamp"]
    assert set(ds.candidates["status"]) <= {"accepted", "simulation_failed"}
    assert not any(n.startswith("recording.") for n in ds.parameters.columns)


@pytest.mark.parametrize("n", [0, -3, 2.5, True])
def test_n_must_be_positive(tmp_path, spec, n):
    with pytest.raises(ValueError, match="n must be an integer >= 1"):
        simulate_dataset(tmp_path / "x", n, spec, workers=1, progress=False)
    assert not (tmp_path / "x").exists()  # validated before anything is written


@pytest.mark.parametrize(
    "change, message",
    [
        ({"prior": "no_such_prior"}, "unknown prior 'no_such_prior'"),
        ({"chunk_size": 0}, "chunk_size must be an integer >= 1"),
        ({"sample_interval_ms": -0.1}, "sample_interval_ms must be a finite number > 0"),
        ({"viability": "on"}, "viability must be ViabilityRules or None"),
    ],
)
def test_bad_settings_are_refused_before_anything_is_written(tmp_path, spec, change, message):
    from dataclasses import replace

    with pytest.raises((ValueError, FileNotFoundError), match=message):
        simulate_dataset(tmp_path / "x", 2, replace(spec, **change), workers=1, progress=False)
    assert not (tmp_path / "x").exists()


def test_a_dataset_of_another_format_is_refused_on_open(tmp_path, reference):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(reference.directory, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    (copy / "manifest.json").write_text(json.dumps({**manifest, "format": 99}))
    with pytest.raises(ValueError, match="dataset of format 99; this sbi-twins reads format 1"):
        open_dataset(copy)
    (copy / "manifest.json").write_text("{not json")
    with pytest.raises(ValueError, match="not a readable dataset manifest"):
        open_dataset(copy)


def test_disk_full_before_and_during(tmp_path, spec, monkeypatch):
    import shutil

    usage = shutil.disk_usage
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage(p)._replace(free=1000))
    with pytest.raises(OSError, match="not enough disk space .* GB needed"):
        simulate_dataset(tmp_path / "full", 100, spec, workers=1, progress=False)
    monkeypatch.setattr(shutil, "disk_usage", usage)

    def no_space(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(np, "save", no_space)
    with pytest.raises(
        OSError, match=r"disk full while writing chunk \d+ .* rerun the same command"
    ):
        simulate_dataset(tmp_path / "full", 4, spec, workers=1, progress=False)
    assert not list((tmp_path / "full" / "chunks").glob("*.tmp-*"))


def test_not_a_dataset(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a dataset"):
        open_dataset(tmp_path)
    (tmp_path / "junk.txt").write_text("x")
    with pytest.raises(ValueError, match="not empty and is not a dataset"):
        simulate_dataset(tmp_path, 1, DatasetSpec(), workers=1, progress=False)


def test_prior_for_another_model_is_refused(tmp_path):
    with pytest.raises(ValueError, match="is for model 'kernik2019', not 'hh1952'"):
        simulate_dataset(tmp_path / "x", 1, DatasetSpec(model="hh1952"), workers=1, progress=False)


# -- the retry of cells whose clamp simulation blows up (DatasetSpec.retry_failed) ---------------

#: Root seed whose chunk 0 holds a cell that fails in the default kernel on the overload protocol.
OVERLOAD_SEED = 5


def test_a_new_dataset_retries_failed_cells_and_records_it(reference):
    assert reference.manifest[RETRY_KEY] is True


def test_a_dataset_made_without_the_retry_resumes_without_it(tmp_path, spec):
    """A manifest without the record is a dataset made before the retry existed: the default
    spec resumes it with the retry off, as an uninterrupted run without the retry; asking for
    the retry explicitly is refused as a different setting.
    """
    off = replace(spec, retry_failed=False)
    out = tmp_path / "old"
    simulate_dataset(out, 5, off, workers=1, progress=False)
    assert RETRY_KEY not in json.loads((out / "manifest.json").read_text())
    resumed = simulate_dataset(out, 12, spec, workers=1, progress=False)
    assert RETRY_KEY not in resumed.manifest
    _same(resumed, simulate_dataset(tmp_path / "whole", 12, off, workers=1, progress=False))
    with pytest.raises(DatasetMismatchError, match=f"{RETRY_KEY}: null vs true"):
        simulate_dataset(out, 12, replace(spec, retry_failed=True), workers=1, progress=False)


@pytest.mark.parametrize("value", ["yes", 1])
def test_retry_failed_must_be_a_bool_or_none(value):
    with pytest.raises(ValueError, match="retry_failed must be True, False or None"):
        DatasetSpec(retry_failed=value)


def test_the_retry_accepts_the_cells_that_failed_and_changes_nothing_else(tmp_path):
    """clark2022's steps 13-21 then +55 mV overload some cells with calcium, which the default
    series-resistance kernel cannot integrate (tests/test_accuracy.py, section 2c).
    """
    clark = load_protocol("clark2022")
    segments = (Segment.step(100.0, -80.0), *clark.segments[12:21], Segment.step(100.0, 55.0))
    path = tmp_path / "overload.toml"
    path.write_text(protocol_to_toml(Protocol("overload", -80.0, segments)))
    common = dict(protocol=str(path), chunk_size=16, seed=OVERLOAD_SEED, viability=None)
    off = simulate_chunk(DatasetSpec(**common, retry_failed=False), 0)
    on = simulate_chunk(DatasetSpec(**common, retry_failed=True), 0)
    failed = off["status"] == STATUS.index("simulation_failed")
    assert failed.any() and (off["status"][~failed] == 0).all()
    assert (on["status"] == 0).all()
    np.testing.assert_array_equal(on["theta"], off["theta"])
    np.testing.assert_array_equal(on["seeds"], off["seeds"])
    np.testing.assert_array_equal(on["observations"][~failed], off["observations"])
    assert np.isfinite(on["observations"]).all()
