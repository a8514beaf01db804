"""Layer 4, data: the observation windows over a protocol, dataset specs, executors, and synthetic
training sets on disk (written by :func:`simulate_dataset`, read by :func:`open_dataset`).
"""

from .dataset import ChunkedArray, Dataset, DatasetMismatchError, open_dataset
from .generate import simulate_dataset
from .spec import STATUS, DatasetSpec, simulate_chunk
from .windows import ObservationScheme, ObservationSettings

__all__ = [
    "STATUS",
    "ChunkedArray",
    "Dataset",
    "DatasetMismatchError",
    "DatasetSpec",
    "ObservationScheme",
    "ObservationSettings",
    "open_dataset",
    "simulate_chunk",
    "simulate_dataset",
]
