"""Synthetic training sets on disk: their layout, and reading them (:func:`open_dataset`).

They are written by :func:`sbi_twins.data.simulate_dataset`, chunked, resumable and
deterministic, locally or on a Dask cluster.

Layout of a dataset directory::

    DIR/manifest.json           what made it (model, prior, protocol, observation scheme,
                                recording model, viability rules, seed, chunk size, versions)
    DIR/chunks/000000/          one shard per chunk of candidate draws
        theta.npy               (C, D) all candidates' parameters, float64, prior.names order
        seeds.npy               (C,) per-cell noise seeds
        status.npy              (C,) int8: index into STATUS (0 = accepted)
        observations.npy        (A, L) float32, the accepted candidates only, in order
        viability.csv           the filter's measurements (when the filter is on)
        done.json               counts and the sha256 of each file above; written last
    DIR/size.json               the number of cells asked for (written when a run finishes)

**Deterministic.** Chunk ``k`` draws its ``C`` candidates from ``numpy.random.default_rng([seed,
k])``; nothing about it depends on which worker ran it, when, or next to what. The dataset is
the first ``n`` accepted cells in chunk order, so the same command gives bit-identical data for
any number of workers and any completion order.

**Resumable.** A shard is written into a temporary directory and renamed into place when
complete (an atomic step on POSIX file systems), so a killed run leaves either a whole shard or a
temporary directory, which the next run deletes and redoes. Rerunning the same command skips the
finished chunks: nothing is lost or computed twice. A run with other settings into the same
directory is refused with a list of what differs.

**Checked.** Every ``done.json``, the manifest and ``size.json`` are validated when a dataset is
opened, and each shard file when it is first read in a process (:data:`_VERIFIED`): its header and
size, its sha256 against ``done.json`` (about 1.4 GB/s; datasets written before checksums were
recorded are read without), its shape against the counts and, for a shard without a checksum, that
its values are finite. A damaged chunk is reported as :class:`DatasetDamagedError` naming the chunk,
the file and what is wrong, with the cure: delete the chunk directory and rerun the same
``sbi-twins simulate`` command, which redoes exactly that chunk. :meth:`Dataset.verify` checks
every shard in full, whatever was checked before.
"""

from __future__ import annotations

import functools
import json
import math
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .._util import file_sha256, is_integer
from .spec import DATASET_FORMAT
from .windows import STORAGE_DTYPE

#: The file that says what made a dataset directory.
MANIFEST = "manifest.json"
#: The file that marks a chunk finished: its counts and the sha256 of its files.
DONE = "done.json"
#: The array files of a chunk, by name (``<name>.npy``).
SHARD_ARRAYS = ("theta", "seeds", "status", "observations")
#: Manifest fields this module reads, and their types.
_MANIFEST_FIELDS = {
    "parameter_names": list,
    "status_codes": list,
    "observation": dict,
    "chunk_size": int,
    "storage_dtype": str,
}
#: Shard files checked in this process, as ``(path, size, mtime_ns)``: each is checked once.
_VERIFIED: set[tuple[str, int, int]] = set()


class DatasetMismatchError(ValueError):
    """A dataset directory was made with other settings than the ones asked for."""


class DatasetDamagedError(ValueError):
    """A file of a dataset directory is damaged; the message names it and the cure."""


def chunk_directory(directory: Path, k: int) -> Path:
    """The directory of chunk ``k`` of a dataset."""
    return Path(directory) / "chunks" / f"{k:06d}"


def damaged_chunk(directory: Path, k: int, what: str) -> DatasetDamagedError:
    """The error for a damaged chunk: which, what is wrong, and how to redo it."""
    folder = chunk_directory(directory, k)
    return DatasetDamagedError(
        f"chunk {k} of {directory} is damaged ({what}): delete {folder} and rerun the same "
        "`sbi-twins simulate` command to redo it"
    )


def read_manifest(path: Path) -> dict[str, Any]:
    """A dataset's manifest, refused if unreadable, incomplete or of another dataset format."""
    try:
        manifest = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise _damaged_manifest(path, f"not a readable dataset manifest ({e})") from None
    if not isinstance(manifest, dict) or "format" not in manifest:
        raise _damaged_manifest(path, "not a readable dataset manifest (no 'format' field)")
    found = manifest["format"]
    if found != DATASET_FORMAT:
        raise ValueError(
            f"{path.parent} is a dataset of format {found!r}; this sbi-twins reads format "
            f"{DATASET_FORMAT}. Regenerate it with `sbi-twins simulate`"
        )
    for key, kind in _MANIFEST_FIELDS.items():
        if not isinstance(manifest.get(key), kind):
            raise _damaged_manifest(path, f"its field {key!r} is missing or not a {kind.__name__}")
    if not is_integer(manifest["observation"].get("length")):
        raise _damaged_manifest(path, "its field 'observation.length' is missing")
    return manifest


