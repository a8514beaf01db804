"""Embedding network: an observation vector -> a short feature vector for the flow.

Observations (:mod:`sbi_twins.data.windows`) are window means of the recorded current in pA/pF.
Their range is wide (INa peaks of -300 next to plateau currents of 0.1), so the network sees
``asinh(x / 1 pA/pF)``: linear for small currents, logarithmic for large ones, sign kept.

Two branches read it. The convolutions learn local waveform features (transients, tails) that
recur across protocol segments; their pooled feature map is flattened into a position-aware
head, since each window belongs to one segment. Pooling makes the CNN cheap enough for 10^5-10^6
traces on a CPU but blurs exact positions, so a fully connected branch reads the full-resolution
vector as well (the reference study's point estimator is such a network alone, and beat a
CNN-only embedding on most parameters; see BENCHMARKS.md).
"""

from __future__ import annotations

import torch
from torch import nn

#: Scale (pA/pF) below which the input transform is linear.
CURRENT_SCALE = 1.0


def transform_observations(x: torch.Tensor) -> torch.Tensor:
    """The fixed input transform ``asinh(x / CURRENT_SCALE)`` (see the module docstring)."""
    return torch.asinh(x / CURRENT_SCALE)


def dense_stack(inputs: int, widths: tuple[int, ...]) -> tuple[nn.Sequential, int]:
    """Linear + GELU layers of the given widths, and the width of their output."""
    layers: list[nn.Module] = []
    for width in widths:
        layers += [nn.Linear(inputs, width), nn.GELU()]
        inputs = width
    return nn.Sequential(*layers), inputs


class TraceEmbedding(nn.Module):
    """1-D CNN plus a fully connected branch over an observation vector, sized for CPU training.

    Parameters
    ----------
    length : int
        Observation length L.
    channels : tuple of int
        Output channels of the convolution layers (each followed by GELU and max-pooling).
    kernel_size : int
        Convolution kernel size (odd).
    pool : int
        Max-pooling factor after each convolution. Pooling early keeps the cost per trace low
        (about 1.6 M multiply-adds per trace at L = 1552 with the defaults).
    pooled : int
        Positions kept by the adaptive average pooling before the CNN's linear layer.
    dense : tuple of int
        Widths of the fully connected branch on the full-resolution input (empty: CNN only).
    hidden : int
        Width of the layer that joins the two branches.
    output_dim : int
        Number of features passed on.
    """

    def __init__(
        self,
        length: int,
        channels: tuple[int, ...] = (8, 16, 32),
        kernel_size: int = 5,
        pool: int = 2,
        pooled: int = 24,
        dense: tuple[int, ...] = (512, 256),
        hidden: int = 256,
        output_dim: int = 64,
    ):
        super().__init__()
        self.length = length
        layers: list[nn.Module] = []
        previous = 1
        for width in channels:
            layers += [
                nn.Conv1d(previous, width, kernel_size, padding=kernel_size // 2),
                nn.GELU(),
                nn.MaxPool1d(pool),
            ]
            previous = width
        self.conv = nn.Sequential(*layers, nn.AdaptiveAvgPool1d(pooled), nn.Flatten())
        self.dense, dense_width = dense_stack(length, dense) if dense else (None, 0)
        self.head = nn.Sequential(
            nn.Linear(previous * pooled + dense_width, hidden),
            nn.GELU(),
            nn.Linear(hidden, output_dim),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The embedding of observations ``x`` (B, L) -> (B, output_dim)."""
        if x.ndim != 2 or x.shape[1] != self.length:
            raise ValueError(
                f"expected observations of shape (batch, {self.length}), got {tuple(x.shape)}"
            )
        u = transform_observations(x)
        features = self.conv(u.unsqueeze(1))
        if self.dense is not None:
            features = torch.cat([features, self.dense(u)], dim=1)
        return self.head(features)
