"""Layer 6, twins: posterior draws simulated as digital twins of the recorded cell."""

from .simulate import simulate_twins

__all__ = ["simulate_twins"]