def _damaged_manifest(path: Path, what: str) -> DatasetDamagedError:
    return DatasetDamagedError(
        f"{path} is {what}. It is written once, when the dataset is started, and records the "
        "settings that made the shards, which the shards alone cannot tell: restore it from a "
        f"backup or a copy of the dataset, or delete {path.parent} and rerun `sbi-twins simulate`"
    )


def read_size(directory: Path) -> float:
    """The number of cells asked for (``size.json``), or infinity while no run has finished."""
    path = Path(directory) / "size.json"
    if not path.exists():
        return math.inf
    try:
        n = json.loads(path.read_text()).get("n")
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError) as e:
        n = e
    if not is_integer(n) or n < 1:
        raise DatasetDamagedError(
            f"{path} is damaged (it should hold {{\"n\": <cells>}}): delete it and rerun the "
            "`sbi-twins simulate` command that made the dataset, which writes it again"
        )
    return n


def manifest_differences(existing: dict, requested: dict, where: str = "") -> list[str]:
    """Human-readable list of the fields that differ between two manifests (or parts of them),
    e.g. ``["protocol: clark2022 (hash 3f2a...) vs staircase (hash 91bc...)"]``.
    """
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


def finished_chunks(directory: Path, chunk_size: int | None = None) -> dict[int, dict[str, Any]]:
    """The ``done.json`` records of the finished chunks of a dataset directory, by chunk number.

    Only directories named by a chunk number count (``000012``; not the temporary
    ``000012.tmp-<pid>`` of a running or killed worker).

    Raises
    ------
    DatasetDamagedError
        A ``done.json`` that is not valid JSON or not a valid record (for ``chunk_size``: of
        another number of candidates).
    """
    done = {}
    chunks = Path(directory) / "chunks"
    if not chunks.is_dir():
        return done
    for folder in chunks.iterdir():
        if folder.name.isdigit() and (folder / DONE).exists():
            k = int(folder.name)
            done[k] = read_done(directory, k, chunk_size)
    return done


def read_done(directory: Path, k: int, chunk_size: int | None = None) -> dict[str, Any]:
    """The validated ``done.json`` of chunk ``k`` (see :func:`finished_chunks`)."""
    path = chunk_directory(directory, k) / DONE
    try:
        record = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise damaged_chunk(directory, k, f"{DONE} is not readable JSON: {e}") from None
    problem = _done_problem(record, k, chunk_size)
    if problem:
        raise damaged_chunk(directory, k, f"{DONE} {problem}")
    return record


def _done_problem(record: Any, k: int, chunk_size: int | None) -> str | None:
    if not isinstance(record, dict):
        return "is not a JSON object"
    for key in ("chunk", "candidates", "accepted"):
        if not is_integer(record.get(key)) or record[key] < 0:
            return f"has no count {key!r}"
    if record["chunk"] != k:
        return f"is the record of chunk {record['chunk']}"
    if record["accepted"] > record["candidates"]:
        return "counts more accepted cells than candidates"
    if chunk_size is not None and record["candidates"] != chunk_size:
        return f"counts {record['candidates']} candidates; the chunk size is {chunk_size}"
    digests = record.get("sha256", {})
    if not isinstance(digests, dict) or not all(
        isinstance(v, str) and len(v) == 64 for v in digests.values()
    ):
        return "has a 'sha256' entry that is not a table of file digests"
    return None


def npy_problem(path: Path) -> str | None:
    """What is wrong with a ``.npy`` file's header or length (None: nothing seen).

    Reads the header only: a damaged header, an array of Python objects, or a file shorter
    (truncated) or longer than its header says.
    """
    readers = {
        (1, 0): np.lib.format.read_array_header_1_0,
        (2, 0): np.lib.format.read_array_header_2_0,
    }
    try:
        with open(path, "rb") as f:
            version = np.lib.format.read_magic(f)
            if version not in readers:
                return None  # a newer header layout: left to numpy.load
            shape, _, dtype = readers[version](f)
            offset = f.tell()
    except Exception as e:  # noqa: BLE001 - any failure to parse these bytes is a damaged header
        return f"damaged .npy header ({type(e).__name__})"
    if dtype.hasobject:
        return "holds Python objects, not numbers"
    expected = offset + math.prod(shape) * dtype.itemsize
    actual = path.stat().st_size
    if actual < expected:
        return f"truncated ({actual:,} of {expected:,} bytes)"
    if actual > expected:
        return f"{actual - expected:,} bytes longer than its header says"
    return None


