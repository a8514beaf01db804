"""Command-line interface: ``sbi-twins <command>``."""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from . import _resources
from ._util import (
    atomic_write,
    atomic_write_json,
    atomic_write_text,
    check_positive,
    package_version,
)

if TYPE_CHECKING:  # annotations only
    from .recording import Recording


def _check_counts(*options: tuple[str, int, int, str]) -> None:
    """Refuse an integer option below its minimum, naming it: (option, value, minimum, what)."""
    for option, value, minimum, what in options:
        if value < minimum:
            raise ValueError(f"{option} ({what}) must be an integer >= {minimum}, got {value}")


def _demo(args: argparse.Namespace) -> int:
    """Simulate an example cell recorded with the estimator's protocol, fit it, compare the
    posterior with the truth and the cell's twins; print the summary and write the results.
    """
    from .inference import load_estimator
    from .report import plot_demo
    from .twins import simulate_twins

    _check_counts(  # before anything is simulated or written
        ("--samples", args.samples, 2, "posterior draws"),
        ("--twins", args.twins, 1, "twins simulated for the figure"),
        ("--seed", args.seed, 0, "the example cell's seed"),
    )
    if Path(args.out).exists() and not Path(args.out).is_dir():
        raise ValueError(f"--out {args.out} is a file; give the folder to write the results to")
    estimator = load_estimator(args.estimator)
    print(estimator)
    cells, traces = estimator.simulate_cells(1, seed=args.seed)
    truth, trace = cells.iloc[0][list(estimator.names)], traces[0]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    times = estimator.protocol.times(estimator.sample_interval_ms)
    pd.DataFrame(
        {"time_ms": times, "command_mV": estimator.protocol.voltage(times), "current_pA_pF": trace}
    ).to_csv(out / "example_cell.csv", index=False)
    truth.to_csv(out / "example_cell_parameters.csv", header=["value"], index_label="parameter")
    print(
        f"example cell (seed {args.seed}): a viable prior draw recorded with "
        f"{estimator.protocol.name}, {trace.size} samples -> {out / 'example_cell.csv'}"
    )

    start = time.perf_counter()
    posterior = estimator.fit(trace)
    samples, summary = posterior.save(out, args.samples, seed=args.seed)
    seconds = time.perf_counter() - start
    table = summary.assign(true=truth[summary.index])
    table["in_hdi"] = (table["true"] >= table["hdi_low"]) & (table["true"] <= table["hdi_high"])
    _print_summary(table)
    print(
        f"fitted in {seconds:.1f} s; true value inside the 94% HDI for {table['in_hdi'].sum()} "
        f"of {len(table)} parameters"
    )

    twins = posterior.sample(args.twins, seed=args.seed + 1)
    simulated = simulate_twins(estimator, pd.concat([truth.to_frame().T, twins]), args.seed)
    plot_demo(
        out / "twins.png",
        estimator,
        samples,
        truth,
        trace,
        simulated,
    )
    print(
        f"wrote samples.csv, summary.csv, posterior.nc and twins.png ({args.twins} twins) to {out}"
    )
    return 0


def _simulate(args: argparse.Namespace) -> int:
    """Generate (or resume) a synthetic training set."""
    from .data import DatasetSpec, simulate_dataset
    from .physiology import ViabilityRules

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
        max_draws=args.max_draws,
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


#: The TrainingConfig fields `sbi-twins train` sets (each the ``dest`` of its option).
TRAINING_OPTIONS = {
    "max_epochs": "--max-epochs",
    "flow_max_epochs": "--flow-max-epochs",
    "batch_size": "--batch-size",
    "seed": "--seed",
    "lr_schedule": "--lr-schedule",
    "ema_decay": "--ema-decay",
    "n_flows": "--flows",
}


def _train(args: argparse.Namespace) -> int:
    """Train an NPE estimator on a dataset (resumable)."""
    from .inference import TrainingConfig, train_estimator

    try:
        config = TrainingConfig(**{field: getattr(args, field) for field in TRAINING_OPTIONS})
    except ValueError as error:  # named as the user gave them: the options, not the fields
        message = str(error)
        for field, option in TRAINING_OPTIONS.items():
            message = message.replace(f"TrainingConfig.{field}", option)
        raise ValueError(message) from None
    estimator = train_estimator(
        args.dataset, args.out, config, device=args.device, progress=not args.quiet
    )
    validation = estimator.manifest["validation"]
    print(
        f"{estimator}\nsummary network: best validation MSE {validation['summary_best_loss']:.3f} "
        f"after {validation['summary_epochs']} epochs; flow: best validation loss "
        f"{validation['best_loss']:.3f} after {validation['epochs']} epochs; wrote {args.out}"
    )
    return 0


