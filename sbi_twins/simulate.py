"""Synthetic training sets on disk: chunked, resumable, deterministic, local or on a Dask cluster.

Layout of a dataset directory::

    DIR/manifest.json           what made it (model, prior, protocol, observation scheme,
                                recording model, viability rules, seed, chunk size, versions)
    DIR/chunks/000000/          one shard per chunk of candidate draws
        theta.npy               (C, D) all candidates' parameters, float64, prior.names order
        seeds.npy               (C,) per-cell noise seeds
        status.npy              (C,) int8: index into STATUS (0 = accepted)
        observations.npy        (A, L) float32, the accepted candidates only, in order
        viability.csv           the filter's measurements (when the filter is on)
        done.json               counts; written last

**Deterministic.** Chunk ``k`` draws its ``C`` candidates from ``numpy.random.default_rng([seed,
k])``; nothing about it depends on which worker ran it, when, or next to what. The dataset is
the first ``n`` accepted cells in chunk order, so the same command gives bit-identical data for
any number of workers and any completion order.

**Resumable.** A shard is written into a temporary directory and renamed into place when
complete (an atomic step on POSIX file systems), so a killed run leaves either a whole shard or a
temporary directory, which the next run deletes and redoes. Rerunning the same command skips the
finished chunks: nothing is lost or computed twice. A run with other settings into the same
directory is refused with a list of what differs.
"""

from __future__ import annotations

import errno
import functools
import json
import math
import os
import shutil
import warnings
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .codegen import CODEGEN_VERSION
from .model import CellModel, SimulationWarning, load_model
from .observation import STORAGE_DTYPE, ObservationScheme
from .observe import DT_MS, PREFIX, simulate_recordings
from .prior import Prior, load_prior
from .protocol import Protocol, load_protocol
from .viability import ViabilityRules, check_viability

#: Outcome of a candidate draw; its index is stored per cell in ``status.npy``.
STATUS = ("accepted", "too_few_beats", "low_peak", "high_mdp", "irregular", "simulation_failed")
_FORMAT = 1
_MANIFEST = "manifest.json"


class DatasetMismatchError(ValueError):
    """A dataset directory was made with other settings than the ones asked for."""


@dataclass(frozen=True)
class DatasetSpec:
    """Everything that determines the contents of a dataset (except its size).

    Parameters
    ----------
    model, prior, protocol : str
        Bundled names or paths.
    seed : int
        Root seed of all draws.
    chunk_size : int
        Candidate draws per shard (the unit of work and of resumption).
    sample_interval_ms : float
        Sampling of the simulated record before the observation scheme.
    viability : ViabilityRules or None
        The filter (``None``: every cell that simulates is accepted).
    ideal_clamp : bool
        Ignore the prior's recording section: ideal clamp, no noise.
    """

    model: str = "kernik2019"
    prior: str = "kernik2019_pm40"
    protocol: str = "clark2022"
    seed: int = 0
    chunk_size: int = 256
    sample_interval_ms: float = 0.1
    viability: ViabilityRules | None = field(default_factory=ViabilityRules)
    ideal_clamp: bool = False

    def __post_init__(self) -> None:
        for name in ("seed", "chunk_size"):
            value = getattr(self, name)
            if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 0:
                raise ValueError(f"{name} must be a non-negative integer, got {value!r}")
        if self.chunk_size == 0:
            raise ValueError("chunk_size must be at least 1")


