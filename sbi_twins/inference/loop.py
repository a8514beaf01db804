"""The resumable training loop: Adam with early stopping, weight averaging and checkpoints.

Each epoch ends with a checkpoint (weights, optimiser, schedule, average, epoch, best state,
early-stopping counter) written atomically; a rerun continues from it, and a run with other
settings is refused (:func:`check_checkpoint_identity`).
"""

from __future__ import annotations

import contextlib
import math
import pickle
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.torch_version import TorchVersion

from .._util import atomic_write, atomic_write_text
from .config import TrainingConfig
from .rows import RowBlocks


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
    torch.manual_seed(config.seed)
    if checkpoint.exists():
        saved = load_checkpoint(
            checkpoint,
            device,
            cure=f"delete it and rerun the same command: its stage ({label}) trains again from "
            "the start",
        )
        module.load_state_dict(saved["module"])
        optimiser.load_state_dict(saved["optimiser"])
        scheduler.load_state_dict(saved["scheduler"])
        average.load_state_dict(saved["average"])
        state = saved["state"]
        if "rng" in saved:  # a resumed run draws what the uninterrupted run would have drawn
            torch.set_rng_state(saved["rng"])
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
            save_atomic(
                checkpoint,
                {
                    "module": module.state_dict(),
                    "optimiser": optimiser.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "average": average.state_dict(),
                    "state": state,
                    "rng": torch.get_rng_state(),
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
        """Fold the module's current weights into the average (after each optimiser step)."""
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
        """The average and its step count, for checkpoints."""
        return {"steps": self.steps, "shadow": self.shadow}

    def load_state_dict(self, saved: dict[str, Any]) -> None:
        """Restore the average from :meth:`state_dict` output."""
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


def save_atomic(path: Path, obj: Any) -> None:
    """``torch.save`` to ``path`` atomically (see :func:`sbi_twins._util.atomic_write`)."""
    atomic_write(path, lambda tmp: torch.save(obj, tmp))


def load_checkpoint(path: Path, device: str = "cpu", *, cure: str) -> Any:
    """A checkpoint or bundle written by :func:`save_atomic`, read without running code.

    Only tensors and plain containers are unpickled (``weights_only=True``): a file whose pickle
    would run code, or that is damaged, is refused with a ValueError naming it. ``cure`` says
    how to go on without a damaged file (it depends on what the file is), e.g. "delete it and
    rerun the same command".
    """
    try:
        # TorchVersion, a str subclass, is in the version records of bundles written before
        # they stored a plain str
        with torch.serialization.safe_globals([TorchVersion]):
            return torch.load(path, map_location=device, weights_only=True)
    except FileNotFoundError:
        raise
    except pickle.UnpicklingError as e:
        refused = next((line for line in str(e).splitlines() if "Unsupported global" in line), "")
        if refused:
            raise ValueError(
                f"{path} is refused: it holds more than weights (its pickle would run code or "
                f"build objects; {refused.strip()}). Only load estimators from sources you "
                "trust, and retrain it with `sbi-twins train` if it is yours"
            ) from None
        reason = "unreadable pickle"  # not a valid pickle at all: damaged
    except (RuntimeError, EOFError, OSError, ValueError) as e:
        reason = str(e).split(". ")[0] or type(e).__name__
    raise ValueError(f"{path} is damaged or not a torch file ({reason}); {cure}")


def check_checkpoint_identity(
    marker: Path, checkpoints: list[Path], identity: str, outputs: Sequence[Path] = ()
) -> None:
    """Checkpoints are resumed, and a run's outputs replaced, only by the run that wrote them
    (same dataset and settings).

    ``marker`` holds the identity of the run whose ``checkpoints`` exist; it is written when
    none exists yet, and a different identity is refused. Existing ``outputs`` (the files a
    finished run wrote) are refused unless the marker holds ``identity``: without it they are
    another run's, e.g. a finished one whose checkpoints were deleted.
    """
    own = marker.exists() and marker.read_text() == identity
    existing = [path for path in checkpoints if path.exists()]
    if existing and not own:
        raise ValueError(
            f"{existing[0]} is a checkpoint of another training run (other dataset or "
            "settings); use another output path or delete the checkpoint"
        )
    finished = [path for path in outputs if path.exists()]
    if finished and not own:
        names = ", ".join(path.name for path in finished)
        raise ValueError(
            f"{finished[0].parent} holds {names} of another training run (other dataset or "
            "settings, or a run whose checkpoints were deleted); write to another output "
            f"directory, or delete {names} there to train anew in it"
        )
    if not existing:
        atomic_write_text(marker, identity)
