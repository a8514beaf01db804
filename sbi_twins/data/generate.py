"""Generating datasets: chunks drawn and simulated by workers, written as shards, resumable."""

from __future__ import annotations

import errno
import json
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from .._util import atomic_write_json, check_integer
from .dataset import (
    MANIFEST,
    Dataset,
    DatasetMismatchError,
    accepted_prefix,
    finished_chunks,
    manifest_differences,
    read_manifest,
)
from .executors import Executor
from .spec import DatasetSpec, setup, simulate_chunk


def simulate_dataset(
    out: str | os.PathLike,
    n: int,
    spec: DatasetSpec | None = None,
    *,
    workers: int | None = None,
    dask_address: str | None = None,
    progress: bool = True,
) -> Dataset:
    """Generate (or resume, or extend) a dataset of ``n`` accepted cells in ``out``.

    Parameters
    ----------
    out : path
        Dataset directory; created if missing. If it holds a dataset with the same spec, the run
        resumes (or extends it to ``n``); with another spec it is refused.
    n : int
        Number of accepted cells wanted.
    spec : DatasetSpec, optional
        Model, prior, protocol, seed, filter... (defaults: the bundled Kernik 2019 set-up).
    workers : int, optional
        Local worker processes (default: all cores). 1 runs in this process. Workers are
        started with ``spawn``, so a script that calls this must guard its top level with
        ``if __name__ == "__main__":`` (as for any Python multiprocessing).
    dask_address : str, optional
        Address of a Dask scheduler (``tcp://host:8786``); overrides ``workers``. Workers must
        see ``out`` on a shared file system.
    progress : bool
        Show a progress bar (accepted cells, acceptance rate, ETA).

    Returns
    -------
    Dataset
        The finished dataset.
    """
    check_integer("n", n, minimum=1, what="the number of cells")
    workers = (os.cpu_count() or 1) if workers is None else workers
    check_integer("workers", workers, minimum=1)
    spec = spec or DatasetSpec()
    directory = Path(out)
    manifest = setup(spec).manifest()  # loads (and so checks) model, prior and protocol
    _prepare(directory, manifest)
    _check_free_space(directory, n, manifest)
    done = finished_chunks(directory)
    bar = _progress_bar(n, progress)
    bar.update(min(n, accepted_prefix(done)))
    executor = Executor(workers, dask_address)
    pending: dict[Any, int] = {}
    next_chunk = 0
    try:
        while accepted_prefix(done) < n:
            rate = _acceptance(done, spec)
            projected = sum(c["accepted"] for c in done.values())
            projected += rate * spec.chunk_size * len(pending)
            while len(pending) < 2 * executor.slots and (projected < n or not pending):
                while next_chunk in done:
                    next_chunk += 1
                pending[executor.submit(_run_chunk, spec, next_chunk, str(directory))] = next_chunk
                next_chunk += 1
                projected += rate * spec.chunk_size
            finished, _ = executor.wait_any(set(pending))
            for future in finished:
                counts = future.result()
                done[pending.pop(future)] = counts
                before = bar.n
                bar.update(max(0, min(n, accepted_prefix(done)) - before))
                bar.set_postfix(acceptance=f"{_acceptance(done, spec):.0%}", refresh=False)
    finally:
        bar.close()
        executor.close()
    atomic_write_json(directory / "size.json", {"n": n})
    return Dataset(directory)


def _prepare(directory: Path, manifest: dict[str, Any]) -> None:
    """Create the directory with its manifest, or check an existing one and clean up."""
    path = directory / MANIFEST
    if path.exists():
        existing = read_manifest(path)
        differences = manifest_differences(existing, manifest)
        if differences:
            raise DatasetMismatchError(
                f"{directory} holds a dataset made with other settings; refusing to mix. "
                "Differences (existing vs requested):\n  "
                + "\n  ".join(differences)
                + "\nUse another --out directory, or the settings of the existing dataset."
            )
    else:
        if directory.exists() and any(directory.iterdir()):
            raise ValueError(
                f"{directory} exists, is not empty and is not a dataset; choose another --out"
            )
        (directory / "chunks").mkdir(parents=True, exist_ok=True)
        atomic_write_json(path, manifest)
    for leftover in (directory / "chunks").glob("*.tmp-*"):  # shards a killed run left half done
        shutil.rmtree(leftover, ignore_errors=True)


def _check_free_space(directory: Path, n: int, manifest: dict[str, Any]) -> None:
    """Refuse to start when the finished dataset cannot fit on the disk."""
    per_cell = 4 * manifest["observation"]["length"] + 8 * (len(manifest["parameter_names"]) + 2)
    if manifest["viability"] is not None:
        per_cell += 8 * len(manifest["parameter_names"]) * 2  # the rejected candidates too
    need = per_cell * n
    free = shutil.disk_usage(directory).free
    if need > free:
        raise OSError(
            errno.ENOSPC,
            f"not enough disk space for {n} cells in {directory}: about {need / 1e9:.2f} GB "
            f"needed, {free / 1e9:.2f} GB free. Free space or choose another --out",
        )


def _run_chunk(spec: DatasetSpec, k: int, directory: str) -> dict[str, int]:
    """Simulate chunk ``k`` and write its shard atomically; return its counts."""
    chunk = simulate_chunk(spec, k)
    final = Path(directory) / "chunks" / f"{k:06d}"
    tmp = final.with_name(f"{final.name}.tmp-{os.getpid()}")
    counts = {
        "chunk": k,
        "candidates": int(chunk["status"].size),
        "accepted": int((chunk["status"] == 0).sum()),
    }
    try:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        for name in ("theta", "seeds", "status", "observations"):
            np.save(tmp / f"{name}.npy", chunk[name])
        if chunk["viability"] is not None:
            chunk["viability"].to_csv(tmp / "viability.csv", index=False)
        (tmp / "done.json").write_text(json.dumps(counts))
        try:
            os.replace(tmp, final)
        except OSError:
            if not (final / "done.json").exists():
                raise
            shutil.rmtree(tmp)  # another worker finished the same chunk: identical by design
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if e.errno == errno.ENOSPC:
            raise OSError(
                errno.ENOSPC,
                f"disk full while writing chunk {k} of {directory}. Free some space (or move "
                "the dataset with --out) and rerun the same command: it resumes where it stopped",
            ) from None
        raise
    return counts


def _acceptance(done: dict[int, dict[str, int]], spec: DatasetSpec) -> float:
    candidates = sum(c["candidates"] for c in done.values())
    if candidates == 0:
        return 0.35 if spec.viability is not None else 1.0  # measured rates, before any data
    return max(sum(c["accepted"] for c in done.values()) / candidates, 0.01)


def _progress_bar(n: int, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=n, unit="cell", disable=not enabled, smoothing=0.1, dynamic_ncols=True)
