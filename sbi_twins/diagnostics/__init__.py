"""Layer 6, diagnostics: how far a posterior can be trusted, marginally and jointly."""

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

__all__ = [
    "LEVELS",
    "Diagnostics",
    "coverage_table",
    "diagnose",
    "gaussian_hpd_ranks",
    "hpd_ranks",
    "marginal_ranks",
    "tarp_ranks",
    "uniformity_p_value",
]
