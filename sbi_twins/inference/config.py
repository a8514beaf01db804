"""Training settings: network sizes and optimisation, validated when made."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

from .._util import check_choice, check_integer, check_number, check_positive

#: Learning-rate schedules of :class:`TrainingConfig`.
LR_SCHEDULES = ("constant", "cosine")

#: Flow families of sbi's ``posterior_nn`` that :class:`TrainingConfig` accepts.
FLOWS = ("nsf", "maf", "maf_rqs", "zuko_nsf", "zuko_maf")


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
    estimator (BENCHMARKS.md, "Tried and not adopted: a cosine learning-rate schedule").
    ``ema_decay`` > 0 validates, keeps and returns an exponential moving average of the weights
    over optimiser steps (Polyak & Juditsky 1992, SIAM J Control Optim 30:838) instead of the
    last step's weights; 0 turns it off. Averaging removes the step-to-step noise that a
    constant learning rate leaves in the weights. The default 0.999 averages over about 1000
    steps; it lowered both stages' validation losses of the bundled estimator (BENCHMARKS.md,
    "Adopted: a moving average of the weights").
    ``n_flows`` > 1 trains an ensemble: that many flows on the same summary network, flow ``k``
    with seed ``seed + k`` (initial weights and batch order), whose equally weighted mixture is
    the posterior. Flow 0 is the flow of a single-flow run, so rerunning a finished run with a
    higher ``n_flows`` adds flows to it.
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
    n_flows: int = 1
    seed: int = 0
    max_cells: int | None = None

    def __post_init__(self) -> None:
        def name(field: str) -> str:
            return f"TrainingConfig.{field}"

        check_choice(name("flow"), self.flow, FLOWS)
        check_choice(name("lr_schedule"), self.lr_schedule, LR_SCHEDULES)
        for field in ("hidden_features", "num_transforms", "num_bins", "kernel_size", "pool"):
            check_integer(name(field), getattr(self, field), minimum=1)
        for field in ("pooled", "embedding_hidden", "embedding_dim", "batch_size"):
            check_integer(name(field), getattr(self, field), minimum=1)
        for field in ("channels", "dense"):
            widths = getattr(self, field)
            if not isinstance(widths, (tuple, list)) or not widths:
                raise ValueError(f"{name(field)} must be a non-empty sequence of layer widths")
            for width in widths:
                check_integer(f"each of {name(field)}", width, minimum=1)
        check_integer(name("max_epochs"), self.max_epochs, minimum=1, what="epochs")
        if self.flow_max_epochs is not None:  # None: max_epochs
            check_integer(name("flow_max_epochs"), self.flow_max_epochs, minimum=1)
        check_integer(name("stop_after_epochs"), self.stop_after_epochs, minimum=1)
        check_integer(name("seed"), self.seed)
        check_integer(name("n_flows"), self.n_flows, minimum=1, what="flows in the ensemble")
        check_positive(name("learning_rate"), self.learning_rate)
        check_positive(name("clip_max_norm"), self.clip_max_norm)
        fraction = check_number(name("validation_fraction"), self.validation_fraction)
        if not 0 < fraction < 1:
            raise ValueError(f"{name('validation_fraction')} must be in (0, 1), got {fraction!r}")
        decay = check_number(name("ema_decay"), self.ema_decay, minimum=0.0)
        if not decay < 1:
            raise ValueError(
                f"{name('ema_decay')} must be in [0, 1) (0: no weight averaging), got {decay!r}"
            )
        if self.max_cells is not None:
            check_integer(name("max_cells"), self.max_cells, minimum=2, what="train + validate")

    def to_dict(self) -> dict[str, Any]:
        """The settings as a JSON-able dict (as stored in bundles)."""
        data = asdict(self)
        data["channels"] = list(self.channels)
        data["dense"] = list(self.dense)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainingConfig:
        """Settings from a :meth:`to_dict` record; unknown keys are refused."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown training settings {unknown}; valid: {sorted(known)}")
        data = dict(data)
        for name in ("channels", "dense"):
            if name in data:
                data[name] = tuple(data[name])
        return cls(**data)
