"""The main job on bundled defaults: a synthetic cell recorded with the estimator's protocol,
fitted by the estimator, checked against its true parameters and its digital twins.

The example cell is made exactly as the estimator's training cells were (a prior draw that
passes the training set's viability rules, then the recording model with noise), but from its
own seed, so it is a cell the estimator has not seen.
"""

from __future__ import annotations

import os

import numpy as np
import pandas as pd

from .estimator import Estimator
from .observe import PREFIX, simulate_recordings
from .viability import ViabilityRules, check_viability

#: Spontaneous activity simulated for the true cell and each twin (ms).
AP_DURATION_MS = 6_000.0


def example_cell(estimator: Estimator, seed: int = 0) -> tuple[pd.Series, np.ndarray]:
    """Draw one viable cell from the estimator's prior and simulate its recording.

    Parameters
    ----------
    estimator : Estimator
        Supplies the model, prior, protocol, recording settings and viability rules.
    seed : int
        Seeds both the parameter draw and the recording noise.

    Returns
    -------
    truth : Series
        The cell's parameters (cell and recording), indexed by :attr:`Estimator.names`.
    trace : ndarray
        The recorded current (pA/pF) on ``estimator.protocol.times(estimator.sample_interval_ms)``.
    """
    model = estimator.cell_model()
    prior = estimator.prior
    rules = estimator.manifest["training_set"]["viability"]
    rng = np.random.default_rng(seed)
    for _ in range(100):  # about a third of draws is viable, so this ends within a few rounds
        theta = prior.sample(8, seed=rng)
        cells = prior.with_fixed(theta)
        if rules is None:
            index = 0
        else:
            model_columns = [c for c in cells.columns if not c.startswith(PREFIX)]
            verdict = check_viability(model, cells[model_columns], ViabilityRules.from_dict(rules))
            viable = np.flatnonzero(verdict["viable"].to_numpy())
            if viable.size == 0:
                continue
            index = int(viable[0])
        trace = simulate_recordings(
            model,
            estimator.protocol,
            cells.iloc[[index]],
            seeds=np.array([seed]),
            sample_interval_ms=estimator.sample_interval_ms,
            dt_ms=estimator.manifest["recording"]["dt_ms"],
        )[0]
        return theta.iloc[index][list(estimator.names)], trace
    raise RuntimeError("no viable cell in 800 prior draws; check the prior and viability rules")


def simulate_cells(
    estimator: Estimator, theta: pd.DataFrame, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Recordings and spontaneous activity of parameter sets, e.g. posterior draws (the
    cell's digital twins).

    Parameters
    ----------
    estimator : Estimator
        Supplies the model, prior (its fixed values), protocol and recording settings.
    theta : DataFrame
        One row per cell, columns :attr:`Estimator.names`.
    seed : int
        Seeds the recording noise of each cell.

    Returns
    -------
    traces : ndarray
        (N, T) recorded current under the estimator's protocol.
    voltages : ndarray
        (N, S) membrane potential, spontaneous activity, every 0.5 ms for :data:`AP_DURATION_MS`.
    """
    model = estimator.cell_model()
    cells = estimator.prior.with_fixed(theta.reset_index(drop=True))
    seeds = np.random.default_rng(seed).integers(0, 2**63 - 1, size=len(cells), dtype=np.int64)
    traces = simulate_recordings(
        model,
        estimator.protocol,
        cells,
        seeds=seeds,
        sample_interval_ms=estimator.sample_interval_ms,
        dt_ms=estimator.manifest["recording"]["dt_ms"],
    )
    model_columns = [c for c in cells.columns if not c.startswith(PREFIX)]
    voltages = model.simulate_ap(cells[model_columns], duration_ms=AP_DURATION_MS)
    return traces, voltages


def compare_with_truth(summary: pd.DataFrame, truth: pd.Series) -> pd.DataFrame:
    """The summary with the true values and whether each lies in its 94% HDI."""
    table = summary.assign(true=truth[summary.index])
    return table.assign(
        in_hdi=(table["true"] >= table["hdi_low"]) & (table["true"] <= table["hdi_high"])
    )


def plot_demo(
    path: str | os.PathLike,
    estimator: Estimator,
    samples: pd.DataFrame,
    truth: pd.Series,
    trace: np.ndarray,
    simulated: tuple[np.ndarray, np.ndarray],
) -> None:
    """One figure: the recording against its twins' recordings, spontaneous activity of the
    true cell and of the twins, and every parameter's posterior within its prior range.

    ``simulated`` is :func:`simulate_cells` of the true cell (first row) and the twins.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    times = estimator.protocol.times(estimator.sample_interval_ms) / 1000
    traces, voltages = simulated
    fig = plt.figure(figsize=(14, 11), constrained_layout=True)
    grid = fig.add_gridspec(2, 2, width_ratios=(1.5, 1))
    ax = fig.add_subplot(grid[0, 0])
    low, high = np.nanpercentile(traces[1:], [5, 95], axis=0)
    ax.fill_between(times, low, high, color="C1", alpha=0.5, lw=0, label="twins, 5-95%")
    ax.plot(times, trace, lw=0.3, color="k", label="recording")
    ax.set_ylim(np.percentile(trace, 0.5) - 5, np.percentile(trace, 99.5) + 5)
    ax.set(
        xlabel="time (s)", ylabel="current (pA/pF)", title=f"{estimator.protocol.name} recording"
    )
    ax.legend(loc="lower right")

    ax = fig.add_subplot(grid[1, 0])
    t_ap = np.arange(voltages.shape[1]) * 0.5e-3
    ax.plot(t_ap, voltages[1:].T, lw=0.5, color="C1", alpha=0.5)
    ax.plot(t_ap, voltages[0], lw=1.2, color="k", label="true cell")
    ax.set(xlabel="time (s)", ylabel="V (mV)", title="spontaneous activity: true cell and twins")
    ax.legend(loc="upper right")

    ax = fig.add_subplot(grid[:, 1])
    names = list(estimator.names)
    position = _prior_position(estimator, samples[names])
    true_position = _prior_position(estimator, truth[names].to_frame().T)[0]
    rows = list(range(len(names)))
    ax.boxplot(
        position,
        orientation="horizontal",
        positions=rows,
        whis=(3, 97),
        showfliers=False,
        widths=0.6,
    )
    ax.scatter(true_position, rows, color="C3", s=10, zorder=3, label="true value")
    ax.set_yticks(rows, names, fontsize=5)
    ax.invert_yaxis()
    ax.set(
        xlim=(0, 1),
        xlabel="position within the prior range (0: lower bound, 1: upper)",
        title="posterior (box 25-75%, whiskers 3-97%)",
    )
    ax.legend(loc="lower right", fontsize=7)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _prior_position(estimator: Estimator, theta: pd.DataFrame) -> np.ndarray:
    """Where parameter values lie in their prior's range, 0..1 (the logistic of the unbounded
    coordinate: linear for uniform priors, logarithmic for log-uniform ones)."""
    return 1.0 / (1.0 + np.exp(-estimator.prior.to_unbounded(theta)))
