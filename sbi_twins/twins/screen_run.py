"""Running a screen: a block of twins in this process, or chunks of them on worker processes or
a Dask cluster, resumable from a directory.

:func:`~sbi_twins.twins.screen.screen` checks its inputs into a :class:`ScreenPlan`;
:func:`screen_block` settles a plan's twins and screens them at every dose. A screen of
thousands of twins at several doses runs for many minutes (BENCHMARKS.md, "Drug screens"), so
:func:`screen_in_chunks` splits the twins into chunks of ``chunk_twins``, each a block run by one
worker through the executor of dataset generation (:class:`~sbi_twins.data.executors.Executor`).
A (twin, dose) depends on that twin alone, so the outcomes equal those of one block.

With a directory, each finished chunk is written there (``chunks/<k>.csv``, atomically) by the
main process: workers return tables and need no shared file system. ``screen.json`` records
what the screen is (model file, drug, doses, settings, a hash of the twins, chunk size, package
version); rerunning the same screen skips the chunks already written, and a different one is
refused. When all chunks are in, ``outcomes.csv`` holds the whole table.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from .. import _resources
from .._util import atomic_write, atomic_write_json, check_integer, package_version
from ..data.dataset import manifest_differences
from ..data.executors import Executor
from ..engine import CellModel, load_model
from ..physiology.eads import EADCriterion, detect_eads
from .drugs import Drug, blocked_parameters, fraction_remaining
from .population import (
    META_COLUMNS,
    fill_failed_states,
    parameter_columns,
    settle,
    trace_features,
)

__all__ = ["SCREEN_MANIFEST", "ScreenPlan", "screen_block", "screen_in_chunks"]

#: The record of what a screen directory holds.
SCREEN_MANIFEST = "screen.json"
#: Twins per chunk of a new screen.
CHUNK_TWINS = 256
#: The whole outcome table, written when every chunk is in.
OUTCOMES = "outcomes.csv"
#: Outcome columns that a CSV round trip would not type as the screen does.
_TYPES = {
    "outcome": "str",
    "ead": bool,
    "repolarisation_failure": bool,
    "n_ead_events": "Int64",
    "n_beats": "Int64",
}


@dataclass(frozen=True)
class ScreenPlan:
    """Everything that screening a block of twins needs, checked once by :func:`screen`."""

    twins: pd.DataFrame  # checked twin table (make_twins)
    potencies: pd.DataFrame  # per twin: <channel>.ic50_nM and <channel>.hill
    doses: np.ndarray  # nM
    channels: dict[str, tuple[str, ...]]  # the applied channels and their model parameters
    criterion: EADCriterion
    cycle_length_ms: float | None
    settle_ms: float
    duration_ms: float
    window_ms: float
    sample_interval_ms: float
    batch_size: int

    def block(self, rows: slice) -> ScreenPlan:
        """The plan of the twins in ``rows`` (positions in :attr:`twins`)."""
        return replace(
            self, twins=self.twins.iloc[rows], potencies=self.potencies.iloc[rows]
        )


def screen_block(
    model: CellModel, plan: ScreenPlan, *, progress: bool = False, label: str = "screen"
) -> pd.DataFrame:
    """Settle the plan's twins and screen them at every dose: the outcome rows, dose by dose
    (twins in the plan's order within a dose). Each (twin, dose) depends on that twin alone,
    so a block of twins gets the rows it would have in a screen of all of them.
    """
    twins, potencies = plan.twins, plan.potencies
    states = settle(model, twins, cycle_length_ms=plan.cycle_length_ms,
                    settle_ms=plan.settle_ms, batch_size=plan.batch_size, progress=progress)
    params = twins[parameter_columns(twins)]
    n_twins = len(twins)
    jobs = len(plan.doses) * n_twins
    start_ms = plan.duration_ms - plan.window_ms
    start = math.ceil(start_ms / plan.sample_interval_ms - 1e-9)  # as detect_eads
    tables = []
    bar = tqdm(total=jobs, desc=label, unit="sim", disable=not progress)
    for first in range(0, jobs, plan.batch_size):
        job = np.arange(first, min(first + plan.batch_size, jobs))
        twin, dose = job % n_twins, plan.doses[job // n_twins]
        fractions = {
            channel: fraction_remaining(
                dose,
                potencies[f"{channel}.ic50_nM"].to_numpy()[twin],
                potencies[f"{channel}.hill"].to_numpy()[twin],
            )
            for channel in plan.channels
        }
        blocked = blocked_parameters(model, params.iloc[twin], fractions, plan.channels)
        V = model.simulate_ap(
            blocked,
            duration_ms=plan.duration_ms,
            sample_interval_ms=plan.sample_interval_ms,
            cycle_length_ms=plan.cycle_length_ms,
            initial_state=fill_failed_states(states[twin], model),
        )
        V[~np.isfinite(states[twin]).all(axis=1)] = np.nan  # settling failed
        verdict = detect_eads(V, plan.sample_interval_ms, plan.criterion, start_ms=start_ms)
        features = trace_features(V[:, start:], plan.sample_interval_ms,
                                  plan.criterion.threshold_mV)
        # oscillations of a cell that fails to repolarise cross the beat threshold, but are no APs
        features[~verdict["outcome"].isin(["normal", "ead"]).to_numpy()] = np.nan
        ids = twins[list(META_COLUMNS)].iloc[twin].reset_index(drop=True)
        remaining = pd.DataFrame({f"{c}_remaining": f for c, f in fractions.items()})
        tables.append(pd.concat(
            [ids.assign(dose_nM=dose), verdict, features.drop(columns="n_beats"), remaining],
            axis=1,
        ))
        bar.update(len(job))
    bar.close()
    return pd.concat(tables, ignore_index=True)


def screen_in_chunks(
    model: CellModel,
    plan: ScreenPlan,
    drug: Drug,
    settings: dict,
    *,
    out: str | os.PathLike | None,
    workers: int,
    dask_address: str | None,
    chunk_twins: int | None,
    progress: bool,
) -> pd.DataFrame:
    """The outcome table of ``plan`` (a :class:`ScreenPlan`), screened chunk by chunk (module
    docstring); rows ordered as one block's, dose by dose. ``chunk_twins`` None: the screen
    directory's, else :data:`CHUNK_TWINS`.
    """
    workers = check_integer("workers", workers, minimum=1)
    directory = None if out is None else Path(out)
    if chunk_twins is None:
        chunk_twins = _recorded_chunk_twins(directory) or CHUNK_TWINS
    chunk_twins = check_integer("chunk_twins", chunk_twins, minimum=1)
    n_twins = len(plan.twins)
    starts = range(0, n_twins, chunk_twins)
    blocks = [slice(start, min(start + chunk_twins, n_twins)) for start in starts]
    done: dict[int, pd.DataFrame] = {}
    if directory is not None:
        manifest = _manifest(model, plan, drug, settings, chunk_twins)
        _prepare(directory, manifest)
        for k, rows in enumerate(blocks):
            table = _read_chunk(directory, k, plan.block(rows))
            if table is not None:
                done[k] = table
    bar = tqdm(total=n_twins, desc=f"screen {drug.name}", unit="twin", disable=not progress)
    bar.update(sum(blocks[k].stop - blocks[k].start for k in done))
    executor = Executor(workers, dask_address)
    try:
        todo = [k for k in range(len(blocks)) if k not in done]
        source = _model_source(model)
        # in this process a chunk runs as it is submitted, and a Ctrl-C reaches its future:
        # one at a time, so that it stops the run at once and each chunk is written as it ends
        depth = 1 if workers == 1 and dask_address is None else 2 * executor.slots
        pending: dict = {}
        while todo or pending:
            while todo and len(pending) < depth:
                k = todo.pop(0)
                pending[executor.submit(_screen_chunk, source, model.file_hash,
                                        plan.block(blocks[k]))] = k
            finished, _ = executor.wait_any(set(pending))
            failure = None
            for future in finished:  # keep every finished chunk before an error stops the run
                k = pending.pop(future)
                try:
                    done[k] = future.result()
                except BaseException as error:  # noqa: BLE001 - raised below, after the others
                    failure = failure or error
                    continue
                if directory is not None:
                    _write_chunk(directory, k, done[k])
                bar.update(blocks[k].stop - blocks[k].start)
            if failure is not None:
                raise failure
    except BaseException:
        executor.close(abort=True)  # Ctrl-C or an error: stop the workers now
        raise
    else:
        executor.close()
    finally:
        bar.close()
    outcomes = _assemble([done[k] for k in range(len(blocks))], plan.doses)
    if directory is not None:
        atomic_write(directory / OUTCOMES, lambda tmp: outcomes.to_csv(tmp, index=False))
    return outcomes


def _screen_chunk(model_source: str, file_hash: str, plan: ScreenPlan) -> pd.DataFrame:
    """One chunk, in a worker: the model loaded there (checked to be the same file)."""
    try:
        model = load_model(model_source)
    except FileNotFoundError:
        raise ValueError(
            f"a worker has no model file {model_source}: a model that is not bundled must be at "
            "the same path on every worker"
        ) from None
    if model.file_hash != file_hash:
        raise ValueError(
            f"the worker's model file {model.path} is not the one the screen started with "
            f"(sha256 {model.file_hash[:12]}..., expected {file_hash[:12]}...): give every "
            "worker the same file"
        )
    return screen_block(model, plan)


def _model_source(model: CellModel) -> str:
    """A bundled model by name (any installation resolves it), another by its path."""
    bundled = _resources.bundled_dir("simulators") / model.path.name
    if bundled.is_file() and bundled.resolve() == model.path.resolve():
        return model.name
    return str(model.path.resolve())


def _assemble(tables: list[pd.DataFrame], doses: np.ndarray) -> pd.DataFrame:
    """Chunk tables (each dose by dose) -> one table dose by dose, twins in chunk order."""
    stacked = pd.concat(tables, ignore_index=True)
    dose_index = {float(d): i for i, d in enumerate(doses)}
    order = np.lexsort((np.arange(len(stacked)), stacked["dose_nM"].map(dose_index).to_numpy()))
    return stacked.iloc[order].reset_index(drop=True)


def _manifest(
    model: CellModel, plan: ScreenPlan, drug: Drug, settings: dict, chunk_twins: int
) -> dict:
    """What a screen directory holds: everything its outcomes depend on."""
    twins = plan.twins
    digest = hashlib.sha256()
    digest.update(json.dumps([str(c) for c in twins.columns]).encode())
    digest.update(twins[list(META_COLUMNS)].astype(str).to_csv(index=False).encode())
    digest.update(np.ascontiguousarray(twins[parameter_columns(twins)], dtype=float).tobytes())
    digest.update(np.ascontiguousarray(plan.potencies, dtype=float).tobytes())
    return {
        "sbi_twins": package_version(),
        "model": model.name,
        "model_sha256": model.file_hash,
        "drug": drug.to_dict(),
        "doses_nM": [float(d) for d in plan.doses],
        "settings": settings,
        "twins": len(twins),
        "twins_sha256": digest.hexdigest(),
        "chunk_twins": chunk_twins,
    }


def _prepare(directory: Path, manifest: dict) -> None:
    """Start a screen directory, or check that it holds this screen."""
    path = directory / SCREEN_MANIFEST
    if directory.exists() and not directory.is_dir():
        raise ValueError(f"{directory} is a file, not a screen directory; give a directory")
    if path.is_file():
        recorded = _read_manifest(path)
        # the same JSON types as the file's (tuples become lists)
        differences = manifest_differences(recorded, json.loads(json.dumps(manifest)))
        if differences:
            raise ValueError(
                f"{directory} holds another screen; refusing to mix. Differences (existing vs "
                "requested):\n  " + "\n  ".join(differences) + "\nGive another output "
                "directory, or delete this one to start over"
            )
        return
    if directory.is_dir() and any(directory.iterdir()):
        raise ValueError(
            f"{directory} is not empty and holds no screen ({SCREEN_MANIFEST} is missing): "
            "give a new or empty output directory"
        )
    (directory / "chunks").mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, manifest)


def _read_manifest(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(
            f"{path} is damaged ({e}); delete {path.parent} and run the screen again"
        ) from None


def _recorded_chunk_twins(directory: Path | None) -> int | None:
    """The chunk size a screen directory was started with (None: no screen there yet)."""
    path = None if directory is None else directory / SCREEN_MANIFEST
    return _read_manifest(path)["chunk_twins"] if path is not None and path.is_file() else None


def _chunk_path(directory: Path, k: int) -> Path:
    return directory / "chunks" / f"{k:05d}.csv"


def _write_chunk(directory: Path, k: int, table: pd.DataFrame) -> None:
    atomic_write(_chunk_path(directory, k), lambda tmp: table.to_csv(tmp, index=False))


def _read_chunk(directory: Path, k: int, plan: ScreenPlan) -> pd.DataFrame | None:
    """Chunk ``k`` of a screen directory if it was written, else None. Its twins and doses
    must be the plan's: a file that does not hold them is damaged.
    """
    path = _chunk_path(directory, k)
    if not path.is_file():
        return None
    n_rows = len(plan.twins) * len(plan.doses)
    ids = plan.twins[list(META_COLUMNS)].reset_index(drop=True)
    repeated = pd.concat([ids] * len(plan.doses), ignore_index=True)
    why = None
    try:  # cell and twin as text (a CSV would read a cell named "01" as 1, or "NA" as missing)
        table = pd.read_csv(path, dtype={"cell": str, "twin": str}, keep_default_na=False,
                            na_values=[""])  # NaN is written as an empty field
        missing = sorted({"twin", "dose_nM", *_TYPES} - set(table.columns))
        if missing:
            why = f"no column {', '.join(missing)}"
        elif len(table) != n_rows:
            why = f"{len(table)} rows, expected {n_rows}"
        elif not (table["twin"].to_numpy() == repeated["twin"].astype(str).to_numpy()).all():
            why = f"other twins than chunk {k} of this screen"
        elif not np.array_equal(table["dose_nM"].to_numpy(dtype=float),
                                np.repeat(plan.doses, len(plan.twins))):
            why = "other doses than this screen's"
        else:
            table = table.astype(_TYPES)
    except (ValueError, pd.errors.ParserError) as e:
        why = str(e)
    if why is not None:
        raise ValueError(
            f"{path} is damaged ({why}): delete it and rerun the same screen; its twins are "
            "screened again"
        )
    for column in META_COLUMNS:
        table[column] = repeated[column].to_numpy()
    return table