class _Setup:
    """The loaded objects of a spec (one per process: loading compiles or reads kernels)."""

    def __init__(self, spec: DatasetSpec):
        self.spec = spec
        self.model: CellModel = load_model(spec.model)
        prior: Prior = load_prior(spec.prior)
        self.prior = prior.without_recording() if spec.ideal_clamp else prior
        if Path(self.model.path).resolve() != Path(load_model(self.prior.model).path).resolve():
            raise ValueError(
                f"prior '{spec.prior}' is for model '{self.prior.model}', not '{spec.model}'"
            )
        self.protocol: Protocol = load_protocol(spec.protocol)
        self.scheme = ObservationScheme.for_protocol(self.protocol, spec.sample_interval_ms)

    def manifest(self) -> dict[str, Any]:
        from . import __version__

        spec = self.spec
        return {
            "format": _FORMAT,
            "model": {"name": self.model.name, "file_sha256": self.model.file_hash},
            "prior": {"hash": self.prior.content_hash(), **self.prior.to_dict()},
            "protocol": {"hash": self.protocol.content_hash(), **self.protocol.to_dict()},
            "observation": self.scheme.to_dict(),
            "recording": {
                "ideal_clamp": spec.ideal_clamp,
                "names": list(self.prior.recording_names),
                "dt_ms": DT_MS,
                "sample_interval_ms": spec.sample_interval_ms,
            },
            "viability": None if spec.viability is None else spec.viability.to_dict(),
            "seed": spec.seed,
            "chunk_size": spec.chunk_size,
            "parameter_names": list(self.prior.names),
            "status_codes": list(STATUS),
            "storage_dtype": np.dtype(STORAGE_DTYPE).name,
            "versions": {"sbi_twins": __version__, "codegen": CODEGEN_VERSION},
        }


_SETUPS: dict[DatasetSpec, _Setup] = {}


def _setup(spec: DatasetSpec) -> _Setup:
    if spec not in _SETUPS:
        _SETUPS[spec] = _Setup(spec)
    return _SETUPS[spec]


# -- one chunk ---------------------------------------------------------------------------------
def simulate_chunk(spec: DatasetSpec, k: int) -> dict[str, np.ndarray | pd.DataFrame]:
    """Draw and simulate chunk ``k`` of a dataset (pure: depends on ``spec`` and ``k`` only)."""
    s = _setup(spec)
    rng = np.random.default_rng([spec.seed, k])
    theta = s.prior.sample(spec.chunk_size, seed=rng)
    seeds = rng.integers(0, 2**63 - 1, size=spec.chunk_size, dtype=np.int64)
    cells = s.prior.with_fixed(theta)
    model_columns = [c for c in cells.columns if not c.startswith(PREFIX)]
    status = np.zeros(spec.chunk_size, dtype=np.int8)
    viability = None
    if spec.viability is not None:
        viability = check_viability(s.model, cells[model_columns], spec.viability)
        status[:] = [STATUS.index(r) if r != "ok" else 0 for r in viability["reason"]]
    chosen = np.flatnonzero(status == 0)
    observations = np.empty((0, len(s.scheme)), dtype=STORAGE_DTYPE)
    if chosen.size:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", SimulationWarning)  # failures are recorded below
            current = simulate_recordings(
                s.model, s.protocol, cells.iloc[chosen], seeds[chosen], spec.sample_interval_ms
            )
        observed = s.scheme.apply(current, allow_nonfinite=True)
        finite = np.isfinite(observed).all(axis=1)
        status[chosen[~finite]] = STATUS.index("simulation_failed")
        observations = observed[finite].astype(STORAGE_DTYPE)
    return {
        "theta": theta[list(s.prior.names)].to_numpy(dtype=float),
        "seeds": seeds,
        "status": status,
        "observations": observations,
        "viability": viability,
    }


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


# -- executors ---------------------------------------------------------------------------------
def _single_thread_numba() -> None:
    """Worker-process initialiser: one process per core, so one Numba thread per process."""
    import numba

    numba.set_num_threads(1)


