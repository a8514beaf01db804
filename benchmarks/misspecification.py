"""Misspecification flag: false alarms in distribution, detection of recordings unlike it.

``CellPosterior.misspecification()`` rests on up to three statistics, each calibrated on fresh
cells made like the estimator's training cells: the **summary** statistic (how far a recording's
learned summary lies from in-distribution ones), the **prior-excess** statistic (how far the
summary network's predicted positions stray outside the prior) and, with ``--predictive``, the
**posterior-predictive** one (how badly the posterior reproduces the recording; simulates). The
verdict's ``flag`` is their Bonferroni combination at p < 0.01. This script measures how often
each statistic alone (p < 0.01) and the flag flag:

* **in distribution**: ``--in-distribution`` fresh cells made exactly like the training cells
  (seed 1,000,004; never in the bundle's reference, seed 1,000,003): false alarms, target
  <= 5 %. With ``--predictive``, the first ``--reference-cells`` of them are also the predictive
  reference (as ``Estimator.misspecification_reference(predictive_cells=...)`` makes it), each
  compared with the others (leave-one-out);
* deliberately different recordings (target >= 95 % flagged each): the first ``--cells`` of
  those cells recorded through an **ideal clamp** (no series resistance, leak, offset, noise or
  filter), or with **IKr removed** (``ikr.g_Kr`` = 0); fresh cells drawn at **±80 %** instead
  of ±40 % on every cell parameter (viable ones, recorded like the training cells);
* input mistakes (the first ``--cells`` cells): the trace in **pA** of a 50 pF cell given as
  pA/pF, **all zeros**, **sign flipped**; cheap statistics only (their flag is a lower bound:
  a predictive p-value can only lower the verdict's).

The results also list, per altered set, the parameters the verdicts most often name as pushed
outside the prior (``beyond_prior``).

Usage::

    python benchmarks/misspecification.py                 # 1000 + 200 per set, ~1 min
    python benchmarks/misspecification.py --quick         # 200 and 30
    python benchmarks/misspecification.py --cells 30 --predictive   # ~26 min
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
        "--in-distribution",
        type=int,
        default=None,
        help="in-distribution cells (default 1000; 200 with --quick)",
    )
    ap.add_argument(
        "--predictive",
        action="store_true",
        help="also the posterior-predictive statistic (simulates: ~5 s per cell)",
    )
    ap.add_argument(
        "--predictive-reference",
        type=Path,
        default=None,
        help="results JSON of an earlier --predictive run whose predictive reference to reuse",
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
        size=("cells", "altered cells per set", 30, 200),
        repeats=(1, 1),
        quick_help="200 in-distribution cells, 30 altered cells per set",
        seed_help=f"offset added to the wide cells' seed {SEED}",
        default_out=DEFAULT_OUT,
        extra=_extra,
    )
    log = _common.Log()
    from sbi_twins import load_estimator, simulate_recordings
    from sbi_twins.inference.misspecification import (
        PREDICTIVE_DRAWS,
        PredictiveReference,
        predictive_statistic,
        summaries_of,
    )

    estimator = load_estimator(args.estimator)
    reference = estimator.misspecification_reference()
    if reference.excess is None:
        raise SystemExit(f"{args.estimator}'s reference has no prior-excess part: remake it")
    seed = SEED + args.seed
    predictive = args.predictive or args.predictive_reference is not None
    n_in = args.in_distribution or (200 if args.quick else 1000)
    earlier = None
    if args.predictive_reference is not None:  # the same cells' statistics, from an earlier run
        results = json.loads(args.predictive_reference.read_text())
        earlier = PredictiveReference.from_dict(results["predictive_reference"])
    n_ref = earlier.calibration.size if earlier is not None else args.reference_cells
    n_in = max(n_in, n, n_ref if predictive else 0)
    theta, traces = estimator.simulate_cells(n_in, seed=REFERENCE_SEED)
    observations = estimator.reduce(traces)
    log(f"{n_in} in-distribution cells simulated")
    beyond: dict[str, list[dict[str, str]]] = {}  # per set and cell: its verdict's beyond_prior
    positions: dict[str, np.ndarray] = {}  # per set: the predicted positions (cells, D)

    def cheap_p(name: str, xs: np.ndarray) -> dict[str, np.ndarray]:
        """Summary and prior-excess p-values of observation vectors, as the verdict's."""
        summaries = summaries_of(estimator, xs)
        excess = reference.excess.statistic(summaries)
        baselines = estimator.prior.baselines
        beyond[name] = [
            reference.excess.beyond(row[None], estimator.names, baselines) for row in summaries
        ]
        positions[name] = summaries[:, -len(estimator.names) :]
        return {
            "summary": np.array([reference.p_value(v) for v in reference.statistic(summaries)]),
            "prior-excess": np.array([reference.excess.p_value(v) for v in excess]),
        }

    in_distribution = "in distribution (false alarms)"
    p_values = {in_distribution: cheap_p(in_distribution, observations)}
    failed = {}
    if predictive:
        if earlier is None:
            statistics = np.empty(n_ref)
            for i, posterior in enumerate(estimator.posteriors(observations[:n_ref])):
                statistics[i] = predictive_statistic(posterior)
                if (i + 1) % 20 == 0:
                    log(f"predictive reference: {i + 1}/{n_ref} cells")
            source = f"{n_ref} fresh cells (seed {REFERENCE_SEED}), {PREDICTIVE_DRAWS} draws each"
            earlier = PredictiveReference(np.sort(statistics), PREDICTIVE_DRAWS, source)
        calibration = earlier.calibration
        left_out = np.full(n_in, np.nan)  # a reference cell against the other reference cells
        for k in range(n_ref):
            others = np.delete(calibration, k)
            left_out[k] = PredictiveReference(others, earlier.draws, "").p_value(calibration[k])
        p_values[in_distribution]["predictive"] = left_out
    twins = np.arange(n)  # the altered recordings are of the first n in-distribution cells
    noise_seeds = REFERENCE_SEED + twins  # their noise seeds, as in simulate_cells
    model_only = theta.iloc[:n][list(estimator.prior.model_names)]
    altered = {
        "ideal clamp": simulate_recordings(
            estimator.cell_model(),
            estimator.protocol,
            model_only,
            noise_seeds,
            estimator.sample_interval_ms,
        ),
        "IKr removed": estimator.simulate_recordings(
            theta.iloc[:n].assign(**{"ikr.g_Kr": 0.0}), noise_seeds
        ),
        "±80 % on every cell parameter": estimator.simulate_recordings(
            _wide_cells(estimator, n, seed), seed + twins
        ),
    }
    log("altered recordings simulated")
    for name, recordings in altered.items():
        finite = np.isfinite(recordings).all(axis=1)
        failed[name] = int((~finite).sum())
        xs = estimator.reduce(recordings[finite])
        p_values[name] = cheap_p(name, xs)
        if predictive:
            values = [predictive_statistic(p) for p in estimator.posteriors(xs)]
            p_values[name]["predictive"] = np.array([earlier.p_value(v) for v in values])
        log(f"{name}: done")
    statistics = ["summary", "prior-excess"] + (["predictive"] if predictive else [])
    x = observations[:n]
    for name, gross in [
        ("pA of a 50 pF cell given as pA/pF", x * 50),
        ("all zeros", np.zeros_like(x)),
        ("sign flipped", -x),
    ]:
        p_values[name] = cheap_p(name, gross)
    rows = []
    for name, p in p_values.items():
        rows.append(_row(name, p, failed.get(name, 0), len(statistics)))
        flagged = _verdict_p(p, len(statistics)) < ALPHA
        counts: dict[str, int] = {}
        for named, is_flagged in zip(beyond[name], flagged, strict=True):
            for parameter in named if is_flagged else ():
                counts[parameter] = counts.get(parameter, 0) + 1
        rows[-1]["beyond_prior"] = dict(sorted(counts.items(), key=lambda item: -item[1])[:5])
        if name == "IKr removed":  # the gap: which of these cells go unflagged, and why
            cells = theta.iloc[:n][np.isfinite(altered[name]).all(axis=1)]
            rows[-1]["missed"] = _missed(estimator, cells, positions[name], flagged)
    res = {
        "machine": _common.machine_info(),
        "estimator": args.estimator,
        "reference": reference.source,
        "seed": seed,
        "alpha": ALPHA,
        "statistics": statistics,
        "predictive_reference": None if earlier is None else earlier.to_dict(),
        "rows": rows,
    }
    _common.write_results(res, _markdown, args.out, log.elapsed())


