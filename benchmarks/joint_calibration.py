"""Joint calibration of an estimator: are its posteriors right as whole parameter sets.

Fits fresh cells made exactly like the estimator's training cells (its prior, viability rules and
recording model; seeds the project's datasets never use) with ``sbi_twins.diagnose`` and reports:

* marginal calibration: central-interval coverage at 50 % and 90 %, pooled over cells and
  parameters and per parameter, and the parameters whose coverage misses nominal by > 0.05;
* joint calibration: the expected coverage of the highest-posterior-density regions computed
  with the posterior's own density (``Estimator.log_prob``), by level, with Clopper-Pearson 95 %
  intervals, and the KS test of the HPD ranks (Hermans et al. 2022); the same for a Gaussian
  with each posterior's mean and covariance; and the mean log density of the draws minus that
  of the truth (0 for an exact posterior).

Usage::

    python benchmarks/joint_calibration.py                   # bundled default, 300 cells
    python benchmarks/joint_calibration.py --quick           # 30 cells
    python benchmarks/joint_calibration.py --estimator DIR --cells 300 --draws 1000
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))
import _common  # noqa: E402

DEFAULT_OUT = HERE / "results" / "joint_calibration.json"
#: Seeds of the fresh cells: datasets of the project use seeds 0-10.
SEED = 20_261_204


def _extra(ap) -> None:
    ap.add_argument("--estimator", default="default", help="bundled name or estimator directory")
    ap.add_argument("--draws", type=int, default=1000, help="posterior draws per cell")


def main(argv=None) -> None:
    args, n_cells, _ = _common.parse_args(
        __doc__,
        argv,
        size=("cells", "fresh cells fitted", 30, 300),
        repeats=(1, 1),
        quick_help="30 cells",
        seed_help=f"offset added to the cells' seed {SEED}",
        default_out=DEFAULT_OUT,
        extra=_extra,
    )
    log = _common.Log()
    from sbi_twins import diagnose, load_estimator
    from sbi_twins.diagnostics import coverage_table, uniformity_p_value

    estimator = load_estimator(args.estimator)
    log(f"{estimator}: fitting {n_cells} fresh cells, {args.draws} draws each")
    diag = diagnose(estimator, n_cells, seed=SEED + args.seed, n_draws=args.draws)
    log("done")
    table = diag.table
    pooled = {}
    for level in (50, 90):
        hits = int(round((table[f"coverage{level}"] * diag.n_cells).sum()))
        total = diag.n_cells * len(table)
        pooled[level] = {"coverage": hits / total, "n": total}
    gaussian = coverage_table(diag.gaussian_ranks)
    res = {
        "machine": _common.machine_info(),
        "estimator": str(estimator.path),
        "cells": diag.n_cells,
        "draws": diag.n_draws,
        "seed": SEED + args.seed,
        "pooled_marginal": pooled,
        "miscalibrated": diag.miscalibrated(),
        "per_parameter": table.reset_index().to_dict(orient="records"),
        "joint": diag.joint.reset_index().to_dict(orient="records"),
        "joint_ks_p": diag.joint_p,
        "tarp": diag.tarp.reset_index().to_dict(orient="records"),
        "tarp_ks_p": diag.tarp_p,
        "gaussian_joint": gaussian.reset_index().to_dict(orient="records"),
        "gaussian_ks_p": uniformity_p_value(diag.gaussian_ranks),
        "density_gap_mean": float(np.mean(diag.density_gap)),
        "density_gap_se": float(np.std(diag.density_gap, ddof=1) / np.sqrt(diag.n_cells)),
    }
    _common.write_results(res, _markdown, args.out, log.elapsed())


def _markdown(res: dict) -> str:
    lines = [
        f"{res['estimator']}: {res['cells']} fresh cells (seed {res['seed']}), "
        f"{res['draws']} posterior draws each",
        "",
        "**Marginal** (pooled over cells and parameters): "
        + ", ".join(
            f"{level} % central intervals cover {v['coverage']:.3f}"
            for level, v in res["pooled_marginal"].items()
        )
        + f"; parameters off nominal by > 0.05: {len(res['miscalibrated'])}"
        + (f" ({', '.join(res['miscalibrated'])})" if res["miscalibrated"] else ""),
        "",
        "**Joint**: expected coverage of the highest-posterior-density regions",
        "",
        "| level | flow density | 95 % CI | Gaussian (own mean, cov) | 95 % CI |",
        "|---|---|---|---|---|",
    ]
    for flow, gauss in zip(res["joint"], res["gaussian_joint"], strict=True):
        lines.append(
            f"| {flow['level']:.2f} | {flow['coverage']:.3f} | "
            f"{flow['ci_low']:.3f}-{flow['ci_high']:.3f} | {gauss['coverage']:.3f} | "
            f"{gauss['ci_low']:.3f}-{gauss['ci_high']:.3f} |"
        )
    lines += [
        "",
        f"KS p-value of the HPD ranks: flow {res['joint_ks_p']:.2g}, Gaussian "
        f"{res['gaussian_ks_p']:.2g}. TARP (no density needed): "
        + ", ".join(f"{r['coverage']:.3f} at {r['level']:.2f}" for r in res["tarp"])
        + f" (KS p {res['tarp_ks_p']:.2g}). Mean log density of the draws minus the truth's: "
        f"{res['density_gap_mean']:.2f} ± {res['density_gap_se']:.2f} nats (0 if exact).",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
