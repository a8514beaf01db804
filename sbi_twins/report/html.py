"""Self-contained HTML reports: one file per cell or estimator, figures embedded, readable offline.

A report holds plain-language findings first ("pinned down", "not identified by this protocol",
"trades off with ..."), then the figures (PNG, embedded as data URIs), the tables, and the
manifest of what produced it. The numbers come from the computing layers; this module only lays
them out.
"""

from __future__ import annotations

import base64
import html
import io
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from .._util import atomic_write_text, package_version
from .figures import plot_calibration, plot_correlations, plot_posterior, plot_predictive

if TYPE_CHECKING:  # annotations only: laying out needs no torch
    from ..diagnostics import Diagnostics
    from ..inference import CellPosterior, Estimator

#: Contraction at or above which a parameter is "pinned down" by the recording, and below
#: which it is "not identified" (the labels of the diagnostics: IDENTIFIED, NOT_IDENTIFIED).
PINNED, LOOSE = 0.5, 0.1
#: |posterior correlation| at or above which two parameters are said to trade off.
TRADE_OFF = 0.5

_STYLE = """
body { font-family: system-ui, sans-serif; max-width: 1100px; margin: 2em auto; color: #222; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; margin-top: 2em; border-bottom: 1px solid #ccc; }
table { border-collapse: collapse; font-size: 0.8em; }
td, th { border: 1px solid #ddd; padding: 2px 6px; text-align: right; }
.flag { background: #fde2e1; border: 1px solid #c0392b; padding: 0.6em 1em; }
.ok { background: #e6f4ea; border: 1px solid #2e7d32; padding: 0.6em 1em; }
img { max-width: 100%; } pre { font-size: 0.75em; background: #f6f6f6; padding: 1em; }
"""


def cell_report(
    posterior: CellPosterior,
    directory: str | os.PathLike,
    *,
    n: int = 10_000,
    n_predictive: int = 200,
    seed: int = 0,
    title: str = "cell",
    truth: pd.Series | None = None,
    saved: tuple[pd.DataFrame, pd.DataFrame] | None = None,
) -> Path:
    """Write ``report.html`` (and ``posterior.nc``, ``samples.csv``, ``summary.csv``) for one
    cell's posterior to ``directory``; return the report's path.

    The report opens with the misspecification verdict, then what the recording pins down and
    what it does not, the parameters that trade off, the posterior-predictive check, the
    posterior of every parameter within its prior, the correlation matrix and the tables.
    ``saved`` is what ``posterior.save(directory, n, seed=seed)`` returned, if it was called
    already: its draws are reused instead of drawn and written again.
    """
    out = Path(directory)
    samples, summary = saved or posterior.save(out, n, seed=seed)
    names = list(posterior.names)
    verdict = posterior.misspecification()
    check = posterior.predictive(n_predictive, seed=seed)
    pairs = strongest_pairs(samples[names])
    estimator = posterior.estimator
    protocol_name = estimator.protocol.name
    if verdict.flag:
        banner = (
            f'<p class="flag"><b>This recording is unlike the estimator\'s training cells</b> '
            f"(misspecification p = {verdict.p_value:.3g} &lt; {verdict.alpha:g}): the posterior "
            "below may be wrong. Check units, protocol, and whether the model and prior can "
            "produce this cell.</p>"
        )
    else:
        banner = (
            f'<p class="ok">The recording looks like the estimator\'s training cells '
            f"(misspecification p = {verdict.p_value:.3g}).</p>"
        )
    findings = _identifiability_lines(summary) + _trade_off_lines(pairs)
    findings.append(
        f"{check.coverage(0.9):.0%} of the recording's observation windows lie inside the "
        f"posterior-predictive 90 % band ({check.failed} of {n_predictive} draws failed to "
        "simulate)."
    )
    findings += list(posterior.preprocessing)
    posterior_figure = _figure(plot_posterior(estimator, samples, truth))
    table = summary.copy()
    if truth is not None:
        table["true"] = truth[table.index]
    sections = [
        banner,
        _section("What the recording says", _list(findings)),
        _section("Posterior-predictive check", _figure(plot_predictive(check, protocol_name)))
        + _table(check.residuals, "Residuals per protocol segment (observed - predictive median)"),
        _section("Posterior of every parameter", posterior_figure),
        _section("Correlations", _figure(plot_correlations(samples, names)))
        + _table(pairs.head(20), "Most correlated pairs"),
        _section("Summary", _table(table, f"{n} posterior draws (seed {seed}); 94 % HDI")),
        _section("What produced this report", _manifest(estimator)),
    ]
    return _write(out / "report.html", f"sbi-twins report: {title}", sections)


