r"""Are twins faithful in trace space? Posterior-predictive band coverage of the noiseless truth.

For fresh cells made like an estimator's training cells (seeds the project's datasets never
use), ``--draws`` posterior draws per cell are re-simulated through the recording model
*without noise* (``recording.noise_pA_per_pF`` = 0; series resistance, leak, offset and filter
kept), reduced to observation vectors, and the pointwise central 90 % band of the draws is
compared with the cell's own noiseless observation vector. The share of its windows inside the
band is averaged over cells.

For an exact posterior the truth is exchangeable with the draws, so with ``n`` draws and
numpy's interpolated quantiles its expected coverage is ``0.9 (n - 1) / (n + 1)`` (0.882 for
100 draws): above it the twins are over-dispersed (they combine values the recording rules
out), below it over-confident. Draws that fail to simulate are counted and left out.

Usage::

    python benchmarks/predictive_band.py                              # bundled default
    python benchmarks/predictive_band.py --estimator A.pt B.pt --cells 300 --draws 100
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))
import _common  # noqa: E402

DEFAULT_OUT = HERE / "results" / "predictive_band.json"
SEED = 20_261_204  # the fresh cells of benchmarks/joint_calibration.py
LEVEL = 0.9


def _extra(ap) -> None:
    ap.add_argument("--estimator", nargs="+", default=["default"], help="estimators compared")
    ap.add_argument("--draws", type=int, default=100, help="posterior draws per cell")


def exact_expectation(n_draws: int, level: float = LEVEL) -> float:
    """Expected band coverage of a truth exchangeable with ``n_draws`` draws."""
    return level * (n_draws - 1) / (n_draws + 1)


def noiseless(estimator, theta):
    """Observation vectors of parameter sets recorded without noise (NaN rows: failed)."""
    from sbi_twins.engine import SimulationWarning

    quiet = theta.assign(**{"recording.noise_pA_per_pF": 0.0})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SimulationWarning)
        traces = estimator.simulate_recordings(quiet, np.zeros(len(quiet), dtype=int))
    return estimator.scheme.apply(traces, allow_nonfinite=True)


def band_coverage(estimator, theta, traces, n_draws: int, seed: int, log) -> dict:
    """Mean coverage of each cell's noiseless truth by the 90 % band of its draws."""
    truth = noiseless(estimator, theta)
    covered, failed = [], 0
    for k, posterior in enumerate(estimator.posteriors(estimator.reduce(traces))):
        draws = noiseless(estimator, posterior.sample(n_draws, seed=seed + k))
        ok = np.isfinite(draws).all(axis=1)
        failed += int((~ok).sum())
        low, high = np.quantile(draws[ok], [(1 - LEVEL) / 2, (1 + LEVEL) / 2], axis=0)
        covered.append(float(np.mean((low <= truth[k]) & (truth[k] <= high))))
        if (k + 1) % 50 == 0:
            log(f"{estimator.path.name}: {k + 1} cells, mean coverage {np.mean(covered):.3f}")
    covered = np.asarray(covered)
    return {
        "estimator": str(estimator.path),
        "temperature": estimator.temperature,
        "flows": len(estimator._network.flows),
        "coverage": float(covered.mean()),
        "coverage_se": float(covered.std(ddof=1) / np.sqrt(covered.size)),
        "failed_draws": failed,
    }


def main(argv=None) -> None:
    args, n_cells, _ = _common.parse_args(
        __doc__,
        argv,
        size=("cells", "fresh cells", 30, 300),
        repeats=(1, 1),
        quick_help="30 cells",
        seed_help=f"offset added to the cells' seed {SEED}",
        default_out=DEFAULT_OUT,
        extra=_extra,
    )
    log = _common.Log()
    from sbi_twins import load_estimator

    estimators = [load_estimator(name) for name in args.estimator]
    seed = SEED + args.seed
    theta, traces = estimators[0].simulate_cells(n_cells, seed=seed)
    log(f"simulated {n_cells} fresh cells (seed {seed})")
    rows = []
    for estimator in estimators:
        if estimator.manifest["training_set"] != estimators[0].manifest["training_set"]:
            raise ValueError(f"{estimator.path} was not trained on {args.estimator[0]}'s cells")
        rows.append(band_coverage(estimator, theta, traces, args.draws, seed, log))
    res = {
        "machine": _common.machine_info(),
        "cells": n_cells,
        "draws": args.draws,
        "seed": seed,
        "level": LEVEL,
        "exact_expectation": exact_expectation(args.draws),
        "rows": rows,
    }
    _common.write_results(res, _markdown, args.out, log.elapsed())


def _markdown(res: dict) -> str:
    lines = [
        f"{res['cells']} fresh cells (seed {res['seed']}), {res['draws']} posterior draws each, "
        f"re-simulated without noise; {res['level']:.0%} band. An exact posterior covers "
        f"{res['exact_expectation']:.3f} on average.",
        "",
        "| estimator | flows | temperature | band coverage of the noiseless truth | ± se | "
        "minus exact | failed draws |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in res["rows"]:
        lines.append(
            f"| {r['estimator']} | {r['flows']} | {r['temperature']:.3f} | {r['coverage']:.3f} | "
            f"{r['coverage_se']:.3f} | {r['coverage'] - res['exact_expectation']:+.3f} | "
            f"{r['failed_draws']} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
