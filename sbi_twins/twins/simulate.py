"""Digital twins simulated: their recordings under the estimator's protocol and their beating."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

if TYPE_CHECKING:  # annotations only: simulating twins needs no torch of its own
    from ..inference import Estimator


def simulate_twins(
    estimator: Estimator,
    theta: pd.DataFrame,
    seed: int = 0,
    *,
    ap_duration_ms: float = 6_000.0,
    ap_sample_interval_ms: float = 0.5,
) -> tuple[np.ndarray, np.ndarray]:
    """Recordings and spontaneous activity of parameter sets, e.g. posterior draws (a cell's
    digital twins).

    Parameters
    ----------
    estimator : Estimator
        Supplies the model, prior (its fixed values), protocol and recording settings.
    theta : pandas.DataFrame
        One row per twin: at least the columns :attr:`Estimator.names`.
    seed : int
        Seeds the recording noise of each twin.
    ap_duration_ms, ap_sample_interval_ms : float
        Length and sampling of the simulated spontaneous activity.

    Returns
    -------
    traces : numpy.ndarray
        (N, T) recorded current under the estimator's protocol, pA/pF.
    voltages : numpy.ndarray
        (N, S) membrane potential (mV) of spontaneous activity from the model's initial state.
    """
    model = estimator.cell_model()
    cells = estimator.prior.with_fixed(theta.reset_index(drop=True))
    seeds = np.random.default_rng(seed).integers(0, 2**63 - 1, size=len(cells), dtype=np.int64)
    traces = estimator.simulate_recordings(cells, seeds)
    voltages = model.simulate_ap(
        cells, duration_ms=ap_duration_ms, sample_interval_ms=ap_sample_interval_ms
    )
    return traces, voltages
