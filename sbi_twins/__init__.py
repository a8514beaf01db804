"""sbi-twins: electrophysiological digital twins of single cells by simulation-based inference."""

from importlib.metadata import PackageNotFoundError, version

from .model import CellModel, SimulationWarning, load_model
from .prior import Prior, load_prior
from .protocol import Protocol, Segment, load_protocol
from .simulate import Dataset, DatasetSpec, open_dataset, simulate_dataset

_LAZY = {"CellPosterior", "Estimator", "load_estimator"}  # import torch only when used


def __getattr__(name: str):
    if name in _LAZY:
        from . import estimator

        return getattr(estimator, name)
    raise AttributeError(f"module 'sbi_twins' has no attribute {name!r}")


try:
    __version__ = version("sbi-twins")
except PackageNotFoundError:  # running from a source checkout without installation
    __version__ = "0+unknown"

__all__ = [
    "CellModel",
    "CellPosterior",
    "Estimator",
    "Dataset",
    "DatasetSpec",
    "Prior",
    "Protocol",
    "Segment",
    "SimulationWarning",
    "__version__",
    "load_estimator",
    "load_model",
    "load_prior",
    "load_protocol",
    "open_dataset",
    "simulate_dataset",
]
