"""Layer 2, recordings: the recording (amplifier artefact) model that turns simulated cells into
what a patch-clamp amplifier records, and the vocabulary of its parameters.
"""

from .artefacts import DT_MS, simulate_recordings
from .parameters import IDEAL, PREFIX, RANGES, recording_table

__all__ = ["DT_MS", "IDEAL", "PREFIX", "RANGES", "recording_table", "simulate_recordings"]
