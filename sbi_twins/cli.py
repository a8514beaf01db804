"""Command-line interface: ``sbi-twins <command>``."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from . import _resources
from .model import load_model
from .protocol import load_protocol


def _demo(args: argparse.Namespace) -> int:
    """Simulate one cell under a clamp protocol and spontaneously; print and plot the result."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .features import ap_features

    model = load_model(args.model)
    protocol = load_protocol(args.protocol)
    print(f"model    {model}")
    print(
        f"protocol {protocol.name}: {len(protocol.segments)} segments, {protocol.duration_ms:g} ms"
    )

    start = time.perf_counter()
    current = model.simulate_vc(protocol, sample_interval_ms=args.sample_interval)[0]
    vc_s = time.perf_counter() - start
    times = protocol.times(args.sample_interval)
    start = time.perf_counter()
    voltage = model.simulate_ap(duration_ms=args.ap_duration, sample_interval_ms=0.5)[0]
    ap_s = time.perf_counter() - start
    print(
        f"voltage clamp: {times.size} samples in {vc_s:.2f} s (includes compilation on first "
        f"use); I_ion from {current.min():.2f} to {current.max():.2f}"
    )
    features = ap_features(voltage, 0.5).iloc[0]
    print(f"spontaneous activity, {args.ap_duration:g} ms in {ap_s:.2f} s:")
    for name in ("n_beats", "CL", "APD90", "APD50", "MDP", "peak"):
        print(f"  {name:8s} {features[name]:9.2f}")

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(
        out / "baseline_cell.npz",
        t_ms=times,
        v_cmd_mV=protocol.voltage(times),
        i_ion=current,
        ap_t_ms=np.arange(voltage.size) * 0.5,
        ap_V_mV=voltage,
    )
    fig, axes = plt.subplots(3, 1, figsize=(11, 8), constrained_layout=True)
    axes[0].plot(times / 1000, protocol.voltage(times), lw=0.8)
    axes[0].set(ylabel="command (mV)", title=f"{model.name} under {protocol.name}")
    axes[1].plot(times / 1000, current, lw=0.5)
    axes[1].set(ylabel="I_ion (pA/pF)", xlabel="time (s)")
    axes[1].set_ylim(np.percentile(current, 0.5) - 5, np.percentile(current, 99.5) + 5)
    axes[2].plot(np.arange(voltage.size) * 0.5e-3, voltage, lw=0.8)
    axes[2].set(ylabel="V (mV)", xlabel="time (s)", title="spontaneous activity")
    fig.savefig(out / "baseline_cell.png", dpi=120)
    print(f"wrote {out / 'baseline_cell.png'} and {out / 'baseline_cell.npz'}")
    return 0