def _non_finite(name: str, array: np.ndarray) -> str | None:
    """Rows of a float shard with NaN or infinite values, as a problem (None: all finite)."""
    if name not in ("theta", "observations") or array.size == 0:
        return None
    bad = np.flatnonzero(~np.isfinite(array).all(axis=1))
    if bad.size == 0:
        return None
    rows = ", ".join(map(str, bad[:5])) + (" ..." if bad.size > 5 else "")
    return f"NaN or infinite values in {bad.size} of its {array.shape[0]} rows (row {rows})"


def accepted_prefix(done: dict[int, dict[str, int]]) -> int:
    """Accepted cells in the finished chunks 0, 1, 2... up to the first missing one."""
    total, k = 0, 0
    while k in done:
        total += done[k]["accepted"]
        k += 1
    return total


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
    complete : bool
        Whether the run that asked for its size finished.

    Raises
    ------
    DatasetDamagedError
        On opening: a damaged manifest, ``size.json`` or ``done.json``; on first reading a
        shard: a damaged shard file (see the module docstring). The message says what to do.
    """

    def __init__(self, directory: str | os.PathLike):
        self.directory = Path(directory)
        path = self.directory / MANIFEST
        if self.directory.is_file():
            raise NotADirectoryError(
                f"{self.directory} is a file, not a dataset directory (one with {MANIFEST})"
            )
        if not path.exists():
            raise FileNotFoundError(
                f"{self.directory} is not a dataset (no {MANIFEST}); make one with "
                "`sbi-twins simulate --out DIR`"
            )
        self.manifest: dict[str, Any] = read_manifest(path)
        target = read_size(self.directory)
        done = finished_chunks(self.directory, self.manifest["chunk_size"])
        self.complete = accepted_prefix(done) >= target
        chunks, total = [], 0
        while len(chunks) in done and total < target:
            total += done[len(chunks)]["accepted"]
            chunks.append(len(chunks))
        self._n = int(min(total, target))
        self._chunks = chunks
        self._done = {k: done[k] for k in chunks}

    def _load(self, name: str, mmap: bool = False) -> list[np.ndarray]:
        return [self._shard(k, name, mmap) for k in self._chunks]

    def _shard(self, k: int, name: str, mmap: bool, *, full_check: bool = False) -> np.ndarray:
        """Array ``name`` of chunk ``k``, checked the first time this process reads the file
        (header, size, checksum or finite values, shape), or always with ``full_check``.
        """
        path = chunk_directory(self.directory, k) / f"{name}.npy"
        try:
            stat = path.stat()
        except FileNotFoundError:
            raise damaged_chunk(self.directory, k, f"{path.name} is missing") from None
        key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
        first = full_check or key not in _VERIFIED
        expected = self._done[k].get("sha256", {}).get(path.name)
        problem = npy_problem(path) if first else None
        if first and not problem and expected is not None and file_sha256(path) != expected:
            problem = "checksum mismatch"
        if problem:
            raise damaged_chunk(self.directory, k, f"{path.name}: {problem}")
        try:
            array = np.load(path, mmap_mode="r" if mmap else None)
        except (ValueError, OSError, EOFError) as e:
            raise damaged_chunk(self.directory, k, f"{path.name}: unreadable ({e})") from None
        problem = self._shape_problem(name, array, self._done[k])
        if not problem and first and (expected is None or full_check):
            # a checksummed shard is as written, and the writer keeps only finite cells
            problem = _non_finite(name, array)
        if problem:
            raise damaged_chunk(self.directory, k, f"{path.name}: {problem}")
        _VERIFIED.add(key)
        return array

    def _shape_problem(self, name: str, array: np.ndarray, counts: dict[str, Any]) -> str | None:
        """What is wrong with a shard array given its chunk's counts (None: nothing)."""
        rows = counts["accepted"] if name == "observations" else counts["candidates"]
        shape = {
            "theta": (rows, len(self.names)),
            "seeds": (rows,),
            "status": (rows,),
            "observations": (rows, self.manifest["observation"]["length"]),
        }[name]
        if array.shape != shape:
            return f"shape {array.shape}, expected {shape} from {DONE} and the manifest"
        if name == "observations" and array.dtype != np.dtype(self.manifest["storage_dtype"]):
            return f"dtype {array.dtype}, expected {self.manifest['storage_dtype']}"
        if name == "status":
            codes = len(self.manifest["status_codes"])
            if array.size and not 0 <= array.min() <= array.max() < codes:
                return "status codes out of range"
            accepted = int((array == 0).sum())
            if accepted != counts["accepted"]:
                return f"{accepted} accepted, {DONE} says {counts['accepted']}"
        return None

    def __len__(self) -> int:
        return self._n

    def __repr__(self) -> str:
        state = "" if self.complete else ", incomplete"
        return f"Dataset({str(self.directory)!r}, {self._n} cells{state})"

    @property
    def names(self) -> tuple[str, ...]:
        """Parameter names, the columns of :attr:`parameters`."""
        return tuple(self.manifest["parameter_names"])

    def _accepted(self, name: str) -> np.ndarray:
        status = self._load("status")
        values = self._load(name)
        picked = [v[s == 0] for v, s in zip(values, status, strict=True)]
        return np.concatenate(picked)[: self._n] if picked else np.empty(0)

    @functools.cached_property
    def parameters(self) -> pd.DataFrame:
        """(N, D) parameters of the accepted cells, prior names as columns."""
        theta = self._accepted("theta").reshape(-1, len(self.names))
        return pd.DataFrame(theta, columns=list(self.names))

    @functools.cached_property
    def seeds(self) -> np.ndarray:
        """(N,) per-cell noise seeds."""
        return self._accepted("seeds")

    @property
    def observations(self) -> ChunkedArray:
        """(N, L) observation vectors, memory-mapped (never loaded whole)."""
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

    def verify(self) -> dict[str, int]:
        """Check every shard in use in full, whatever this process checked before.

        Each file's header, length and shape, its sha256 where ``done.json`` records one, and
        that the parameters and observations are finite. Reads the whole dataset (about 2 s per
        GB); use it on a dataset written before checksums were recorded, or after copying one.

        Returns
        -------
        dict
            ``chunks`` checked, ``checksummed`` (of them, those with recorded checksums) and
            ``cells``.

        Raises
        ------
        DatasetDamagedError
            Listing every damaged chunk, with the cure for each.
        """
        problems = []
        for k in self._chunks:
            try:
                for name in SHARD_ARRAYS:
                    self._shard(k, name, mmap=True, full_check=True)
                self._check_other_files(k)
            except DatasetDamagedError as e:
                problems.append(str(e))
        if problems:
            raise DatasetDamagedError(
                f"{len(problems)} damaged chunk(s) in {self.directory}:\n  " + "\n  ".join(problems)
            )
        checksummed = sum(bool(self._done[k].get("sha256")) for k in self._chunks)
        return {"chunks": len(self._chunks), "checksummed": checksummed, "cells": len(self)}

    def _check_other_files(self, k: int) -> None:
        """The checksums of a chunk's files other than its arrays (its viability table)."""
        folder = chunk_directory(self.directory, k)
        for name, expected in self._done[k].get("sha256", {}).items():
            if name in {f"{a}.npy" for a in SHARD_ARRAYS}:
                continue
            if not (folder / name).exists():
                raise damaged_chunk(self.directory, k, f"{name} is missing")
            if file_sha256(folder / name) != expected:
                raise damaged_chunk(self.directory, k, f"{name}: checksum mismatch")

    @property
    def acceptance_rate(self) -> float:
        """Share of the candidate draws that were accepted."""
        status = self._load("status")
        total = sum(s.size for s in status)
        return float(sum((s == 0).sum() for s in status) / total) if total else math.nan


def open_dataset(directory: str | os.PathLike) -> Dataset:
    """Open a dataset written by ``sbi-twins simulate`` (or :func:`simulate_dataset`).

    Opening validates the manifest and the chunk records; each shard is checked when this
    process first reads it (checksum, or finite values for shards written before checksums were
    recorded), which costs 15-30 ms per 1,000 cells (``benchmarks/faults.py``). For a full
    scan whatever was read before (e.g. after copying a dataset), call :meth:`Dataset.verify`.

    Raises
    ------
    FileNotFoundError
        ``directory`` holds no dataset.
    DatasetDamagedError
        A damaged manifest, ``size.json`` or ``done.json`` (the message names it and the cure).
    ValueError
        A dataset of another format.
    """
    return Dataset(directory)
