"""The reference study's point estimator, as a comparator for NPE.

A fully connected network from the observation vector to the parameters, trained with the mean
squared error on the parameters standardised by the prior's mean and standard deviation (so every
parameter weighs the same in the loss). It gives one value per parameter and no uncertainty. It is
trained on the same data, observation scheme and input transform as the NPE estimator, by the
same streaming loop, so a comparison isolates the method.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn

from sbi_twins.data import open_dataset
from sbi_twins.inference import TrainingConfig
from sbi_twins.inference.bundle import dataset_prior
from sbi_twins.inference.embedding import dense_stack, transform_observations
from sbi_twins.inference.loop import check_checkpoint_identity, fit_streaming
from sbi_twins.inference.npe import training_identity
from sbi_twins.inference.rows import StreamingData


class PointRegressor(nn.Module):
    """MLP: observation (L,) -> standardised parameters (D,)."""

    def __init__(self, length: int, n_outputs: int, hidden: tuple[int, ...] = (512, 256, 128)):
        super().__init__()
        stack, width = dense_stack(length, hidden)
        self.net = nn.Sequential(*stack, nn.Linear(width, n_outputs))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(transform_observations(x))


class TrainedRegressor:
    """A trained :class:`PointRegressor` with the standardisation of its outputs."""

    def __init__(self, network: PointRegressor, names: tuple[str, ...], mean, scale, history):
        self.network = network.eval()
        self.names = names
        self.mean = mean
        self.scale = scale
        self.history = history

    def predict(self, observations: np.ndarray) -> pd.DataFrame:
        """Parameter estimates (model units) for observation vectors (N, L)."""
        with torch.no_grad():
            u = self.network(torch.as_tensor(np.atleast_2d(observations), dtype=torch.float32))
        return pd.DataFrame(u.numpy() * self.scale + self.mean, columns=list(self.names))


def train_point_regressor(
    dataset: str | os.PathLike,
    checkpoint: str | os.PathLike,
    config: TrainingConfig | None = None,
    *,
    progress: bool = True,
) -> TrainedRegressor:
    """Train the MLP point regressor on a dataset (the same rows and split as NPE training).

    ``checkpoint`` is the resumable checkpoint file of this run; ``<checkpoint>.identity``
    records the dataset and settings it belongs to, and another run's checkpoint is refused.
    """
    config = config or TrainingConfig()
    ds = open_dataset(dataset)
    checkpoint = Path(checkpoint)
    checkpoint.parent.mkdir(parents=True, exist_ok=True)
    check_checkpoint_identity(
        checkpoint.with_name(checkpoint.name + ".identity"),
        [checkpoint],
        training_identity(ds, config),
    )
    prior = dataset_prior(ds)
    data = StreamingData(ds, prior, config)
    mean, scale = np.array(prior.mean()), np.sqrt(np.array(prior.variance()))
    torch.manual_seed(config.seed)
    network = PointRegressor(ds.observations.shape[1], len(prior.names))
    mean_t = torch.as_tensor(mean, dtype=torch.float32)
    scale_t = torch.as_tensor(scale, dtype=torch.float32)

    def loss(z: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        theta = torch.as_tensor(prior.from_unbounded(z.numpy()), dtype=torch.float32)
        return ((network(x) - (theta - mean_t) / scale_t) ** 2).mean(dim=1)

    result = fit_streaming(network, loss, data, config, checkpoint, progress=progress, label="MLP")
    network.load_state_dict(result["best_state"])
    return TrainedRegressor(network, prior.names, mean, scale, result["history"])