def _simulate(args: argparse.Namespace) -> int:
    """Generate (or resume) a synthetic training set."""
    from .simulate import DatasetSpec, simulate_dataset
    from .viability import ViabilityRules

    spec = DatasetSpec(
        model=args.model,
        prior=args.prior,
        protocol=args.protocol,
        seed=args.seed,
        chunk_size=args.chunk_size,
        sample_interval_ms=args.sample_interval,
        viability=None if args.no_viability else ViabilityRules(),
        ideal_clamp=args.ideal_clamp,
    )
    start = time.perf_counter()
    dataset = simulate_dataset(
        args.out,
        args.n,
        spec,
        workers=args.workers,
        dask_address=args.dask,
        progress=not args.quiet,
    )
    seconds = time.perf_counter() - start
    candidates = dataset.candidates
    print(
        f"{dataset}: observations {dataset.observations.shape}, "
        f"{len(candidates)} draws, acceptance {dataset.acceptance_rate:.1%}, "
        f"this run {seconds:.0f} s"
    )
    counts = candidates["status"].value_counts()
    print("  draws by outcome: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
    return 0


def _train(args: argparse.Namespace) -> int:
    """Train an NPE estimator on a dataset (resumable)."""
    from .train import TrainingConfig, train_estimator

    config = TrainingConfig(max_epochs=args.max_epochs, batch_size=args.batch_size, seed=args.seed)
    estimator = train_estimator(
        args.dataset, args.out, config, device=args.device, progress=not args.quiet
    )
    validation = estimator.manifest["validation"]
    print(
        f"{estimator}\nbest validation loss {validation['best_loss']:.3f} after "
        f"{validation['epochs']} epochs; wrote {args.out}"
    )
    return 0


def _read_trace(path: Path) -> np.ndarray:
    """A recorded current trace (pA/pF) from .npy (1-D) or .csv (the last column)."""
    if path.suffix == ".npy":
        return np.load(path)
    if path.suffix == ".csv":
        import pandas as pd

        return pd.read_csv(path).iloc[:, -1].to_numpy(dtype=float)
    raise ValueError(f"{path}: expected a .npy or .csv trace (pA/pF on the protocol's grid)")


def _fit(args: argparse.Namespace) -> int:
    """Fit one recording with an estimator; write samples, summary and InferenceData."""
    from .estimator import load_estimator

    estimator = load_estimator(args.estimator)
    trace = _read_trace(Path(args.recording))
    start = time.perf_counter()
    posterior = estimator.fit(trace, sample_interval_ms=args.sample_interval)
    samples = posterior.sample(args.samples, seed=args.seed)
    summary = posterior.summary(args.samples, seed=args.seed)
    seconds = time.perf_counter() - start
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    samples.to_csv(out / "samples.csv", index=False)
    summary.to_csv(out / "summary.csv", index_label="parameter")
    posterior.to_inference_data(args.samples, seed=args.seed).to_netcdf(str(out / "posterior.nc"))
    _print_summary(summary)
    print(f"fitted in {seconds:.1f} s; wrote samples.csv, summary.csv, posterior.nc to {out}")
    return 0


def _print_summary(summary) -> None:
    ordered = summary.sort_values("contraction", ascending=False)
    print(f"{'parameter':32s} {'mean':>10s} {'sd':>10s} {'94% HDI':>23s} {'contraction':>11s}")
    for name, row in ordered.iterrows():
        print(
            f"{name:32s} {row['mean']:10.4g} {row['sd']:10.3g} "
            f"[{row['hdi_low']:10.4g}, {row['hdi_high']:10.4g}] {row['contraction']:11.2f}"
        )
    pinned = (ordered["contraction"] >= 0.5).sum()
    loose = (ordered["contraction"] < 0.1).sum()
    print(
        f"{pinned} parameters pinned down (contraction >= 0.5), {loose} not identified by "
        "this recording (< 0.1)"
    )


def _list(args: argparse.Namespace) -> int:
    for kind, suffix in (("simulators", ".mmt"), ("protocols", ".toml"), ("priors", ".toml")):
        print(f"{kind}: {', '.join(_resources.available(kind, suffix))}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sbi-twins",
        description="Electrophysiological digital twins of single cells by simulation-based "
        "inference.",
    )
    commands = parser.add_subparsers(dest="command", required=True)

    demo = commands.add_parser(
        "demo", help="simulate the baseline cell under a clamp protocol and spontaneously"
    )
    demo.add_argument("--model", default="kernik2019", help="bundled name or .mmt path")
    demo.add_argument("--protocol", default="clark2022", help="bundled name or .toml path")
    demo.add_argument("--sample-interval", type=float, default=0.1, help="ms (default 0.1)")
    demo.add_argument("--ap-duration", type=float, default=10_000, help="ms (default 10000)")
    demo.add_argument("--out", default="out", help="output folder (default ./out)")
    demo.set_defaults(run=_demo)

    sim = commands.add_parser(
        "simulate",
        help="generate a synthetic training set (resumable: rerun the same command to continue)",
    )
    sim.add_argument("-n", type=int, required=True, help="number of accepted cells")
    sim.add_argument("--out", required=True, help="dataset directory")
    sim.add_argument("--model", default="kernik2019", help="bundled name or .mmt path")
    sim.add_argument("--prior", default="kernik2019_pm40", help="bundled name or .toml path")
    sim.add_argument("--protocol", default="clark2022", help="bundled name or .toml path")
    sim.add_argument("--seed", type=int, default=0, help="root seed (default 0)")
    sim.add_argument(
        "--workers", type=int, default=None, help="local processes (default: all cores)"
    )
    sim.add_argument("--dask", default=None, metavar="ADDRESS", help="Dask scheduler address")
    sim.add_argument("--no-viability", action="store_true", help="keep every cell, beating or not")
    sim.add_argument(
        "--ideal-clamp",
        action="store_true",
        help="ignore the prior's [[recording]] section: no artefacts, no noise",
    )
    sim.add_argument("--chunk-size", type=int, default=256, help="draws per shard (default 256)")
    sim.add_argument("--sample-interval", type=float, default=0.1, help="ms (default 0.1)")
    sim.add_argument("--quiet", action="store_true", help="no progress bar")
    sim.set_defaults(run=_simulate)

    train = commands.add_parser("train", help="train an NPE estimator on a dataset (resumable)")
    train.add_argument("dataset", help="dataset directory from `sbi-twins simulate`")
    train.add_argument("--out", required=True, help="estimator directory")
    train.add_argument("--max-epochs", type=int, default=200)
    train.add_argument("--batch-size", type=int, default=256)
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--device", default="cpu", help="cpu or cuda")
    train.add_argument("--quiet", action="store_true", help="no progress bar")
    train.set_defaults(run=_train)

    fit = commands.add_parser("fit", help="posterior of one recorded cell")
    fit.add_argument("recording", help=".npy or .csv current trace (pA/pF) on the protocol grid")
    fit.add_argument("--estimator", required=True, help="estimator directory or bundled name")
    fit.add_argument("--out", required=True, help="output directory")
    fit.add_argument("--samples", type=int, default=10_000, help="posterior draws")
    fit.add_argument("--seed", type=int, default=0)
    fit.add_argument(
        "--sample-interval",
        type=float,
        default=None,
        help="ms between the trace's samples, if not the estimator's (resampled, with a warning)",
    )
    fit.set_defaults(run=_fit)

    listing = commands.add_parser("list", help="list the bundled models and protocols")
    listing.set_defaults(run=_list)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``sbi-twins`` console script."""
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except (ValueError, OSError) as error:
        print(f"sbi-twins {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
