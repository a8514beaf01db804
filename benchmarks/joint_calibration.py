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

With ``--test DATASET`` (a held-out dataset made like the training set, e.g. the learning
curve's 2,000 test cells) it also reports the held-out mean log q(theta | x) and the mean R² of
the posterior mean there, as ``benchmarks/learning_curve.py`` computes them. Several
estimators are checked on the same cells, side by side.

Usage::

    python benchmarks/joint_calibration.py                   # bundled default, 300 cells
    python benchmarks/joint_calibration.py --quick           # 30 cells
    python benchmarks/joint_calibration.py --estimator DIR --cells 300 --draws 1000
    python benchmarks/joint_calibration.py --estimator OLD.pt NEW.pt --test data/test2k
    python benchmarks/joint_calibration.py --temperature 1 1.06 1.12   # the default, tempered
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
    ap.add_argument(
        "--estimator", nargs="+", default=["default"], help="bundled names or estimator paths"
    )
    ap.add_argument("--draws", type=int, default=1000, help="posterior draws per cell")
    ap.add_argument("--test", type=Path, default=None, help="held-out dataset (log q, R²)")
    ap.add_argument(
        "--test-draws", type=int, default=1000, help="draws per test cell for the R² (default 1000)"
    )
    ap.add_argument(
        "--temperature",
        type=float,
        nargs="+",
        default=None,
        help="check each estimator tempered at each of these (default: as it is)",
    )


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
    from sbi_twins import load_estimator, open_dataset

    estimators = [load_estimator(name) for name in args.estimator]
    if args.temperature:
        estimators = [e.tempered(t) for e in estimators for t in args.temperature]
    cells = estimators[0].simulate_cells(n_cells, seed=SEED + args.seed)
    test = None if args.test is None else open_dataset(args.test)
    log(f"simulated {n_cells} fresh cells (seed {SEED + args.seed})")
    rows = []
    for estimator in estimators:
        rows.append(_check(estimator, cells, args.draws, SEED + args.seed, test, args.test_draws))
        log(f"{estimator.path.name}: done")
    res = {
        "machine": _common.machine_info(),
        "cells": n_cells,
        "draws": args.draws,
        "seed": SEED + args.seed,
        "test": None if test is None else str(test.directory),
        "test_draws": args.test_draws,
        "rows": rows,
    }
    _common.write_results(res, _markdown, args.out, log.elapsed())


def _check(estimator, cells, n_draws: int, seed: int, test, test_draws: int) -> dict:
    """Marginal and joint calibration of one estimator on the fresh cells (and on ``test``)."""
    from sbi_twins import diagnose
    from sbi_twins.diagnostics import coverage_table, uniformity_p_value

    diag = diagnose(estimator, len(cells[0]), seed=seed, n_draws=n_draws, cells=cells)
    table = diag.table
    truth = cells[0][list(estimator.names)].to_numpy()
    log_truth = estimator.log_prob(truth[None], estimator.reduce(cells[1]))[0]
    pooled = {}
    for level in (50, 90):
        hits = int(round((table[f"coverage{level}"] * diag.n_cells).sum()))
        total = diag.n_cells * len(table)
        pooled[str(level)] = {"coverage": hits / total, "n": total}
    row = {
        "estimator": str(estimator.path),
        "flows": len(estimator._network.flows),
        "temperature": estimator.temperature,
        "pooled_marginal": pooled,
        "worst90": float((table["coverage90"] - 0.9).abs().max()),
        "miscalibrated": diag.miscalibrated(),
        "mean_r2": float(table["r2"].mean()),
        "log_p_truth": float(np.mean(log_truth)),
        "per_parameter": table.reset_index().to_dict(orient="records"),
        "joint": diag.joint.reset_index().to_dict(orient="records"),
        "joint_ks_p": diag.joint_p,
        "tarp": diag.tarp.reset_index().to_dict(orient="records"),
        "tarp_ks_p": diag.tarp_p,
        "gaussian_joint": coverage_table(diag.gaussian_ranks)
        .reset_index()
        .to_dict(orient="records"),
        "gaussian_ks_p": uniformity_p_value(diag.gaussian_ranks),
        "density_gap_mean": float(np.mean(diag.density_gap)),
        "density_gap_se": float(np.std(diag.density_gap, ddof=1) / np.sqrt(diag.n_cells)),
    }
    if test is not None:
        from learning_curve import evaluate_npe, mean_r2, squared_errors

        held_out = evaluate_npe(estimator, test, test_draws)
        test_truth = test.parameters[list(estimator.names)].to_numpy()
        errors = squared_errors(held_out["mean"], test_truth, held_out["mc_variance"])
        row["test_log_q"] = held_out["loglik"]
        row["test_mean_r2"] = float(mean_r2(errors, test_truth).mean())
    return row


def _markdown(res: dict) -> str:
    lines = [
        f"{res['cells']} fresh cells (seed {res['seed']}), {res['draws']} posterior draws each"
        + (f"; held-out test set {res['test']}" if res["test"] else ""),
        "",
        "| estimator | flows | T | joint 50 % | joint 90 % | KS p | draws − truth log p | "
        "marginal 50 % / 90 % | worst \\|cov90 − 0.9\\| | mean R² | mean log p(truth) | TARP 90 % |"
        + (" test log q | test mean R² |" if res["test"] else ""),
        "|---|---|---|---|---|---|---|---|---|---|---|---|" + ("---|---|" if res["test"] else ""),
    ]
    for r in res["rows"]:
        joint = {row["level"]: row for row in r["joint"]}
        tarp = {row["level"]: row for row in r["tarp"]}
        marginal = r["pooled_marginal"]
        lines.append(
            f"| {r['estimator']} | {r['flows']} | {r['temperature']:.3f} | "
            f"{joint[0.5]['coverage']:.3f} | {joint[0.9]['coverage']:.3f} | "
            f"{r['joint_ks_p']:.2g} | {r['density_gap_mean']:.2f} ± {r['density_gap_se']:.2f} | "
            f"{marginal['50']['coverage']:.3f} / {marginal['90']['coverage']:.3f}"
            f" | {r['worst90']:.3f} | {r['mean_r2']:.3f} | {r['log_p_truth']:.2f} | "
            f"{tarp[0.9]['coverage']:.3f} |"
            + (f" {r['test_log_q']:.2f} | {r['test_mean_r2']:.3f} |" if res["test"] else "")
        )
        if r["miscalibrated"]:
            lines.append(
                f"|  | parameters off nominal by > 0.05: {', '.join(r['miscalibrated'])} |"
            )
    lines += [
        "",
        "Joint HPD coverage by level (flow density; Gaussian with each posterior's "
        "mean and covariance):",
        "",
        "| level | "
        + " | ".join(f"{Path(r['estimator']).name} (T {r['temperature']:.2f})" for r in res["rows"])
        + " |",
        "|---|" + "---|" * len(res["rows"]),
    ]
    for k, level in enumerate(row["level"] for row in res["rows"][0]["joint"]):
        cells = [
            f"{r['joint'][k]['coverage']:.3f} ({r['joint'][k]['ci_low']:.3f}-"
            f"{r['joint'][k]['ci_high']:.3f}); Gaussian {r['gaussian_joint'][k]['coverage']:.3f}"
            for r in res["rows"]
        ]
        lines.append(f"| {level:.2f} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
