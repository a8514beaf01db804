"""Helpers shared by the benchmark scripts: options, logging, machine info and the report file.

The scripts run as ``python benchmarks/<name>.py``; each puts this folder first on ``sys.path``
and imports this module as ``_common``.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import math
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parent


# -------------------------------------------------------------------------------------------
# Options and logging
# -------------------------------------------------------------------------------------------
def parse_args(
    doc: str,
    argv: Sequence[str] | None,
    *,
    size: tuple[str, str, int, int],
    repeats: tuple[int, int],
    quick_help: str,
    seed_help: str,
    default_out: Path,
    extra: Callable[[argparse.ArgumentParser], None] | None = None,
) -> tuple[argparse.Namespace, int, int]:
    """Parse the options every benchmark has; returns ``(args, size, repeats)`` resolved.

    ``size`` is ``(flag, what, quick, full)``, e.g. ``("cells", "cells", 4, 32)`` for
    ``--cells``; ``repeats`` is ``(quick, full)``. ``extra`` adds options after ``--quick``.
    """
    flag, what, size_quick, size_full = size
    ap = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    ap.add_argument(f"--{flag}", type=int, default=None, help=f"{what} (default {size_full})")
    ap.add_argument(
        "--repeats", type=int, default=None, help=f"timing repeats (default {repeats[1]})"
    )
    ap.add_argument("--quick", action="store_true", help=quick_help)
    if extra is not None:
        extra(ap)
    ap.add_argument("--seed", type=int, default=0, help=seed_help)
    ap.add_argument("--out", type=Path, default=default_out, help=f"JSON (default {default_out})")
    args = ap.parse_args(argv)
    n = getattr(args, flag) or (size_quick if args.quick else size_full)
    n_repeats = args.repeats or (repeats[0] if args.quick else repeats[1])
    if n < 1 or n_repeats < 1:
        ap.error(f"--{flag} and --repeats must be >= 1")
    return args, n, n_repeats


class Log:
    """Stderr logger that prefixes each message with the seconds since it was created."""

    def __init__(self) -> None:
        self.t_start = time.perf_counter()

    def elapsed(self) -> float:
        """Seconds since the logger was created."""
        return time.perf_counter() - self.t_start

    def __call__(self, msg: str) -> None:
        print(f"[{self.elapsed():6.1f} s] {msg}", file=sys.stderr, flush=True)


# -------------------------------------------------------------------------------------------
# Numbers
# -------------------------------------------------------------------------------------------
def finite_or_none(x) -> float | None:
    """``float(x)``, or None if that is not finite (JSON has no NaN)."""
    x = float(x)
    return x if math.isfinite(x) else None


def median(xs) -> float:
    """Median of a sequence of numbers, as a float."""
    return float(np.median(np.asarray(xs, float)))


# -------------------------------------------------------------------------------------------
# Machine and library info
# -------------------------------------------------------------------------------------------
def cpu_model_and_flags() -> tuple[str, str]:
    """Model name and flags of the first CPU in /proc/cpuinfo ("unknown", "" if unreadable)."""
    cpu = "unknown"
    flags = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and cpu == "unknown":
                cpu = line.split(":", 1)[1].strip()
            if line.startswith("flags") and not flags:
                flags = line.split(":", 1)[1]
    except OSError:
        pass
    return cpu, flags


def git(*args: str) -> str | None:
    """Stripped stdout of ``git *args`` run in the repository, or None if it fails."""
    try:
        return subprocess.run(
            ["git", *args], cwd=REPO, capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def numba_info() -> dict:
    """Numba version and thread limit."""
    import numba

    return {"numba": numba.__version__, "numba_max_threads": numba.config.NUMBA_NUM_THREADS}


def myokit_info() -> dict:
    """Myokit version and the SUNDIALS version it uses (None if unknown)."""
    import myokit

    try:
        sundials = myokit.Sundials.version()
    except Exception:
        sundials = None
    return {"myokit": myokit.__version__, "sundials": sundials}


def machine_info(
    *,
    libraries: Sequence[Callable[[], dict]] = (),
    avx512f: bool = False,
    watched_paths: Sequence[str] = (),
) -> dict:
    """Date, CPU, Python/numpy, ``libraries`` info, git commit and (if ``watched_paths``) whether
    those paths have uncommitted changes; with ``avx512f`` also whether the CPU has AVX-512F.
    """
    cpu, flags = cpu_model_and_flags()
    info = {
        "date": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "cpu_model": cpu,
    }
    if avx512f:
        info["avx512f"] = " avx512f " in f" {flags} "
    info.update(
        {
            "logical_cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "numpy": np.__version__,
        }
    )
    for library in libraries:
        info.update(library())
    info["git_commit"] = git("rev-parse", "HEAD")
    if watched_paths:
        status = git("status", "--porcelain", "--", *watched_paths)
        info["sbi_twins_or_models_modified"] = bool(status) if status is not None else None
    return info


# -------------------------------------------------------------------------------------------
# Report
# -------------------------------------------------------------------------------------------
def write_results(res: dict, markdown: Callable[[dict], str], out: Path, wall_s: float) -> None:
    """Add the wall time and markdown report to ``res``, write it as JSON and print the report."""
    res["wall_s"] = wall_s
    text = markdown(res)
    res["markdown"] = text
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=1) + "\n")
    print(text)
    print(f"\nwrote {out}")
