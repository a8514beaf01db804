"""Layer 7, reports: figures and self-contained HTML pages drawn from the computing layers."""

from .figures import (
    plot_amplifier_comparison,
    plot_calibration,
    plot_correlations,
    plot_demo,
    plot_marginals,
    plot_posterior,
    plot_predictive,
    plot_twin_aps,
)
from .html import cell_report, estimator_report, screen_report, strongest_pairs
from .screen import incidence_table, plot_screen, screen_figure

__all__ = [
    "plot_amplifier_comparison",
    "cell_report",
    "estimator_report",
    "incidence_table",
    "plot_calibration",
    "plot_correlations",
    "plot_demo",
    "plot_marginals",
    "plot_posterior",
    "plot_predictive",
    "plot_screen",
    "plot_twin_aps",
    "screen_figure",
    "screen_report",
    "strongest_pairs",
]
