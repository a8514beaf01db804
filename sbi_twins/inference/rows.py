"""Training rows served in blocks: streamed from a dataset's memory-mapped shards, or summarised.

Rows of a dataset are independent prior draws, so contiguous blocks in shuffled order are as
good as shuffled rows, and they are read sequentially from disk.
"""

from __future__ import annotations

import abc
import itertools

import numpy as np
import torch

from ..data import Dataset
from ..prior import Prior
from .config import TrainingConfig
from .networks import SummaryNetwork


class RowBlocks(abc.ABC):
    """Training rows (the first ``n_train``) and validation rows (the rest), in batches."""

    n_train: int
    n_validation: int
    batch_size: int

    @abc.abstractmethod
    def block(self, start: int, stop: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Rows ``start:stop`` as (target, input) tensors."""

    def training_batches(self, epoch: int, seed: int):
        """Blocks of the training rows in an order fixed by ``(seed, epoch)``."""
        starts = np.arange(0, self.n_train, self.batch_size)
        order = np.random.default_rng([seed, epoch]).permutation(starts.size)
        for k in order:
            yield self.block(starts[k], min(starts[k] + self.batch_size, self.n_train))

    def validation_batches(self):
        """Blocks of the validation rows, in order."""
        n = self.n_train + self.n_validation
        for start in range(self.n_train, n, self.batch_size):
            yield self.block(start, min(start + self.batch_size, n))


#: Fewest training cells (after the validation split): the flow standardises its inputs by the
#: training cells' spread, which a single cell does not have.
MIN_TRAINING_CELLS = 2


def split_cells(n: int, validation_fraction: float) -> tuple[int, int]:
    """The numbers of training and validation cells of ``n`` (at least one validates)."""
    n_validation = max(1, round(validation_fraction * n))
    return n - n_validation, n_validation


class StreamingData(RowBlocks):
    """Training and validation rows of a dataset, served in blocks of ``(z, x)``.

    Parameters
    ----------
    dataset : Dataset
        The dataset (observations memory-mapped).
    prior : Prior
        Its prior; parameters are served as ``prior.to_unbounded(theta)``.
    config : TrainingConfig
        Batch size, validation fraction, ``max_cells``.
    """

    def __init__(self, dataset: Dataset, prior: Prior, config: TrainingConfig):
        n = len(dataset) if config.max_cells is None else min(len(dataset), config.max_cells)
        self.n_train, self.n_validation = split_cells(n, config.validation_fraction)
        if self.n_train < MIN_TRAINING_CELLS:
            fraction = config.validation_fraction
            fewest = next(
                m
                for m in itertools.count(n + 1)
                if split_cells(m, fraction)[0] >= MIN_TRAINING_CELLS
            )
            capped = n < len(dataset)
            what = (
                f"max_cells={n} keeps {n} of the {len(dataset)} cells of dataset "
                f"{dataset.directory}"
                if capped
                else f"dataset {dataset.directory} has {n} cells"
            )
            cure = (
                "raise max_cells"
                if capped
                else "simulate more: rerun its `sbi-twins simulate` command with a larger -n"
            )
            raise ValueError(
                f"{what} ({self.n_train} to train on, {self.n_validation} to validate); training "
                f"needs at least {fewest} with validation_fraction {fraction:g}: "
                f"{MIN_TRAINING_CELLS} to train on, whose spread standardises the flow's "
                f"inputs, and 1 to validate; {cure}"
            )
        self.observations = dataset.observations
        theta = dataset.parameters[list(prior.names)].to_numpy()[:n]
        self.z = torch.as_tensor(prior.to_unbounded(theta), dtype=torch.float32)
        self.batch_size = config.batch_size

    def block(self, start: int, stop: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Rows ``start:stop`` as ``(z, x)``, read from the shards."""
        x = np.asarray(self.observations[start:stop], dtype=np.float32)
        return self.z[start:stop], torch.from_numpy(x)


class SummarisedData(RowBlocks):
    """The rows of :class:`StreamingData` as ``(z - anchor, context)`` from a trained summary
    network, computed once and held in memory (same split and batch size).
    """

    def __init__(self, data: StreamingData, summary: SummaryNetwork, device: str = "cpu"):
        self.n_train, self.n_validation = data.n_train, data.n_validation
        self.batch_size = data.batch_size
        summary.eval()
        residuals, contexts = [], []
        with torch.no_grad():
            for start in range(0, data.n_train + data.n_validation, 1024):
                z, x = data.block(start, min(start + 1024, data.n_train + data.n_validation))
                context, anchor = summary.context(x.to(device))
                residuals.append(z - anchor.cpu())
                contexts.append(context.cpu())
        self.u = torch.cat(residuals)
        self.context = torch.cat(contexts)

    def block(self, start: int, stop: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Rows ``start:stop`` as ``(z - anchor, context)``."""
        return self.u[start:stop], self.context[start:stop]
