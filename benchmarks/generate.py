"""Throughput of training-set generation (``sbi_twins.data``) on this machine.

For the default set-up (kernik2019 + kernik2019_pm40 with its recording model, clark2022 at
0.1 ms, observation scheme, float32 storage) it measures, with the viability filter on and off:
accepted cells per second, the acceptance rate, peak resident memory (main process and the
largest worker), bytes per accepted cell on disk, and the hours that rate implies for 200,000 and
1,100,000 accepted cells.

Rates are *marginal*: each configuration is generated twice into fresh directories, once with a
single chunk per worker (start-up: spawning workers, loading the compiled kernels) and once at
full size; the rate is the difference in cells over the difference in time, so the fixed start-up
cost does not flatter or penalise the extrapolation. Start-up time is reported separately.

Usage::

    python benchmarks/generate.py              # full run (~10 min on 2 vCPUs)
    python benchmarks/generate.py --quick      # smoke run
    python benchmarks/generate.py --workers 2 --off 2048 --on 1024
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import resource
import subprocess
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
DEFAULT_OUT = HERE / "results" / "generate.json"
TARGETS = {"filter off": 3600.0, "filter on": 3 * 3600.0}  # seconds for 200,000 cells


def _dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _timed(out: Path, n: int, spec, workers: int) -> tuple[float, object]:
    from sbi_twins.data import simulate_dataset

    start = time.perf_counter()
    dataset = simulate_dataset(out, n, spec, workers=workers, progress=False)
    return time.perf_counter() - start, dataset


def measure(label: str, n: int, spec, workers: int, scratch: Path) -> dict:
    """Generate ``n`` accepted cells (and a start-up-sized run) and derive the rates."""
    small_n = max(1, int(spec.chunk_size * workers * (0.3 if spec.viability else 1.0)))
    t_small, _ = _timed(scratch / f"{label}-small", small_n, spec, workers)
    t_full, dataset = _timed(scratch / f"{label}-full", n, spec, workers)
    marginal = (len(dataset) - small_n) / max(t_full - t_small, 1e-9)
    size = _dir_bytes(dataset.directory)
    row = {
        "config": label,
        "cells": len(dataset),
        "draws": len(dataset.candidates),
        "acceptance": dataset.acceptance_rate,
        "wall_s": t_full,
        "startup_s": t_small - small_n / marginal,
        "cells_per_s": marginal,
        "bytes_per_cell": size / len(dataset),
        "hours_200k": 200_000 / marginal / 3600,
        "hours_1100k": 1_100_000 / marginal / 3600,
    }
    row["meets_target"] = row["hours_200k"] * 3600 <= TARGETS[label]
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes (smoke run)")
    parser.add_argument("--off", type=int, default=2048, help="cells with the filter off")
    parser.add_argument("--on", type=int, default=768, help="accepted cells with the filter on")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--chunk-size", type=int, default=128)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args()
    if args.quick:
        args.off, args.on, args.chunk_size = 96, 48, 16

    from sbi_twins import __version__
    from sbi_twins.data import DatasetSpec
    from sbi_twins.physiology.viability import ViabilityRules

    rows = []
    with tempfile.TemporaryDirectory(prefix="sbi-twins-generate-") as scratch:
        for label, n, rules in (
            ("filter off", args.off, None),
            ("filter on", args.on, ViabilityRules()),
        ):
            spec = DatasetSpec(chunk_size=args.chunk_size, seed=2026, viability=rules)
            rows.append(measure(label, n, spec, args.workers, Path(scratch)))
            print(f"{label}: done", flush=True)

    peak = {
        "main_MB": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "largest_worker_MB": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,
    }
    header = (
        "| config | cells | acceptance | cells/s | start-up s | bytes/cell | h for 200k "
        "| h for 1.1M | target met |"
    )
    print("\n" + header + "\n|" + "---|" * 9)
    for r in rows:
        print(
            f"| {r['config']} | {r['cells']} | {r['acceptance']:.1%} | {r['cells_per_s']:.1f} | "
            f"{r['startup_s']:.1f} | {r['bytes_per_cell']:.0f} | {r['hours_200k']:.2f} | "
            f"{r['hours_1100k']:.2f} | {'yes' if r['meets_target'] else 'NO'} |"
        )
    print(
        f"\npeak RSS: main {peak['main_MB']:.0f} MB, "
        f"largest worker {peak['largest_worker_MB']:.0f} MB"
    )
    commit = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=HERE, capture_output=True, text=True, check=False
    ).stdout.strip()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {
                "date": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
                "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
                "sbi_twins": __version__,
                "commit": commit,
                "workers": args.workers,
                "chunk_size": args.chunk_size,
                "rows": rows,
                "peak_rss": peak,
            },
            indent=1,
        )
    )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
