r"""Learning curve: NPE vs the MLP point regressor, by training-set size, on one held-out test set.

For each training size (the first N cells of one training set, so the sets are nested) it trains
an NPE estimator and the MLP point regressor (``baseline.py``) with the same settings and
split, then evaluates on a fixed held-out synthetic test set (noise and artefacts on):

* per parameter: R^2 and NRMSE of the NPE posterior mean and of the MLP estimate, and the
  posterior contraction ``1 - var_post / var_prior`` (mean over test cells). The posterior
  mean is estimated from ``--samples`` draws per cell; its Monte-Carlo error is removed from
  the squared errors (:func:`squared_errors`), so the R² is that of the exact posterior mean.
  ``r2_npe_mc_loss`` is what the Monte-Carlo error of ``--samples`` draws costs (subtract it
  for the R² of the drawn estimate);
* the NPE held-out log-likelihood: mean ``log q(theta_true | x)`` in parameter space;
* whether NPE and MLP differ beyond the luck of the test set: a 95% paired-bootstrap interval
  of R²(NPE) - R²(MLP) over test cells;
* calibration: the fraction of test cells whose true value lies in the central 90% posterior
  interval (0.9 for a calibrated posterior; lower means over-confident, higher under-confident).

NRMSE = RMSE / (prior's 99% range), so 0.29 is what guessing the prior mean gives for a uniform
parameter. A parameter with R^2 < 0.5 at the largest size is reported as not identified by the
protocol.

Usage::

    python benchmarks/learning_curve.py --train DATA/train --test DATA/test \\
        --sizes 1000 10000 100000 200000 [--max-epochs 200] [--flow-max-epochs N] \\
        [--samples 500]

Writes ``benchmarks/results/learning_curve.json`` and ``learning_curve.png`` and prints tables.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"


def squared_errors(
    estimate: np.ndarray, truth: np.ndarray, mc_variance: np.ndarray | None = None
) -> np.ndarray:
    """Per-cell squared errors of estimates (N, D), or of several runs' estimates (R, N, D), of
    the true values (N, D).

    For a posterior mean estimated from draws, give ``mc_variance``, the variance of that
    Monte-Carlo estimate (posterior variance / draws, per cell and parameter): it is subtracted,
    which makes the errors unbiased for those of the exact posterior mean. The Monte-Carlo
    error is independent of the exact mean's error and adds its variance to the expected
    squared error; it belongs to the number of draws, not to the method.
    """
    errors = (estimate - truth) ** 2
    return errors if mc_variance is None else errors - mc_variance


def r2_nrmse(errors: np.ndarray, truth: np.ndarray, span: np.ndarray):
    """Per-parameter R² and RMSE / ``span`` from per-cell squared errors (N, D) (see
    :func:`squared_errors`) of estimates of the true values (N, D).
    """
    mse = errors.mean(axis=0)
    r2 = 1.0 - mse / truth.var(axis=0)
    return r2, np.sqrt(np.maximum(mse, 0.0)) / span


def mean_r2(errors: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Per-parameter R² from squared errors (N, D), or the mean R² of several runs' (R, N, D)."""
    runs = errors if errors.ndim == 3 else errors[None]
    return np.mean([r2_nrmse(run, truth, 1.0)[0] for run in runs], axis=0)


