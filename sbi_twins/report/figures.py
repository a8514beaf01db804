"""Figures (the only place the package draws): matplotlib, written to files, no screen needed."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

if TYPE_CHECKING:  # annotations only: drawing needs no torch
    from ..inference import Estimator
    from .action_potentials import RecordedAP, TwinAPs


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
    plt = _pyplot()
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

    posterior_panel(fig.add_subplot(grid[:, 1]), estimator, samples, truth)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def posterior_panel(
    ax,
    estimator: Estimator,
    samples: pd.DataFrame,
    truth: pd.Series | None,
    modes: pd.DataFrame | None = None,
):
    """Every parameter's posterior as a box within its prior range (and the truth, if known).

    ``modes`` (:func:`sbi_twins.diagnostics.multimodal_parameters` with the estimator's prior)
    marks the modes of the multimodal parameters, which a box hides.
    """
    names = list(estimator.names)
    rows = list(range(len(names)))
    ax.boxplot(
        _prior_position(estimator, samples[names]),
        orientation="horizontal",
        positions=rows,
        whis=(3, 97),
        showfliers=False,
        widths=0.6,
    )
    labelled = False
    if truth is not None:
        true_position = _prior_position(estimator, truth[names].to_frame().T)[0]
        ax.scatter(true_position, rows, color="C3", s=10, zorder=3, label="true value")
        labelled = True
    if modes is not None and modes["multimodal"].any():
        several = [(rows[names.index(n)], m) for n, m in modes["positions"].items()
                   if modes.loc[n, "multimodal"]]
        x = [p for _, positions in several for p in positions]
        y = [row for row, positions in several for _ in positions]
        ax.scatter(x, y, marker="v", color="C4", s=18, zorder=4, label="modes (multimodal)")
        labelled = True
    if labelled:
        ax.legend(loc="lower right", fontsize=7)
    ax.set_yticks(rows, names, fontsize=5)
    ax.invert_yaxis()
    ax.set(
        xlim=(0, 1),
        xlabel="position within the prior range (0: lower bound, 1: upper)",
        title="posterior (box 25-75%, whiskers 3-97%)",
    )


def plot_posterior(
    estimator: Estimator,
    samples: pd.DataFrame,
    truth: pd.Series | None = None,
    modes: pd.DataFrame | None = None,
):
    """Figure: every parameter's posterior within its prior range (modes marked if given)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 10), constrained_layout=True)
    posterior_panel(ax, estimator, samples, truth, modes)
    return fig


def plot_marginals(estimator: Estimator, samples: pd.DataFrame, modes: pd.DataFrame):
    """Figure: the marginals of the multimodal parameters within their prior range.

    Per parameter of ``modes`` (a :func:`sbi_twins.diagnostics.multimodal_parameters` table,
    e.g. its multimodal rows): a histogram of the draws' positions within the prior's range,
    the density estimate the modes were found on, and each mode with its share of the draws.
    """
    # imported here: sbi_twins.diagnostics imports torch (loaded already with an estimator)
    from ..diagnostics.multimodality import kernel_density, prior_positions

    plt = _pyplot()
    names = list(modes.index)
    columns = min(3, len(names))
    rows = -(-len(names) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(4.3 * columns, 2.9 * rows),
                             constrained_layout=True, squeeze=False)
    positions = prior_positions(samples, estimator.prior)
    for ax, name in zip(axes.flat, names, strict=False):
        x = positions[name].to_numpy()
        grid, density, _ = kernel_density(x, bounds=(0.0, 1.0))
        ax.hist(x, bins=50, range=(0, 1), density=True, color="0.8")
        ax.plot(grid, density, color="C0", lw=1.2)
        row = modes.loc[name]
        for position, value, weight in zip(row["positions"], row["modes"], row["weights"],
                                           strict=True):
            ax.axvline(position, color="C4", lw=1, ls="--")
            side = "left" if position < 0.15 else "right" if position > 0.85 else "center"
            ax.annotate(f" {value:.3g} \n {weight:.0%} ", (position, 0.97), xycoords=("data",
                        "axes fraction"), ha=side, va="top", fontsize=7, color="C4")
        ax.set(xlim=(0, 1), yticks=[], title=name)
        ax.title.set_fontsize(9)
    for ax in axes.flat[len(names):]:
        ax.set_visible(False)
    for ax in axes[-1]:
        ax.set_xlabel("position within the prior range")
    fig.suptitle("multimodal marginals: draws, density estimate, modes (value, share of draws)",
                 fontsize=10)
    return fig


def plot_twin_aps(
    aps: TwinAPs,
    recorded: RecordedAP | None = None,
    *,
    lead_ms: float = 100.0,
    max_traces: int = 100,
):
    """Figure: the twins' spontaneous APs after settling, and a recorded AP if given.

    Left: the last beats of each twin (a stretch from ``lead_ms`` before the last upstroke
    that leaves a full stretch), the recorded trace from its first upstroke. Right: the same
    aligned on that upstroke, one AP long. At most ``max_traces`` twins are drawn.
    """
    from .action_potentials import aligned_window

    plt = _pyplot()
    dt = aps.sample_interval_ms
    duration = aps.voltages.shape[1] * dt
    cl = np.nanmedian(aps.features["CL"]) if aps.beating.any() else np.nan
    show = min(duration, max(3000.0, 2.5 * cl) if np.isfinite(cl) else 3000.0)
    apd = [np.nanmedian(aps.features["APD90"]) if aps.beating.any() else np.nan]
    if recorded is not None:
        apd.append(float(recorded.features["APD90"]))
    zoom = max(500.0, 1.6 * np.nanmax(apd)) if np.isfinite(apd).any() else 500.0
    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 4.6), width_ratios=(1.7, 1),
                                      constrained_layout=True)
    drawn = 0
    for v in aps.voltages[:max_traces]:
        if not np.isfinite(v).all():
            continue
        stretch, upstroke = aligned_window(v, dt, show, lead_ms, last=True)
        t = np.arange(stretch.size) * dt - lead_ms
        style = {"color": "C1", "alpha": 0.35, "lw": 0.6, "label": "twins" if not drawn else None}
        left.plot(t / 1000, stretch, **style)
        if upstroke is not None:
            right.plot(t[t <= zoom], stretch[t <= zoom], **style)
        drawn += 1
    if recorded is not None:
        rdt = float(recorded.time_ms[1] - recorded.time_ms[0])
        stretch, upstroke = aligned_window(recorded.potential_mV, rdt, show, lead_ms, last=False)
        t = np.arange(stretch.size) * rdt - (lead_ms if upstroke is not None else 0.0)
        label = f"recorded ({recorded.name})"
        left.plot(t / 1000, stretch, color="k", lw=0.8, label=label)
        if upstroke is not None:
            right.plot(t[t <= zoom], stretch[t <= zoom], color="k", lw=1.0, label=label)
    beating = int(aps.beating.sum())
    left.set(xlabel="time from the aligned upstroke (s)", ylabel="V (mV)",
             title=f"last beats of {drawn} twins after {aps.settle_ms / 1000:g} s of settling "
             f"({beating} of {len(aps.features)} beat)")
    right.set(xlabel="time from the upstroke (ms)", ylabel="V (mV)", xlim=(-lead_ms, zoom),
              title="one action potential, aligned on the upstroke")
    handles, labels = left.get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncols=2, fontsize=8)
    return fig


