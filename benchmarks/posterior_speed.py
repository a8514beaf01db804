"""Speed of fitting with a trained estimator (default: the bundled ``default``).

One run measures, on this CPU (torch's default threads):

1. Loading the estimator bundle.
2. One cell: ``estimator.fit(trace)`` (observation scheme + checks), then 10,000 posterior
   draws (``CellPosterior.sample``), then ``summary()`` of 10,000 draws, then the posterior
   density of 1,000 draws (``CellPosterior.log_prob``).
3. Many cells: ``estimator.summaries(traces, n)`` for N cells at once (batched sampling and
   vectorised summaries), and the same cells one at a time (``fit`` + ``summary``) for contrast.
4. Training time of the estimator, from its ``training_log.csv`` (when the bundle has one).

The traces are recordings (noise and artefacts on) of prior draws simulated with the estimator's
protocol; their simulation is not timed. Timings are medians over repeats, after a warm-up.

Usage::

    python benchmarks/posterior_speed.py                    # bundled default, 100 cells
    python benchmarks/posterior_speed.py --quick            # 10 cells, 1 repeat
    python benchmarks/posterior_speed.py --estimator DIR --cells 100 --draws 1000
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))
import _common  # noqa: E402
from _common import median as _median  # noqa: E402

DEFAULT_OUT = HERE / "results" / "posterior_speed.json"


def _timed(function, repeats: int) -> tuple[float, object]:
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = function()
        times.append(time.perf_counter() - start)
    return _median(times), result


def _extra(ap) -> None:
    ap.add_argument("--estimator", default="default", help="bundled name or estimator directory")
    ap.add_argument("--draws", type=int, default=1000, help="posterior draws per cell, many cells")


def main(argv=None) -> None:
    args, n_cells, repeats = _common.parse_args(
        __doc__,
        argv,
        size=("cells", "cells fitted at once", 10, 100),
        repeats=(1, 5),
        quick_help="10 cells, 1 repeat",
        seed_help="seed of the cells and draws",
        default_out=DEFAULT_OUT,
        extra=_extra,
    )
    log = _common.Log()
    import torch

    from sbi_twins import load_estimator
    from sbi_twins.recording import simulate_recordings

    load_s, estimator = _timed(lambda: load_estimator(args.estimator), repeats)
    log(f"{estimator}; loaded in {load_s:.2f} s")
    theta = estimator.prior.sample(n_cells, seed=args.seed)
    traces = simulate_recordings(
        estimator.cell_model(),
        estimator.protocol,
        theta,
        seeds=np.arange(n_cells) + args.seed,
        sample_interval_ms=estimator.sample_interval_ms,
    )
    traces = traces[np.isfinite(traces).all(axis=1)]
    log(f"simulated {len(traces)} recordings")

    posterior = estimator.fit(traces[0])
    posterior.sample(100, seed=0)  # warm-up
    fit_s, posterior = _timed(lambda: estimator.fit(traces[0]), repeats)
    sample_s, _ = _timed(lambda: posterior.sample(10_000, seed=args.seed), repeats)
    summary_s, _ = _timed(lambda: posterior.summary(10_000, seed=args.seed), repeats)
    thousand = posterior.sample(1000, seed=args.seed)
    log_prob_s, _ = _timed(lambda: posterior.log_prob(thousand), repeats)
    log(
        f"one cell: fit {fit_s:.3f} s, 10k draws {sample_s:.3f} s, summary {summary_s:.3f} s, "
        f"log_prob of 1000 draws {log_prob_s:.3f} s"
    )

    many_s, _ = _timed(lambda: estimator.summaries(traces, args.draws, args.seed), repeats)
    start = time.perf_counter()
    for trace in traces:
        estimator.fit(trace).summary(args.draws, seed=args.seed)
    one_by_one_s = time.perf_counter() - start
    log(f"{len(traces)} cells: batched {many_s:.2f} s, one by one {one_by_one_s:.2f} s")

    training = None
    # a training directory has training_log.csv; a bundled NAME.pt has NAME.training_log.csv
    logs = [
        estimator.path / "training_log.csv",
        estimator.path / f"{args.estimator}.training_log.csv",
    ]
    log_file = next((f for f in logs if f.exists()), None)
    if log_file is not None:
        history = pd.read_csv(log_file)
        training = {
            "epochs": history.groupby("stage").size().to_dict(),  # per training stage
            "seconds": float(history["seconds"].sum()),
            "cells": estimator.manifest["training_set"]["cells"],
        }
    res = {
        "machine": _common.machine_info(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "estimator": str(estimator.path),
        "parameters": len(estimator.names),
        "observation_length": len(estimator.scheme),
        "repeats": repeats,
        "load_s": load_s,
        "fit_one_s": fit_s,
        "sample_10k_s": sample_s,
        "summary_10k_s": summary_s,
        "log_prob_1k_s": log_prob_s,
        "cells": len(traces),
        "draws_per_cell": args.draws,
        "many_batched_s": many_s,
        "many_one_by_one_s": one_by_one_s,
        "training": training,
    }
    _common.write_results(res, _markdown, args.out, log.elapsed())


def _markdown(res: dict) -> str:
    n, draws = res["cells"], res["draws_per_cell"]
    rows = [
        ("load the estimator bundle", res["load_s"]),
        ("fit one cell (checks + observation scheme)", res["fit_one_s"]),
        ("10,000 posterior draws, one cell", res["sample_10k_s"]),
        ("summary of 10,000 draws (mean, sd, 94% HDI, contraction)", res["summary_10k_s"]),
        ("log_prob of 1,000 draws, one cell", res["log_prob_1k_s"]),
        (f"{n} cells, {draws} draws each, batched (`summaries`)", res["many_batched_s"]),
        (
            f"{n} cells, {draws} draws each, one at a time (`fit` + `summary`)",
            res["many_one_by_one_s"],
        ),
    ]
    lines = [
        f"{res['parameters']} parameters, observation length {res['observation_length']}, "
        f"torch {res['torch']} on {res['torch_threads']} threads, {res['machine']['cpu_model']}",
        "",
        "| step | seconds |",
        "|---|---:|",
    ]
    lines += [f"| {name} | {seconds:.3f} |" for name, seconds in rows]
    if res["training"]:
        t = res["training"]
        lines += [
            "",
            f"training: {t['cells']} cells, epochs {t['epochs']}, {t['seconds'] / 3600:.2f} h "
            "(from the bundle's training_log.csv)",
        ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
