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

import functools
import json
import math
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .spec import DATASET_FORMAT
from .windows import STORAGE_DTYPE

#: The file that says what made a dataset directory.
MANIFEST = "manifest.json"


class DatasetMismatchError(ValueError):
    """A dataset directory was made with other settings than the ones asked for."""


def read_manifest(path: Path) -> dict[str, Any]:
    """A dataset's manifest, refused if unreadable or of another dataset format."""
    try:
        manifest = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path} is not a readable dataset manifest ({e})") from None
    found = manifest.get("format") if isinstance(manifest, dict) else None
    if found != DATASET_FORMAT:
        raise ValueError(
            f"{path.parent} is a dataset of format {found!r}; this sbi-twins reads format "
            f"{DATASET_FORMAT}. Regenerate it with `sbi-twins simulate`"
        )
    return manifest


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


def finished_chunks(directory: Path) -> dict[int, dict[str, int]]:
    """Counts of the finished chunks of a dataset directory, by chunk number."""
    done = {}
    for marker in (directory / "chunks").glob("[0-9]*/done.json"):
        counts = json.loads(marker.read_text())
        done[int(counts["chunk"])] = counts
    return done


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
    """

    def __init__(self, directory: str | os.PathLike):
        self.directory = Path(directory)
        path = self.directory / MANIFEST
        if not path.exists():
            raise FileNotFoundError(
                f"{self.directory} is not a dataset (no {MANIFEST}); make one with "
                "`sbi-twins simulate --out DIR`"
            )
        self.manifest: dict[str, Any] = read_manifest(path)
        size = self.directory / "size.json"
        target = json.loads(size.read_text())["n"] if size.exists() else math.inf
        done = finished_chunks(self.directory)
        self.complete = accepted_prefix(done) >= target
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

    @property
    def acceptance_rate(self) -> float:
        """Share of the candidate draws that were accepted."""
        status = self._load("status")
        total = sum(s.size for s in status)
        return float(sum((s == 0).sum() for s in status) / total) if total else math.nan


def open_dataset(directory: str | os.PathLike) -> Dataset:
    """Open a dataset written by ``sbi-twins simulate`` (or :func:`simulate_dataset`)."""
    return Dataset(directory)
