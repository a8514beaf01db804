"""Layer 3, physiology: action-potential features, the viability rules of beating cells,
early afterdepolarisations, and quality control of real recordings.
"""

from .eads import OUTCOMES, EADCriterion, detect_eads
from .features import FEATURE_COLUMNS, ap_features, upstroke_times
from .qc import QC_COLUMNS, QC_RULES, QCRules, qc, qc_summary, recording_ap_features
from .viability import REASONS, ViabilityRules, acceptance_summary, check_viability

__all__ = [
    "EADCriterion",
    "FEATURE_COLUMNS",
    "OUTCOMES",
    "QCRules",
    "QC_COLUMNS",
    "QC_RULES",
    "REASONS",
    "ViabilityRules",
    "acceptance_summary",
    "ap_features",
    "check_viability",
    "detect_eads",
    "qc",
    "qc_summary",
    "recording_ap_features",
    "upstroke_times",
]