def plot_correlations(samples: pd.DataFrame, names: list[str]):
    """Figure: the posterior correlation matrix of the parameters (which trade off)."""
    plt = _pyplot()
    corr = samples[names].corr().to_numpy()
    fig, ax = plt.subplots(figsize=(9, 8), constrained_layout=True)
    image = ax.imshow(corr, cmap="RdBu_r", vmin=-1, vmax=1)
    ax.set_xticks(range(len(names)), names, rotation=90, fontsize=5)
    ax.set_yticks(range(len(names)), names, fontsize=5)
    fig.colorbar(image, ax=ax, shrink=0.8, label="posterior correlation")
    ax.set_title("posterior correlations")
    return fig


def plot_predictive(check, protocol_name: str):
    """Figure: the recording's observation windows against the posterior-predictive 90 % band."""
    plt = _pyplot()
    low, high = check.band(0.9)
    t = check.times_ms / 1000
    fig, ax = plt.subplots(figsize=(12, 4.5), constrained_layout=True)
    ax.fill_between(t, low, high, step="mid", color="C1", alpha=0.5, lw=0, label="predictive 90%")
    ax.plot(t, check.observed, lw=0.6, color="k", label="recording (window means)")
    lo, hi = np.percentile(check.observed, [0.5, 99.5])
    ax.set_ylim(lo - 5, hi + 5)
    ax.set(
        xlabel="time (s)",
        ylabel="current (pA/pF)",
        title=f"posterior-predictive check, {protocol_name}: {len(check.traces)} draws "
        f"({check.failed} failed to simulate)",
    )
    ax.legend(loc="lower right")
    return fig


