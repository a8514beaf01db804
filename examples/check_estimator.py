"""Check an estimator on fresh synthetic cells: is it accurate, and is it calibrated.

Simulates held-out cells exactly as the estimator's training set was made (same model, prior,
protocol, recording model and viability rules, another seed), fits them all at once and plots
posterior mean against truth for the best- and worst-identified parameters, with the fraction of
cells whose true value lies in the 90% interval (about 0.9 if the posterior is calibrated).

    python examples/check_estimator.py [--estimator default] [-n 100] [--out check]

About a minute for 100 cells on 2 cores (after the kernels are compiled).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

import sbi_twins as st  # noqa: E402
from sbi_twins.physiology.viability import ViabilityRules  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--estimator", default="default")
    parser.add_argument("--prior", default="kernik2019_pm40", help="the estimator's prior")
    parser.add_argument("-n", type=int, default=100, help="held-out cells")
    parser.add_argument("--seed", type=int, default=12345, help="not the training set's seed")
    parser.add_argument("--out", type=Path, default=Path("check"))
    args = parser.parse_args()

    est = st.load_estimator(args.estimator)
    print(est)
    rules = est.manifest["training_set"]["viability"]
    spec = st.DatasetSpec(
        model=est.manifest["model"]["name"],
        prior=args.prior,
        protocol=est.protocol.name,
        seed=args.seed,
        chunk_size=32,
        sample_interval_ms=est.sample_interval_ms,
        viability=None if rules is None else ViabilityRules.from_dict(rules),
        ideal_clamp=est.manifest["recording"]["ideal_clamp"],
    )
    cells = st.simulate_dataset(args.out / "cells", args.n, spec, workers=1)
    est.check_dataset(cells)  # refuses cells made with another prior, protocol, ...

    truth = cells.parameters[list(est.names)]
    posteriors = est.posteriors(cells.observations[:])
    draws = np.stack(
        [p.sample(1000, seed=k)[truth.columns].to_numpy() for k, p in enumerate(posteriors)]
    )
    mean = draws.mean(axis=1)
    low, high = np.quantile(draws, [0.05, 0.95], axis=1)
    inside = ((low <= truth.to_numpy()) & (truth.to_numpy() <= high)).mean(axis=0)
    r2 = 1 - ((mean - truth.to_numpy()) ** 2).mean(axis=0) / truth.to_numpy().var(axis=0)
    order = np.argsort(r2)[::-1]
    print(f"{'parameter':32s} {'R2':>6s} {'90% coverage':>13s}")
    for i in order:
        print(f"{est.names[i]:32s} {r2[i]:6.2f} {inside[i]:13.2f}")
    print(f"mean 90% coverage {inside.mean():.2f} over {len(truth)} cells")

    shown = list(order[:6]) + list(order[-2:])
    fig, axes = plt.subplots(2, 4, figsize=(14, 7), constrained_layout=True)
    for ax, i in zip(axes.flat, shown, strict=True):
        ax.errorbar(
            truth.iloc[:, i],
            mean[:, i],
            yerr=[mean[:, i] - low[:, i], high[:, i] - mean[:, i]],
            fmt="o",
            ms=3,
            lw=0.5,
        )
        span = [truth.iloc[:, i].min(), truth.iloc[:, i].max()]
        ax.plot(span, span, "k--", lw=0.8)
        ax.set(
            title=f"{est.names[i]}\nR² {r2[i]:.2f}, 90% coverage {inside[i]:.2f}",
            xlabel="true",
            ylabel="posterior mean, 90% interval",
        )
    fig.savefig(args.out / "check.png", dpi=120)
    print(f"wrote {args.out / 'check.png'}")


if __name__ == "__main__":
    main()
