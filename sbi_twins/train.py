"""Training from a dataset on disk, streamed: never more than a batch of observations in memory.

sbi's ``append_simulations`` path copies the data and peaks near five times its size, so a
1.1M-cell set would not fit in 24 GB. Instead a small loop of ours trains in two stages
(:mod:`sbi_twins.network`): the summary network by regression, over blocks of rows read from the
memory-mapped shards, then the flow that sbi builds (``posterior_nn``) on its own ``loss`` (the
round-0 NPE loss sbi uses), over the summaries of all rows (a few hundred bytes per cell, held in
memory). Rows of a dataset are independent prior draws, so contiguous blocks in shuffled order are
as good as shuffled rows and read sequentially from disk.

The flow models ``z = prior.to_unbounded(theta)``: every sample maps back inside the prior's
bounds, so no posterior mass leaks out and no rejection sampling is needed.

Training is resumable: each stage writes a checkpoint (weights, optimiser, epoch, best state,
early-stopping counter) atomically after every epoch; rerunning the same command continues from
it, and rerunning it with higher epoch caps trains further.
"""

from __future__ import annotations

import abc
import contextlib
import hashlib
import json
import math
import os
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .embedding import TraceEmbedding
from .network import PosteriorNetwork, SummaryNetwork
from .prior import Prior
from .simulate import Dataset, open_dataset

#: Version of the estimator file layout; a file of another format is refused.
BUNDLE_FORMAT = 2

#: Learning-rate schedules of :class:`TrainingConfig`.
LR_SCHEDULES = ("constant", "cosine")

#: Checkpoint files of the two training stages, in an estimator's output directory.
CHECKPOINTS = {"summary": "summary_checkpoint.pt", "flow": "flow_checkpoint.pt"}


@dataclass(frozen=True)
class TrainingConfig:
    """Network sizes and optimisation settings (defaults sized for CPU training).

    ``max_cells`` trains on the first ``max_cells`` cells of the dataset only (learning curves).
    ``max_epochs`` and ``stop_after_epochs`` apply to each of the two stages, unless
    ``flow_max_epochs`` caps the flow stage differently. At a constant learning rate the caps
    decide only where a run stops, so rerunning with higher caps continues it (see
    :func:`training_identity`).
    ``lr_schedule`` is ``"constant"`` or ``"cosine"``: the learning rate falls from
    ``learning_rate`` to 0 along a half cosine over ``max_epochs`` (Loshchilov & Hutter 2017,
    arXiv:1608.03983). Constant is the default because cosine did not help the bundled
    estimator: on 200,000 cells with a 30-epoch cap (both without weight averaging) it ended at
    validation losses 0.555 (summary) and 70.9 (flow), against 0.553 and 69.8 at a constant
    rate (BENCHMARKS.md).
    ``ema_decay`` > 0 validates, keeps and returns an exponential moving average of the weights
    over optimiser steps (Polyak & Juditsky 1992, SIAM J Control Optim 30:838) instead of the
    last step's weights; 0 turns it off. Averaging removes the step-to-step noise that a
    constant learning rate leaves in the weights. The default 0.999 averages over about 1000
    steps (1.4 epochs of 180,000 cells); on the bundled estimator it lowered the best
    validation losses from 0.553 to 0.538 (summary) and from 69.8 to 68.2 (flow) in the same
    30 epochs (BENCHMARKS.md).
    """

    flow: str = "nsf"
    hidden_features: int = 128
    num_transforms: int = 5
    num_bins: int = 10
    channels: tuple[int, ...] = (8, 16, 32)
    kernel_size: int = 5
    pool: int = 2
    pooled: int = 24
    dense: tuple[int, ...] = (512, 256)
    embedding_hidden: int = 256
    embedding_dim: int = 64
    batch_size: int = 256
    learning_rate: float = 5e-4
    lr_schedule: str = "constant"
    validation_fraction: float = 0.1
    stop_after_epochs: int = 20
    max_epochs: int = 200
    flow_max_epochs: int | None = None
    clip_max_norm: float = 5.0
    ema_decay: float = 0.999
    seed: int = 0
    max_cells: int | None = None

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name in ("flow", "lr_schedule", "channels", "dense", "max_cells"):
                continue
            if f.name == "flow_max_epochs" and value is None:  # None: max_epochs
                continue
            if not isinstance(value, (int, float)) or isinstance(value, bool) or value < 0:
                raise ValueError(f"TrainingConfig.{f.name} must be a number >= 0, got {value!r}")
        if self.lr_schedule not in LR_SCHEDULES:
            raise ValueError(
                f"TrainingConfig.lr_schedule must be one of {LR_SCHEDULES}, "
                f"got {self.lr_schedule!r}"
            )
        if not 0 < self.validation_fraction < 1:
            raise ValueError("validation_fraction must be between 0 and 1")
        if not 0 <= self.ema_decay < 1:
            raise ValueError(
                f"TrainingConfig.ema_decay must be in [0, 1) (0: no weight averaging), "
                f"got {self.ema_decay!r}"
            )
        if self.max_cells is not None and self.max_cells < 2:
            raise ValueError("max_cells must be at least 2 (training and validation)")

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["channels"] = list(self.channels)
        data["dense"] = list(self.dense)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainingConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown training settings {unknown}; valid: {sorted(known)}")
        data = dict(data)
        for name in ("channels", "dense"):
            if name in data:
                data[name] = tuple(data[name])
        return cls(**data)


