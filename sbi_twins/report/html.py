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

from .._util import atomic_write, atomic_write_text, check_integer, package_version
from .action_potentials import COMPARED, RANGE, compare_features, measure_recording, twin_aps
from .figures import (
    plot_calibration,
    plot_correlations,
    plot_marginals,
    plot_posterior,
    plot_predictive,
    plot_twin_aps,
)
from .screen import incidence_table, screen_figure

if TYPE_CHECKING:  # annotations only: laying out needs no torch
    from ..diagnostics import Diagnostics
    from ..inference import CellPosterior, Estimator
    from ..recording import Recording
    from ..twins import ScreenResult
    from .action_potentials import RecordedAP

#: Contraction at or above which a parameter is "pinned down" by the recording, and below
#: which it is "not identified" (the labels of the diagnostics: IDENTIFIED, NOT_IDENTIFIED).
PINNED, LOOSE = 0.5, 0.1
#: |posterior correlation| at or above which two parameters are said to trade off.
TRADE_OFF = 0.5
#: Twins simulated for the APs of a cell's report when a recorded AP is given without a number.
TWINS_AP = 50
#: A mode this close to a bound (as a share of the prior's range) is said to be at the bound.
AT_BOUND = 0.01
#: Multimodal parameters drawn in the report's figure of marginals (the deepest dips first).
MARGINALS_SHOWN = 12