def plot_calibration(diag):
    """Figure: joint (HPD) and marginal calibration of an estimator (:func:`diagnose`)."""
    plt = _pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 5), constrained_layout=True)
    joint = diag.joint
    levels = joint.index.to_numpy()
    left.plot([0, 1], [0, 1], color="0.6", lw=1, label="calibrated")
    left.fill_between(levels, joint["ci_low"], joint["ci_high"], color="C0", alpha=0.3, lw=0)
    left.plot(levels, joint["coverage"], "o-", color="C0", label="joint HPD regions")
    left.set(
        xlabel="credibility level",
        ylabel="share of cells whose truth is inside",
        title=f"expected coverage, {diag.n_cells} cells (95% CI)",
        xlim=(0, 1),
        ylim=(0, 1),
    )
    left.legend(loc="upper left")
    table = diag.table
    rows = np.arange(len(table))
    for level, colour in ((50, "C2"), (90, "C3")):
        right.errorbar(
            table[f"coverage{level}"],
            rows,
            xerr=[
                table[f"coverage{level}"] - table[f"coverage{level}_low"],
                table[f"coverage{level}_high"] - table[f"coverage{level}"],
            ],
            fmt="o",
            ms=3,
            color=colour,
            label=f"{level}% central intervals",
        )
        right.axvline(level / 100, color=colour, lw=0.8, ls="--")
    right.set_yticks(rows, table.index, fontsize=5)
    right.invert_yaxis()
    right.set(xlim=(0, 1), xlabel="coverage (marginal)", title="marginal coverage by parameter")
    right.legend(loc="lower left", fontsize=7)
    return fig


def plot_amplifier_comparison(table: pd.DataFrame):
    """Figure: recording parameters inferred from voltage clamp against the amplifier's readings.

    Parameters
    ----------
    table : pandas.DataFrame
        One row per (cell, parameter): columns ``cell``, ``parameter``, ``unit``, ``median``,
        ``low``, ``high`` (the posterior's central interval), ``amplifier`` (the reading) and
        ``prior_low``, ``prior_high`` (the prior's range, shaded), e.g. from
        ``examples/real_cells.py``.
    """
    plt = _pyplot()
    parameters = list(dict.fromkeys(table["parameter"]))
    cells = list(dict.fromkeys(table["cell"]))
    fig, axes = plt.subplots(1, len(parameters), figsize=(4.2 * len(parameters), 3.2),
                             constrained_layout=True, squeeze=False)
    for ax, parameter in zip(axes[0], parameters, strict=True):
        rows = table[table["parameter"] == parameter].set_index("cell").loc[cells]
        y = np.arange(len(cells))
        ax.axvspan(rows["prior_low"].iloc[0], rows["prior_high"].iloc[0], color="0.92",
                   label="prior range")
        ax.errorbar(rows["median"], y, xerr=[rows["median"] - rows["low"],
                                             rows["high"] - rows["median"]],
                    fmt="o", color="C0", capsize=3, label="posterior median, 90 % interval")
        ax.plot(rows["amplifier"], y, "D", color="k", mfc="none", label="amplifier reading")
        ax.set(yticks=y, yticklabels=cells if ax is axes[0][0] else [],
               xlabel=f"{parameter} ({rows['unit'].iloc[0]})", ylim=(-0.6, len(cells) - 0.4))
        if (rows["prior_high"] / rows["prior_low"]).iloc[0] > 20:
            ax.set_xscale("log")
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncols=3, fontsize=8)
    return fig


def _pyplot():
    """matplotlib.pyplot on a file backend (no screen needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _prior_position(estimator: Estimator, theta: pd.DataFrame) -> np.ndarray:
    """Where parameter values lie in their prior's range, 0..1 (the logistic of the unbounded
    coordinate: linear for uniform priors, logarithmic for log-uniform ones), (N, D).
    """
    # imported here: sbi_twins.diagnostics imports torch (loaded already with an estimator)
    from ..diagnostics.multimodality import prior_positions

    return prior_positions(theta, estimator.prior).to_numpy()
