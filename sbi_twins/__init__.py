"""sbi-twins: electrophysiological digital twins of single cells by simulation-based inference.

The public API is the names in ``__all__`` (documented in README.md, "Public API"). The package
is layered in data-flow order: :mod:`~sbi_twins.protocol` and :mod:`~sbi_twins.engine`,
:mod:`~sbi_twins.prior` and :mod:`~sbi_twins.recording`, :mod:`~sbi_twins.physiology`,
:mod:`~sbi_twins.data`, :mod:`~sbi_twins.inference`, :mod:`~sbi_twins.twins`, and
:mod:`~sbi_twins.report` with the command line; a module imports only from its own layer or
lower ones. ``import sbi_twins`` does not import torch: the inference names load it on first use.
"""

from . import _util
from .data import Dataset, DatasetSpec, open_dataset, simulate_dataset
from .engine import CellModel, SimulationWarning, load_model
from .physiology import detect_eads
from .prior import Prior, load_prior
from .protocol import Protocol, Segment, load_protocol
from .recording import Recording, load_recording, simulate_recordings
from .twins import Drug, ScreenResult, cells_needed, load_drug, screen

_INFERENCE = {"CellPosterior", "Estimator", "TrainingConfig", "load_estimator", "train_estimator"}
_DIAGNOSTICS = {"Diagnostics", "diagnose"}


def __getattr__(name: str):
    # torch is imported only when inference is used
    if name in _INFERENCE:
        from . import inference

        return getattr(inference, name)
    if name in _DIAGNOSTICS:
        from . import diagnostics

        return getattr(diagnostics, name)
    raise AttributeError(f"module 'sbi_twins' has no attribute {name!r}")


__version__ = _util.package_version()

__all__ = [
    "CellModel",
    "CellPosterior",
    "Dataset",
    "DatasetSpec",
    "Diagnostics",
    "Drug",
    "Estimator",
    "Prior",
    "Protocol",
    "Recording",
    "ScreenResult",
    "Segment",
    "SimulationWarning",
    "TrainingConfig",
    "__version__",
    "cells_needed",
    "detect_eads",
    "diagnose",
    "load_drug",
    "load_estimator",
    "load_model",
    "load_prior",
    "load_protocol",
    "load_recording",
    "open_dataset",
    "screen",
    "simulate_dataset",
    "simulate_recordings",
    "train_estimator",
]
