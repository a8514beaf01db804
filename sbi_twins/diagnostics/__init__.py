"""Layer 6, diagnostics: how far a posterior can be trusted, marginally and jointly, and the
shape of its marginals (multimodality).
"""

from .calibration import (
    LEVELS,
    coverage_table,
    gaussian_hpd_ranks,
    hpd_ranks,
    marginal_ranks,
    tarp_ranks,
    uniformity_p_value,
)
from .estimator import Diagnostics, diagnose
from .multimodality import Modes, find_modes, kernel_density, multimodal_parameters
from .temperature import TemperatureFit, calibrate_temperature

__all__ = [
    "LEVELS",
    "Diagnostics",
    "Modes",
    "TemperatureFit",
    "calibrate_temperature",
    "coverage_table",
    "diagnose",
    "find_modes",
    "gaussian_hpd_ranks",
    "hpd_ranks",
    "kernel_density",
    "marginal_ranks",
    "multimodal_parameters",
    "tarp_ranks",
    "uniformity_p_value",
]