def _calibrate(args: argparse.Namespace) -> int:
    """Temper an estimator's flows so that its joint posterior is calibrated on fresh cells."""
    from .diagnostics import calibrate_temperature
    from .inference import load_estimator

    estimator = load_estimator(args.estimator)
    out = Path(args.out)
    if out.suffix != ".pt" or out.is_dir():
        raise ValueError(f"--out {out} must name the estimator file to write (FILE.pt)")
    print(f"{estimator}: tempering on {args.cells} fresh cells (seed {args.seed})")
    fit = calibrate_temperature(
        estimator, args.cells, args.seed, args.draws, progress=not args.quiet
    )
    print(fit.trials.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    tempered = estimator.tempered(fit.temperature, note=fit.note)
    if "misspecification_reference" not in tempered.manifest:  # kept with the bundle
        reference = tempered.misspecification_reference(n_cells=args.reference_cells)
        tempered.manifest["misspecification_reference"] = reference.to_dict()
    tempered.save(out)
    print(f"temperature {fit.temperature:.4f}; wrote {out}")
    return 0


def _read_npy_trace(path: Path) -> np.ndarray:
    """A current trace (pA/pF) saved with numpy: (T,), or (1, T) / (T, 1)."""
    how = "save the trace with numpy.save(path, trace): one array (T,) of numbers in pA/pF"
    if not path.is_file():
        what = "is a directory" if path.is_dir() else "does not exist"
        raise FileNotFoundError(f"{path} {what}; give the .npy file of the trace")
    if path.stat().st_size == 0:
        raise ValueError(f"{path} is empty (0 bytes), not a .npy array; {how}")
    try:
        trace = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as e:
        raise ValueError(f"{path} is not a readable .npy array ({e}); {how}") from None
    if not isinstance(trace, np.ndarray):  # an .npz archive named .npy
        trace.close()
        raise ValueError(f"{path} is an .npz archive of several arrays, not one .npy array; {how}")
    if not (np.issubdtype(trace.dtype, np.integer) or np.issubdtype(trace.dtype, np.floating)):
        raise ValueError(f"{path} holds {trace.dtype} values, not real numbers; {how}")
    if trace.ndim == 2 and 1 in trace.shape:
        trace = trace.reshape(-1)
    if trace.ndim != 1:
        raise ValueError(
            f"{path} holds an array of shape {trace.shape}; fit takes one trace (T,): {how} "
            "(e.g. one row of a (cells, T) array: numpy.save(path, traces[k]))"
        )
    return trace


def _fit(args: argparse.Namespace) -> int:
    """Fit recordings with an estimator; write samples, summary and InferenceData of each."""
    from .inference import load_estimator

    _check_counts(("--samples", args.samples, 2, "posterior draws"))
    if args.sample_interval is not None:
        check_positive("--sample-interval", args.sample_interval)
    paths = [Path(recording) for recording in args.recording]
    if len(paths) > 1:
        return _fit_several(args, paths)
    recorded_ap = _recorded_ap(args)  # a wrong AP file fails before the fit, not after
    estimator = load_estimator(args.estimator)
    start = time.perf_counter()
    posterior, samples, summary = _fit_one(args, estimator, paths[0], Path(args.out))
    seconds = time.perf_counter() - start
    for note in posterior.preprocessing:
        print(f"- {note}")
    _print_summary(summary)
    print(f"fitted in {seconds:.1f} s; wrote samples.csv, summary.csv, posterior.nc to {args.out}")
    if args.report:
        from .report import cell_report

        report = cell_report(
            posterior,
            args.out,
            n=args.samples,
            seed=args.seed,
            title=paths[0].name,
            saved=(samples, summary),
            twins_ap=args.twins_ap,
            recorded_ap=recorded_ap,
        )
        print(f"wrote {report}")
    return 0


def _fit_one(args: argparse.Namespace, estimator, path: Path, out: Path):
    """Fit one recording file into ``out``: its posterior, samples and summary."""
    from .recording import load_recording

    plausible = not args.no_plausibility_check
    if path.suffix == ".npy":
        posterior = estimator.fit(
            _read_npy_trace(path),
            sample_interval_ms=args.sample_interval,
            check_plausibility=plausible,
        )
    else:  # .abf, .csv, .csv.gz: units, command and sampling from the file
        recording = load_recording(
            path,
            sweep=args.sweep,
            signal_unit=args.unit,
            cm_pF=args.cm,
            sample_interval_ms=args.sample_interval,
        )
        posterior = estimator.fit(
            recording, check_command=not args.no_command_check, check_plausibility=plausible
        )
    samples, summary = posterior.save(out, args.samples, seed=args.seed)
    _write_fit_record(out, posterior, args.estimator, path, args.samples, args.seed)
    return posterior, samples, summary


def _fit_several(args: argparse.Namespace, paths: list[Path]) -> int:
    """Fit each recording into ``--out/<its name>``; one line per recording, and those that
    could not be fitted listed at the end (exit status 2 if any).
    """
    from .inference import load_estimator

    for option, value in (("--cm", args.cm), ("--ap", args.ap), ("--twins-ap", args.twins_ap)):
        if value is not None:
            raise ValueError(
                f"{option} belongs to one cell: fit the recordings one at a time to give it"
            )
    names = [_file_stem(path) for path in paths]
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise ValueError(
            f"several recordings are named {', '.join(repeated)}: their fits would share a "
            "directory under --out; rename them or fit them separately"
        )
    estimator = load_estimator(args.estimator)
    failed = []
    for path, name in zip(paths, names, strict=True):  # a line each: the progress
        out = Path(args.out) / name
        start = time.perf_counter()
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                posterior, samples, summary = _fit_one(args, estimator, path, out)
                if args.report:
                    from .report import cell_report

                    cell_report(posterior, out, n=args.samples, seed=args.seed, title=path.name,
                                saved=(samples, summary))
        except (ValueError, OSError) as error:
            failed.append(path.name)
            print(f"{path}: not fitted: {error}", file=sys.stderr)
            continue
        for warning in caught:
            print(f"{path}: warning: {warning.message}", file=sys.stderr)
        print(f"{path}: fitted in {time.perf_counter() - start:.1f} s into {out}")
    print(f"fitted {len(paths) - len(failed)} of {len(paths)} recordings into {args.out}"
          + (f"; not fitted: {', '.join(failed)}" if failed else ""))
    return 2 if failed else 0


def _recorded_ap(args: argparse.Namespace) -> Recording | None:
    """The current-clamp recording of ``--ap`` (None without it), after checking that the
    twins' AP options go with a cell's report.
    """
    from .recording import load_recording
    from .recording.io import CURRENT_CLAMP

    asked = args.twins_ap is not None or args.ap is not None
    if asked and args.command == "fit" and not args.report:
        raise ValueError("--twins-ap and --ap belong to the cell's report: add --report")
    if asked and args.command == "report" and args.what != "cell":
        raise ValueError("--twins-ap and --ap belong to a cell's report (`report cell`)")
    if args.ap is None:
        return None
    recording = load_recording(args.ap, sweep=args.ap_sweep, channel=args.ap_channel)
    if recording.mode != CURRENT_CLAMP:
        raise ValueError(
            f"--ap {args.ap} is a {recording.mode.replace('_', '-')} recording (signal in "
            f"{recording.signal_unit}); the twins' APs are compared with a current-clamp one "
            "(a potential in mV or V): choose its channel with --ap-channel"
        )
    return recording


#: Record of a fit in its output directory, with which `sbi-twins report cell` rebuilds it.
FIT_RECORD = "fit.json"


def _write_fit_record(
    out: Path, posterior, estimator: str, source: Path, samples: int, seed: int
) -> None:
    manifest = posterior.estimator.manifest
    np.save(out / "observation.npy", posterior.observation)
    # a bundled estimator is recorded by name: its path is the folder of every bundled one
    where = Path(estimator)
    atomic_write_json(
        out / FIT_RECORD,
        {
            "estimator": str(where.resolve()) if where.is_dir() else estimator,
            "model_sha256": manifest["model"]["file_sha256"],
            "prior_sha256": manifest["prior"]["hash"],
            "protocol_sha256": manifest["protocol"]["hash"],
            "recording": str(source),
            "preprocessing": list(posterior.preprocessing),
            "samples": samples,
            "seed": seed,
            "sbi_twins": package_version(),
        },
    )


def _fitted_cell(fit_dir: Path, loaded: dict | None = None):
    """A fit directory's record and its estimator, checked to be the one it was fitted with.
    ``loaded`` keeps the estimators read so far, for several fit directories of one estimator.
    """
    from .inference import load_estimator

    record_path = fit_dir / FIT_RECORD
    if not record_path.is_file():
        raise ValueError(f"{fit_dir} is not a fit directory (no {FIT_RECORD}); make one with `fit`")
    loaded = {} if loaded is None else loaded
    try:
        record = json.loads(record_path.read_text())
        if record["estimator"] not in loaded:
            loaded[record["estimator"]] = load_estimator(record["estimator"])
        estimator = loaded[record["estimator"]]
    except (json.JSONDecodeError, KeyError) as e:
        raise ValueError(f"{record_path} is damaged ({e}); rerun `sbi-twins fit`") from None
    manifest = estimator.manifest
    current = {
        "model_sha256": manifest["model"]["file_sha256"],
        "prior_sha256": manifest["prior"]["hash"],
        "protocol_sha256": manifest["protocol"]["hash"],
    }
    if any(record.get(key) != value for key, value in current.items()):
        raise ValueError(
            f"{fit_dir} was fitted with another estimator than {estimator.path} is now (model, "
            "prior or protocol differ); rerun `sbi-twins fit` with the current estimator"
        )
    return record, estimator


def _report(args: argparse.Namespace) -> int:
    """Write a self-contained HTML report of an estimator or of a fitted cell."""
    from .inference import load_estimator
    from .report import cell_report, estimator_report

    recorded_ap = _recorded_ap(args)
    if args.what == "estimator":
        from .diagnostics import diagnose

        estimator = load_estimator(args.target)
        print(f"{estimator}: checking it on {args.cells} fresh cells (seed {args.seed})")
        diagnostics = diagnose(estimator, args.cells, seed=args.seed, n_draws=args.draws)
        print(f"wrote {estimator_report(estimator, diagnostics, args.out)}")
        return 0
    fit_dir = Path(args.target)
    record, estimator = _fitted_cell(fit_dir)
    from .inference import CellPosterior

    observation = np.load(fit_dir / "observation.npy")
    posterior = CellPosterior(estimator, observation, record["preprocessing"])
    report = cell_report(
        posterior,
        args.out,
        n=record["samples"],
        seed=record["seed"],
        title=record["recording"],
        twins_ap=args.twins_ap,
        recorded_ap=recorded_ap,
    )
    print(f"wrote {report}")
    return 0


def _screen(args: argparse.Namespace) -> int:
    """Screen digital twins with a drug (resumable; on local workers or a Dask cluster)."""
    from .report import incidence_table, plot_screen, screen_report
    from .twins import screen

    doses = _number_list(args.doses, "--doses", "0,10,30,100")
    model, twins = _screen_twins(args.twins, args.model, args.twins_per_cell)
    n_cells = twins["cell"].nunique()
    print(f"screening {len(twins)} twins of {n_cells} cell(s) ({model.name}) with {args.drug} at "
          f"{', '.join(f'{d:g}' for d in doses)} {args.unit} into {args.out}")
    result = screen(
        model,
        twins,
        args.drug,
        doses,
        unit=args.unit,
        cycle_length_ms=args.cycle_length_ms,
        settle_ms=args.settle_ms,
        duration_ms=args.duration_ms,
        window_ms=args.window_ms,
        ignore_channels=args.ignore_channel,
        ic50_log10_sd=args.ic50_log10_sd,
        hill_log_sd=args.hill_log_sd,
        seed=args.seed,
        progress=not args.quiet,
        out=args.out,
        workers=args.workers,
        dask_address=args.dask,
        chunk_twins=args.chunk_twins,
    )
    out = Path(args.out)
    tables = {"incidence.csv": incidence_table(result, by_cell=True)}
    if n_cells >= 2:
        tables["incidence_pooled.csv"] = incidence_table(result, by_cell=False)
    for name, table in tables.items():
        atomic_write(out / name, lambda tmp, t=table: t.to_csv(tmp, index=False))
    plot_screen(result, out / "screen.png", event="abnormal")
    screen_report(result, out)
    shown = tables.get("incidence_pooled.csv", tables["incidence.csv"])
    print(shown.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    print(f"wrote {', '.join(['outcomes.csv', *tables, 'screen.png', 'report.html'])} to {out}")
    return 0


def _screen_twins(sources: list[str], model_arg: str | None, per_cell: int | None):
    """The model and the twin table of `sbi-twins screen`'s TWINS (fit directories or CSVs)."""
    from .engine import load_model
    from .twins import make_twins, pool_twins

    if per_cell is not None:
        check_positive("--twins-per-cell", per_cell)
    draws, models, estimators = {}, [], {}
    for source in sources:
        path = Path(source)
        if (path / FIT_RECORD).is_file():
            _, estimator = _fitted_cell(path, estimators)
            models.append(estimator.cell_model())
            table = pd.read_csv(path / "samples.csv")
        elif path.is_file() and path.name.endswith((".csv", ".csv.gz")):
            if model_arg is None:
                raise ValueError(
                    f"{path} is a CSV of parameter draws: give their model with --model "
                    "(e.g. --model kernik2019)"
                )
            table = pd.read_csv(path)
        else:
            what = "does not exist" if not path.exists() else "is neither a fit directory nor a CSV"
            raise ValueError(
                f"{path} {what}: give fit directories (from `sbi-twins fit`) or CSV files of "
                "parameter draws (one column per parameter, one row per twin)"
            )
        if per_cell is not None:  # the first N draws of each cell
            table = table.groupby("cell", sort=False).head(per_cell) if "cell" in table else (
                table.head(per_cell)
            )
        draws[_file_stem(path)] = table
    if model_arg is not None:
        models.append(load_model(model_arg))
    hashes = {m.file_hash for m in models}
    if len(hashes) > 1:
        names = ", ".join(sorted({m.name for m in models}))
        raise ValueError(
            f"the twins belong to different model files ({names}): screen one model at a time"
        )
    if len(draws) < len(sources):
        raise ValueError("two TWINS sources have the same name; rename one of them")
    model = models[0]
    if len(draws) == 1:
        name, table = next(iter(draws.items()))
        return model, make_twins(model, table, cell=None if "cell" in table else name)
    pooled = [name for name, table in draws.items() if "cell" in table]
    if pooled:
        raise ValueError(
            f"{', '.join(pooled)} already hold{'s' if len(pooled) == 1 else ''} several cells (a "
            "'cell' column): screen such a file alone, or drop its 'cell' column"
        )
    return model, pool_twins(model, draws)


def _file_stem(path: Path) -> str:
    """A recording's or draws file's name without its suffixes (``cell1.csv.gz`` -> ``cell1``);
    a fit directory's name as it is.
    """
    return path.name.removesuffix(".gz").rsplit(".", 1)[0] if path.is_file() else path.name


def _number_list(text: str, option: str, example: str) -> list[float]:
    """Comma-separated numbers of a command-line option."""
    try:
        return [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise ValueError(
            f"{option} must be comma-separated numbers, e.g. {example}; got {text!r}"
        ) from None


def _print_summary(summary: pd.DataFrame) -> None:
    """The summary sorted by contraction; with a ``true`` column if there is one."""
    ordered = summary.sort_values("contraction", ascending=False)
    truth = "true" in ordered
    print(
        f"{'parameter':32s} {'mean':>10s} {'sd':>10s} {'94% HDI':>23s} {'contraction':>11s}"
        + (f" {'true':>10s}" if truth else "")
    )
    for name, row in ordered.iterrows():
        print(
            f"{name:32s} {row['mean']:10.4g} {row['sd']:10.3g} "
            f"[{row['hdi_low']:10.4g}, {row['hdi_high']:10.4g}] {row['contraction']:11.2f}"
            + (f" {row['true']:10.4g}{'' if row['in_hdi'] else ' *'}" if truth else "")
        )
    if truth:
        print("(* true value outside the 94% HDI)")
    pinned = (ordered["contraction"] >= 0.5).sum()
    loose = (ordered["contraction"] < 0.1).sum()
    print(
        f"{pinned} parameters pinned down (contraction >= 0.5), {loose} not identified by "
        "this recording (< 0.1)"
    )


def _qc(args: argparse.Namespace) -> int:
    """Quality control of recordings: one line per file, the table of every rule to --out."""
    from .physiology import QCRules, qc
    from .prior import load_prior
    from .protocol import load_protocol
    from .recording import load_recording

    protocol = None if args.protocol is None else load_protocol(args.protocol)
    rules = QCRules() if args.prior is None else QCRules.for_prior(load_prior(args.prior))
    measured = {"cm_pF": args.cm, "rs_MOhm": args.rs, "r_seal_GOhm": args.seal}
    tables, unreadable = [], 0
    for path in args.recordings:
        try:
            recording = load_recording(
                path, sweep=args.sweep, channel=args.channel, signal_unit=args.unit
            )
            table = qc(recording, rules, protocol, measured=measured)
        except (ValueError, OSError) as error:
            print(f"{path}: error: {error}", file=sys.stderr)
            unreadable += 1
            continue
        print(f"{path}: {table.attrs['summary']}")
        tables.append(table.assign(recording=str(path)))
    if args.out and tables:
        table = pd.concat(tables, ignore_index=True)
        table = table[["recording", *table.columns.drop("recording")]]
        table.to_csv(args.out, index=False)
        print(f"wrote {args.out} ({len(tables)} recording(s), one row per rule)")
    if unreadable:
        print(f"{unreadable} of {len(args.recordings)} file(s) could not be read", file=sys.stderr)
        return 2
    return 0


def _protocol(args: argparse.Namespace) -> int:
    """Make protocol files: rebuild one from a recording's command, or export one."""
    from .protocol import load_protocol
    from .recording import load_recording
    from .recording.protocol_io import (
        protocol_from_recording,
        protocol_to_toml,
        write_atf,
        write_command_csv,
    )

    if args.verb == "from-abf":
        recording = load_recording(args.recording, sweep=args.sweep)
        protocol = protocol_from_recording(recording, args.name, tolerance_mV=args.tolerance)
        atomic_write_text(args.out, protocol_to_toml(protocol))
        kinds = [segment.kind for segment in protocol.segments]
        print(
            f"wrote {args.out}: protocol {protocol.name!r}, {protocol.duration_ms:g} ms, "
            f"{kinds.count('step')} steps and {kinds.count('ramp')} ramps (within "
            f"{args.tolerance:g} mV of the recorded command)"
        )
        return 0
    protocol = load_protocol(args.protocol)
    write = write_atf if args.format == "atf" else write_command_csv
    path = write(protocol, args.out, args.sample_interval)
    samples = protocol.times(args.sample_interval).size
    print(
        f"wrote {path}: protocol {protocol.name!r}, {samples} samples every "
        f"{args.sample_interval:g} ms"
    )
    return 0


def _list(args: argparse.Namespace) -> int:
    for kind, suffix in (
        ("simulators", ".mmt"),
        ("protocols", ".toml"),
        ("priors", ".toml"),
        ("drugs", ".toml"),
    ):
        print(f"{kind}: {', '.join(_resources.available(kind, suffix))}")
    return 0


def _add_twins_ap_options(parser: argparse.ArgumentParser) -> None:
    """The options of a cell report's twins' APs (``fit --report`` and ``report cell``)."""
    parser.add_argument(
        "--twins-ap",
        type=int,
        default=None,
        metavar="N",
        help="cell report: simulate N twins (the first posterior draws) beating spontaneously "
        "and show their APs and AP features (CL, APD, MDP, peak); off by default (slower)",
    )
    parser.add_argument(
        "--ap",
        default=None,
        metavar="FILE",
        help="cell report: a current-clamp recording of the cell (.abf, .csv) to overlay on the "
        "twins' APs and compare with their features (twins are simulated even without "
        "--twins-ap)",
    )
    parser.add_argument(
        "--ap-channel", default=None, help="the --ap file's channel or column, if several"
    )
    parser.add_argument("--ap-sweep", type=int, default=0, help="sweep of an --ap .abf file")


def build_parser() -> argparse.ArgumentParser:
    """The ``sbi-twins`` argument parser, one subcommand per verb."""
    parser = argparse.ArgumentParser(
        prog="sbi-twins",
        description="Electrophysiological digital twins of single cells by simulation-based "
        "inference.",
    )
    parser.add_argument(
        "--debug", action="store_true", help="show the traceback of an error, not one line"
    )
    commands = parser.add_subparsers(dest="command", required=True)

    demo = commands.add_parser(
        "demo",
        help="simulate an example cell recorded with the default estimator's protocol, fit it and "
        "compare the posterior and the cell's digital twins with the truth",
    )
    demo.add_argument("--estimator", default="default", help="estimator directory or bundled name")
    demo.add_argument("--seed", type=int, default=0, help="the example cell's seed")
    demo.add_argument("--samples", type=int, default=10_000, help="posterior draws")
    demo.add_argument("--twins", type=int, default=20, help="twins simulated for the figure")
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
    sim.add_argument(
        "--max-draws",
        type=int,
        default=None,
        help="most candidate draws for the -n cells (default 100 x n); after 2,000 draws (or 8 "
        "chunks) a run whose acceptance would need more stops with the draws counted by outcome",
    )
    sim.add_argument("--quiet", action="store_true", help="no progress bar")
    sim.set_defaults(run=_simulate)

    train = commands.add_parser("train", help="train an NPE estimator on a dataset (resumable)")
    train.add_argument("dataset", help="dataset directory from `sbi-twins simulate`")
    train.add_argument("--out", required=True, help="estimator directory")
    train.add_argument(
        "--max-epochs",
        type=int,
        default=200,
        help="epoch cap of each stage; rerun with a higher cap to train a finished run further",
    )
    train.add_argument(
        "--flow-max-epochs",
        type=int,
        default=None,
        help="epoch cap of the flow stage (default: --max-epochs)",
    )
    train.add_argument("--batch-size", type=int, default=256)
    train.add_argument("--seed", type=int, default=0)
    train.add_argument(
        "--lr-schedule",
        default="constant",
        help="learning rate: constant, or cosine decay to 0 over --max-epochs",
    )
    train.add_argument(
        "--ema-decay",
        type=float,
        default=0.999,
        help="decay per step of the moving average of the weights (0: no averaging)",
    )
    train.add_argument(
        "--flows",
        dest="n_flows",
        type=int,
        default=1,
        help="flows in the ensemble (their mixture is the posterior); rerun with more to add",
    )
    train.add_argument("--device", default="cpu", help="cpu or cuda")
    train.add_argument("--quiet", action="store_true", help="no progress bar")
    train.set_defaults(run=_train)

    calibrate = commands.add_parser(
        "calibrate",
        help="temper an estimator's flows so its joint posterior is calibrated on fresh cells",
    )
    calibrate.add_argument("estimator", help="estimator directory or bundled name")
    calibrate.add_argument("--out", required=True, help="estimator file to write (FILE.pt)")
    calibrate.add_argument("--cells", type=int, default=300, help="fresh cells (default 300)")
    calibrate.add_argument("--draws", type=int, default=500, help="draws per cell and trial")
    calibrate.add_argument(
        "--seed", type=int, default=7_000_000, help="the fresh cells' seed (default 7000000)"
    )
    calibrate.add_argument(
        "--reference-cells",
        type=int,
        default=1000,
        help="fresh cells of the misspecification reference, if the bundle has none",
    )
    calibrate.add_argument("--quiet", action="store_true", help="no progress bar")
    calibrate.set_defaults(run=_calibrate)

    fit = commands.add_parser("fit", help="posterior of recorded cells")
    fit.add_argument(
        "recording",
        nargs="+",
        help=".abf or .csv/.csv.gz recording (units from the file), or a .npy trace in pA/pF "
        "on the protocol's grid; with several, each is fitted into --out/<its name>",
    )
    fit.add_argument("--estimator", required=True, help="estimator directory or bundled name")
    fit.add_argument(
        "--out", required=True, help="output directory (with several recordings: their parent)"
    )
    fit.add_argument("--samples", type=int, default=10_000, help="posterior draws")
    fit.add_argument("--seed", type=int, default=0)
    fit.add_argument(
        "--sample-interval",
        type=float,
        default=None,
        help="ms between the trace's samples, if not the estimator's or the file's",
    )
    fit.add_argument("--sweep", type=int, default=0, help="sweep of an .abf file (default 0)")
    fit.add_argument("--unit", default=None, help="the signal's unit, if the file's is wrong")
    fit.add_argument("--cm", type=float, default=None, help="membrane capacitance (pF)")
    fit.add_argument(
        "--no-command-check",
        action="store_true",
        help="do not refuse a recording whose command differs from the estimator's protocol",
    )
    fit.add_argument(
        "--no-plausibility-check",
        action="store_true",
        help="fit a recording even if it is flat, looks like a unit or sign mistake",
    )
    fit.add_argument("--report", action="store_true", help="also write report.html")
    _add_twins_ap_options(fit)
    fit.set_defaults(run=_fit)

    report = commands.add_parser("report", help="self-contained HTML report")
    report.add_argument("what", choices=("estimator", "cell"), help="what to report on")
    report.add_argument("target", help="estimator (name or directory), or a fit directory")
    report.add_argument("--out", required=True, help="output directory")
    report.add_argument("--cells", type=int, default=500, help="estimator: fresh cells")
    report.add_argument("--draws", type=int, default=1000, help="estimator: draws per cell")
    report.add_argument("--seed", type=int, default=20_261_204, help="estimator: cells' seed")
    _add_twins_ap_options(report)
    report.set_defaults(run=_report)

    quality = commands.add_parser(
        "qc",
        help="quality control of recordings: seal, Cm, Rs, holding current, noise, drift "
        "(voltage clamp); beats, rhythm, alternans, MDP, peak (current clamp)",
    )
    quality.add_argument("recordings", nargs="+", metavar="FILE", help=".abf or .csv/.csv.gz files")
    quality.add_argument("--out", default=None, help="write every rule of every file to this CSV")
    quality.add_argument(
        "--protocol", default=None, help="the voltage-clamp protocol (name or .toml), if known"
    )
    quality.add_argument(
        "--prior",
        default=None,
        help="take the series-resistance limit from this prior's recording model (e.g. "
        "kernik2019_real_rs0: 70 MOhm); default 40 MOhm",
    )
    quality.add_argument("--cm", type=float, default=None, help="membrane capacitance (pF)")
    quality.add_argument("--rs", type=float, default=None, help="series resistance (MOhm)")
    quality.add_argument("--seal", type=float, default=None, help="seal resistance (GOhm)")
    quality.add_argument("--sweep", type=int, default=0, help="sweep of .abf files (default 0)")
    quality.add_argument(
        "--channel", default=None, help="the channel or column to read, when several could be it"
    )
    quality.add_argument("--unit", default=None, help="the signal's unit, if the file's is wrong")
    quality.set_defaults(run=_qc)

    protocols = commands.add_parser(
        "protocol", help="protocol files: rebuild one from a recording, export one for an amplifier"
    )
    verbs = protocols.add_subparsers(dest="verb", required=True)
    rebuild = verbs.add_parser(
        "from-abf",
        help="rebuild the steps and ramps of a voltage-clamp recording's command as a .toml "
        "protocol (ABF or CSV with a command column)",
    )
    rebuild.add_argument("recording", metavar="FILE", help=".abf or .csv/.csv.gz recording")
    rebuild.add_argument("--name", required=True, help="name of the protocol")
    rebuild.add_argument("--out", required=True, help="the .toml file to write")
    rebuild.add_argument("--sweep", type=int, default=0, help="sweep of an .abf file (default 0)")
    rebuild.add_argument(
        "--tolerance",
        type=float,
        default=0.1,
        help="largest difference from the recorded command, mV (default 0.1)",
    )
    rebuild.set_defaults(run=_protocol)
    export = verbs.add_parser(
        "export", help="sample a protocol for an amplifier: ATF stimulus file or CSV"
    )
    export.add_argument("protocol", metavar="NAME_OR_TOML", help="bundled name or .toml file")
    export.add_argument("--format", required=True, choices=("atf", "csv"), help="file format")
    export.add_argument("--sample-interval", type=float, required=True, help="ms between samples")
    export.add_argument("--out", required=True, help="the file to write")
    export.set_defaults(run=_protocol)

    screening = commands.add_parser(
        "screen",
        help="screen digital twins with a drug: EADs per twin and dose, and their incidence "
        "(resumable; local workers or a Dask cluster)",
    )
    screening.add_argument(
        "twins",
        nargs="+",
        help="fit directories (from `sbi-twins fit`: their posterior draws are the twins), or "
        "CSV files of parameter draws (one column per parameter; give --model); several are "
        "pooled, one cell each",
    )
    screening.add_argument(
        "--drug", required=True, help="bundled drug (`sbi-twins list`) or a drug .toml file"
    )
    screening.add_argument(
        "--doses", required=True, help="comma-separated concentrations, e.g. 0,10,30,100 (0 is "
        "the control)",
    )
    screening.add_argument("--unit", default="nM", choices=("nM", "uM"), help="of --doses")
    screening.add_argument("--out", required=True, help="output directory (a rerun resumes)")
    screening.add_argument(
        "--model", default=None, help="model of CSV twins (fit directories know theirs)"
    )
    screening.add_argument(
        "--twins-per-cell", type=int, default=None, metavar="N",
        help="the first N draws of each source (default: all)",
    )
    screening.add_argument(
        "--cycle-length-ms", type=float, default=None,
        help="pace at this cycle length (default: spontaneous activity)",
    )
    screening.add_argument("--settle-ms", type=float, default=10_000.0,
                           help="drug-free settling (default 10000)")
    screening.add_argument("--duration-ms", type=float, default=20_000.0,
                           help="simulation at each dose (default 20000)")
    screening.add_argument("--window-ms", type=float, default=10_000.0,
                           help="its judged final part (default 10000)")
    screening.add_argument(
        "--ignore-channel", action="append", default=[], metavar="CHANNEL",
        help="a channel of the drug to leave out (e.g. INaL for a model without it); repeatable",
    )
    screening.add_argument("--ic50-log10-sd", type=float, default=0.0,
                           help="per-twin spread of log10 IC50 (default 0)")
    screening.add_argument("--hill-log-sd", type=float, default=0.0,
                           help="per-twin spread of log Hill coefficients (default 0)")
    screening.add_argument("--seed", type=int, default=0, help="seed of the potency spread")
    screening.add_argument("--workers", type=int, default=1, help="local worker processes")
    screening.add_argument("--dask", default=None, metavar="ADDRESS",
                           help="run on this Dask scheduler instead")
    screening.add_argument("--chunk-twins", type=int, default=None,
                           help="twins per chunk of work (default 256, or the --out screen's)")
    screening.add_argument("--quiet", action="store_true", help="no progress bars")
    screening.set_defaults(run=_screen)

    listing = commands.add_parser(
        "list", help="list the bundled models, protocols, priors and drugs"
    )
    listing.set_defaults(run=_list)
    return parser


def _one_line_warning(command: str):
    """Warnings as ``sbi-twins <command>: warning: <message>`` on stderr (not file:line)."""

    def show(message, category, filename, lineno, file=None, line=None) -> None:
        print(f"sbi-twins {command}: warning: {message}", file=file or sys.stderr)

    return show


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``sbi-twins`` console script.

    Every error ends in one line on stderr and exit status 2 (1 for an error that is a bug of
    ours, with a request to report it); ``--debug`` shows the traceback instead.
    """
    args = build_parser().parse_args(argv)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("default")  # each warning once per command, fresh
            warnings.showwarning = _one_line_warning(args.command)
            return args.run(args)
    except KeyboardInterrupt:
        resumable = args.command in ("simulate", "train", "screen")
        hint = ": rerun the same command to continue where it stopped" if resumable else ""
        print(f"sbi-twins {args.command}: interrupted{hint}", file=sys.stderr)
        return 130
    except Exception as error:
        if args.debug:
            raise
        expected = isinstance(error, (ValueError, OSError))
        message = str(error).strip() or type(error).__name__
        if not expected:
            message = (
                f"{type(error).__name__}: {message} (unexpected: please report it with the "
                "output of --debug)"
            )
        print(f"sbi-twins {args.command}: error: {message}", file=sys.stderr)
        return 2 if expected else 1


if __name__ == "__main__":
    sys.exit(main())
