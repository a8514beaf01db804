"""Layer 5, inference: the trace embedding and networks, the resumable training loop, the
two-stage NPE recipe, estimator bundles, :class:`Estimator` and :class:`CellPosterior`.

Importing this package imports torch; ``import sbi_twins`` alone does not.
"""

from .config import TrainingConfig
from .estimator import Estimator, load_estimator
from .misspecification import ImplausibleRecordingError, MisspecificationWarning
from .npe import train_estimator
from .posterior import CellPosterior

__all__ = [
    "CellPosterior",
    "Estimator",
    "ImplausibleRecordingError",
    "MisspecificationWarning",
    "TrainingConfig",
    "load_estimator",
    "train_estimator",
]
