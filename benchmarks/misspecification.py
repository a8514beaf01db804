"""Misspecification flag: false alarms in distribution, detection of recordings unlike it.

``CellPosterior.misspecification()`` compares a recording's learned summary with fresh cells made
like the estimator's training cells (the summary statistic), and asks how well the posterior
reproduces the recording (the posterior-predictive statistic); the flag is their Bonferroni
combination. This script measures how often each flags (summary: p < 0.01, as ``fit``'s warning;
predictive: p < 0.005; combined: either, the verdict's ``flag``):

* **in distribution**: the predictive reference's own cells, fresh cells made exactly like the
  training cells, each against the other reference cells (leave-one-out; false alarms, target
  ≤ 5 %). The smallest leave-one-out predictive p-value is 1 / n_reference, so the predictive
  column cannot flag them; a fresh cell would beat all reference cells with probability
  1 / (n_reference + 1);
* deliberately different recordings (target ≥ 95 % flagged each): the first ``--cells``
  reference cells recorded through an **ideal clamp** (no series resistance, leak, offset,
  noise or filter), or with **IKr removed** (``ikr.g_Kr`` = 0); fresh cells drawn at **±80 %**
  instead of ±40 % on every cell parameter (viable ones, recorded like the training cells);
  each against the whole predictive reference, as a verdict is;
* input mistakes (the first ``--cells`` reference cells): the trace in **pA** of a 50 pF cell
  given as pA/pF, **all zeros**, **sign flipped**; summary statistic only (flagged by it at
  p < 0.005, which the predictive statistic cannot undo).

The predictive reference is computed as
``Estimator.misspecification_reference(predictive_cells=...)`` does (same cells and seeds, about
5 s per cell), or taken from an earlier run's results (``--predictive-reference``); the results
keep it, ready for a bundle's manifest (estimators/README.md).

Usage::

    python benchmarks/misspecification.py --cells 30     # 30 altered cells per set, ~26 min
    python benchmarks/misspecification.py --quick        # the same
    python benchmarks/misspecification.py                # 100 altered cells per set
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))
import _common  # noqa: E402

DEFAULT_OUT = HERE / "results" / "misspecification.json"
SEED = 31_415  # wide cells: never used in training or in the flag's references
REFERENCE_SEED = 1_000_004  # Estimator.misspecification_reference(predictive_cells=...)'s cells
ALPHA = 0.01


def _extra(ap) -> None:
    ap.add_argument("--estimator", default="default", help="bundled name or estimator directory")
    ap.add_argument(
        "--predictive-reference",
        type=Path,
        default=None,
        help="results JSON of an earlier run whose predictive reference to reuse",
    )
    ap.add_argument(
        "--reference-cells",
        type=int,
        default=200,
        help="cells of the predictive reference (default 200)",
    )


def _wide_cells(estimator, n: int, seed: int):
    """Viable cells with every cell parameter at U(0.2, 1.8) x its baseline, recorded like the
    training cells (their recording parameters from the prior).
    """
    import pandas as pd

    from sbi_twins.physiology import ViabilityRules, check_viability

    prior, model = estimator.prior, estimator.cell_model()
    rules = estimator.manifest["training_set"]["viability"]
    rng = np.random.default_rng(seed)
    kept = []
    while sum(map(len, kept)) < n:
        theta = prior.sample(32, seed=rng)
        for k, name in enumerate(prior.names):
            if name in prior.model_names:
                theta[name] = prior.baselines[k] * rng.uniform(0.2, 1.8, len(theta))
        if rules is not None:  # as Estimator.simulate_cells
            theta = theta[check_viability(model, theta, ViabilityRules.from_dict(rules))["viable"]]
        kept.append(theta)
    return pd.concat(kept, ignore_index=True).iloc[:n]


def main(argv=None) -> None:
    args, n, _ = _common.parse_args(
        __doc__,
        argv,
        size=("cells", "altered cells per set", 30, 100),
        repeats=(1, 1),
        quick_help="30 altered cells per set",
        seed_help=f"offset added to the wide cells' seed {SEED}",
        default_out=DEFAULT_OUT,
        extra=_extra,
    )
    log = _common.Log()
    from sbi_twins import load_estimator, simulate_recordings
    from sbi_twins.diagnostics.calibration import coverage_interval
    from sbi_twins.inference.misspecification import (
        PREDICTIVE_DRAWS,
        PredictiveReference,
        predictive_statistic,
        summaries_of,
    )

    estimator = load_estimator(args.estimator)
    seed = SEED + args.seed
    summary = estimator.misspecification_reference()
    alpha = ALPHA
    earlier = args.predictive_reference
    if earlier is not None:  # the same cells' statistics, from an earlier run
        reference = PredictiveReference.from_dict(
            json.loads(earlier.read_text())["predictive_reference"]
        )
    n_ref = args.reference_cells if earlier is None else reference.calibration.size
    # the cells of Estimator.misspecification_reference(predictive_cells=n_ref) (seed + 1)
    theta, traces = estimator.simulate_cells(n_ref, seed=REFERENCE_SEED)
    observations = estimator.reduce(traces)
    if earlier is None:
        statistics = np.empty(n_ref)
        for i, posterior in enumerate(estimator.posteriors(observations)):
            statistics[i] = predictive_statistic(posterior)
            if (i + 1) % 20 == 0:
                log(f"predictive reference: {i + 1}/{n_ref} cells")
        source = f"{n_ref} fresh cells (seed {REFERENCE_SEED}), {PREDICTIVE_DRAWS} draws each"
        reference = PredictiveReference(np.sort(statistics), PREDICTIVE_DRAWS, source)
    calibration = reference.calibration

    def left_out_p(k: int) -> float:
        """A reference cell's p-value against the other reference cells."""
        others = np.delete(calibration, k)
        return PredictiveReference(others, reference.draws, "").p_value(calibration[k])

    def summary_p(observations: np.ndarray) -> np.ndarray:
        values = summary.statistic(summaries_of(estimator, observations))
        return np.array([summary.p_value(v) for v in values])

    twins = np.arange(n)  # the altered recordings are of the first n reference cells
    noise_seeds = REFERENCE_SEED + twins  # their noise seeds, as in simulate_cells
    model_only = theta.iloc[:n][list(estimator.prior.model_names)]
    ideal = simulate_recordings(
        estimator.cell_model(),
        estimator.protocol,
        model_only,
        noise_seeds,
        estimator.sample_interval_ms,
    )
    no_ikr = estimator.simulate_recordings(theta.iloc[:n].assign(**{"ikr.g_Kr": 0.0}), noise_seeds)
    wide = estimator.simulate_recordings(_wide_cells(estimator, n, seed), seed + twins)
    log("test recordings simulated")
    rows = []
    in_distribution = {
        "summary": summary_p(observations),
        "predictive": [left_out_p(k) for k in range(n_ref)],
    }
    rows.append(
        _row("in distribution (false alarms)", in_distribution, 0, alpha, coverage_interval)
    )
    for name, recordings in [
        ("ideal clamp", ideal),
        ("IKr removed", no_ikr),
        ("±80 % on every cell parameter", wide),
    ]:
        finite = np.isfinite(recordings).all(axis=1)
        xs = estimator.reduce(recordings[finite])
        values = [predictive_statistic(p) for p in estimator.posteriors(xs)]
        p_values = {
            "summary": summary_p(xs),
            "predictive": [reference.p_value(v) for v in values],  # as the verdict's
        }
        rows.append(_row(name, p_values, int((~finite).sum()), alpha, coverage_interval))
        rows[-1]["predictive_statistics"] = [float(v) for v in values]
        log(f"{name}: done")
    x = observations[:n]
    for name, gross in [
        ("pA of a 50 pF cell given as pA/pF", x * 50),
        ("all zeros", np.zeros_like(x)),
        ("sign flipped", -x),
    ]:  # flagged by the summary alone (p < alpha / 2): the predictive one cannot unflag
        rows.append(_row(name, {"summary": summary_p(gross)}, 0, alpha, coverage_interval))
    res = {
        "machine": _common.machine_info(),
        "estimator": args.estimator,
        "seed": seed,
        "alpha": alpha,
        "reference_cells": 2 * summary.calibration.size,
        "predictive_reference": reference.to_dict(),
        "rows": rows,
    }
    _common.write_results(res, _markdown, args.out, log.elapsed())