def build_summary(config: TrainingConfig, length: int, prior: Prior) -> SummaryNetwork:
    """The summary network (embedding and regression head) for observations of ``length``."""
    embedding = TraceEmbedding(
        length,
        channels=config.channels,
        kernel_size=config.kernel_size,
        pool=config.pool,
        pooled=config.pooled,
        dense=config.dense,
        hidden=config.embedding_hidden,
        output_dim=config.embedding_dim,
    )
    return SummaryNetwork(embedding, len(prior.names), prior.log_normal)


def build_flow(config: TrainingConfig, u_stub: torch.Tensor, context_stub: torch.Tensor):
    """sbi's conditional flow over ``u = z - anchor``, built from example batches (which set its
    standardisation of ``u`` and of the context)."""
    from sbi.neural_nets import posterior_nn

    builder = posterior_nn(
        model=config.flow,
        hidden_features=config.hidden_features,
        num_transforms=config.num_transforms,
        num_bins=config.num_bins,
        z_score_theta="independent",
        z_score_x="independent",
    )
    return builder(u_stub, context_stub)


def build_network(config: TrainingConfig, length: int, prior: Prior) -> PosteriorNetwork:
    """An untrained network of the right shapes, to load a trained state into."""
    n = len(prior.names)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # sbi warns about the stubs' zero variance
        flow = build_flow(config, torch.zeros(2, n), torch.zeros(2, config.embedding_dim + n))
    return PosteriorNetwork(build_summary(config, length, prior), flow)


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
        n = self.n_train + self.n_validation
        for start in range(self.n_train, n, self.batch_size):
            yield self.block(start, min(start + self.batch_size, n))


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
        if n < 2:
            raise ValueError(f"dataset {dataset.directory} has {n} cells; at least 2 are needed")
        self.observations = dataset.observations
        theta = dataset.parameters[list(prior.names)].to_numpy()[:n]
        self.z = torch.as_tensor(prior.to_unbounded(theta), dtype=torch.float32)
        self.n_validation = max(1, round(config.validation_fraction * n))
        self.n_train = n - self.n_validation
        self.batch_size = config.batch_size

    def block(self, start: int, stop: int) -> tuple[torch.Tensor, torch.Tensor]:
        x = np.asarray(self.observations[start:stop], dtype=np.float32)
        return self.z[start:stop], torch.from_numpy(x)


class SummarisedData(RowBlocks):
    """The rows of :class:`StreamingData` as ``(z - anchor, context)`` from a trained summary
    network, computed once and held in memory (same split and batch size)."""

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
        return self.u[start:stop], self.context[start:stop]


