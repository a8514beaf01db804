"""Layer 1, the cell-model engine: Myokit model files analysed and compiled to batched Numba
kernels (Rush-Larsen gates), cached on disk, for voltage and current clamp.
"""

from .model import CellModel, ParamsLike, SimulationWarning, load_model

__all__ = ["CellModel", "ParamsLike", "SimulationWarning", "load_model"]