def _row(name: str, p_values: dict, failed: int, alpha: float, interval) -> dict:
    """Flag rates of one set: the summary statistic at ``alpha`` (``fit``'s warning), the
    predictive one at ``alpha / 2``, and their Bonferroni combination (the verdict's flag;
    without a predictive p-value, flagged when the summary's is below ``alpha / 2``).
    """
    from sbi_twins.inference.misspecification import bonferroni

    summary = np.asarray(p_values["summary"])
    predictive = np.asarray(p_values.get("predictive", np.ones_like(summary)))
    combined = np.array([bonferroni(a, b) for a, b in zip(summary, predictive, strict=True)])
    row = {"set": name, "cells": len(summary), "failed_to_simulate": failed}
    for column, p, level in [
        ("summary", summary, alpha),
        ("predictive", predictive if "predictive" in p_values else None, alpha / 2),
        ("combined", combined, alpha),
    ]:
        if p is None:
            continue
        flagged = int((p < level).sum())
        low, high = interval(flagged, len(p))
        row[column] = {
            "flagged": flagged,
            "rate": flagged / len(p),
            "ci_low": low,
            "ci_high": high,
            "median_p": float(np.median(p)),
        }
    return row


def _markdown(res: dict) -> str:
    predictive = res["predictive_reference"]["source"]
    lines = [
        f"{res['estimator']}, flag at p < {res['alpha']}; summary reference: "
        f"{res['reference_cells']} in-distribution cells; predictive reference: {predictive}; "
        "flagged (median p):",
        "",
        "| recordings | cells | summary, p < α | predictive, p < α/2 | combined: flag "
        "| flag, 95 % CI |",
        "|---|---|---|---|---|---|",
    ]
    for r in res["rows"]:
        failed = r["failed_to_simulate"]
        failed = f" ({failed} failed to simulate)" if failed else ""
        rates = " | ".join(
            f"{r[c]['rate']:.1%} ({r[c]['median_p']:.2g})" if c in r else "not computed"
            for c in ("summary", "predictive", "combined")
        )
        combined = r["combined"]
        lines.append(
            f"| {r['set']} | {r['cells']}{failed} | {rates} | "
            f"{combined['ci_low']:.1%}-{combined['ci_high']:.1%} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