def fit_streaming(
    module: nn.Module,
    loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    data: RowBlocks,
    config: TrainingConfig,
    checkpoint: Path,
    *,
    device: str = "cpu",
    progress: bool = True,
    label: str = "training",
) -> dict[str, Any]:
    """Minimise ``loss(z, x)`` (per-row losses) over the training rows with Adam, early stopping
    on the validation rows, resuming from ``checkpoint`` if it exists. With
    ``config.ema_decay`` > 0 the weights validated and returned are the moving average.

    Returns
    -------
    dict
        ``best_state`` (state dict of the best epoch), ``best_validation_loss``, ``history``
        (per-epoch training and validation loss, seconds), ``epochs``.
    """
    from tqdm.auto import tqdm

    module.to(device)
    optimiser = torch.optim.Adam(module.parameters(), lr=config.learning_rate)
    scheduler = _scheduler(optimiser, config)
    average = WeightAverage(module, config.ema_decay)
    state: dict[str, Any] = {
        "epoch": 0,
        "best": math.inf,
        "best_state": None,
        "since": 0,
        "history": [],
    }
    if checkpoint.exists():
        saved = torch.load(checkpoint, map_location=device, weights_only=False)
        module.load_state_dict(saved["module"])
        optimiser.load_state_dict(saved["optimiser"])
        scheduler.load_state_dict(saved["scheduler"])
        if "average" in saved:  # checkpoints written before weight averaging existed
            average.load_state_dict(saved["average"])
        state = saved["state"]
    torch.manual_seed(config.seed)
    bar = tqdm(
        total=config.max_epochs,
        initial=state["epoch"],
        disable=not progress,
        unit="epoch",
        desc=label,
        dynamic_ncols=True,
    )
    try:
        while state["epoch"] < config.max_epochs and state["since"] < config.stop_after_epochs:
            start = time.perf_counter()
            module.train()
            total, count = 0.0, 0
            learning_rate = optimiser.param_groups[0]["lr"]
            for z, x in data.training_batches(state["epoch"], config.seed):
                optimiser.zero_grad()
                batch_loss = loss(z.to(device), x.to(device)).mean()
                batch_loss.backward()
                nn.utils.clip_grad_norm_(module.parameters(), config.clip_max_norm)
                optimiser.step()
                average.update()
                total += batch_loss.item() * z.shape[0]
                count += z.shape[0]
            with average.applied():
                validation = _validation_loss(module, loss, data, device)
                weights = {k: v.detach().cpu().clone() for k, v in module.state_dict().items()}
            scheduler.step()
            state["epoch"] += 1
            state["history"].append(
                {
                    "epoch": state["epoch"],
                    "training_loss": total / max(count, 1),
                    "validation_loss": validation,
                    "learning_rate": learning_rate,
                    "seconds": time.perf_counter() - start,
                }
            )
            if validation < state["best"]:
                state["best"], state["since"] = validation, 0
                state["best_state"] = weights
            else:
                state["since"] += 1
            _save_atomic(
                checkpoint,
                {
                    "module": module.state_dict(),
                    "optimiser": optimiser.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "average": average.state_dict(),
                    "state": state,
                },
            )
            # Set before update(), which redraws: the bar shows this epoch's losses.
            bar.set_postfix(
                train=f"{total / max(count, 1):.3f}",
                val=f"{validation:.3f}",
                best=f"{state['best']:.3f}",
                refresh=False,
            )
            bar.update(1)
    finally:
        bar.close()
    return {
        "best_state": state["best_state"],
        "best_validation_loss": state["best"],
        "history": state["history"],
        "epochs": state["epoch"],
    }


class WeightAverage:
    """Exponential moving average of a module's floating-point weights over optimiser steps.

    The decay is ``min(decay, (1 + t) / (10 + t))`` at step ``t``, so early averages are not
    dominated by the initial weights (the warm-up of TensorFlow's ExponentialMovingAverage).
    With ``decay`` 0 it is inactive: :meth:`applied` leaves the module's own weights in place.
    """

    def __init__(self, module: nn.Module, decay: float):
        self.module = module
        self.decay = decay
        self.steps = 0
        # No copy of the weights when inactive (it would also be written to every checkpoint).
        self.shadow = {
            name: value.detach().clone()
            for name, value in module.state_dict().items()
            if decay and value.is_floating_point()
        }

    def update(self) -> None:
        if not self.decay:
            return
        self.steps += 1
        weight = 1.0 - min(self.decay, (1 + self.steps) / (10 + self.steps))
        with torch.no_grad():
            for name, value in self.module.state_dict().items():
                if name in self.shadow:
                    self.shadow[name].lerp_(value, weight)

    @contextlib.contextmanager
    def applied(self):
        """Swap the average into the module for the duration of the block."""
        if not self.decay:
            yield
            return
        current = {name: value.detach().clone() for name, value in self.module.state_dict().items()}
        self.module.load_state_dict(self.shadow, strict=False)
        try:
            yield
        finally:
            self.module.load_state_dict(current)

    def state_dict(self) -> dict[str, Any]:
        return {"steps": self.steps, "shadow": self.shadow}

    def load_state_dict(self, saved: dict[str, Any]) -> None:
        self.steps = saved["steps"]
        self.shadow = saved["shadow"]