class _Executor:
    """Runs ``_run_chunk`` calls: in this process, in local processes, or on a Dask cluster."""

    def __init__(self, workers: int, dask_address: str | None):
        self._dask = None
        self._pool: futures.Executor | None = None
        if dask_address is not None:
            from distributed import Client

            self._dask = Client(dask_address)
            self.slots = max(1, sum(self._dask.nthreads().values()))
        elif workers > 1:
            import multiprocessing

            self._pool = futures.ProcessPoolExecutor(
                workers,
                mp_context=multiprocessing.get_context("spawn"),  # no fork of Numba's threads
                initializer=_single_thread_numba,
            )
            self.slots = workers
        else:
            self.slots = 1

    def submit(self, spec: DatasetSpec, k: int, directory: str):
        if self._dask is not None:
            return self._dask.submit(_run_chunk, spec, k, directory, pure=False)
        if self._pool is not None:
            return self._pool.submit(_run_chunk, spec, k, directory)
        done: futures.Future = futures.Future()
        try:
            done.set_result(_run_chunk(spec, k, directory))
        except BaseException as e:  # noqa: BLE001 - delivered through the future, as a pool would
            done.set_exception(e)
        return done

    def wait_any(self, pending: set) -> tuple[set, set]:
        if self._dask is not None:
            from distributed import wait

            result = wait(list(pending), return_when="FIRST_COMPLETED")
            return set(result.done), set(result.not_done)
        return futures.wait(pending, return_when=futures.FIRST_COMPLETED)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
        if self._dask is not None:
            self._dask.close()


# -- the dataset -------------------------------------------------------------------------------
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
    if not isinstance(n, (int, np.integer)) or isinstance(n, bool) or n <= 0:
        raise ValueError(f"n must be a positive integer (the number of cells), got {n!r}")
    spec = spec or DatasetSpec()
    directory = Path(out)
    manifest = _setup(spec).manifest()
    _prepare(directory, manifest)
    _check_free_space(directory, n, manifest)
    done = _finished_chunks(directory)
    workers = (os.cpu_count() or 1) if workers is None else workers
    if not isinstance(workers, int) or workers < 1:
        raise ValueError(f"workers must be a positive integer, got {workers!r}")
    bar = _progress_bar(n, progress)
    bar.update(min(n, _accepted_prefix(done)))
    executor = _Executor(workers, dask_address)
    pending: dict[Any, int] = {}
    next_chunk = 0
    try:
        while _accepted_prefix(done) < n:
            rate = _acceptance(done, spec)
            projected = sum(c["accepted"] for c in done.values())
            projected += rate * spec.chunk_size * len(pending)
            while len(pending) < 2 * executor.slots and (projected < n or not pending):
                while next_chunk in done:
                    next_chunk += 1
                pending[executor.submit(spec, next_chunk, str(directory))] = next_chunk
                next_chunk += 1
                projected += rate * spec.chunk_size
            finished, _ = executor.wait_any(set(pending))
            for future in finished:
                counts = future.result()
                done[pending.pop(future)] = counts
                before = bar.n
                bar.update(max(0, min(n, _accepted_prefix(done)) - before))
                bar.set_postfix(acceptance=f"{_acceptance(done, spec):.0%}", refresh=False)
    finally:
        bar.close()
        executor.close()
    _write_json(directory / "size.json", {"n": n})
    return Dataset(directory)


def _prepare(directory: Path, manifest: dict[str, Any]) -> None:
    """Create the directory with its manifest, or check an existing one and clean up."""
    path = directory / _MANIFEST
    if path.exists():
        existing = json.loads(path.read_text())
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
        _write_json(path, manifest)
    for leftover in (directory / "chunks").glob("*.tmp-*"):  # shards a killed run left half done
        shutil.rmtree(leftover, ignore_errors=True)


