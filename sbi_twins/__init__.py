"""sbi-twins: electrophysiological digital twins of single cells by simulation-based inference."""

from importlib.metadata import PackageNotFoundError, version

from .model import CellModel, SimulationWarning, load_model
from .prior import Prior, load_prior
from .protocol import Protocol, Segment, load_protocol
from .simulate import Dataset, DatasetSpec, open_dataset, simulate_dataset

try:
    __version__ = version("sbi-twins")
except PackageNotFoundError:  # running from a source checkout without installation
    __version__ = "0+unknown"

__all__ = [
    "CellModel",
    "Dataset",
    "DatasetSpec",
    "Prior",
    "Protocol",
    "Segment",
    "SimulationWarning",
    "__version__",
    "load_model",
    "load_prior",
    "load_protocol",
    "open_dataset",
    "simulate_dataset",
]