def _scheduler(optimiser: torch.optim.Optimizer, config: TrainingConfig):
    if config.lr_schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, T_max=config.max_epochs)
    return torch.optim.lr_scheduler.ConstantLR(optimiser, factor=1.0)


def _validation_loss(module, loss, data: RowBlocks, device: str) -> float:
    module.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for z, x in data.validation_batches():
            total += loss(z.to(device), x.to(device)).sum().item()
            count += z.shape[0]
    return total / count


def _save_atomic(path: Path, obj: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def train_estimator(
    dataset: str | os.PathLike,
    out: str | os.PathLike,
    config: TrainingConfig | None = None,
    *,
    device: str = "cpu",
    progress: bool = True,
):
    """Train an NPE estimator on a dataset and write the estimator bundle to ``out``.

    Parameters
    ----------
    dataset : path
        A dataset directory written by ``sbi-twins simulate``.
    out : path
        Output directory: ``estimator.pt`` (weights + manifest), ``manifest.json`` and
        ``training_log.csv``; one checkpoint per stage while training (rerun to resume).
    config : TrainingConfig, optional
        Network and optimisation settings.
    device : str
        ``"cpu"`` or ``"cuda"`` (honoured when a GPU is available).

    Returns
    -------
    Estimator
        The trained estimator, loaded from the written bundle.
    """
    from .estimator import load_estimator

    config = config or TrainingConfig()
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError("device 'cuda' was asked for, but torch sees no CUDA device; use 'cpu'")
    ds = open_dataset(dataset)
    if not ds.complete and (config.max_cells is None or config.max_cells > len(ds)):
        raise ValueError(
            f"dataset {ds.directory} is incomplete ({len(ds)} cells so far); finish it by "
            "rerunning its `sbi-twins simulate` command, or train on fewer cells (max_cells)"
        )
    prior = dataset_prior(ds)
    data = StreamingData(ds, prior, config)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    check_checkpoint_identity(
        out / "checkpoint.identity",
        [out / name for name in CHECKPOINTS.values()],
        training_identity(ds, config),
    )
    torch.manual_seed(config.seed)
    summary = build_summary(config, ds.observations.shape[1], prior)
    stage1 = fit_streaming(
        summary,
        summary.loss,
        data,
        config,
        out / CHECKPOINTS["summary"],
        device=device,
        progress=progress,
        label="NPE 1/2 summary",
    )
    summary.load_state_dict(stage1["best_state"])
    summarised = SummarisedData(data, summary, device)
    u_stub, context_stub = summarised.block(0, min(data.n_train, 4096))
    torch.manual_seed(config.seed)
    flow = build_flow(config, u_stub, context_stub)
    discard_stale_flow_checkpoint(out, stage1["best_state"])
    flow_epochs = config.max_epochs if config.flow_max_epochs is None else config.flow_max_epochs
    stage2 = fit_streaming(
        flow,
        lambda u, context: flow.loss(u, condition=context),
        summarised,
        replace(config, max_epochs=flow_epochs),
        out / CHECKPOINTS["flow"],
        device=device,
        progress=progress,
        label="NPE 2/2 flow",
    )
    flow.load_state_dict(stage2["best_state"])
    network = PosteriorNetwork(summary, flow).cpu()
    stages = {"summary": stage1, "flow": stage2}
    manifest = _bundle_manifest(ds, prior, config, stages, data)
    _save_atomic(out / "estimator.pt", {"state_dict": network.state_dict(), "manifest": manifest})
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1))
    _write_log(out / "training_log.csv", stages)
    return load_estimator(out)


def dataset_prior(ds: Dataset) -> Prior:
    """The prior a dataset was drawn from, rebuilt from its manifest (checked by hash)."""
    recorded = ds.manifest["prior"]
    prior = prior_from_dict(recorded)
    if prior.content_hash() != recorded["hash"]:
        raise ValueError(f"dataset {ds.directory}: its prior record does not match its hash")
    return prior