def manifest_differences(existing: dict, requested: dict, where: str = "") -> list[str]:
    """Human-readable list of the fields that differ between two manifests (or parts of them),
    e.g. ``["protocol: clark2022 (hash 3f2a...) vs staircase (hash 91bc...)"]``."""
    out = []
    for key in sorted(set(existing) | set(requested)):
        a, b = existing.get(key), requested.get(key)
        label = f"{where}{key}"
        if isinstance(a, dict) and isinstance(b, dict):
            if key in ("prior", "protocol", "observation") and a.get("hash") != b.get("hash"):
                out.append(f"{label}: {_short(a)} vs {_short(b)}")
            else:
                out += manifest_differences(a, b, label + ".")
        elif a != b:
            out.append(f"{label}: {_short(a)} vs {_short(b)}")
    return out


def _short(value: Any) -> str:
    if isinstance(value, dict):
        name = value.get("name") or value.get("protocol_name") or value.get("description") or ""
        return f"{name} (hash {str(value.get('hash', ''))[:12]})".strip()
    text = json.dumps(value)
    return text if len(text) < 80 else text[:77] + "..."


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


def _finished_chunks(directory: Path) -> dict[int, dict[str, int]]:
    done = {}
    for marker in (directory / "chunks").glob("[0-9]*/done.json"):
        counts = json.loads(marker.read_text())
        done[int(counts["chunk"])] = counts
    return done


def _accepted_prefix(done: dict[int, dict[str, int]]) -> int:
    """Accepted cells in the finished chunks 0, 1, 2... up to the first missing one."""
    total, k = 0, 0
    while k in done:
        total += done[k]["accepted"]
        k += 1
    return total


def _acceptance(done: dict[int, dict[str, int]], spec: DatasetSpec) -> float:
    candidates = sum(c["candidates"] for c in done.values())
    if candidates == 0:
        return 0.35 if spec.viability is not None else 1.0  # measured rates, before any data
    return max(sum(c["accepted"] for c in done.values()) / candidates, 0.01)


def _progress_bar(n: int, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=n, unit="cell", disable=not enabled, smoothing=0.1, dynamic_ncols=True)


def _write_json(path: Path, data: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
    os.replace(tmp, path)


# -- reading -----------------------------------------------------------------------------------
class ChunkedArray:
    """A read-only (N, L) array over memory-mapped shards; indexing reads only what it needs.

    Supports ``len``, ``shape``, ``dtype``, integer and slice row indexing, integer-array row
    indexing (any order) and ``numpy.asarray`` (which does load everything).
    """

    def __init__(self, parts: list[np.ndarray]):
        self._parts = parts
        self._offsets = np.cumsum([0] + [p.shape[0] for p in parts])
        width = parts[0].shape[1] if parts else 0
        self.shape = (int(self._offsets[-1]), width)
        self.dtype = parts[0].dtype if parts else np.dtype(STORAGE_DTYPE)

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, index):
        rows, columns = index if isinstance(index, tuple) else (index, slice(None))
        if isinstance(rows, (int, np.integer)):
            if not -len(self) <= rows < len(self):
                raise IndexError(f"row {rows} out of range for {len(self)} cells")
            rows %= len(self)
            part = np.searchsorted(self._offsets, rows, side="right") - 1
            return np.array(self._parts[part][rows - self._offsets[part]][columns])
        rows = np.arange(len(self))[rows] if isinstance(rows, slice) else np.asarray(rows)
        if rows.dtype == bool:
            rows = np.flatnonzero(rows)
        if rows.size and (rows.min() < -len(self) or rows.max() >= len(self)):
            raise IndexError(f"row index out of range for {len(self)} cells")
        rows = rows % max(len(self), 1)
        out = np.empty((rows.size, self.shape[1]), dtype=self.dtype)
        parts = np.searchsorted(self._offsets, rows, side="right") - 1
        for part in np.unique(parts):
            where = np.flatnonzero(parts == part)
            out[where] = self._parts[part][rows[where] - self._offsets[part]]
        return out[:, columns]

    def __array__(self, dtype=None, copy=None):
        out = self[:]
        return out if dtype is None else out.astype(dtype)

    def batches(self, size: int) -> Iterator[np.ndarray]:
        """Consecutive row blocks of at most ``size`` rows (for streaming over the whole set)."""
        for start in range(0, len(self), size):
            yield self[start : start + size]