def r2_difference_interval(
    npe: np.ndarray, mlp: np.ndarray, truth: np.ndarray, n_boot: int = 1000, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """95% paired-bootstrap interval of R²(NPE) - R²(MLP) per parameter from their per-cell
    squared errors, resampling test cells: how far apart two R² values can be by the luck of
    the test set alone. Either side may be several training runs' errors (R, N, D), compared by
    their mean R² (see :func:`mean_r2`).
    """
    rng = np.random.default_rng(seed)
    differences = np.empty((n_boot, truth.shape[1]))
    for b in range(n_boot):
        rows = rng.integers(0, len(truth), len(truth))
        differences[b] = mean_r2(npe[..., rows, :], truth[rows])
        differences[b] -= mean_r2(mlp[..., rows, :], truth[rows])
    return np.quantile(differences, 0.025, axis=0), np.quantile(differences, 0.975, axis=0)


def evaluate_npe(estimator, test, n_samples: int, batch: int = 10) -> dict:
    """Posterior means (and the variance of their Monte-Carlo estimates from ``n_samples``
    draws), contraction, 90% coverage and log-likelihood of the true parameters on the test
    set.
    """
    names = list(estimator.names)
    truth = test.parameters[names].to_numpy()
    prior_var = estimator.prior_variance.to_numpy()
    means, mc_variance, contraction, loglik, inside = [], [], [], [], []
    for start in range(0, len(test), batch):
        x = test.observations[start : start + batch]
        z = estimator.sample_z(x, n_samples, seed=start)  # (n, B, D)
        theta = estimator.prior.from_unbounded(z.reshape(-1, z.shape[-1])).reshape(z.shape)
        means.append(theta.mean(axis=0))
        mc_variance.append(theta.var(axis=0, ddof=1) / n_samples)
        contraction.append(1.0 - theta.var(axis=0) / prior_var)
        loglik.append(estimator.log_prob(truth[start : start + batch][None], x)[0])
        low, high = np.quantile(theta, [0.05, 0.95], axis=0)
        inside.append(
            (low <= truth[start : start + batch]) & (truth[start : start + batch] <= high)
        )
    return {
        "mean": np.concatenate(means),
        "mc_variance": np.concatenate(mc_variance),
        "contraction": np.concatenate(contraction).mean(axis=0),
        "coverage90": np.concatenate(inside).mean(axis=0),
        "loglik": float(np.concatenate(loglik).mean()),
    }


def add_run_arguments(
    parser: argparse.ArgumentParser, name: str, *, max_epochs: int, samples: int
) -> None:
    """The options shared by the scripts that train on ``--train`` and evaluate on ``--test``:
    epoch cap, weight averaging (for both methods), posterior draws per test cell, work
    directory (reused by reruns), results file ``results/<name>.json``.
    """
    from sbi_twins.inference import TrainingConfig

    parser.add_argument("--train", type=Path, required=True, help="training dataset")
    parser.add_argument("--test", type=Path, required=True, help="held-out dataset (>= 2000)")
    parser.add_argument("--max-epochs", type=int, default=max_epochs)
    parser.add_argument(
        "--ema-decay",
        type=float,
        default=TrainingConfig.ema_decay,
        help="TrainingConfig.ema_decay of both methods (0: no weight averaging)",
    )
    parser.add_argument("--samples", type=int, default=samples, help="posterior draws per cell")
    parser.add_argument(
        "--work",
        type=Path,
        default=Path(tempfile.gettempdir()) / f"sbi-twins-{name.replace('_', '-')}",
        help="where trained networks and their checkpoints go (a rerun resumes or reuses them)",
    )
    parser.add_argument("--out", type=Path, default=RESULTS / f"{name}.json")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_run_arguments(parser, "learning_curve", max_epochs=200, samples=500)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10_000, 100_000, 200_000])
    parser.add_argument(
        "--flow-max-epochs",
        type=int,
        default=None,
        help="epoch cap of the NPE's flow stage (default: --max-epochs)",
    )
    args = parser.parse_args()

    from baseline import train_point_regressor

    from sbi_twins import open_dataset
    from sbi_twins.inference import TrainingConfig, train_estimator

    test = open_dataset(args.test)
    if len(test) < 2000:
        print(f"warning: the test set has {len(test)} cells (< 2000)")
    available = len(open_dataset(args.train))
    rows, per_parameter = [], {}
    for size in args.sizes:
        if size > available:
            print(f"skipping {size}: the training set has {available} cells so far")
            continue
        # The full set trains with max_cells=None, exactly as `sbi-twins train` does, so an
        # estimator trained by that command into WORK/npe_<size> is reused rather than retrained.
        max_cells = size if size < available else None
        config = TrainingConfig(
            max_cells=max_cells, max_epochs=args.max_epochs, ema_decay=args.ema_decay
        )
        estimator = train_estimator(
            args.train,
            args.work / f"npe_{size}",
            replace(config, flow_max_epochs=args.flow_max_epochs),
        )
        regressor = train_point_regressor(args.train, args.work / f"mlp_{size}.pt", config)
        # training time from the logs, so a rerun that reuses finished runs still reports it
        npe_seconds = float(
            pd.read_csv(args.work / f"npe_{size}" / "training_log.csv")["seconds"].sum()
        )
        mlp_seconds = float(sum(epoch["seconds"] for epoch in regressor.history))
        names = list(estimator.names)
        truth = test.parameters[names].to_numpy()
        prior = estimator.prior
        span = (prior.quantile(0.995) - prior.quantile(0.005)).to_numpy()
        estimator.check_dataset(test)
        npe = evaluate_npe(estimator, test, args.samples)
        npe_errors = squared_errors(npe["mean"], truth, npe["mc_variance"])
        r2_npe, nrmse_npe = r2_nrmse(npe_errors, truth, span)
        mlp = regressor.predict(test.observations[:])[names].to_numpy()
        mlp_errors = squared_errors(mlp, truth)
        r2_mlp, nrmse_mlp = r2_nrmse(mlp_errors, truth, span)
        difference_low, difference_high = r2_difference_interval(npe_errors, mlp_errors, truth)
        per_parameter[size] = pd.DataFrame(
            {
                "r2_npe": r2_npe,
                "r2_npe_mc_loss": npe["mc_variance"].mean(axis=0) / truth.var(axis=0),
                "r2_mlp": r2_mlp,
                "nrmse_npe": nrmse_npe,
                "nrmse_mlp": nrmse_mlp,
                "r2_difference_low": difference_low,
                "r2_difference_high": difference_high,
                "contraction": npe["contraction"],
                "coverage90": npe["coverage90"],
            },
            index=names,
        )
        rows.append(
            {
                "size": size,
                "npe_epochs": estimator.manifest["validation"]["epochs"],
                "npe_train_s": npe_seconds,
                "mlp_train_s": mlp_seconds,
                "heldout_loglik": npe["loglik"],
                "mean_r2_npe": float(np.mean(r2_npe)),
                "mean_r2_mlp": float(np.mean(r2_mlp)),
                "npe_at_least_mlp": int(np.sum(r2_npe >= r2_mlp)),
                "npe_significantly_below_mlp": int(np.sum(difference_high < 0)),
                "parameters": len(names),
                "mean_contraction": float(np.mean(npe["contraction"])),
                "mean_coverage90": float(np.mean(npe["coverage90"])),
            }
        )
        rows.sort(key=lambda row: row["size"])  # sizes may be given in any order
        print(pd.DataFrame(rows).to_markdown(index=False, floatfmt=".3f"), flush=True)
        # written after every size, so a long run that dies keeps the sizes it finished
        _write_results(args, len(test), rows, per_parameter)

    if not rows:
        raise SystemExit("no training size fits the training set")
    largest = max(per_parameter)
    table = per_parameter[largest].copy()
    table["identified"] = np.where(table["r2_npe"] >= 0.5, "yes", "no")
    print(f"\nper parameter at {largest} cells (sorted by NPE R^2):")
    print(table.sort_values("r2_npe", ascending=False).to_markdown(floatfmt=".3f"))
    print(f"wrote {args.out} and {args.out.with_suffix('.png')}")


