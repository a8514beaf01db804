r"""Does an ensemble of flows fix the joint calibration of an estimator? A measurement.

Keeps an estimator's summary network and flow, trains further flows on the same summary (flow
``k`` with seed ``seed + k``, on the first ``--cells`` cells of a training set made like the
estimator's), and checks the mixtures of the first 1, 2, ... flows on the same fresh cells
(``sbi_twins.diagnose``): joint HPD coverage, marginal coverage, mean R² of the posterior mean,
the mean log density of the truths, and the density gap between draws and truths. Each mixture
is written as an estimator bundle (format 3) in ``--work``; rerunning resumes the flows'
training from their checkpoints.

Usage::

    python benchmarks/flow_ensemble.py --dataset data/pm40_clark2022_200k --flows 2 \\
        --cells 100000 --max-epochs 30 --work data/flow_ensemble
    # or the flows in parallel, one per core, then the mixtures:
    python benchmarks/flow_ensemble.py ... --only-flow 1 &
    python benchmarks/flow_ensemble.py ... --only-flow 2; wait
    python benchmarks/flow_ensemble.py ...
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))
import _common  # noqa: E402

DEFAULT_OUT = HERE / "results" / "flow_ensemble.json"
SEED = 20_261_204  # the fresh cells of benchmarks/joint_calibration.py


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--estimator", default="default", help="bundled name or estimator directory")
    ap.add_argument("--dataset", type=Path, required=True, help="training set of the estimator")
    ap.add_argument("--flows", type=int, default=2, help="flows to add (default 2)")
    ap.add_argument("--cells", type=int, default=None, help="train on the first N cells")
    ap.add_argument("--max-epochs", type=int, default=30)
    ap.add_argument("--eval-cells", type=int, default=300, help="fresh cells checked")
    ap.add_argument("--draws", type=int, default=1000, help="posterior draws per cell")
    ap.add_argument(
        "--only-flow",
        type=int,
        default=None,
        metavar="K",
        help="train flow K alone on one thread and stop (run one per core, then without it)",
    )
    ap.add_argument(
        "--evaluate",
        choices=("all", "last", "none"),
        default="all",
        help="check every mixture (1, 2, ... flows), only the largest, or none (bundles only)",
    )
    ap.add_argument("--work", type=Path, required=True, help="checkpoints and bundles")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = ap.parse_args(argv)
    log = _common.Log()

    from sbi_twins import TrainingConfig, diagnose, load_estimator, open_dataset
    from sbi_twins.inference.bundle import BUNDLE_FORMAT, write_bundle
    from sbi_twins.inference.networks import PosteriorNetwork
    from sbi_twins.inference.npe import train_flow, write_training_log
    from sbi_twins.inference.rows import StreamingData, SummarisedData

    base = load_estimator(args.estimator)
    dataset = open_dataset(args.dataset)
    base.check_dataset(dataset)
    config = TrainingConfig.from_dict(base.manifest["training"])
    config = replace(config, max_cells=args.cells, max_epochs=args.max_epochs)
    summary = base._network.summary
    data = StreamingData(dataset, base.prior, config)
    log(f"{base}; summarising {data.n_train + data.n_validation} cells of {dataset}")
    summarised = SummarisedData(data, summary)
    args.work.mkdir(parents=True, exist_ok=True)
    if args.only_flow is not None:
        import torch

        torch.set_num_threads(1)
        _, stage = train_flow(args.only_flow, summarised, config, args.work, "cpu", True)
        log(f"flow {args.only_flow}: best validation loss {stage['best_validation_loss']:.3f}")
        return
    flows, losses = [base._network.flows[0]], [base.manifest["validation"]["best_loss"]]
    for k in range(1, args.flows + 1):
        flow, stage = train_flow(k, summarised, config, args.work, "cpu", True)
        write_training_log(args.work / f"flow{k}_training_log.csv", {f"flow{k}": stage})
        flows.append(flow)
        losses.append(stage["best_validation_loss"])
        log(f"flow {k}: best validation loss {losses[-1]:.3f} after {stage['epochs']} epochs")

    for m in range(1, len(flows) + 1):
        directory = args.work / f"ensemble_{m}"
        directory.mkdir(exist_ok=True)
        manifest = json.loads(json.dumps(base.manifest))  # a deep copy
        manifest["format"] = BUNDLE_FORMAT
        manifest["training"]["n_flows"] = m
        manifest["validation"]["flow_best_losses"] = losses[:m]
        manifest["ensemble"] = {
            "base": str(base.path),
            "added_flows_trained_on_cells": data.n_train + data.n_validation,
            "added_flows_max_epochs": args.max_epochs,
        }
        network = PosteriorNetwork(summary, flows[:m])
        write_bundle(directory / "estimator.pt", network.state_dict(), manifest)
    log(f"wrote the mixtures of 1 to {len(flows)} flows to {args.work}/ensemble_*")
    if args.evaluate == "none":
        return
    cells = base.simulate_cells(args.eval_cells, seed=SEED)
    log(f"simulated {args.eval_cells} fresh cells (seed {SEED})")
    rows = []
    sizes = range(1, len(flows) + 1) if args.evaluate == "all" else [len(flows)]
    for m in sizes:
        estimator = load_estimator(args.work / f"ensemble_{m}")
        diag = diagnose(estimator, args.eval_cells, seed=SEED, cells=cells, n_draws=args.draws)
        truth = cells[0][list(estimator.names)].to_numpy()[: diag.n_cells]
        observations = estimator.reduce(cells[1][: diag.n_cells])
        log_truth = estimator.log_prob(truth[None], observations)[0]
        table = diag.table
        rows.append(
            {
                "flows": m,
                "joint50": float(diag.joint.loc[0.5, "coverage"]),
                "joint90": float(diag.joint.loc[0.9, "coverage"]),
                "joint_ks_p": diag.joint_p,
                "density_gap": float(np.mean(diag.density_gap)),
                "log_p_truth": float(np.mean(log_truth)),
                "marginal50": float(table["coverage50"].mean()),
                "marginal90": float(table["coverage90"].mean()),
                "worst90": float((table["coverage90"] - 0.9).abs().max()),
                "mean_r2": float(table["r2"].mean()),
            }
        )
        log(f"{m} flow(s): {rows[-1]}")
    res = {
        "machine": _common.machine_info(),
        "estimator": str(base.path),
        "dataset": str(args.dataset),
        "train_cells": data.n_train + data.n_validation,
        "max_epochs": args.max_epochs,
        "eval_cells": args.eval_cells,
        "draws": args.draws,
        "seed": SEED,
        "flow_validation_losses": losses,
        "rows": rows,
    }
    _common.write_results(res, _markdown, args.out, log.elapsed())


def _markdown(res: dict) -> str:
    lines = [
        f"{res['estimator']} + flows trained on {res['train_cells']} cells of {res['dataset']} "
        f"({res['max_epochs']} epochs each); {res['eval_cells']} fresh cells (seed "
        f"{res['seed']}), {res['draws']} draws each. Flow validation losses: "
        + ", ".join(f"{v:.2f}" for v in res["flow_validation_losses"]),
        "",
        "| flows | joint HPD 50 % | joint HPD 90 % | KS p | draws − truth log p | mean log p(truth)"
        " | marginal 50 % / 90 % | worst |cov90 − 0.9| | mean R² |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in res["rows"]:
        lines.append(
            f"| {r['flows']} | {r['joint50']:.3f} | {r['joint90']:.3f} | {r['joint_ks_p']:.2g} | "
            f"{r['density_gap']:.2f} | {r['log_p_truth']:.2f} | {r['marginal50']:.3f} / "
            f"{r['marginal90']:.3f} | {r['worst90']:.3f} | {r['mean_r2']:.3f} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
