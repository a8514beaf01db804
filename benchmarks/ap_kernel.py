"""Current clamp: the lane-blocked kernel against the per-cell kernel (issue 19, point 5).

On N draws of the ``kernik2019_pm40`` prior (seed), spontaneous activity for 20 s with V every
0.5 ms (a dose simulation of the drug screen), one run measures:

1. **Speed**: ``simulate_ap`` with ``lane_blocks=True`` (the default: cells in blocks of
   ``LANES`` advanced by one vectorised loop) and ``lane_blocks=False`` (one cell at a time),
   timed alternately in this process at 1 and at 2 Numba threads; CPU seconds
   (``time.process_time``: all threads) and wall seconds, median of the repeats. A short run
   first compiles both kernels (not timed).
2. **Agreement** of the two kernels: max|ΔV| per cell, and the differences of the features of
   ``sbi_twins.ap_features`` (beats, CL, APD90).
3. **Lane divergence**: the lanes of a block take their own steps, so a block runs until its
   slowest lane is done. 16 of the draws are simulated twice with the lane kernel, as 16 blocks
   that each hold all 16 cells (divergent) and as 16 blocks of one cell repeated (no divergence);
   the same cells, so the same work for the per-cell kernel. The CPU ratio is the cost of
   divergence.
4. **Screen projection**: the CPU seconds of the last drug-screen benchmark
   (``benchmarks/results/screen.json``: settling, dose simulations and the rest of
   ``st.screen``) with its simulations divided by the speed-up measured here at 1 thread,
   scaled to 10,000 twins × 6 doses and divided by 2 cores. A projection, labelled as such.

Usage::

    python benchmarks/ap_kernel.py             # 256 draws, 3 repeats (~4 min on 2 vCPUs)
    python benchmarks/ap_kernel.py --quick     # 64 draws, 1 repeat
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numba
import numpy as np

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))
import _common  # noqa: E402
from _common import finite_or_none as _f  # noqa: E402

DEFAULT_OUT = HERE / "results" / "ap_kernel.json"
SCREEN_RESULTS = HERE / "results" / "screen.json"
PRIOR = "kernik2019_pm40"
DURATION_MS = 20_000.0
SAMPLE_MS = 0.5
DIVERGENCE_CELLS = 16
TARGET_TWINS, TARGET_DOSES, TARGET_MIN = 10_000, 6, 15.0


def _timed(run, threads: int) -> tuple[float, float, np.ndarray]:
    """``(cpu_s, wall_s, V)`` of ``run()`` at ``threads`` Numba threads."""
    numba.set_num_threads(threads)
    cpu, wall = time.process_time(), time.perf_counter()
    voltage = run()
    return time.process_time() - cpu, time.perf_counter() - wall, voltage


def main(argv=None) -> int:
    from sbi_twins import load_model, load_prior
    from sbi_twins.physiology import ap_features

    args, n_cells, repeats = _common.parse_args(
        __doc__,
        argv,
        size=("draws", "prior draws", 64, 256),
        repeats=(1, 3),
        quick_help="64 draws, 1 repeat",
        seed_help="seed of the prior draws",
        default_out=DEFAULT_OUT,
    )
    log = _common.Log()
    model = load_model("kernik2019")
    theta = load_prior(PRIOR).sample(n_cells, seed=args.seed)
    threads = [t for t in (1, 2) if t <= numba.config.NUMBA_NUM_THREADS]

    def simulate(params, lanes: bool, duration_ms: float = DURATION_MS) -> np.ndarray:
        return model.simulate_ap(params, duration_ms, SAMPLE_MS, lane_blocks=lanes)

    log("compiling (or loading) both kernels ...")
    for lanes in (True, False):
        simulate(theta.iloc[:1], lanes, 10.0)

    times: dict[str, dict[int, list[tuple[float, float]]]] = {
        k: {t: [] for t in threads} for k in ("lanes", "cell")
    }
    traces: dict[str, np.ndarray] = {}
    for rep in range(repeats):
        for t in threads:
            for key, lanes in (("cell", False), ("lanes", True)):
                cpu, wall, traces[key] = _timed(lambda lanes=lanes: simulate(theta, lanes), t)
                times[key][t].append((cpu, wall))
                log(f"repeat {rep + 1}/{repeats}, {t} thread(s), {key}: {cpu:.1f} CPU s")

    def median(key: str, t: int, which: int) -> float:
        return _common.median([x[which] for x in times[key][t]])

    speed = {
        t: {
            "cell_cpu_s": median("cell", t, 0),
            "lanes_cpu_s": median("lanes", t, 0),
            "cell_wall_s": median("cell", t, 1),
            "lanes_wall_s": median("lanes", t, 1),
        }
        for t in threads
    }
    for s in speed.values():
        s["speedup_cpu"] = s["cell_cpu_s"] / s["lanes_cpu_s"]
        s["speedup_wall"] = s["cell_wall_s"] / s["lanes_wall_s"]
        s["lanes_cpu_ms_per_cell_10s"] = s["lanes_cpu_s"] / n_cells * 1e3 * 10_000 / DURATION_MS
        s["cell_cpu_ms_per_cell_10s"] = s["cell_cpu_s"] / n_cells * 1e3 * 10_000 / DURATION_MS

    lanes_v, cell_v = traces["lanes"], traces["cell"]
    both = np.isfinite(lanes_v).all(axis=1) & np.isfinite(cell_v).all(axis=1)
    dv = np.abs(lanes_v[both] - cell_v[both]).max(axis=1)
    f_lanes, f_cell = ap_features(lanes_v, SAMPLE_MS), ap_features(cell_v, SAMPLE_MS)
    agreement = {
        "cells": n_cells,
        "failed_lanes": int((~np.isfinite(lanes_v).all(axis=1)).sum()),
        "failed_cell": int((~np.isfinite(cell_v).all(axis=1)).sum()),
        "same_failures": bool(
            np.array_equal(np.isfinite(lanes_v).all(axis=1), np.isfinite(cell_v).all(axis=1))
        ),
        "max_abs_dV_mV": _f(dv.max()),
        "median_max_abs_dV_mV": _f(np.median(dv)),
        "cells_dV_above_1e-6_mV": int((dv > 1e-6).sum()),
        "same_beat_count": int((f_lanes["n_beats"] == f_cell["n_beats"]).sum()),
    }
    for col in ("CL", "APD90"):
        diff = np.abs(f_lanes[col] - f_cell[col]).to_numpy()
        agreement[f"max_abs_d{col}_ms"] = _f(np.nanmax(diff)) if np.isfinite(diff).any() else None
    log(f"agreement: {agreement}")

    numba.set_num_threads(1)
    sub = theta.iloc[:DIVERGENCE_CELLS]
    mixed = sub.iloc[np.tile(np.arange(DIVERGENCE_CELLS), 16)]
    uniform = sub.iloc[np.repeat(np.arange(DIVERGENCE_CELLS), 16)]
    mixed_cpu, uniform_cpu = [], []
    for _ in range(repeats):
        mixed_cpu.append(_timed(lambda: simulate(mixed, True), 1)[0])
        uniform_cpu.append(_timed(lambda: simulate(uniform, True), 1)[0])
    divergence = {
        "cells": DIVERGENCE_CELLS,
        "mixed_blocks_cpu_s": _common.median(mixed_cpu),
        "uniform_blocks_cpu_s": _common.median(uniform_cpu),
    }
    divergence["cost"] = divergence["mixed_blocks_cpu_s"] / divergence["uniform_blocks_cpu_s"]
    log(f"divergence: {divergence}")

    res = {
        "config": {
            "model": "kernik2019",
            "prior": PRIOR,
            "draws": n_cells,
            "seed": args.seed,
            "duration_ms": DURATION_MS,
            "sample_interval_ms": SAMPLE_MS,
            "repeats": repeats,
            "lanes": int(model.kernels.LANES),
        },
        "machine": _common.machine_info(
            libraries=[_common.numba_info],
            avx512f=True,
            watched_paths=["sbi_twins", "simulators"],
        ),
        "speed": {str(t): s for t, s in speed.items()},
        "agreement": agreement,
        "divergence": divergence,
        "projection_10k": _projection(speed[1]["speedup_cpu"]),
    }
    _common.write_results(res, _markdown, args.out, log.elapsed())
    return 0


def _projection(speedup: float) -> dict | None:
    """The 10,000 × 6 screen on 2 cores from the last screen benchmark and ``speedup``."""
    if not SCREEN_RESULTS.exists():
        return None
    screen = json.loads(SCREEN_RESULTS.read_text())
    parts = screen["ours"]["parts"]
    simulations = parts["settle"]["cpu_s"] + parts["doses"]["cpu_s"]
    scale = TARGET_TWINS / screen["config"]["twins"]
    before = (simulations + parts["rest"]["cpu_s"]) * scale / 2 / 60
    after = (simulations / speedup + parts["rest"]["cpu_s"]) * scale / 2 / 60
    return {
        "measured": False,
        "from": f"{SCREEN_RESULTS.name} of {screen['machine']['date']}",
        "screen_twins": screen["config"]["twins"],
        "cpu_2cores_min_per_cell_kernel": before,
        "cpu_2cores_min_lanes": after,
        "target_min": TARGET_MIN,
    }


def _markdown(res: dict) -> str:
    c, a, d = res["config"], res["agreement"], res["divergence"]
    lines = [
        f"{c['draws']} draws of `{c['prior']}` (seed {c['seed']}), {c['duration_ms'] / 1000:g} s "
        f"spontaneous, V every {c['sample_interval_ms']} ms, median of {c['repeats']} "
        "alternating repeats",
        "",
        "| Numba threads | per-cell kernel CPU s (wall s) | lane kernel CPU s (wall s) | "
        "speed-up CPU (wall) | lane kernel CPU ms per cell per 10 s |",
        "|---|---|---|---|---|",
    ]
    for t, s in res["speed"].items():
        lines.append(
            f"| {t} | {s['cell_cpu_s']:.1f} ({s['cell_wall_s']:.1f}) | "
            f"{s['lanes_cpu_s']:.1f} ({s['lanes_wall_s']:.1f}) | "
            f"**{s['speedup_cpu']:.2f}×** ({s['speedup_wall']:.2f}×) | "
            f"{s['lanes_cpu_ms_per_cell_10s']:.1f} |"
        )
    lines += [
        "",
        f"- Lane kernel vs per-cell kernel on all {a['cells']} cells: max|ΔV| "
        f"{a['max_abs_dV_mV']:.2g} mV (median over cells {a['median_max_abs_dV_mV']:.2g}; "
        f"{a['cells_dV_above_1e-6_mV']} cells above 1e-6 mV), "
        f"same beat count in {a['same_beat_count']}/{a['cells']}, max|ΔCL| "
        f"{a['max_abs_dCL_ms']:.2g} ms, max|ΔAPD90| {a['max_abs_dAPD90_ms']:.2g} ms; failed "
        f"cells {a['failed_lanes']} (lanes) and {a['failed_cell']} (per cell).",
        f"- Lane divergence ({d['cells']} cells, 1 thread): blocks of all {d['cells']} cells "
        f"{d['mixed_blocks_cpu_s']:.2f} CPU s, blocks of one cell repeated "
        f"{d['uniform_blocks_cpu_s']:.2f} CPU s: divergence costs ×{d['cost']:.2f}.",
    ]
    p = res["projection_10k"]
    if p is not None:
        lines.append(
            f"- 10,000 twins × 6 doses on 2 cores, **projected** from {p['from']} "
            f"({p['screen_twins']} twins) with this speed-up at 1 thread: "
            f"{p['cpu_2cores_min_per_cell_kernel']:.1f} min → "
            f"**{p['cpu_2cores_min_lanes']:.1f} min** (target {p['target_min']:g} min; CPU "
            "seconds divided by 2 cores, a lower bound)."
        )
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