_STYLE = """
body { font-family: system-ui, sans-serif; max-width: 1100px; margin: 2em auto; color: #222; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; margin-top: 2em; border-bottom: 1px solid #ccc; }
table { border-collapse: collapse; font-size: 0.8em; }
td, th { border: 1px solid #ddd; padding: 2px 6px; text-align: right; }
.flag { background: #fde2e1; border: 1px solid #c0392b; padding: 0.6em 1em; }
.ok { background: #e6f4ea; border: 1px solid #2e7d32; padding: 0.6em 1em; }
img { max-width: 100%; }
pre { font-size: 0.75em; background: #f6f6f6; padding: 1em; white-space: pre-wrap; }
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
    twins_ap: int | None = None,
    recorded_ap: Recording | None = None,
) -> Path:
    """Write a cell's self-contained ``report.html`` and its data to ``directory``.

    The report opens with the misspecification verdict, then what the recording pins down and
    what it does not, the parameters that trade off and those whose posterior has several
    modes, the posterior-predictive check, on request the twins' spontaneous action potentials
    (against a recorded one), the posterior of every parameter within its prior, the marginals
    of the multimodal parameters, the correlation matrix and the tables.

    Parameters
    ----------
    posterior : CellPosterior
        The cell's posterior.
    directory : str or path
        Where to write ``report.html``, ``multimodality.csv`` (one row per parameter,
        :func:`sbi_twins.diagnostics.multimodal_parameters`), ``samples.csv``, ``summary.csv``,
        ``posterior.nc`` and, with twins' APs, ``twins_ap.csv`` (each twin's AP features) and
        ``twins_ap_comparison.csv`` (their ranges, against the recorded AP's if given).
    n : int
        Posterior draws.
    n_predictive : int
        Draws re-simulated for the posterior-predictive check.
    seed : int
        Seeds the draws and the check.
    title : str
        The report's title (e.g. the recording's file name).
    truth : pandas.Series, optional
        The true parameters of a simulated cell, shown against the posterior.
    saved : (DataFrame, DataFrame), optional
        What ``posterior.save(directory, n, seed=seed)`` returned, if it was called already:
        its draws are reused instead of drawn and written again.
    twins_ap : int, optional
        Simulate this many twins (the first draws, rows 0.. of ``samples.csv``) beating
        spontaneously after settling, and show their APs and AP features
        (:mod:`sbi_twins.report.action_potentials`). None: no twins' APs (the report stays
        fast), unless `recorded_ap` is given, then :data:`TWINS_AP`.
    recorded_ap : Recording, optional
        A current-clamp recording of the cell's spontaneous activity, overlaid on the twins'
        APs and its features compared with the twins' ranges.

    Returns
    -------
    pathlib.Path
        The report's path.

    Raises
    ------
    ValueError
        `twins_ap` below 1 or above `n`, or `recorded_ap` not a current-clamp recording.
    """
    # imported here: sbi_twins.diagnostics imports torch, which `import sbi_twins.report`
    # avoids (a posterior has loaded it already)
    from ..diagnostics.multimodality import multimodal_parameters
    from ..inference.misspecification import beyond_prior_text

    if twins_ap is None and recorded_ap is not None:
        twins_ap = TWINS_AP
    if twins_ap is not None:
        check_integer("twins_ap", twins_ap, minimum=1, what="twins whose APs are simulated")
        if twins_ap > n:
            raise ValueError(f"twins_ap ({twins_ap}) cannot exceed the posterior draws n ({n})")
    # a wrong recording is refused before the slow parts
    recorded = None if recorded_ap is None else measure_recording(recorded_ap)
    out = Path(directory)
    samples, summary = saved or posterior.save(out, n, seed=seed)
    names = list(posterior.names)
    estimator = posterior.estimator
    verdict = posterior.misspecification()
    check = posterior.predictive(n_predictive, seed=seed)
    pairs = strongest_pairs(samples[names])
    modes = multimodal_parameters(samples, estimator.prior, names=names)
    atomic_write(out / "multimodality.csv",
                 lambda tmp: _flat(modes).to_csv(tmp, index_label="parameter"))
    protocol_name = estimator.protocol.name
    if verdict.flag:
        banner = (
            f'<p class="flag"><b>This recording is unlike the estimator\'s training cells</b> '
            f"(misspecification p = {verdict.p_value:.3g} &lt; {verdict.alpha:g}): the posterior "
            "below may be wrong. Check units, protocol, and whether the model and prior can "
            f"produce this cell.{html.escape(beyond_prior_text(verdict.beyond_prior))}</p>"
        )
    else:
        banner = (
            f'<p class="ok">The recording looks like the estimator\'s training cells '
            f"(misspecification p = {verdict.p_value:.3g}).</p>"
        )
    findings = (
        _identifiability_lines(summary) + _trade_off_lines(pairs) + _multimodal_lines(modes)[:1]
    )
    findings.append(
        f"{check.coverage(0.9):.0%} of the recording's observation windows lie inside the "
        f"posterior-predictive 90 % band ({check.failed} of {n_predictive} draws failed to "
        "simulate)."
    )
    twins_section = []
    if twins_ap is not None:
        body, compared = _twins_ap_body(estimator, samples.head(twins_ap), recorded, out)
        twins_section.append(_section("Twins' spontaneous action potentials", body))
        findings += compared
    findings += list(posterior.preprocessing)
    table = summary.copy()
    table["modes"] = modes["n_modes"]
    if truth is not None:
        table["true"] = truth[table.index]
    sections = [
        banner,
        _section("What the recording says", _list(findings)),
        _section("Posterior-predictive check", _figure(plot_predictive(check, protocol_name)))
        + _table(check.residuals, "Residuals per protocol segment (observed - predictive median)"),
        *twins_section,
        _section("Posterior of every parameter",
                 _figure(plot_posterior(estimator, samples, truth, modes))),
        _section("Multimodal marginals", _multimodal_body(estimator, samples, modes)),
        _section("Correlations", _figure(plot_correlations(samples, names)))
        + _table(pairs.head(20), "Most correlated pairs"),
        _section("Summary", _table(table, f"{n} posterior draws (seed {seed}); 94 % HDI; modes: "
                                   "separate modes of the marginal")),
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


def screen_report(
    result: ScreenResult, directory: str | os.PathLike, title: str | None = None
) -> Path:
    """Write ``report.html`` for a drug screen (:func:`sbi_twins.screen`); return its path.

    It opens with the incidence of abnormal repolarisation and of EADs at each dose in words
    (pooled over cells when there are two or more, else the one cell's), then the figure
    (:func:`~sbi_twins.report.screen.screen_figure`), the incidence per cell and dose, the
    outcomes per dose, and what produced the screen (drug, doses, protocol, model).
    """
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    n_cells = result.outcomes["cell"].nunique()
    per_cell = incidence_table(result, by_cell=True)
    headline = incidence_table(result, by_cell=False) if n_cells >= 2 else per_cell
    meaning = (
        f"Pooled over {n_cells} cells: the estimated incidence in the population they were drawn "
        "from, with a bootstrap interval over cells."
        if n_cells >= 2
        else "One cell: the share of its twins is the posterior probability that this cell "
        "shows it, with the Monte-Carlo (Wilson) interval of the twins."
    )
    findings = [meaning] + [
        f"{row.dose_nM:g} nM: "
        + (
            "abnormal repolarisation in "
            f"{_share(row.p_abnormal, row.abnormal_low, row.abnormal_high)}, EAD in "
            f"{_share(row.p_ead, row.ead_low, row.ead_high)} of {row.n} twins"
            if row.n
            else "no twin could be judged"
        )
        + (f"; {row.n_failed_sim} failed to simulate" if row.n_failed_sim else "")
        for row in headline.itertuples()
    ]
    outcomes = result.outcomes
    counts = outcomes.groupby("dose_nM")["outcome"].value_counts().unstack(fill_value=0)
    record = {
        "drug": result.drug.to_dict(),
        "doses_nM": list(result.doses_nM),
        "settings": result.settings,
        "sbi_twins": package_version(),
    }
    sections = [
        _section("Findings", _list(findings)),
        _section("Incidence, outcomes and APD90 by dose",
                 _figure(screen_figure(result, event="abnormal"))),
        _section("Incidence per cell",
                 _table(per_cell.set_index("cell"), "EAD and abnormal repolarisation")),
        _section("Outcomes", _table(counts, "Twins by outcome at each dose")),
        _section(
            "What produced this report",
            f"<pre>{html.escape(json.dumps(record, indent=1, default=str))}</pre>",
        ),
    ]
    name = title or f"{result.drug.name} screen"
    return _write(out / "report.html", f"sbi-twins screen report: {name}", sections)


def _share(p: float, low: float, high: float) -> str:
    """An incidence and its interval in words ("no interval" where it has none)."""
    interval = "no interval" if np.isnan(low) else f"{low:.1%} to {high:.1%}"
    return f"{p:.1%} ({interval})"


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


def _multimodal_lines(modes: pd.DataFrame) -> list[str]:
    """One line of findings, then one line per multimodal parameter (all of them)."""
    several = modes[modes["multimodal"]]
    if several.empty:
        return ["Every parameter's posterior has a single mode (no marginal with separate "
                "modes; criterion under 'Multimodal marginals')."]
    described = [_describe_modes(name, row) for name, row in several.iterrows()]
    first = (f"Several separate modes (distinct values the posterior allows, which its mean, "
             f"sd and box hide): "
             f"{len(several)} parameter{'s' if len(several) > 1 else ''}: "
             + "; ".join(described[:6]) + ("; ..." if len(described) > 6 else "") + ".")
    return [first, *described]


def _describe_modes(name: str, row: pd.Series) -> str:
    places = []
    for value, position, weight in zip(row["modes"], row["positions"], row["weights"],
                                       strict=True):
        bound = (", at the prior's lower bound" if position <= AT_BOUND else
                 ", at the prior's upper bound" if position >= 1 - AT_BOUND else "")
        places.append(f"{value:.3g} ({weight:.0%} of draws{bound})")
    return f"{name} has {row['n_modes']} modes, near " + ", ".join(places[:-1]) + \
        f" and {places[-1]}"


def _multimodal_body(estimator: Estimator, samples: pd.DataFrame, modes: pd.DataFrame) -> str:
    from ..diagnostics.multimodality import MIN_DIP, MIN_WEIGHT, Z_DIP

    criterion = (
        "Each marginal is judged at its position within the prior range (where a uniform "
        "prior is flat): on a kernel density estimate (Silverman's bandwidth, reflected at the "
        f"bounds), two modes are separate when the density between them falls by at least "
        f"{MIN_DIP:.0%} of the lower peak (and {Z_DIP:g} standard errors of the estimate), "
        f"and each holds at least {MIN_WEIGHT:.0%} of the draws "
        "(sbi_twins.diagnostics.multimodality)."
    )
    several = modes[modes["multimodal"]]
    if several.empty:
        return f"<p>No parameter's marginal has separate modes. {html.escape(criterion)}</p>"
    shown = several.sort_values("deepest_dip").head(MARGINALS_SHOWN)
    lines = _multimodal_lines(modes)[1:]
    more = "" if len(several) <= len(shown) else (
        f" The figure shows the {len(shown)} with the deepest dips.")
    return (
        f"<p>{html.escape(criterion + more)}</p>" + _list(lines)
        + _figure(plot_marginals(estimator, samples, shown))
        + _table(_flat(several), "Multimodal parameters (positions: within the prior range; "
                 "deepest dip: density at the dip / lower peak)")
    )


def _flat(modes: pd.DataFrame) -> pd.DataFrame:
    """The mode table with its tuples written out (CSV and HTML)."""
    flat = modes.copy()
    for column in ("modes", "positions", "weights"):
        flat[column] = [" ".join(f"{v:.4g}" for v in values) for values in modes[column]]
    return flat


def _twins_ap_body(
    estimator: Estimator, draws: pd.DataFrame, recorded: RecordedAP | None, out: Path
) -> tuple[str, list[str]]:
    """The twins' APs laid out (and ``twins_ap.csv`` written), and the line of findings on a
    recorded AP (none without one).
    """
    aps = twin_aps(estimator, draws)
    features = aps.features
    atomic_write(out / "twins_ap.csv", lambda tmp: features.to_csv(tmp, index=False))
    comparison = compare_features(aps, recorded)
    atomic_write(out / "twins_ap_comparison.csv", lambda tmp: comparison.to_csv(tmp))
    beating = int(aps.beating.sum())
    window_s = (aps.voltages.shape[1] - 1) * aps.sample_interval_ms / 1000
    lines = [
        f"{len(draws)} twins (the first {len(draws)} posterior draws, rows 0-{len(draws) - 1} "
        f"of samples.csv) beating spontaneously from the model's initial state for "
        f"{aps.settle_ms / 1000:g} s, then measured over {window_s:g} s: {beating} beat (two "
        f"or more upstrokes), {len(draws) - beating - aps.failed} did not, {aps.failed} failed "
        "to simulate. Features: the median and the central "
        f"{RANGE:.0%} range over the twins that beat (twins_ap.csv: every twin)."
    ]
    finding = []
    if recorded is not None:
        beats = recorded.features["n_beats"]
        seconds = recorded.time_ms[-1] / 1000 if recorded.time_ms.size else 0.0
        lines.append(
            f"Recorded AP {recorded.name}: {beats:.0f} upstrokes in {seconds:.3g} s (features "
            "measured after a low-pass filter that keeps noise from counting as beats; the "
            "figure shows the unfiltered trace)."
        )
        finding.append(_recorded_line(recorded.name, comparison, COMPARED))
        lines.append(finding[0])
    caption = f"AP features of the twins (median, {RANGE:.0%} range)" + (
        " and of the recorded AP" if recorded is not None else "")
    body = (_list(lines) + _figure(plot_twin_aps(aps, recorded))
            + _table(comparison.rename_axis(None), caption))
    return body, finding


def _recorded_line(name: str, comparison: pd.DataFrame, units: dict[str, str]) -> str:
    verdicts = comparison["verdict"]
    if (verdicts == "not measured").all():
        return (f"The recorded AP ({name}) has no complete beat, or no twin beats: nothing to "
                "compare.")
    inside = verdicts.index[verdicts == "inside"].tolist()
    outside = [
        f"{feature} {row.recorded:.4g} {units[feature]} ({row.verdict} the twins' "
        f"{row.low:.4g} to {row.high:.4g})"
        for feature, row in comparison.iterrows() if row.verdict in ("below", "above")
    ]
    parts = [f"inside the twins' range: {', '.join(inside) if inside else 'none'}"]
    if outside:
        parts.append(f"outside: {'; '.join(outside)}")
    unmeasured = verdicts.index[verdicts == "not measured"].tolist()
    if unmeasured:
        parts.append(f"not measured: {', '.join(unmeasured)}")
    return f"The recorded AP ({name}) against the twins' APs: " + "; ".join(parts) + "."


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
