"""Figures (the only place the package draws): matplotlib, written to files, no screen needed."""

from __future__ import annotations

import os

import numpy as np
import pandas as pd

from ..inference import Estimator


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

    ``simulated`` is :func:`sbi_twins.twins.simulate_twins` of the true cell (first row) and
    the twins, spontaneous activity sampled every 0.5 ms.
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
    coordinate: linear for uniform priors, logarithmic for log-uniform ones).
    """
    return 1.0 / (1.0 + np.exp(-estimator.prior.to_unbounded(theta)))