def estimator_report(
    estimator: Estimator, diagnostics: Diagnostics, directory: str | os.PathLike
) -> Path:
    """Write ``report.html`` and ``diagnostics.csv`` (the per-parameter table) for an estimator
    checked by :func:`sbi_twins.diagnose`; return the report's path.
    """
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    table = diagnostics.table
    table.to_csv(out / "diagnostics.csv", index_label="parameter")
    joint = diagnostics.joint
    off = diagnostics.miscalibrated()
    findings = [
        f"{diagnostics.n_cells} fresh cells made like the training cells, "
        f"{diagnostics.n_draws} posterior draws each.",
        "Marginal calibration (central intervals within 0.05 of nominal at 50 % and 90 %): "
        + ("every parameter." if not off else f"missed by {len(off)}: {', '.join(off)}."),
        f"Joint calibration: the 50 % and 90 % highest-density regions hold the truth for "
        f"{joint.loc[0.5, 'coverage']:.0%} and {joint.loc[0.9, 'coverage']:.0%} of the cells "
        f"(KS p = {diagnostics.joint_p:.2g} against exact calibration). TARP, which needs no "
        f"density: {diagnostics.tarp.loc[0.5, 'coverage']:.0%} and "
        f"{diagnostics.tarp.loc[0.9, 'coverage']:.0%} (KS p = {diagnostics.tarp_p:.2g}).",
    ]
    counts = table["identifiability"].value_counts()
    findings.append(
        ", ".join(f"{counts.get(label, 0)} {label}" for label in ("identified", "weakly", "not"))
        + " identified by this protocol (mean contraction ≥ 0.5, 0.1-0.5, < 0.1)."
    )
    sections = [
        _section("Findings", _list(findings)),
        _section("Calibration", _figure(plot_calibration(diagnostics)))
        + _table(joint, "Expected coverage of the joint highest-density regions")
        + _table(diagnostics.tarp, "TARP expected coverage (random references from the prior)"),
        _section("Per parameter", _table(table, "Diagnostics by parameter")),
        _section("What produced this report", _manifest(estimator)),
    ]
    return _write(out / "report.html", f"sbi-twins estimator report: {estimator!r}", sections)


def strongest_pairs(samples: pd.DataFrame) -> pd.DataFrame:
    """Parameter pairs by |posterior correlation|, strongest first."""
    corr = samples.corr()
    upper = np.triu(np.ones(corr.shape, dtype=bool), k=1)
    pairs = corr.where(upper).stack().rename("correlation").reset_index()
    pairs.columns = ["parameter", "with", "correlation"]
    order = pairs["correlation"].abs().sort_values(ascending=False).index
    return pairs.loc[order].reset_index(drop=True)


def _identifiability_lines(summary: pd.DataFrame) -> list[str]:
    pinned = summary.index[summary["contraction"] >= PINNED].tolist()
    loose = summary.index[summary["contraction"] < LOOSE].tolist()
    return [
        f"Pinned down by this recording (contraction ≥ {PINNED}): {len(pinned)} parameters"
        + (f": {', '.join(pinned)}." if pinned else "."),
        f"Not identified by this protocol (contraction < {LOOSE}, the posterior is about the "
        f"prior): {len(loose)}" + (f": {', '.join(loose)}." if loose else "."),
    ]


def _trade_off_lines(pairs: pd.DataFrame) -> list[str]:
    strong = pairs[pairs["correlation"].abs() >= TRADE_OFF]
    if strong.empty:
        return [f"No two parameters trade off strongly (all |correlation| < {TRADE_OFF})."]
    listed = "; ".join(
        f"{row.parameter} with {row.with_} ({row.correlation:+.2f})"
        for row in strong.head(8).rename(columns={"with": "with_"}).itertuples()
    )
    return [
        f"Trade off (non-unique combinations, |correlation| ≥ {TRADE_OFF}): {len(strong)} pairs, "
        f"strongest: {listed}."
    ]


def _figure(fig) -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    import matplotlib.pyplot as plt

    plt.close(fig)
    data = base64.b64encode(buffer.getvalue()).decode("ascii")
    return f'<img alt="figure" src="data:image/png;base64,{data}">'


def _table(frame: pd.DataFrame, caption: str) -> str:
    body = frame.to_html(float_format=lambda v: f"{v:.4g}", border=0)
    return f"<p><b>{html.escape(caption)}</b></p>{body}"


def _list(lines: list[str]) -> str:
    return "<ul>" + "".join(f"<li>{html.escape(line)}</li>" for line in lines) + "</ul>"


def _section(title: str, body: str) -> str:
    return f"<h2>{html.escape(title)}</h2>{body}"


def _manifest(estimator: Estimator) -> str:
    record = {
        "estimator": str(estimator.path),
        "sbi_twins": package_version(),
        "manifest": estimator.manifest,
    }
    return f"<pre>{html.escape(json.dumps(record, indent=1, default=str))}</pre>"


def _write(path: Path, title: str, sections: list[str]) -> Path:
    page = (
        f'<!DOCTYPE html><html><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
        f"<style>{_STYLE}</style></head><body><h1>{html.escape(title)}</h1>"
        + "\n".join(sections)
        + "</body></html>"
    )
    atomic_write_text(path, page)
    return path