def _write_results(args, test_cells: int, rows: list, per_parameter: dict) -> None:
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {
                "train": str(args.train),
                "test": str(args.test),
                "test_cells": test_cells,
                "samples_per_cell": args.samples,
                "max_epochs": args.max_epochs,
                "flow_max_epochs": args.flow_max_epochs,
                "ema_decay": args.ema_decay,
                "rows": rows,
                "per_parameter": {
                    str(k): v.to_dict(orient="index") for k, v in per_parameter.items()
                },
            },
            indent=1,
        )
    )
    _plot(per_parameter, args.out.with_suffix(".png"))


def _plot(per_parameter: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = sorted(per_parameter)
    names = list(per_parameter[sizes[-1]].index)
    fig, axes = plt.subplots(1, 2, figsize=(13, 5), constrained_layout=True)
    for name in names:
        npe = [per_parameter[s].loc[name, "r2_npe"] for s in sizes]
        mlp = [per_parameter[s].loc[name, "r2_mlp"] for s in sizes]
        line = axes[0].plot(sizes, npe, lw=0.8)[0]
        axes[0].plot(sizes, mlp, lw=0.8, ls="--", color=line.get_color())
    axes[0].set(
        xscale="log",
        xlabel="training cells",
        ylabel="R² (solid NPE, dashed MLP)",
        ylim=(-0.1, 1.0),
        title="per-parameter R² on the held-out set",
    )
    final = per_parameter[sizes[-1]].sort_values("r2_npe")
    axes[1].barh(range(len(final)), final["r2_npe"], label="NPE posterior mean")
    axes[1].scatter(final["r2_mlp"], range(len(final)), color="k", s=8, label="MLP", zorder=3)
    axes[1].set_yticks(range(len(final)), final.index, fontsize=5)
    axes[1].set(xlabel="R²", title=f"{sizes[-1]} training cells", xlim=(-0.1, 1.0))
    axes[1].legend(loc="lower right")
    fig.savefig(path, dpi=130)


if __name__ == "__main__":
    main()