def prior_from_dict(data: dict[str, Any]) -> Prior:
    """A :class:`Prior` from :meth:`Prior.to_dict` output (as stored in manifests)."""
    from .prior import ParameterPrior

    entries = [ParameterPrior(**p) for p in data["parameters"]]
    return Prior(data["model"], entries, data.get("description", ""))


def training_identity(ds: Dataset, config: TrainingConfig) -> str:
    """What a training run's checkpoints belong to: the dataset and the settings that shape the
    path of training. Epoch caps and early-stopping patience only decide where it stops (unless
    a cosine schedule is laid out over ``max_epochs``), so a finished run rerun with higher caps
    continues instead of starting over."""
    settings = config.to_dict()
    del settings["stop_after_epochs"]
    if config.lr_schedule == "constant":
        del settings["max_epochs"], settings["flow_max_epochs"]
    text = json.dumps({"dataset": ds.manifest, "n": len(ds), "config": settings}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


def discard_stale_flow_checkpoint(out: Path, summary_state: dict[str, torch.Tensor]) -> None:
    """The flow stage resumes only on the summary network it was trained on.

    ``out/flow_checkpoint.summary`` holds a hash of that summary network's weights. When the
    summary stage has since trained further (the run was continued with a higher
    ``max_epochs``), the flow checkpoint no longer fits its inputs and is removed, with a warning,
    so that the flow stage starts over.
    """
    digest = hashlib.sha256()
    for name, tensor in sorted(summary_state.items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().numpy().tobytes())
    marker, checkpoint = out / "flow_checkpoint.summary", out / CHECKPOINTS["flow"]
    if checkpoint.exists() and (not marker.exists() or marker.read_text() != digest.hexdigest()):
        warnings.warn(
            f"{checkpoint} was trained on an earlier state of the summary network, which has "
            "trained further since; the flow stage starts over",
            stacklevel=3,
        )
        checkpoint.unlink()
    marker.write_text(digest.hexdigest())


def check_checkpoint_identity(marker: Path, checkpoints: list[Path], identity: str) -> None:
    """Checkpoints are resumed only by the run that wrote them (same dataset and settings).

    ``marker`` holds the identity of the run whose ``checkpoints`` exist; it is written when
    none exists yet, and a different identity is refused.
    """
    existing = [path for path in checkpoints if path.exists()]
    if existing:
        if not marker.exists() or marker.read_text() != identity:
            raise ValueError(
                f"{existing[0]} is a checkpoint of another training run (other dataset or "
                "settings); use another output path or delete the checkpoint"
            )
    else:
        marker.write_text(identity)


def _bundle_manifest(
    ds: Dataset, prior: Prior, config: TrainingConfig, stages: dict, data: StreamingData
) -> dict[str, Any]:
    from . import __version__

    m = ds.manifest
    return {
        "format": BUNDLE_FORMAT,
        "kind": "npe",
        "model": m["model"],
        "prior": m["prior"],
        "protocol": m["protocol"],
        "observation": m["observation"],
        "recording": m["recording"],
        "parameter_names": list(prior.names),
        "training_set": {
            "directory": str(ds.directory),
            "cells": data.n_train + data.n_validation,
            "validation_cells": data.n_validation,
            "viability": m["viability"],
            "seed": m["seed"],
            "versions": m["versions"],
        },
        "training": config.to_dict(),
        "validation": {
            "best_loss": stages["flow"]["best_validation_loss"],
            "epochs": stages["flow"]["epochs"],
            "summary_best_loss": stages["summary"]["best_validation_loss"],
            "summary_epochs": stages["summary"]["epochs"],
        },
        "versions": {"sbi_twins": __version__, "torch": torch.__version__, "sbi": _sbi_version()},
    }


def _sbi_version() -> str:
    import sbi

    return sbi.__version__


def _write_log(path: Path, stages: dict[str, dict]) -> None:
    """Loss per epoch of each stage (summary: regression MSE; flow: NPE loss, -log q)."""
    lines = ["stage,epoch,training_loss,validation_loss,learning_rate,seconds"]
    lines += [
        f"{stage},{h['epoch']},{h['training_loss']:.6f},{h['validation_loss']:.6f},"
        f"{h['learning_rate']:.3g},{h['seconds']:.2f}"
        for stage, result in stages.items()
        for h in result["history"]
    ]
    path.write_text("\n".join(lines) + "\n")
