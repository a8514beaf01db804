"""Embedding network: an observation vector -> a short feature vector for the flow.

Observations (:mod:`sbi_twins.observation`) are window means of the recorded current in pA/pF.
Their range is wide (INa peaks of -300 next to plateau currents of 0.1), so the network sees
``asinh(x / 1 pA/pF)``: linear for small currents, logarithmic for large ones, sign kept. The
positions of an observation vector are not interchangeable (each window belongs to a protocol
segment), so after the convolutions, which learn local waveform features (transients, tails),
the pooled feature map is flattened into a position-aware linear head.
"""

from __future__ import annotations

import torch
from torch import nn

#: Scale (pA/pF) below which the input transform is linear.
CURRENT_SCALE = 1.0


def transform_observations(x: torch.Tensor) -> torch.Tensor:
    """The fixed input transform ``asinh(x / CURRENT_SCALE)`` (see the module docstring)."""
    return torch.asinh(x / CURRENT_SCALE)


class TraceEmbedding(nn.Module):
    """1-D CNN over an observation vector, sized for CPU training.

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
        (about 1.6 M multiply-adds per trace at L = 1552 with the defaults), which is what
        makes training on 10^5-10^6 traces possible on a CPU.
    pooled : int
        Positions kept by the adaptive average pooling before the linear head.
    hidden : int
        Width of the hidden linear layer.
    output_dim : int
        Number of features passed to the flow.
    """

    def __init__(
        self,
        length: int,
        channels: tuple[int, ...] = (8, 16, 32),
        kernel_size: int = 5,
        pool: int = 2,
        pooled: int = 24,
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
        self.conv = nn.Sequential(*layers, nn.AdaptiveAvgPool1d(pooled))
        self.head = nn.Sequential(
            nn.Flatten(),
            nn.Linear(previous * pooled, hidden),
            nn.GELU(),
            nn.Linear(hidden, output_dim),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 2 or x.shape[1] != self.length:
            raise ValueError(
                f"expected observations of shape (batch, {self.length}), got {tuple(x.shape)}"
            )
        return self.head(self.conv(transform_observations(x).unsqueeze(1)))
