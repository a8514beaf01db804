"""Layer 6, twins: posterior draws simulated as digital twins of the recorded cell, their
populations, drugs as ion-channel block, and drug screens.
"""

from .drugs import CHANNELS, Drug, available_drugs, channel_parameters, load_drug
from .population import make_twins, pool_twins, trace_features, twin_features
from .screen import ScreenResult, cells_needed, screen, wilson_interval
from .simulate import simulate_twins

__all__ = [
    "CHANNELS",
    "Drug",
    "ScreenResult",
    "available_drugs",
    "cells_needed",
    "channel_parameters",
    "load_drug",
    "make_twins",
    "pool_twins",
    "screen",
    "simulate_twins",
    "trace_features",
    "twin_features",
    "wilson_interval",
]