def _row(name: str, p_values: dict, failed: int, n_statistics: int) -> dict:
    """Flag rates of one set: each statistic alone at p < alpha, and the verdict's flag."""
    from sbi_twins.diagnostics.calibration import coverage_interval

    columns = {k: np.asarray(v, dtype=float) for k, v in p_values.items()}
    columns["flag"] = _verdict_p(p_values, n_statistics)
    row = {"set": name, "cells": len(columns["flag"]), "failed_to_simulate": failed}
    for column, p in columns.items():
        p = p[np.isfinite(p)]
        flagged = int((p < ALPHA).sum())
        low, high = coverage_interval(flagged, len(p))
        row[column] = {
            "cells": len(p),
            "flagged": flagged,
            "rate": flagged / len(p),
            "ci_low": low,
            "ci_high": high,
            "median_p": float(np.median(p)),
        }
    return row


def _missed(estimator, theta, positions: np.ndarray, flagged: np.ndarray) -> dict:
    """Flagged and missed cells without IKr: the predicted position of ``ikr.g_Kr`` (10, 50
    and 90 % quantiles), and the median prior position of the true seal resistance and series
    resistance (the recording artefacts that can hide a current).
    """
    names = list(estimator.names)
    true = 1 / (1 + np.exp(-estimator.prior.to_unbounded(theta)))  # positions in the prior
    out = {"flagged": int(flagged.sum()), "missed": int((~flagged).sum())}
    for group, cells in [("flagged", flagged), ("missed", ~flagged)]:
        if not cells.any():
            continue
        predicted = positions[cells, names.index("ikr.g_Kr")]
        out[f"{group}: predicted ikr.g_Kr position, 10/50/90 %"] = [
            float(v) for v in np.quantile(predicted, [0.1, 0.5, 0.9])
        ]
        for parameter in ("recording.r_seal_GOhm", "recording.rs_MOhm"):
            median = float(np.median(true[cells, names.index(parameter)]))
            out[f"{group}: median prior position of the true {parameter}"] = median
    return out