class Dataset:
    """A dataset written by :func:`simulate_dataset` (use :func:`open_dataset`).

    Attributes
    ----------
    manifest : dict
        What made it (model, prior, protocol, observation scheme, versions...).
    parameters : DataFrame
        (N, D) parameters of the accepted cells (prior names as columns).
    observations : ChunkedArray
        (N, L) observation vectors, memory-mapped.
    seeds : ndarray
        (N,) per-cell noise seeds.
    candidates : DataFrame
        Every draw made: chunk, parameters, status (accepted or the reason it was not).
    """

    def __init__(self, directory: str | os.PathLike):
        self.directory = Path(directory)
        path = self.directory / _MANIFEST
        if not path.exists():
            raise FileNotFoundError(
                f"{self.directory} is not a dataset (no {_MANIFEST}); make one with "
                "`sbi-twins simulate --out DIR`"
            )
        self.manifest: dict[str, Any] = json.loads(path.read_text())
        size = self.directory / "size.json"
        target = json.loads(size.read_text())["n"] if size.exists() else math.inf
        done = _finished_chunks(self.directory)
        self.complete = _accepted_prefix(done) >= target
        chunks, total = [], 0
        while len(chunks) in done and total < target:
            total += done[len(chunks)]["accepted"]
            chunks.append(len(chunks))
        self._n = int(min(total, target))
        self._chunks = chunks

    def _load(self, name: str, mmap: bool = False) -> list[np.ndarray]:
        mode = "r" if mmap else None
        return [
            np.load(self.directory / "chunks" / f"{k:06d}" / f"{name}.npy", mmap_mode=mode)
            for k in self._chunks
        ]

    def __len__(self) -> int:
        return self._n

    def __repr__(self) -> str:
        state = "" if self.complete else ", incomplete"
        return f"Dataset({str(self.directory)!r}, {self._n} cells{state})"

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self.manifest["parameter_names"])

    def _accepted(self, name: str) -> np.ndarray:
        status = self._load("status")
        values = self._load(name)
        picked = [v[s == 0] for v, s in zip(values, status, strict=True)]
        return np.concatenate(picked)[: self._n] if picked else np.empty(0)

    @functools.cached_property
    def parameters(self) -> pd.DataFrame:
        theta = self._accepted("theta").reshape(-1, len(self.names))
        return pd.DataFrame(theta, columns=list(self.names))

    @functools.cached_property
    def seeds(self) -> np.ndarray:
        return self._accepted("seeds")

    @property
    def observations(self) -> ChunkedArray:
        parts = self._load("observations", mmap=True)
        kept, remaining = [], self._n
        for part in parts:
            kept.append(part[: min(part.shape[0], remaining)])
            remaining -= kept[-1].shape[0]
        return ChunkedArray(kept)

    @property
    def candidates(self) -> pd.DataFrame:
        """Every draw of the chunks in use, with its chunk and status."""
        theta, status = self._load("theta"), self._load("status")
        frame = pd.DataFrame(
            np.concatenate(theta) if theta else np.empty((0, len(self.names))),
            columns=list(self.names),
        )
        codes = np.concatenate(status) if status else np.empty(0, int)
        frame.insert(0, "status", [self.manifest["status_codes"][c] for c in codes])
        frame.insert(0, "chunk", np.repeat(self._chunks, [s.size for s in status]))
        return frame

    @property
    def acceptance_rate(self) -> float:
        status = self._load("status")
        total = sum(s.size for s in status)
        return float(sum((s == 0).sum() for s in status) / total) if total else math.nan


def open_dataset(directory: str | os.PathLike) -> Dataset:
    """Open a dataset written by ``sbi-twins simulate`` (or :func:`simulate_dataset`)."""
    return Dataset(directory)
