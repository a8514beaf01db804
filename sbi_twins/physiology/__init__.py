"""Layer 3, physiology: action-potential features and the viability rules of beating cells."""

from .features import FEATURE_COLUMNS, ap_features, upstroke_times
from .viability import REASONS, ViabilityRules, acceptance_summary, check_viability

__all__ = [
    "FEATURE_COLUMNS",
    "REASONS",
    "ViabilityRules",
    "acceptance_summary",
    "ap_features",
    "check_viability",
    "upstroke_times",
]
