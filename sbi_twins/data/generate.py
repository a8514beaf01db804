"""Generating datasets: chunks drawn and simulated by workers, written as shards, resumable.

**Termination.** A run whose draws are (almost) never accepted would otherwise draw forever. Once
the finished chunks hold :func:`judging_draws` candidates (at least :data:`MIN_JUDGED_DRAWS` and
:data:`MIN_JUDGED_CHUNKS` chunks), the run stops with :class:`LowAcceptanceError` if none was
accepted, or if at the acceptance so far the ``n`` cells would need more than ``max_draws``
draws (default :data:`MAX_DRAWS_PER_CELL` per cell, i.e. an acceptance of at least 1 %). It
checks again after every chunk, so a run that goes on draws about ``n / acceptance`` candidates,
at most ``max_draws`` give or take the spread of the acceptance. The error counts the draws by
outcome. The shards written stay (they are valid; a rerun with other settings
is refused anyway).
"""

from __future__ import annotations

import errno
import json
import logging
import os
import shutil
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from .._util import atomic_write_json, check_integer, file_sha256
from .dataset import (
    DONE,
    MANIFEST,
    Dataset,
    DatasetMismatchError,
    accepted_prefix,
    chunk_directory,
    finished_chunks,
    manifest_differences,
    read_manifest,
)
from .executors import Executor
from .spec import RETRY_KEY, STATUS, DatasetSpec, setup, simulate_chunk

#: Candidate draws a run makes before it may give up for low acceptance...
MIN_JUDGED_DRAWS = 2000
#: ...and whole chunks (whichever is more draws).
MIN_JUDGED_CHUNKS = 8
#: Default ``max_draws`` per cell asked for: acceptance below 1 % stops a run.
MAX_DRAWS_PER_CELL = 100

_log = logging.getLogger(__name__)


class LowAcceptanceError(ValueError):
    """So few candidate draws are accepted that the dataset cannot be finished."""


def judging_draws(chunk_size: int) -> int:
    """Candidate draws after which a run may judge its acceptance (see the module docstring)."""
    return max(MIN_JUDGED_DRAWS, MIN_JUDGED_CHUNKS * chunk_size)


