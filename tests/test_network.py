"""The estimator network's parametrisation: positions, anchors, and the shifted flow."""

from __future__ import annotations

import numpy as np
import torch

from sbi_twins.inference.config import TrainingConfig
from sbi_twins.inference.networks import POSITION_MARGIN, anchors, build_network, positions
from sbi_twins.prior import ParameterPrior, Prior, load_prior


def test_positions_are_uniform_or_normal_under_the_prior_and_anchors_invert_them():
    prior = Prior(
        "kernik2019",
        [
            ParameterPrior("ina.g_Na", "uniform", 1.0, low=0.6, high=1.4),
            ParameterPrior("ikr.g_Kr", "log_uniform", 1.0, low=0.5, high=2.0),
            ParameterPrior("ik1.g_K1", "log_normal", 1.0, sigma=0.3),
        ],
    )
    normal = torch.as_tensor(prior.log_normal)
    z = torch.as_tensor(prior.to_unbounded(prior.sample(20_000, seed=0)), dtype=torch.float64)
    p = positions(z, normal)
    bounded = p[:, ~normal]
    assert bounded.min() > 0 and bounded.max() < 1
    np.testing.assert_allclose(bounded.mean(0), 0.5, atol=0.01)
    np.testing.assert_allclose(bounded.std(0), 1 / np.sqrt(12), atol=0.01)
    np.testing.assert_allclose(p[:, normal].std(0), 1.0, atol=0.03)
    inside = (bounded > POSITION_MARGIN).all(1) & (bounded < 1 - POSITION_MARGIN).all(1)
    torch.testing.assert_close(anchors(p, normal)[inside], z[inside])
    # predictions outside (0, 1) still give finite anchors, at the clamp
    wild = torch.full_like(p[:1], 1.7)
    assert torch.isfinite(anchors(wild, normal)).all()


def test_log_prob_is_the_flow_density_of_the_shifted_draws():
    """q(z | x) = q_u(z - anchor(x) | context(x)): a shift with unit Jacobian, so the density of
    a draw equals the flow's density of the same draw minus its anchor.
    """
    prior = load_prior("kernik2019_pm40")
    config = TrainingConfig(dense=(32,), embedding_hidden=32, embedding_dim=8, num_transforms=2)
    torch.manual_seed(0)
    network = build_network(config, 300, prior).eval()
    x = torch.randn(3, 300) * 10
    with torch.no_grad():
        z = network.sample(5, x)  # (5, 3, D)
        context, anchor = network.summary.context(x)
        for k in range(5):
            direct = network.flows[0].log_prob((z[k] - anchor)[None], condition=context)[0]
            torch.testing.assert_close(network.log_prob(z[k][None], x)[0], direct)
        # many sets for one observation (its summary computed once) = each set on its own
        many = network.log_prob(z[:, :1], x[:1])[:, 0]
        one_by_one = torch.stack([network.log_prob(z[k, :1][None], x[:1])[0, 0] for k in range(5)])
        torch.testing.assert_close(many, one_by_one)
        # the anchor moves the draws: the same noise lands elsewhere for another trace
        assert not torch.allclose(anchor[0], anchor[1])
