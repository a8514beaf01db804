"""The estimator's network: a learned summary of the trace, and a normalising flow around it.

Trained end to end, a CNN embedding and a flow learn slowly on a CPU budget: after 30 epochs on
200,000 cells the flow's posterior means were less accurate than a plain regression network's
(BENCHMARKS.md, "Posteriors"). So the estimator is trained in two stages, NPE with a learned
summary statistic (Fearnhead & Prangle 2012, J R Stat Soc B 74:419; Jiang et al. 2017, Stat
Sinica 27:1595):

1. :class:`SummaryNetwork` regresses each parameter's *position* within its prior (uniform
   (0, 1) for (log-)uniform parameters, standard normal for log-normal ones) by mean squared
   error, whose minimiser is the posterior mean. Its features and predicted positions are the
   summary of the trace.
2. The flow (sbi's ``posterior_nn``) is trained on the frozen summary. It models the unbounded
   parameters ``z`` relative to an anchor, the predicted position mapped to ``z``:
   ``z = anchor(x) + u`` with ``u ~ q(u | summary(x))``. A shift has unit Jacobian, so
   ``log p(z | x) = log q(z - anchor(x) | summary(x))`` exactly; the anchor only gives the flow
   a good starting point, and its density is still fitted by maximum likelihood.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import torch
from nflows.distributions.base import Distribution
from torch import nn

from ..prior import Prior
from .config import TrainingConfig
from .embedding import TraceEmbedding

#: Anchors are computed from positions clamped this far inside (0, 1) (z within +-6.9).
POSITION_MARGIN = 1e-3


def positions(z: torch.Tensor, log_normal: torch.Tensor) -> torch.Tensor:
    """Positions of unbounded parameters ``z`` within the prior: the logistic sigmoid of ``z``
    for (log-)uniform parameters (uniform on (0, 1) under the prior), ``z`` for log-normal.
    """
    return torch.where(log_normal, z, torch.sigmoid(z))


def anchors(position: torch.Tensor, log_normal: torch.Tensor) -> torch.Tensor:
    """The inverse of :func:`positions`, for predicted positions (clamped into (0, 1))."""
    return torch.where(
        log_normal, position, torch.logit(position.clamp(POSITION_MARGIN, 1 - POSITION_MARGIN))
    )


class SummaryNetwork(nn.Module):
    """Trace -> (features, predicted positions): the embedding and a linear regression head.

    Positions are predicted standardised by their prior mean and sd (0.5 and 1/sqrt(12) for
    (log-)uniform parameters, 0 and 1 for log-normal ones), so that every parameter weighs
    the same in the regression loss.
    """

    def __init__(self, embedding: TraceEmbedding, n_parameters: int, log_normal: np.ndarray):
        super().__init__()
        self.embedding = embedding
        self.head = nn.Linear(embedding.head[-1].out_features, n_parameters)
        normal = torch.as_tensor(np.asarray(log_normal, dtype=bool))
        self.register_buffer("log_normal", normal)
        self.register_buffer("centre", torch.where(normal, 0.0, 0.5))
        self.register_buffer("scale", torch.where(normal, 1.0, 1 / math.sqrt(12)))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Features and predicted positions of observations ``x`` (B, L)."""
        features = self.embedding(x)
        return features, self.centre + self.scale * self.head(features)

    def loss(self, z: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Per-row mean squared error of the standardised positions."""
        predicted = self(x)[1]
        return (((predicted - positions(z, self.log_normal)) / self.scale) ** 2).mean(dim=1)

    def context(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The flow's condition (features and predicted positions) and the anchor of ``z``."""
        features, position = self(x)
        return torch.cat([features, position], dim=1), anchors(position, self.log_normal)


class TemperedNormal(Distribution):
    """The base distribution of a tempered flow: ``N(0, T^2 I)`` instead of ``N(0, I)``.

    Sampling and density stay exact and consistent: a draw is ``T`` times a standard normal
    pushed through the flow, and ``log q_T(u) = log N(f(u); 0, T^2 I) + log |det df/du|``.
    ``T > 1`` widens the posterior along the flow's own geometry, the way temperature scaling
    recalibrates an over-confident classifier (Guo et al. 2017, arXiv:1706.04599).
    """

    def __init__(self, shape: torch.Size, temperature: float):
        super().__init__()
        self._shape = torch.Size(shape)
        self.temperature = float(temperature)
        dimension = int(np.prod(self._shape))
        self._log_z = dimension * (0.5 * math.log(2 * math.pi) + math.log(self.temperature))

    def _log_prob(self, inputs, context):
        scaled = (inputs / self.temperature).reshape(inputs.shape[0], -1)
        return -0.5 * (scaled**2).sum(dim=1) - self._log_z

    def _sample(self, num_samples, context):
        rows = 1 if context is None else context.shape[0]
        noise = self.temperature * torch.randn(rows * num_samples, *self._shape)
        if context is None:
            return noise
        return noise.reshape(rows, num_samples, *self._shape)


class PosteriorNetwork(nn.Module):
    """``q(z | x)``: a flow over ``z - anchor(x)`` conditioned on the summary of ``x``, or an
    equally weighted mixture of K such flows that share the summary (an ensemble).

    A mixture of independently trained flows is a proper density, ``q = (1/K) sum_k q_k``, and
    is known to be less over-confident than its members (Lakshminarayanan et al. 2017,
    arXiv:1612.01474; for simulation-based inference, Hermans et al. 2022). Each member can be
    tempered (:class:`TemperedNormal`, :meth:`set_temperature`).
    """

    def __init__(self, summary: SummaryNetwork, flows: nn.Module | list[nn.Module]):
        super().__init__()
        self.summary = summary
        self.flows = nn.ModuleList(flows if isinstance(flows, list) else [flows])
        self._standard_bases = [flow.net._distribution for flow in self.flows]
        self.temperature = 1.0

    def set_temperature(self, temperature: float) -> None:
        """Temper every member's base distribution (1: the flows as trained)."""
        for flow, standard in zip(self.flows, self._standard_bases, strict=True):
            # sbi's flows are nflows ``Flow``s: the base is their one distribution attribute
            flow.net._distribution = (
                standard if temperature == 1 else TemperedNormal(standard._shape, temperature)
            )
        self.temperature = float(temperature)

    def sample(self, n: int, x: torch.Tensor) -> torch.Tensor:
        """``n`` draws of ``z`` for each observation in ``x`` (B, L) -> (n, B, D)."""
        context, anchor = self.summary.context(x)
        if len(self.flows) == 1:
            return self.flows[0].sample((n,), condition=context) + anchor
        # each draw picks its member flow; draws of one member are made in one call
        member = torch.randint(len(self.flows), (n,))
        u = torch.empty(n, *anchor.shape)
        for k, flow in enumerate(self.flows):
            chosen = member == k
            if chosen.any():
                u[chosen] = flow.sample((int(chosen.sum()),), condition=context)
        return u + anchor

    def log_prob(self, z: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """``log q(z[s, b] | x[b])`` for ``z`` (S, B, D) and ``x`` (B, L) -> (S, B).

        The summary (and the flows' conditioning) is computed once per observation, however
        many ``z`` are evaluated for it.
        """
        context, anchor = self.summary.context(x)
        u = z - anchor
        members = torch.stack([flow.log_prob(u, condition=context) for flow in self.flows])
        return torch.logsumexp(members, dim=0) - math.log(len(self.flows))


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
    """Sbi's conditional flow over ``u = z - anchor``, built from example batches (which set its
    standardisation of ``u`` and of the context).
    """
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
    stubs = torch.zeros(2, n), torch.zeros(2, config.embedding_dim + n)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # sbi warns about the stubs' zero variance
        flows = [build_flow(config, *stubs) for _ in range(config.n_flows)]
    return PosteriorNetwork(build_summary(config, length, prior), flows)
