"""Misspecification flag: false alarms in distribution, detection of recordings unlike it.

``CellPosterior.misspecification()`` compares a recording's learned summary with fresh cells made
like the estimator's training cells. This script measures how often it flags (p < 0.01):

* **in distribution**: fresh cells made exactly like the training cells (false alarms; target
  ≤ 5 %, expected 1 % at this level);
* deliberately different recordings (target ≥ 95 % flagged each): the same cells recorded
  through an **ideal clamp** (no series resistance, leak, offset, noise or filter); the same
  cells with **IKr removed** (``ikr.g_Kr`` = 0); cells drawn at **±80 %** instead of ±40 % on every
  cell parameter (viable ones, recorded like the training cells);
* input mistakes: the trace in **pA** of a 50 pF cell given as pA/pF, **all zeros**, **sign
  flipped**.

Usage::

    python benchmarks/misspecification.py            # 200 cells per set
    python benchmarks/misspecification.py --quick    # 30 cells per set
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))
import _common  # noqa: E402

DEFAULT_OUT = HERE / "results" / "misspecification.json"
SEED = 31_415  # cells never used in training or in the flag's own reference set


def _extra(ap) -> None:
    ap.add_argument("--estimator", default="default", help="bundled name or estimator directory")


def _wide_cells(estimator, n: int, seed: int):
    """Viable cells with every cell parameter at U(0.2, 1.8) x its baseline, recorded like the
    training cells (their recording parameters from the prior).
    """
    import pandas as pd

    from sbi_twins.physiology import ViabilityRules, check_viability

    prior, model = estimator.prior, estimator.cell_model()
    rules = ViabilityRules.from_dict(estimator.manifest["training_set"]["viability"])
    rng = np.random.default_rng(seed)
    kept = []
    while sum(map(len, kept)) < n:
        theta = prior.sample(32, seed=rng)
        for k, name in enumerate(prior.names):
            if name in prior.model_names:
                theta[name] = prior.baselines[k] * rng.uniform(0.2, 1.8, len(theta))
        kept.append(theta[check_viability(model, theta, rules)["viable"].to_numpy()])
    return pd.concat(kept, ignore_index=True).iloc[:n]


def main(argv=None) -> None:
    args, n, _ = _common.parse_args(
        __doc__,
        argv,
        size=("cells", "cells per set", 30, 200),
        repeats=(1, 1),
        quick_help="30 cells per set",
        seed_help=f"offset added to the cells' seed {SEED}",
        default_out=DEFAULT_OUT,
        extra=_extra,
    )
    log = _common.Log()
    from sbi_twins import load_estimator, simulate_recordings
    from sbi_twins.diagnostics.calibration import coverage_interval

    estimator = load_estimator(args.estimator)
    seed = SEED + args.seed
    reference = estimator.misspecification_reference()
    log(f"{estimator}: reference of {2 * reference.calibration.size} cells ready")
    theta, traces = estimator.simulate_cells(n, seed=seed)
    seeds = seed + np.arange(n)
    model_only = theta[list(estimator.prior.model_names)]
    ideal = simulate_recordings(
        estimator.cell_model(), estimator.protocol, model_only, seeds, estimator.sample_interval_ms
    )
    no_ikr = estimator.simulate_recordings(theta.assign(**{"ikr.g_Kr": 0.0}), seeds)
    wide = estimator.simulate_recordings(_wide_cells(estimator, n, seed), seeds)
    sets = {
        "in distribution (false alarms)": traces,
        "ideal clamp": ideal,
        "IKr removed": no_ikr,
        "±80 % on every cell parameter": wide,
        "pA of a 50 pF cell given as pA/pF": traces * 50,
        "all zeros": np.zeros_like(traces),
        "sign flipped": -traces,
    }
    rows = []
    for name, recordings in sets.items():
        finite = np.isfinite(recordings).all(axis=1)
        verdicts = [estimator.fit(r).misspecification() for r in recordings[finite]]
        flagged = sum(v.flag for v in verdicts)
        low, high = coverage_interval(flagged, len(verdicts))
        rows.append(
            {
                "set": name,
                "cells": len(verdicts),
                "failed_to_simulate": int((~finite).sum()),
                "flagged": flagged,
                "rate": flagged / len(verdicts),
                "ci_low": low,
                "ci_high": high,
                "median_p": float(np.median([v.p_value for v in verdicts])),
            }
        )
        log(f"{name}: {flagged}/{len(verdicts)} flagged")
    res = {
        "machine": _common.machine_info(),
        "estimator": str(estimator.path),
        "seed": seed,
        "alpha": verdicts[0].alpha,
        "reference_cells": 2 * reference.calibration.size,
        "rows": rows,
    }
    _common.write_results(res, _markdown, args.out, log.elapsed())


def _markdown(res: dict) -> str:
    lines = [
        f"{res['estimator']}, flag at p < {res['alpha']}; reference: {res['reference_cells']} "
        f"fresh in-distribution cells; test cells seed {res['seed']}",
        "",
        "| recordings | cells | flagged | 95 % CI | median p |",
        "|---|---|---|---|---|",
    ]
    for r in res["rows"]:
        failed = r["failed_to_simulate"]
        failed = f" ({failed} failed to simulate)" if failed else ""
        lines.append(
            f"| {r['set']} | {r['cells']}{failed} | {r['rate']:.1%} | "
            f"{r['ci_low']:.1%}-{r['ci_high']:.1%} | {r['median_p']:.3g} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