def simulate_dataset(
    out: str | os.PathLike,
    n: int,
    spec: DatasetSpec | None = None,
    *,
    workers: int | None = None,
    dask_address: str | None = None,
    progress: bool = True,
    max_draws: int | None = None,
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
        Model, prior, protocol, seed, filter... (defaults: the bundled Kernik 2019 set-up). Its
        ``retry_failed = None`` is decided here: on for a new dataset, as recorded for an
        existing one (see :class:`DatasetSpec`).
    workers : int, optional
        Local worker processes (default: all cores). 1 runs in this process. Workers are
        started with ``spawn``, so a script that calls this must guard its top level with
        ``if __name__ == "__main__":`` (as for any Python multiprocessing).
    dask_address : str, optional
        Address of a Dask scheduler (``tcp://host:8786``); overrides ``workers``. Workers must
        see ``out`` on a shared file system.
    progress : bool
        Show a progress bar (accepted cells, acceptance rate, ETA).
    max_draws : int, optional
        Most candidate draws the ``n`` cells may take (default ``100 * n``). After
        :func:`judging_draws` draws (2,000 or 8 chunks, whichever is more) the run stops with
        :class:`LowAcceptanceError` if the acceptance so far is zero or would need more draws
        than this; see the module docstring.

    Returns
    -------
    Dataset
        The finished dataset.

    Raises
    ------
    LowAcceptanceError
        Too few draws are accepted (the message counts them by outcome and says what to check).
    ValueError
        Invalid settings, a chunk size too large for the memory, or a directory that holds
        something else (or a dataset made with other settings: :class:`DatasetMismatchError`).
    OSError
        Not enough disk space (before starting, or while writing).
    """
    check_integer("n", n, minimum=1, what="the number of cells")
    max_draws = MAX_DRAWS_PER_CELL * n if max_draws is None else max_draws
    check_integer("max_draws", max_draws, minimum=1, what="candidate draws")
    workers = (os.cpu_count() or 1) if workers is None else workers
    check_integer("workers", workers, minimum=1)
    directory = Path(out)
    spec = _decide_retry(spec or DatasetSpec(), directory)
    # loading checks model, prior, protocol and that a chunk fits in memory
    manifest = setup(spec).manifest()
    _prepare(directory, manifest)
    _check_free_space(directory, n, manifest)
    done = finished_chunks(directory, spec.chunk_size)
    guard = _AcceptanceGuard(directory, spec, n, max_draws)
    bar = _progress_bar(n, progress)
    bar.update(min(n, accepted_prefix(done)))
    executor = Executor(workers, dask_address)
    try:
        _run(directory, spec, n, done, executor, guard, bar)
    except BaseException:
        executor.close(abort=True)  # stop the workers now: Ctrl-C, an error, a hopeless run
        raise
    else:
        executor.close()
    finally:
        bar.close()
    atomic_write_json(directory / "size.json", {"n": n})
    return Dataset(directory)


def _decide_retry(spec: DatasetSpec, directory: Path) -> DatasetSpec:
    """``spec`` with ``retry_failed`` decided when it is None: what the manifest of an existing
    dataset records (no record: off, the datasets made before the retry), else on.
    """
    if spec.retry_failed is not None:
        return spec
    path = directory / MANIFEST
    recorded = read_manifest(path).get(RETRY_KEY, False) if path.exists() else True
    return replace(spec, retry_failed=recorded is True)


def _run(
    directory: Path,
    spec: DatasetSpec,
    n: int,
    done: dict[int, dict[str, Any]],
    executor: Executor,
    guard: _AcceptanceGuard,
    bar: Any,
) -> None:
    """Submit chunks and collect their counts into ``done`` until ``n`` cells are accepted."""
    pending: dict[Any, int] = {}
    next_chunk = 0
    while accepted_prefix(done) < n:
        guard.check(done)
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


class _AcceptanceGuard:
    """Stops a run that cannot finish within ``max_draws`` (see the module docstring)."""

    def __init__(self, directory: Path, spec: DatasetSpec, n: int, max_draws: int):
        self.directory, self.spec, self.n, self.max_draws = directory, spec, n, max_draws
        self.judge_after = judging_draws(spec.chunk_size)

    def check(self, done: dict[int, dict[str, Any]]) -> None:
        """Raise LowAcceptanceError if the finished chunks show the run cannot finish."""
        drawn = sum(c["candidates"] for c in done.values())
        accepted = sum(c["accepted"] for c in done.values())
        if drawn < self.judge_after:
            return
        if accepted == 0:
            raise self._error(done, "none passed, so at this rate the dataset is never finished")
        needed = self.n * drawn / accepted
        if needed > self.max_draws:
            raise self._error(
                done,
                f"at this rate {self.n:,} cells need about {needed:,.0f} draws, more than "
                f"max_draws ({self.max_draws:,})",
            )

    def _error(self, done: dict[int, dict[str, Any]], verdict: str) -> LowAcceptanceError:
        drawn = sum(c["candidates"] for c in done.values())
        accepted = sum(c["accepted"] for c in done.values())
        outcomes = _outcome_counts(self.directory, done)
        rejected = ", ".join(
            f"{count} {name}" for name, count in outcomes.items() if count and name != "accepted"
        )
        spec = self.spec
        viability = "(off)" if spec.viability is None else "(--no-viability keeps every cell)"
        return LowAcceptanceError(
            f"{accepted} of {drawn} draws accepted ({accepted / drawn:.2%}): {rejected}; "
            f"{verdict}. Check the prior ({spec.prior}: do its ranges give cells that pass?), "
            f"the protocol ({spec.protocol}: simulation_failed cells point to its voltages or "
            f"the model file) and the viability rules {viability}; or raise the limit "
            f"(--max-draws). The {len(done)} chunks written so far stay in {self.directory}"
        )


def _outcome_counts(directory: Path, done: dict[int, dict[str, Any]]) -> dict[str, int]:
    """Draws by outcome (:data:`STATUS`) over the finished chunks, from their status files."""
    counts = np.zeros(len(STATUS), dtype=np.int64)
    for k in done:
        try:
            status = np.load(chunk_directory(directory, k) / "status.npy")
            counts += np.bincount(status, minlength=len(STATUS))[: len(STATUS)]
        except (OSError, ValueError, EOFError):
            pass  # a damaged shard is reported when the dataset is read; here it is a count
    return dict(zip(STATUS, counts.tolist(), strict=True))


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
    (directory / "chunks").mkdir(exist_ok=True)
    for leftover in (directory / "chunks").iterdir():
        if ".tmp-" in leftover.name:  # a shard a killed run left half done
            shutil.rmtree(leftover, ignore_errors=True)
        elif leftover.name.isdigit() and not (leftover / DONE).exists():
            # Shards are renamed into place with their done.json, so this one was not written
            # by a finished worker (a copy or a file system that does not rename atomically).
            _log.warning("%s has no %s: deleting it, its chunk is done again", leftover, DONE)
            if leftover.is_dir():
                shutil.rmtree(leftover)
            else:
                leftover.unlink()


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


def _run_chunk(spec: DatasetSpec, k: int, directory: str) -> dict[str, Any]:
    """Simulate chunk ``k`` and write its shard atomically; return its ``done.json`` record."""
    chunk = simulate_chunk(spec, k)
    final = chunk_directory(Path(directory), k)
    tmp = final.with_name(f"{final.name}.tmp-{os.getpid()}")
    counts: dict[str, Any] = {
        "chunk": k,
        "candidates": int(chunk["status"].size),
        "accepted": int((chunk["status"] == 0).sum()),
    }
    try:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        files = []
        for name in ("theta", "seeds", "status", "observations"):
            np.save(tmp / f"{name}.npy", chunk[name])
            files.append(f"{name}.npy")
        if chunk["viability"] is not None:
            chunk["viability"].to_csv(tmp / "viability.csv", index=False)
            files.append("viability.csv")
        counts["sha256"] = {name: file_sha256(tmp / name) for name in files}
        (tmp / DONE).write_text(json.dumps(counts))
        _move_into_place(tmp, final)
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


def _move_into_place(tmp: Path, final: Path) -> None:
    """Rename a written shard to its chunk directory (an atomic step on POSIX file systems)."""
    try:
        os.replace(tmp, final)
        return
    except OSError:
        if (final / DONE).exists():
            shutil.rmtree(tmp)  # another worker finished the same chunk: identical by design
            return
    # `final` exists without done.json, so no finished worker wrote it: replace it.
    shutil.rmtree(final, ignore_errors=True)
    try:
        os.replace(tmp, final)
    except OSError as e:
        raise OSError(
            e.errno,
            f"cannot move the shard into {final}: it exists and is not a finished chunk "
            f"({e.strerror}); delete it and rerun the same command",
        ) from None


def _acceptance(done: dict[int, dict[str, Any]], spec: DatasetSpec) -> float:
    candidates = sum(c["candidates"] for c in done.values())
    if candidates == 0:
        return 0.35 if spec.viability is not None else 1.0  # measured rates, before any data
    return max(sum(c["accepted"] for c in done.values()) / candidates, 0.01)


def _progress_bar(n: int, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=n, unit="cell", disable=not enabled, smoothing=0.1, dynamic_ncols=True)
