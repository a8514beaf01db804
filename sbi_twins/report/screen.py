"""The figure of a drug screen: incidence against dose, outcomes, and APD90 of the twins."""

from __future__ import annotations

import os

import numpy as np
import pandas as pd

from ..physiology.eads import OUTCOMES
from ..twins.screen import ScreenResult

#: Colour of each outcome in the figure.
_OUTCOME_COLOURS = {
    "normal": "0.75",
    "ead": "C1",
    "repolarisation_failure": "C3",
    "no_beats": "C0",
    "simulation_failed": "k",
}


def plot_screen(result: ScreenResult, path: str | os.PathLike, *, event: str = "ead") -> None:
    """Write :func:`screen_figure` of a screen to ``path`` (its suffix picks the format, e.g.
    ``.png``, ``.pdf``).
    """
    fig = screen_figure(result, event=event)
    fig.savefig(path, dpi=120)
    _pyplot().close(fig)


def screen_figure(result: ScreenResult, *, event: str = "ead"):
    """One figure of a screen: incidence per dose, outcomes per dose, APD90 per dose.

    Left: the incidence of `event` (:meth:`ScreenResult.incidence`) at each dose, per cell
    with its 95 % Wilson interval, and, with two or more cells, pooled over cells with its
    bootstrap interval. Middle: the share of each outcome among the twins. Right: APD90 of the
    twins that beat in the judged window. Doses are evenly spaced and labelled in nM.

    Parameters
    ----------
    result : ScreenResult
        What :func:`sbi_twins.twins.screen.screen` returned.
    event : {"ead", "repolarisation_failure", "abnormal"}, default "ead"
        What the left panel counts.

    Returns
    -------
    matplotlib.figure.Figure
    """
    plt = _pyplot()
    doses = list(result.doses_nM)
    where = {dose: k for k, dose in enumerate(doses)}
    labels = [f"{d:g}" for d in doses]
    outcomes = result.outcomes
    fig, (left, middle, right) = plt.subplots(1, 3, figsize=(15, 4.6), constrained_layout=True)

    per_cell = result.incidence(by_cell=True, event=event)
    cells = per_cell["cell"].unique()
    offsets = np.linspace(-0.15, 0.15, len(cells)) if len(cells) > 1 else [0.0]
    for offset, (cell, group) in zip(offsets, per_cell.groupby("cell", sort=False), strict=True):
        x = group["dose_nM"].map(where).to_numpy() + offset
        p = group[f"p_{event}"].to_numpy()
        error = _error_bars(p, group["ci_low"].to_numpy(), group["ci_high"].to_numpy())
        left.errorbar(x, p, yerr=error, marker="o", ms=4, capsize=3, lw=1, alpha=0.8,
                      label=f"cell {cell}" if len(cells) <= 8 else None)
    if len(cells) >= 2:
        pooled = result.incidence(by_cell=False, event=event)
        x = pooled["dose_nM"].map(where).to_numpy()
        p = pooled[f"p_{event}"].to_numpy()
        error = _error_bars(p, pooled["ci_low"].to_numpy(), pooled["ci_high"].to_numpy())
        left.errorbar(x, p, yerr=error, color="k", marker="s", lw=2, capsize=4,
                      label="pooled over cells")
    left.set(xticks=range(len(doses)), xticklabels=labels, ylim=(-0.03, 1.03),
             xlabel=f"{result.drug.name} (nM)", ylabel=f"P({event.replace('_', ' ')})",
             title="incidence (posterior probability per cell)")
    left.legend(loc="upper left", fontsize=8)

    bottom = np.zeros(len(doses))
    counts = outcomes.groupby("dose_nM")["outcome"].value_counts().unstack(fill_value=0)
    shares = counts.div(counts.sum(axis=1), axis=0).reindex(doses, fill_value=0)
    for outcome in OUTCOMES:
        if outcome in shares and shares[outcome].any():
            share = shares[outcome].to_numpy()
            middle.bar(range(len(doses)), share, bottom=bottom, color=_OUTCOME_COLOURS[outcome],
                       label=outcome.replace("_", " "))
            bottom += share
    middle.set(xticks=range(len(doses)), xticklabels=labels, ylim=(0, 1),
               xlabel=f"{result.drug.name} (nM)", ylabel="share of twins", title="outcomes")
    middle.legend(loc="lower left", fontsize=8)

    apd = [outcomes.loc[outcomes["dose_nM"] == d, "APD90"].dropna().to_numpy() for d in doses]
    shown = [k for k, values in enumerate(apd) if values.size]
    if shown:
        right.boxplot([apd[k] for k in shown], positions=shown, widths=0.6, showfliers=False)
    right.set(xticks=range(len(doses)), xticklabels=labels, xlim=(-0.6, len(doses) - 0.4),
              xlabel=f"{result.drug.name} (nM)", ylabel="APD90 (ms)",
              title="APD90 of the twins that beat")
    n_twins = outcomes.groupby(["cell", "twin"]).ngroups
    fig.suptitle(f"{result.drug.name} screen of {n_twins} twins ({len(cells)} cell"
                 f"{'s' if len(cells) != 1 else ''}), model {result.settings.get('model', '?')}")
    return fig


def incidence_table(result: ScreenResult, by_cell: bool = True) -> pd.DataFrame:
    """EAD and abnormal-repolarisation incidence side by side: per cell and dose (Wilson
    intervals) or pooled over cells (bootstrap intervals; :meth:`ScreenResult.incidence`).
    """
    ead = result.incidence(by_cell, event="ead").rename(
        columns={"ci_low": "ead_low", "ci_high": "ead_high"}
    )
    abnormal = result.incidence(by_cell, event="abnormal")
    return ead.assign(
        n_abnormal=abnormal["n_abnormal"],
        p_abnormal=abnormal["p_abnormal"],
        abnormal_low=abnormal["ci_low"],
        abnormal_high=abnormal["ci_high"],
    )


def _error_bars(p: np.ndarray, low: np.ndarray, high: np.ndarray) -> np.ndarray:
    """The (2, N) error bars of estimates ``p`` with interval ``[low, high]``; a
    bootstrap interval of a mean over few cells can miss the mean itself, which is drawn as a
    bar of length 0 on that side rather than refused.
    """
    return np.clip(np.vstack([p - low, high - p]), 0.0, None)


def _pyplot():
    """matplotlib.pyplot on a file backend (no screen needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt
