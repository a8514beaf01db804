"""The prior of the unbounded coordinates ``z`` as a torch distribution (kept apart so that
``sbi_twins.prior`` does not import torch).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch.distributions import Distribution, constraints


class StandardPrior(Distribution):
    """Independent standard logistic (bounded parameters) or standard normal (log-normal ones)
    coordinates; the event shape is (D,).

    Parameters
    ----------
    normal : array of bool, shape (D,)
        True where the coordinate is standard normal.
    """

    arg_constraints: dict = {}
    support = constraints.independent(constraints.real, 1)
    has_rsample = False

    def __init__(self, normal: np.ndarray, validate_args: bool = False):
        self._normal = torch.as_tensor(np.asarray(normal, dtype=bool))
        super().__init__(
            batch_shape=torch.Size(),
            event_shape=torch.Size([len(self._normal)]),
            validate_args=validate_args,
        )

    def sample(self, sample_shape: torch.Size | tuple = ()) -> torch.Tensor:
        """Draws of shape ``sample_shape + (D,)``."""
        shape = torch.Size(sample_shape) + self.event_shape
        u = torch.rand(shape).clamp(1e-12, 1 - 1e-12)
        return torch.where(self._normal, torch.randn(shape), torch.logit(u))

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        """Log density of ``z`` (..., D), summed over the coordinates."""
        logistic = -z - 2 * torch.nn.functional.softplus(-z)
        normal = -0.5 * z**2 - 0.5 * math.log(2 * math.pi)
        return torch.where(self._normal, normal, logistic).sum(-1)

    @property
    def mean(self) -> torch.Tensor:
        """Zero: both coordinate distributions are centred."""
        return torch.zeros(self.event_shape)

    @property
    def variance(self) -> torch.Tensor:
        """1 (standard normal) or pi^2 / 3 (standard logistic) per coordinate."""
        return torch.where(self._normal, 1.0, math.pi**2 / 3).expand(self.event_shape)