def _verdict_p(p_values: dict, n_statistics: int) -> np.ndarray:
    """The verdict's Bonferroni p over its ``n_statistics``, per cell. A set given fewer
    statistics (the input mistakes) gets its lower bound; a missing p-value (NaN: in-distribution
    cells beyond the predictive reference) gives NaN, which leaves the cell out of the rates.
    """
    stacked = np.column_stack([np.asarray(v, dtype=float) for v in p_values.values()])
    return np.minimum(1.0, n_statistics * stacked.min(axis=1))


def _short(value) -> str:
    """Numbers to two decimals, in lists too."""
    if isinstance(value, list):
        return "[" + ", ".join(_short(v) for v in value) + "]"
    return f"{value:.2f}" if isinstance(value, float) else str(value)


def _markdown(res: dict) -> str:
    predictive = res["predictive_reference"]
    columns = [*res["statistics"], "flag"]
    lines = [
        f"{res['estimator']}, p < {res['alpha']}; reference: {res['reference']}"
        + ("" if predictive is None else f"; predictive reference: {predictive['source']}")
        + "; flagged (median p):",
        "",
        "| recordings | cells | "
        + " | ".join(columns)
        + " | flag, 95 % CI | named beyond the prior (flagged cells) |",
        "|---|---|" + "---|" * (len(columns) + 2),
    ]
    for r in res["rows"]:
        failed = r["failed_to_simulate"]
        failed = f" ({failed} failed to simulate)" if failed else ""
        rates = " | ".join(
            f"{r[c]['rate']:.1%} ({r[c]['median_p']:.2g})" if c in r else "not computed"
            for c in columns
        )
        flag = r["flag"]
        named = ", ".join(f"{k} {v}" for k, v in r["beyond_prior"].items())
        lines.append(
            f"| {r['set']} | {r['cells']}{failed} | {rates} | "
            f"{flag['ci_low']:.1%}-{flag['ci_high']:.1%} | {named} |"
        )
    for r in res["rows"]:
        if "missed" in r:
            missed = "; ".join(f"{k} {_short(v)}" for k, v in r["missed"].items())
            lines += ["", f"{r['set']}: {missed}"]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
