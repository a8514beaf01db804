r"""Training noise: how far per-parameter R² moves between training runs of the same method.

The learning curve's bootstrap interval (``learning_curve.py``) covers the luck of the test set,
not the luck of training. This script measures the second: on one training set and one held-out
test set it

* trains the MLP point regressor once per seed (the same cells, split and settings otherwise);
* evaluates the given NPE estimators (e.g. trainings with other seeds or settings), and the
  equal mixture of them: the mean of a mixture of posteriors is the mean of their means;

and compares each against the MLP of every seed, per parameter, as the learning curve does (R²
of the posterior mean, its Monte-Carlo error removed, or of the estimate, and a 95%
paired-bootstrap interval of the difference). The mean of the MLPs of all seeds is the
comparator of the NPE mixture (both average several runs).
With several runs of each, the two methods are also compared by their R² averaged over runs:
the expected accuracy of one training, which is what "NPE ≥ MLP" claims of a method.
If a retrained MLP falls below the first one on some parameters, "at least the MLP on every
parameter" cannot be told apart from training noise on those parameters.

Usage::

    python benchmarks/training_noise.py --train DATA/train --test DATA/test \\
        --seeds 0 1 --npe WORK/npe_200000 [OTHER/npe_200000 ...] [--max-epochs 30] \\
        [--samples 1000] [--work WORK]

Writes ``benchmarks/results/training_noise.json`` and prints a table.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import _common
import numpy as np
import pandas as pd
from learning_curve import (
    add_run_arguments,
    evaluate_npe,
    mean_r2,
    r2_difference_interval,
    squared_errors,
)


def compare(errors: np.ndarray, reference: np.ndarray, truth: np.ndarray, names) -> dict:
    """R² of an estimate against the ``reference`` estimate's, from their per-cell squared
    errors, per parameter, with the parameters where it is lower (and whether significantly).
    Either may be several runs' errors (R, N, D), compared by their mean R².
    """
    r2, r2_reference = mean_r2(errors, truth), mean_r2(reference, truth)
    low, high = r2_difference_interval(errors, reference, truth)
    below = {
        name: {"r2": r2[i], "reference_r2": r2_reference[i], "interval": [low[i], high[i]]}
        for i, name in enumerate(names)
        if r2[i] < r2_reference[i]
    }
    return {
        "mean_r2": float(r2.mean()),
        "at_least_reference": int((r2 >= r2_reference).sum()),
        "significantly_below": int((high < 0).sum()),
        "significantly_above": int((low > 0).sum()),
        "below": below,
        "r2": dict(zip(names, r2.tolist(), strict=True)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_run_arguments(parser, "training_noise", max_epochs=30, samples=1000)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1], help="MLP seeds")
    parser.add_argument("--npe", type=Path, nargs="*", default=[], help="trained estimators")
    args = parser.parse_args()

    from baseline import train_point_regressor

    from sbi_twins import load_estimator, open_dataset
    from sbi_twins.inference import TrainingConfig

    test = open_dataset(args.test)
    predictions, names = {}, None
    for seed in args.seeds:
        config = TrainingConfig(max_epochs=args.max_epochs, seed=seed, ema_decay=args.ema_decay)
        regressor = train_point_regressor(args.train, args.work / f"mlp_seed{seed}.pt", config)
        prediction = regressor.predict(test.observations[:])
        names = names or list(prediction.columns)
        predictions[f"MLP seed {seed}"] = prediction[names].to_numpy()
    truth = test.parameters[names].to_numpy()
    # every estimate as its per-cell squared errors (posterior means: Monte-Carlo error removed)
    errors = {label: squared_errors(p, truth) for label, p in predictions.items()}
    mlp_runs = np.stack([errors[label] for label in predictions])
    if len(args.seeds) > 1:
        mean_prediction = np.mean(list(predictions.values()), axis=0)
        errors[f"MLP mean of {len(args.seeds)} seeds"] = squared_errors(mean_prediction, truth)
    npe_runs = []
    for directory in args.npe:
        estimator = load_estimator(directory)
        estimator.check_dataset(test)
        npe_runs.append(evaluate_npe(estimator, test, args.samples))
        errors[f"NPE {directory}"] = squared_errors(
            npe_runs[-1]["mean"], truth, npe_runs[-1]["mc_variance"]
        )
    if len(npe_runs) > 1:
        # the mean of independent Monte-Carlo estimates: variance sum / runs²
        errors[f"NPE mixture of {len(npe_runs)}"] = squared_errors(
            np.mean([run["mean"] for run in npe_runs], axis=0),
            truth,
            np.sum([run["mc_variance"] for run in npe_runs], axis=0) / len(npe_runs) ** 2,
        )

    references = [label for label in errors if label.startswith("MLP")]
    results = {
        label: {
            reference: compare(error, errors[reference], truth, names)
            for reference in references
            if reference != label
        }
        for label, error in errors.items()
    }
    runs = dict(errors)  # what each row evaluates: one estimate (N, D), or runs (R, N, D)
    if len(npe_runs) > 1 and len(args.seeds) > 1:
        # the methods compared by their R² averaged over training runs (not by averaged estimates)
        label = f"R² averaged over the {len(npe_runs)} NPE runs"
        reference = f"R² averaged over the {len(args.seeds)} MLP runs"
        references.append(reference)
        runs[label] = np.stack([errors[f"NPE {directory}"] for directory in args.npe])
        results[label] = {reference: compare(runs[label], mlp_runs, truth, names)}
    rows = []
    for label, against in results.items():
        row = {"estimate": label, "mean R²": mean_r2(runs[label], truth).mean()}
        for reference in references:
            r = against.get(reference)
            row[f"vs {reference}: ≥ / sig. below / sig. above"] = (
                "-"
                if r is None
                else f"{r['at_least_reference']} / {r['significantly_below']} / "
                f"{r['significantly_above']}"
            )
        rows.append(row)
    print(f"{len(names)} parameters, {len(test)} test cells")
    print(pd.DataFrame(rows).to_markdown(index=False, floatfmt=".3f"))
    for label, against in results.items():
        for reference, r in against.items():
            below = ", ".join(
                f"{n} {b['r2'] - b['reference_r2']:+.4f}" for n, b in r["below"].items()
            )
            print(f"{label} below {reference} on: {below or 'none'}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {
                "train": str(args.train),
                "test": str(args.test),
                "test_cells": len(test),
                "samples_per_cell": args.samples,
                "max_epochs": args.max_epochs,
                "ema_decay": args.ema_decay,
                "references": references,
                "machine": _common.machine_info(watched_paths=("sbi_twins",)),
                "results": results,
            },
            indent=1,
            default=float,
        )
    )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
