"""What makes a dataset: its spec (model, prior, protocol, seed, filter...) and one chunk of it.

Chunk ``k`` of a dataset draws its candidates from ``numpy.random.default_rng([seed, k])``;
nothing about it depends on which worker ran it, when, or next to what (see
:mod:`sbi_twins.data.dataset` for the layout on disk).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .._util import (
    check_integer,
    check_positive,
    format_bytes,
    package_version,
    physical_memory_bytes,
)
from ..engine import CODEGEN_VERSION, CellModel, SimulationWarning, load_model
from ..physiology import REASONS, ViabilityRules, check_viability
from ..prior import Prior, load_prior
from ..protocol import Protocol, load_protocol
from ..recording import DT_MS, simulate_recordings
from .windows import STORAGE_DTYPE, ObservationScheme

#: Outcome of a candidate draw, stored per cell in ``status.npy`` as its index here: the
#: viability filter's reason (:data:`sbi_twins.physiology.REASONS`), its "ok" read as accepted.
STATUS = ("accepted", *REASONS[1:])
#: Version of the dataset layout; a directory of another format is refused.
DATASET_FORMAT = 1
#: Manifest key recording that failed cells were simulated again (:attr:`DatasetSpec.retry_failed`);
#: written only when they were, so the manifests of datasets made before the retry stay valid.
RETRY_KEY = "retry_failed_cells"
#: Working memory of one cell of a chunk per sample of its simulated record, in bytes: a chunk is
#: simulated as one batch, holding the current and the membrane potential (float64) and a
#: filtered copy; measured at 16-22 bytes per sample on clark2022 (``simulate_recordings``).
BYTES_PER_CELL_SAMPLE = 24


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
    retry_failed : bool or None
        Simulate cells whose clamp integration blew up once more with the model's stiff kernel
        (see :class:`~sbi_twins.engine.CellModel`) instead of recording them as
        ``simulation_failed``. ``None`` (the default) lets
        :func:`~sbi_twins.data.simulate_dataset` decide: on for a new dataset; for an existing
        one what its manifest records, where no record (a dataset made before the retry
        existed) means off, so that such a dataset resumes bit-identically. Used directly
        (:func:`simulate_chunk`), ``None`` means on.
    """

    model: str = "kernik2019"
    prior: str = "kernik2019_pm40"
    protocol: str = "clark2022"
    seed: int = 0
    chunk_size: int = 256
    sample_interval_ms: float = 0.1
    viability: ViabilityRules | None = field(default_factory=ViabilityRules)
    ideal_clamp: bool = False
    retry_failed: bool | None = None

    def __post_init__(self) -> None:
        check_integer("seed", self.seed)
        check_integer("chunk_size", self.chunk_size, minimum=1, what="draws per shard")
        check_positive("sample_interval_ms", self.sample_interval_ms)
        if self.viability is not None and not isinstance(self.viability, ViabilityRules):
            raise ValueError(
                f"viability must be ViabilityRules or None, got {type(self.viability).__name__}"
            )
        for name in ("model", "prior", "protocol"):
            if not isinstance(getattr(self, name), str):
                raise ValueError(f"{name} must be a bundled name or a path (str)")
        if self.retry_failed is not None and not isinstance(self.retry_failed, bool):
            raise ValueError(
                f"retry_failed must be True, False or None, got {self.retry_failed!r}"
            )

    @property
    def retries(self) -> bool:
        """Whether failed cells are simulated again (``retry_failed``, ``None`` read as on)."""
        return self.retry_failed is not False


class SpecSetup:
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
        check_chunk_memory(spec, self.scheme.n_samples)

    def manifest(self) -> dict[str, Any]:
        """What makes the dataset: the manifest of its directory."""
        spec = self.spec
        retry = {RETRY_KEY: True} if spec.retries else {}  # absent: off (see RETRY_KEY)
        return {
            "format": DATASET_FORMAT,
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
            "versions": {"sbi_twins": package_version(), "codegen": CODEGEN_VERSION},
            **retry,
        }


def chunk_memory_bytes(spec: DatasetSpec, n_samples: int) -> int:
    """Working memory (bytes) of simulating one chunk: its cells' records at full rate."""
    return spec.chunk_size * n_samples * BYTES_PER_CELL_SAMPLE


def check_chunk_memory(spec: DatasetSpec, n_samples: int) -> None:
    """Refuse a chunk size whose one chunk cannot fit in this machine's memory.

    Checked when a process loads a spec (:func:`setup`), before anything is drawn. The estimate
    assumes every candidate is simulated (as with the viability filter off), so it is an upper
    bound; only chunks beyond the physical memory are refused.

    Parameters
    ----------
    spec : DatasetSpec
        The dataset's settings (chunk size).
    n_samples : int
        Samples of one cell's simulated record (the protocol at ``spec.sample_interval_ms``).

    Raises
    ------
    ValueError
        The estimate (:data:`BYTES_PER_CELL_SAMPLE` per cell and sample) exceeds the physical
        memory; the message gives the largest chunk size that fits.
    """
    total = physical_memory_bytes()
    need = chunk_memory_bytes(spec, n_samples)
    if total is None or need <= total:
        return
    fits = total // (n_samples * BYTES_PER_CELL_SAMPLE)
    raise ValueError(
        f"chunk_size {spec.chunk_size} is too large: a chunk is simulated as one batch, "
        f"{n_samples:,} samples per cell, about {format_bytes(need)}, but this machine has "
        f"{format_bytes(total)} of memory. Use a chunk size of at most {max(fits, 1):,} "
        "(the default, 256, is plenty: a chunk is only the unit of work and of resumption)"
    )


_SETUPS: dict[DatasetSpec, SpecSetup] = {}


def setup(spec: DatasetSpec) -> SpecSetup:
    """The loaded objects of ``spec``, made once per process."""
    if spec not in _SETUPS:
        _SETUPS[spec] = SpecSetup(spec)
    return _SETUPS[spec]


# -- one chunk ---------------------------------------------------------------------------------
def simulate_chunk(spec: DatasetSpec, k: int) -> dict[str, np.ndarray | pd.DataFrame]:
    """Draw and simulate chunk ``k`` of a dataset (pure: depends on ``spec`` and ``k`` only)."""
    s = setup(spec)
    rng = np.random.default_rng([spec.seed, k])
    theta = s.prior.sample(spec.chunk_size, seed=rng)
    seeds = rng.integers(0, 2**63 - 1, size=spec.chunk_size, dtype=np.int64)
    status = np.zeros(spec.chunk_size, dtype=np.int8)
    viability = None
    if spec.viability is not None:
        viability = check_viability(s.model, theta, spec.viability)
        status[:] = [REASONS.index(r) for r in viability["reason"]]
    chosen = np.flatnonzero(status == 0)
    observations = np.empty((0, len(s.scheme)), dtype=STORAGE_DTYPE)
    if chosen.size:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", SimulationWarning)  # failures are recorded below
            current = simulate_recordings(
                s.model,
                s.protocol,
                theta.iloc[chosen],
                seeds[chosen],
                spec.sample_interval_ms,
                retry=spec.retries,
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
