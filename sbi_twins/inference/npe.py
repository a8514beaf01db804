"""Training from a dataset on disk, streamed: never more than a batch of observations in memory.

sbi's ``append_simulations`` path copies the data and peaks near five times its size, so a
1.1M-cell set would not fit in 24 GB. Instead a small loop of ours trains in two stages
(:mod:`sbi_twins.inference.networks`): the summary network by regression, over blocks of rows
read from the memory-mapped shards, then the flow that sbi builds (``posterior_nn``) on its own
``loss`` (the round-0 NPE loss sbi uses), over the summaries of all rows (a few hundred bytes per
cell, held in
memory). Rows of a dataset are independent prior draws, so contiguous blocks in shuffled order are
as good as shuffled rows and read sequentially from disk.

The flow models ``z = prior.to_unbounded(theta)``: every sample maps back inside the prior's
bounds, so no posterior mass leaks out and no rejection sampling is needed.

Training is resumable: each stage writes a checkpoint (weights, optimiser, epoch, best state,
early-stopping counter) atomically after every epoch; rerunning the same command continues from
it, and rerunning it with higher epoch caps trains further.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from .._util import atomic_write_text
from ..data import Dataset, open_dataset
from ..prior import Prior
from .bundle import bundle_manifest, dataset_prior, write_bundle
from .config import TrainingConfig
from .estimator import Estimator, load_estimator
from .loop import check_checkpoint_identity, fit_streaming
from .misspecification import Reference
from .networks import PosteriorNetwork, build_flow, build_summary
from .rows import StreamingData, SummarisedData

#: Checkpoint files of the two training stages, in an estimator's output directory (flow ``k``
#: of an ensemble: ``flow<k>_checkpoint.pt``).
CHECKPOINTS = {"summary": "summary_checkpoint.pt", "flow": "flow_checkpoint.pt"}

#: Files of a finished run in its output directory, replaced only by the run that wrote them.
OUTPUTS = ("estimator.pt", "manifest.json", "training_log.csv")

#: Validation cells whose summaries a bundle keeps as its misspecification reference.
REFERENCE_CELLS = 2_000


def train_estimator(
    dataset: str | os.PathLike,
    out: str | os.PathLike,
    config: TrainingConfig | None = None,
    *,
    device: str = "cpu",
    progress: bool = True,
) -> Estimator:
    """Train an NPE estimator on a dataset and write the estimator bundle to ``out``.

    Parameters
    ----------
    dataset : path
        A dataset directory written by ``sbi-twins simulate``.
    out : path
        Output directory: ``estimator.pt`` (weights + manifest), ``manifest.json`` and
        ``training_log.csv``; one checkpoint per stage while training (rerun to resume). One
        that holds another run's estimator (other dataset or settings, or a finished run whose
        checkpoints were deleted) is refused, and the estimator kept.
    config : TrainingConfig, optional
        Network and optimisation settings.
    device : str
        ``"cpu"`` or ``"cuda"`` (honoured when a GPU is available).

    Returns
    -------
    Estimator
        The trained estimator, loaded from the written bundle.
    """
    config = config or TrainingConfig()
    if not isinstance(config, TrainingConfig):
        raise ValueError(f"config must be a TrainingConfig, got {type(config).__name__}")
    if device != "cpu" and not device.startswith("cuda"):
        raise ValueError(f"device must be 'cpu' or 'cuda' (or 'cuda:N'), got {device!r}")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError("device 'cuda' was asked for, but torch sees no CUDA device; use 'cpu'")
    ds = open_dataset(dataset)
    out = Path(out)
    if out.resolve() == ds.directory.resolve() or (out / "chunks").is_dir():
        raise ValueError(
            f"--out {out} is a dataset directory; write the estimator to a directory of its own"
        )
    if not ds.complete and (config.max_cells is None or config.max_cells > len(ds)):
        raise ValueError(
            f"dataset {ds.directory} is incomplete ({len(ds)} cells so far); finish it by "
            "rerunning its `sbi-twins simulate` command, or train on fewer cells (max_cells)"
        )
    prior = dataset_prior(ds)
    data = StreamingData(ds, prior, config)
    out.mkdir(parents=True, exist_ok=True)
    check_checkpoint_identity(
        out / "checkpoint.identity",
        [out / CHECKPOINTS["summary"], *_flow_checkpoints(out)],
        training_identity(ds, config),
        [out / name for name in OUTPUTS],
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
    discard_stale_flow_checkpoint(out, stage1["best_state"])
    flows, stages = [], {"summary": stage1}
    for k in range(config.n_flows):
        flow, stages[_flow_stage(k)] = train_flow(k, summarised, config, out, device, progress)
        flows.append(flow)
    network = PosteriorNetwork(summary, flows).cpu()
    manifest = bundle_manifest(ds, prior, config, stages, (data.n_train, data.n_validation))
    if summarised.n_validation >= 40:  # fewer: fresh cells calibrate it on first use
        reference = validation_reference(data, summarised, prior)
        manifest["misspecification_reference"] = reference.to_dict()
    write_bundle(out / "estimator.pt", network.state_dict(), manifest)
    atomic_write_text(out / "manifest.json", json.dumps(manifest, indent=1))
    write_training_log(out / "training_log.csv", stages)
    return load_estimator(out)


def _flow_stage(k: int) -> str:
    """Name of flow ``k``'s training stage (in the log) and its checkpoint's stem."""
    return "flow" if k == 0 else f"flow{k}"


def _flow_checkpoints(out: Path) -> list[Path]:
    """The flow checkpoints that exist in ``out``."""
    return sorted(out.glob("flow*_checkpoint.pt"))


def train_flow(
    k: int,
    summarised: SummarisedData,
    config: TrainingConfig,
    out: Path,
    device: str,
    progress: bool,
) -> tuple[torch.nn.Module, dict]:
    """Flow ``k`` of an ensemble, trained on the summarised rows with seed ``seed + k``
    (resumable from ``out/flow<k>_checkpoint.pt``); returns the flow and its training record.
    """
    seed = config.seed + k
    u_stub, context_stub = summarised.block(0, min(summarised.n_train, 4096))
    torch.manual_seed(seed)
    flow = build_flow(config, u_stub, context_stub)
    flow_epochs = config.max_epochs if config.flow_max_epochs is None else config.flow_max_epochs
    label = "NPE 2/2 flow" if config.n_flows == 1 else f"NPE 2/2 flow {k + 1}/{config.n_flows}"
    stage = fit_streaming(
        flow,
        lambda u, context: flow.loss(u, condition=context),
        summarised,
        replace(config, max_epochs=flow_epochs, seed=seed),
        out / f"{_flow_stage(k)}_checkpoint.pt",
        device=device,
        progress=progress,
        label=label,
    )
    flow.load_state_dict(stage["best_state"])
    return flow, stage


def validation_reference(
    data: StreamingData, summarised: SummarisedData, prior: Prior
) -> Reference:
    """The misspecification reference of a training run: (up to :data:`REFERENCE_CELLS`)
    validation cells, made like the training cells and never trained on.
    """
    start = summarised.n_train
    stop = start + min(summarised.n_validation, REFERENCE_CELLS)
    contexts = summarised.context[start:stop].numpy().astype(float)
    observations = np.asarray(data.observations[start:stop], dtype=float)
    source = f"{stop - start} validation cells of the training set"
    return Reference.from_cells(contexts, observations, source, ~prior.log_normal)


def training_identity(ds: Dataset, config: TrainingConfig) -> str:
    """What a training run's checkpoints belong to: the dataset and the settings that shape the
    path of training. Epoch caps and early-stopping patience only decide where it stops (unless
    a cosine schedule is laid out over ``max_epochs``), so a finished run rerun with higher caps
    continues instead of starting over.
    """
    settings = config.to_dict()
    del settings["stop_after_epochs"], settings["n_flows"]  # more flows only add to a run
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
    marker, checkpoints = out / "flow_checkpoint.summary", _flow_checkpoints(out)
    if checkpoints and (not marker.exists() or marker.read_text() != digest.hexdigest()):
        warnings.warn(
            f"{checkpoints[0]} was trained on an earlier state of the summary network, which "
            "has trained further since; the flow stage starts over",
            stacklevel=3,
        )
        for checkpoint in checkpoints:
            checkpoint.unlink()
    atomic_write_text(marker, digest.hexdigest())


def write_training_log(path: Path, stages: dict[str, dict]) -> None:
    """Loss per epoch of each stage (summary: regression MSE; flow: NPE loss, -log q)."""
    lines = ["stage,epoch,training_loss,validation_loss,learning_rate,seconds"]
    lines += [
        f"{stage},{h['epoch']},{h['training_loss']:.6f},{h['validation_loss']:.6f},"
        f"{h['learning_rate']:.3g},{h['seconds']:.2f}"
        for stage, result in stages.items()
        for h in result["history"]
    ]
    atomic_write_text(path, "\n".join(lines) + "\n")
