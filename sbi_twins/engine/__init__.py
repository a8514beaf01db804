"""Layer 1, the cell-model engine: Myokit model files analysed and compiled to batched Numba
kernels (Rush-Larsen gates), cached on disk, for voltage and current clamp.
"""

from .codegen import CODEGEN_VERSION
from .model import CellModel, ParamsLike, SimulationWarning, load_model

__all__ = ["CODEGEN_VERSION", "CellModel", "ParamsLike", "SimulationWarning", "load_model"]
