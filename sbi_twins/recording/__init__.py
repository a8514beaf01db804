"""Layer 2, recordings: the recording (amplifier artefact) model that turns simulated cells into
what a patch-clamp amplifier records, the vocabulary of its parameters, real recordings read
from ABF and CSV files, and protocols rebuilt from recorded commands or written for amplifiers.
"""

from .artefacts import DT_MS, simulate_recordings
from .io import Recording, load_recording
from .parameters import IDEAL, PREFIX, RANGES, recording_table
from .protocol_io import (
    protocol_from_recording,
    protocol_to_toml,
    write_atf,
    write_command_csv,
)

__all__ = [
    "DT_MS",
    "IDEAL",
    "PREFIX",
    "RANGES",
    "Recording",
    "load_recording",
    "protocol_from_recording",
    "protocol_to_toml",
    "recording_table",
    "simulate_recordings",
    "write_atf",
    "write_command_csv",
]
