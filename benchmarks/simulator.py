"""Speed and accuracy of the sbi-twins simulator against Myokit + CVODE (Kernik 2019).

One run measures, side by side under the same machine load:

1. Voltage clamp, protocol ``clark2022``, total ionic current every 0.1 ms (114,552 samples):
   ours (1 Numba thread, and 2 threads) vs ``myokit.Simulation`` at default tolerances with V
   clamped to the same command, both checked against a tight-tolerance CVODE reference.
2. Spontaneous activity, 10 s, V every 0.5 ms: same comparison, errors through AP features.
3. Compile times of our kernels in fresh subprocesses: cold (empty kernel cache) and warm.

Only the public API of ``sbi_twins`` is used (``load_model``, ``load_protocol``,
``CellModel.simulate_vc`` / ``simulate_ap``), so the script keeps working as the kernels change.

Usage::

    python benchmarks/simulator.py              # full run (32 cells, ~3-5 min on 2 vCPUs)
    python benchmarks/simulator.py --quick      # smoke run with tiny sizes
    python benchmarks/simulator.py --cells 64 --repeats 5 --out /tmp/sim.json

Timing rules: per-core figures come from 1-thread runs (``numba.set_num_threads(1)``; Myokit is
single-threaded). Our batch and Myokit's cell loop are timed alternately in each repeat, and the
median over repeats is reported, because the machine is shared and timings are noisy.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))
import _common  # noqa: E402
from _common import finite_or_none as _f  # noqa: E402
from _common import median as _median  # noqa: E402

REPO = _common.REPO
MODEL_FILE = REPO / "simulators" / "kernik2019.mmt"
PARAMS_CSV = HERE / "kernik2019_in52_default.csv"
DEFAULT_OUT = HERE / "results" / "simulator.json"

VC_PROTOCOL = "clark2022"
VC_SAMPLE_MS = 0.1
AP_SAMPLE_MS = 0.5
AP_DURATION_MS = 10_000.0
PERTURBATION = 0.4  # parameters drawn uniformly in baseline * [1 - 0.4, 1 + 0.4]

TIGHT = dict(abs_tol=1e-10, rel_tol=1e-8, max_step_ms=0.5)
TIGHTER = dict(abs_tol=1e-12, rel_tol=1e-10, max_step_ms=0.1)  # self-check of the reference
# Right-continuity tolerance for the clamp command, as in sbi_twins.Protocol.voltage.
EDGE_TOL_MS = 1e-9

# Acceptance bands (shared/reference/kernik2019/SPEC.md §12).
VC_BAND = dict(max_abs=0.25, rms=0.005)
AP_BAND = dict(CL=1.0, APD90=1.0, first_upstroke_ms=0.5, MDP=0.5, peak=0.5)
AP_COMPARED = ("first_upstroke_ms", "CL", "APD90", "MDP", "peak")
AP_UNITS = dict(first_upstroke_ms="ms", CL="ms", APD90="ms", APD50="ms", MDP="mV", peak="mV")


# -------------------------------------------------------------------------------------------
# Inputs
# -------------------------------------------------------------------------------------------
def draw_parameters(n_cells: int, seed: int) -> pd.DataFrame:
    """``n_cells`` random parameter sets: each of the 52 ``in_52_default`` parameters scaled by
    an independent U(0.6, 1.4) factor. Row 0 is the baseline (all factors 1).
    """
    table = pd.read_csv(PARAMS_CSV)
    base = table["baseline_value"].to_numpy(float)
    rng = np.random.default_rng(seed)
    factors = rng.uniform(1 - PERTURBATION, 1 + PERTURBATION, size=(n_cells, base.size))
    factors[0] = 1.0
    return pd.DataFrame(base * factors, columns=table["model_name"].tolist())


def clamp_expression(protocol, time_var: str = "engine.time") -> str:
    """Myokit ``piecewise`` expression of the protocol's command voltage.

    Segment k is active on ``[start_k, end_k)``; each edge is moved ``EDGE_TOL_MS`` earlier so a
    sample time that is a round-off hair below an edge already sees the new segment, as
    ``Protocol.voltage`` does. After the last segment the command stays at its end value.
    """
    edges = [float(x) for x in protocol.edges_ms]
    parts = []
    for seg, t0, t1 in zip(protocol.segments, edges[:-1], edges[1:], strict=True):
        local = f"({time_var} - {t0!r})"
        if seg.kind == "step":
            value = f"{seg.v_start_mV!r}"
        elif seg.kind == "ramp":
            slope = (seg.v_end_mV - seg.v_start_mV) / seg.duration_ms
            value = f"({seg.v_start_mV!r} + {slope!r} * {local})"
        else:  # sine
            w = 2 * math.pi * seg.frequency_hz / 1000.0
            value = (
                f"({seg.v_start_mV!r} + {seg.amplitude_mV!r} * "
                f"sin({w!r} * {local} + {seg.phase_rad!r}))"
            )
        parts.append(f"{time_var} < {t1 - EDGE_TOL_MS!r}, {value}")
    last = protocol.segments[-1]
    end_value = float(last.voltage_at(np.array(last.duration_ms)))
    return "piecewise(" + ", ".join(parts) + f", {end_value!r})"


# -------------------------------------------------------------------------------------------
# Myokit side
# -------------------------------------------------------------------------------------------
def myokit_simulation(protocol=None, tolerances: dict | None = None):
    """Compile a Myokit simulation of the model file; clamped to ``protocol`` if given.

    Returns ``(simulation, compile_seconds)``.
    """
    import myokit

    model = myokit.load_model(str(MODEL_FILE))
    if protocol is not None:
        v = model.get("membrane.V")
        v.demote()
        v.set_rhs(clamp_expression(protocol))
    t0 = time.perf_counter()
    sim = myokit.Simulation(model)
    compile_s = time.perf_counter() - t0
    if tolerances is not None:
        sim.set_tolerance(tolerances["abs_tol"], tolerances["rel_tol"])
        sim.set_max_step_size(tolerances["max_step_ms"])
    return sim, compile_s


def myokit_run(
    sim, params: pd.DataFrame, duration_ms: float, interval_ms: float, var: str, log=True
):
    """Run each cell (set constants, reset, run). Returns ``(traces, seconds_per_cell)``.

    Myokit logs the half-open interval ``[0, tmax)`` at ``t = k * interval`` (computed as
    ``tmin + k * interval``, the same doubles as ``np.arange(n) * interval``), so running to
    ``duration + interval / 2`` gives the end point too, like our output. Only ``sim.run`` is
    timed; converting the log to numpy is not.
    """
    import myokit

    n_samples = int(round(duration_ms / interval_ms)) + 1
    out = np.full((len(params), n_samples if log else 0), np.nan)
    seconds = np.full(len(params), np.nan)
    names = list(params.columns)
    values = params.to_numpy(float)
    for i in range(len(params)):
        for name, value in zip(names, values[i], strict=True):
            sim.set_constant(name, float(value))
        sim.reset()
        try:
            t0 = time.perf_counter()
            if log:
                d = sim.run(duration_ms + interval_ms / 2, log=[var], log_interval=interval_ms)
            else:
                d = sim.run(duration_ms + interval_ms / 2, log=myokit.LOG_NONE)
            seconds[i] = time.perf_counter() - t0
        except (myokit.SimulationError, ArithmeticError) as e:  # a draw CVODE cannot do
            warnings.warn(f"myokit failed on cell {i}: {e}", stacklevel=2)
            continue
        if log:
            trace = np.asarray(d[var], float)
            if trace.size != n_samples:
                raise RuntimeError(f"myokit logged {trace.size} samples, expected {n_samples}")
            out[i] = trace
    return out, seconds


def check_alignment(protocol, our_times: np.ndarray) -> dict:
    """Untimed check that Myokit's clamped run logs at our sample times with our command."""
    sim, _ = myokit_simulation(protocol)
    sim.reset()
    duration = protocol.duration_ms
    d = sim.run(
        duration + VC_SAMPLE_MS / 2, log=["engine.time", "membrane.V"], log_interval=VC_SAMPLE_MS
    )
    t = np.asarray(d["engine.time"], float)
    v = np.asarray(d["membrane.V"], float)
    same_n = t.size == our_times.size
    return {
        "n_samples_myokit": int(t.size),
        "n_samples_ours": int(our_times.size),
        "max_abs_time_diff_ms": float(np.abs(t - our_times).max()) if same_n else None,
        "max_abs_command_diff_mV": float(np.abs(v - protocol.voltage(our_times)).max())
        if same_n
        else None,
        "handling": (
            "myokit logs [0, tmax) at t = k*interval; run to duration + interval/2 to include "
            "the end point. Clamp = piecewise(engine.time < edge - 1e-9, ...), i.e. "
            "right-continuous like Protocol.voltage; checked by logging engine.time and "
            "membrane.V once (untimed)."
        ),
    }


# -------------------------------------------------------------------------------------------
# Our side
# -------------------------------------------------------------------------------------------
def time_ours(fn, repeats: int) -> list[float]:
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def params_mapping(params: pd.DataFrame) -> dict:
    return {c: params[c].to_numpy(float) for c in params.columns}


# -------------------------------------------------------------------------------------------
# Errors
# -------------------------------------------------------------------------------------------
def vc_errors(trace: np.ndarray, ref: np.ndarray) -> dict:
    diff = trace - ref
    max_abs = np.abs(diff).max(axis=1)
    rms = np.sqrt(np.mean(diff**2, axis=1))
    ok = np.isfinite(max_abs) & np.isfinite(rms)
    passed = ok & (max_abs <= VC_BAND["max_abs"]) & (rms <= VC_BAND["rms"])
    return {
        "max_abs_worst": _f(np.nanmax(max_abs)) if ok.any() else None,
        "max_abs_median": _f(np.nanmedian(max_abs)) if ok.any() else None,
        "rms_worst": _f(np.nanmax(rms)) if ok.any() else None,
        "rms_median": _f(np.nanmedian(rms)) if ok.any() else None,
        "worst_cell": int(np.nanargmax(max_abs)) if ok.any() else None,
        "worst_time_ms": _f(np.nanargmax(np.abs(diff[np.nanargmax(max_abs)])) * VC_SAMPLE_MS)
        if ok.any()
        else None,
        "n_cells_compared": int(ok.sum()),
        "n_cells_in_band": int(passed.sum()),
        "per_cell_max_abs": [_f(x) for x in max_abs],
        "per_cell_rms": [_f(x) for x in rms],
    }


def _local_ap_features(v: np.ndarray, dt: float) -> dict:
    """Features of one trace, defined as in SPEC §10 (independent of sbi_twins.physiology).

    Beat = upward crossing of -20 mV; upstroke = instant of max dV/dt between the foot (lowest
    sample since the previous crossing) and the peak (parabolic refinement of the sampled
    derivative); peak = max until the next beat; MDP = min between a
    peak and the next beat; APDx from the upstroke to where V falls x % from peak to that MDP;
    CL = mean difference of upstroke times. Peak, MDP and APD use complete beats only (those
    followed by another beat) and are averaged over them.
    """
    nan = float("nan")
    res = dict(n_beats=0, first_upstroke_ms=nan, CL=nan, APD90=nan, APD50=nan, MDP=nan, peak=nan)
    if not np.all(np.isfinite(v)):
        return res
    cross = np.flatnonzero((v[:-1] < -20.0) & (v[1:] >= -20.0))
    res["n_beats"] = int(cross.size)
    if cross.size == 0:
        return res
    dv = np.diff(v) / dt  # dv[j] is the slope at t = (j + 0.5) dt
    ups, peaks, mdps, apd90, apd50 = [], [], [], [], []
    for b, c in enumerate(cross):
        end = cross[b + 1] if b + 1 < cross.size else v.size
        k_peak = c + int(np.argmax(v[c:end]))
        prev = cross[b - 1] if b else 0
        lo = prev + int(np.argmin(v[prev : c + 1]))  # foot: lowest sample before the crossing
        hi = min(max(k_peak - 1, c), dv.size - 1)
        j = lo + int(np.argmax(dv[lo : hi + 1]))
        shift = 0.0
        if 0 < j < dv.size - 1:
            a, m, z = dv[j - 1], dv[j], dv[j + 1]
            den = a - 2 * m + z
            if den < 0:  # a maximum: vertex of the parabola, at most half a sample away
                shift = min(0.5, max(-0.5, 0.5 * (a - z) / den))
        ups.append((j + 0.5 + shift) * dt)
        if b + 1 < cross.size:  # a complete beat: the following MDP exists
            peaks.append(v[k_peak])
            k_min = k_peak + int(np.argmin(v[k_peak:end]))
            mdps.append(v[k_min])
            for x, store in ((0.9, apd90), (0.5, apd50)):
                level = v[k_peak] - x * (v[k_peak] - v[k_min])
                below = np.flatnonzero(v[k_peak : k_min + 1] <= level)
                if below.size:
                    k = k_peak + int(below[0])
                    frac = (v[k - 1] - level) / (v[k - 1] - v[k])
                    store.append((k - 1 + frac) * dt - ups[-1])
    res["first_upstroke_ms"] = ups[0]
    if len(ups) > 1:
        res["CL"] = float(np.mean(np.diff(ups)))
    if peaks:
        res["peak"] = float(np.mean(peaks))
    if mdps:
        res["MDP"] = float(np.mean(mdps))
    if apd90:
        res["APD90"] = float(np.mean(apd90))
    if apd50:
        res["APD50"] = float(np.mean(apd50))
    return res


def ap_feature_table(v: np.ndarray, dt: float) -> tuple[pd.DataFrame, str]:
    """Features per cell, from ``sbi_twins.physiology.ap_features`` when that module exists."""
    cols = ["n_beats", "first_upstroke_ms", "CL", "APD90", "APD50", "MDP", "peak"]
    try:
        from sbi_twins.physiology.features import (
            ap_features,  # written in parallel; may not exist yet
        )
    except ImportError:
        rows = [_local_ap_features(row, dt) for row in v]
        return pd.DataFrame(rows, columns=cols), "local fallback (no sbi_twins.physiology)"
    try:
        table = pd.DataFrame(ap_features(v, dt))
        if len(table) != v.shape[0]:
            raise ValueError
    except Exception:  # 1-D only?
        table = pd.concat(
            [pd.DataFrame(ap_features(row, dt)).iloc[[0]] for row in v], ignore_index=True
        )
    return table.reset_index(drop=True), "sbi_twins.physiology.features.ap_features"


def ap_errors(feat: pd.DataFrame, ref: pd.DataFrame) -> dict:
    out = {}
    nb, nb_ref = feat["n_beats"].to_numpy(float), ref["n_beats"].to_numpy(float)
    comparable = np.isfinite(nb) & np.isfinite(nb_ref)
    same = comparable & (nb == nb_ref)
    out["n_cells"] = int(len(feat))
    out["n_cells_same_beats"] = int(same.sum())
    out["n_cells_beating_ref"] = int((nb_ref > 0).sum())
    in_band = same.copy()
    for col in AP_COMPARED:
        d = np.abs(feat[col].to_numpy(float) - ref[col].to_numpy(float))
        defined = np.isfinite(d)
        ref_defined = np.isfinite(ref[col].to_numpy(float))
        # A feature defined in the reference but not in ours (or vice versa) fails the band.
        both_or_neither = defined | (~ref_defined & ~np.isfinite(feat[col].to_numpy(float)))
        in_band &= both_or_neither & (~defined | (d <= AP_BAND[col]))
        out[col] = {
            "max": _f(np.nanmax(d)) if defined.any() else None,
            "median": _f(np.nanmedian(d)) if defined.any() else None,
            "n_defined": int(defined.sum()),
            "n_mismatched_definedness": int((~both_or_neither).sum()),
            "worst_cell": int(np.nanargmax(d)) if defined.any() else None,
            "band": AP_BAND[col],
        }
    out["n_cells_in_band"] = int(in_band.sum())
    return out


# -------------------------------------------------------------------------------------------
# Compile times (subprocesses)
# -------------------------------------------------------------------------------------------
CHILD_FLAG = "--_compile-child"


def compile_child() -> None:
    """Body of the compile-time subprocess: prints one JSON line of timings."""
    t_start = time.perf_counter()
    import sbi_twins
    from sbi_twins import Protocol, Segment

    t_import = time.perf_counter()
    model = sbi_twins.load_model(str(MODEL_FILE))
    t_load = time.perf_counter()
    short = Protocol(
        "short",
        -80.0,
        (Segment.step(50.0, -80.0), Segment.ramp(20.0, -80.0, 20.0), Segment.step(30.0, 0.0)),
    )
    i = model.simulate_vc(short, None, VC_SAMPLE_MS)
    t_vc = time.perf_counter()
    v = model.simulate_ap(None, 100.0, AP_SAMPLE_MS)
    t_ap = time.perf_counter()
    assert np.isfinite(i).all() and np.isfinite(v).all()
    print(
        json.dumps(
            {
                "import_s": t_import - t_start,
                "load_model_s": t_load - t_import,
                "first_simulate_vc_s": t_vc - t_load,
                "first_simulate_ap_s": t_ap - t_vc,
                "simulate_calls_s": t_ap - t_load,
                "in_process_total_s": t_ap - t_start,
                "kernel_module": getattr(model.kernels, "__name__", None),
            }
        )
    )


def run_compile_child(cache: Path) -> dict:
    env = dict(os.environ, SBI_TWINS_CACHE=str(cache))
    env.pop("NUMBA_CACHE_DIR", None)  # numba caches next to the generated module, in `cache`
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), CHILD_FLAG],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"compile subprocess failed:\n{proc.stderr}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["process_wall_s"] = wall
    return result


def measure_compile() -> dict:
    cache = Path(tempfile.mkdtemp(prefix="sbi-twins-bench-cache-"))
    try:
        cold = run_compile_child(cache)
        warm = run_compile_child(cache)
    finally:
        shutil.rmtree(cache, ignore_errors=True)
    return {
        "cold": cold,
        "warm": warm,
        # Kernel modules are named by the hash of their source: a different name in the
        # warm run means the generated source changed (code generator edited mid-run, or
        # non-deterministic output), so "warm" was really a second cold compile.
        "same_kernel_module": cold["kernel_module"] == warm["kernel_module"],
        "what": "load_model + simulate_vc(1 cell, 100 ms protocol with a ramp) + "
        "simulate_ap(1 cell, 100 ms); cold = empty SBI_TWINS_CACHE, warm = same "
        "cache again; process_wall_s = process start to exit",
    }


# -------------------------------------------------------------------------------------------
# Benchmarks
# -------------------------------------------------------------------------------------------
def warm_up(run) -> tuple:
    """First call of ``run`` (compiles if not cached): its result, duration and warnings."""
    t0 = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = run()
    return result, time.perf_counter() - t0, caught


class MyokitRun(NamedTuple):
    """What Myokit runs: the clamp (None: spontaneous activity) and what it logs, how often."""

    protocol: object
    duration_ms: float
    interval_ms: float
    var: str


@dataclass
class Comparison:
    """Traces and timing summaries of one comparison of our simulator with Myokit."""

    ours: np.ndarray
    myokit: np.ndarray  # default tolerances, first timed repeat
    reference: np.ndarray  # tight tolerances
    tighter: np.ndarray  # tighter still, cell 0 only
    reference_ms_per_cell: float
    ours_summary: dict
    myokit_summary: dict

    @property
    def speedup(self) -> float:
        """Myokit's time per cell over ours, per core."""
        return self.myokit_summary["ms_per_cell"] / self.ours_summary["ms_per_cell_1thread"]


def compare_with_myokit(
    ours,
    params: pd.DataFrame,
    run: MyokitRun,
    repeats: int,
    log,
    label: str,
    warm_up_msg: str,
    no_logging: bool = False,
) -> Comparison:
    """Time ``ours`` (a batch) against Myokit's cell loop, alternately, and run the references.

    Per-core times use 1 Numba thread, then ``ours`` is timed on 2; with ``no_logging`` Myokit
    is also timed once without logging.
    """
    import numba

    protocol, duration_ms, interval_ms, var = run
    n = len(params)
    numba.set_num_threads(1)
    log(warm_up_msg)
    ours_traces, first_call_s, caught = warm_up(ours)

    sim, myokit_compile_s = myokit_simulation(protocol)
    ours_s, myokit_s = [], []
    myokit_traces = None
    for r in range(repeats):
        ours_s += time_ours(ours, 1)
        trace, per_cell = myokit_run(sim, params, duration_ms, interval_ms, var)
        myokit_s.append(np.nansum(per_cell) / np.isfinite(per_cell).sum())
        if myokit_traces is None:
            myokit_traces = trace
        log(
            f"  repeat {r + 1}/{repeats}: ours {1e3 * ours_s[-1] / n:.2f} ms/cell, "
            f"myokit {1e3 * myokit_s[-1]:.1f} ms/cell"
        )
    if no_logging:
        _, nolog = myokit_run(sim, params, duration_ms, interval_ms, var, log=False)

    two = min(2, numba.config.NUMBA_NUM_THREADS)
    numba.set_num_threads(two)
    ours()
    ours_2t = time_ours(ours, repeats)
    numba.set_num_threads(1)

    log(f"{label}: tight-tolerance CVODE reference ...")
    ref_sim, _ = myokit_simulation(protocol, TIGHT)
    ref, ref_s = myokit_run(ref_sim, params, duration_ms, interval_ms, var)
    tighter_sim, _ = myokit_simulation(protocol, TIGHTER)
    tighter, _ = myokit_run(tighter_sim, params.iloc[:1], duration_ms, interval_ms, var)

    ms_ours = 1e3 * _median(ours_s) / n
    ms_myokit = 1e3 * _median(myokit_s)
    myokit_summary = {
        "compile_s": myokit_compile_s,
        "ms_per_cell": ms_myokit,
        "cells_per_s": 1e3 / ms_myokit,
        "ms_per_cell_repeats": [1e3 * x for x in myokit_s],
    }
    if no_logging:
        myokit_summary["ms_per_cell_no_logging"] = 1e3 * float(np.nanmedian(nolog))
    myokit_summary["n_failed_cells"] = int((~np.isfinite(myokit_traces).all(axis=1)).sum())
    return Comparison(
        ours=ours_traces,
        myokit=myokit_traces,
        reference=ref,
        tighter=tighter,
        reference_ms_per_cell=1e3 * float(np.nanmedian(ref_s)),
        ours_summary={
            "first_call_s": first_call_s,
            "ms_per_cell_1thread": ms_ours,
            "cells_per_s_1thread": 1e3 / ms_ours,
            "batch_s_1thread": ours_s,
            "threads_2": two,
            "cells_per_s_2threads": n / _median(ours_2t),
            "batch_s_2threads": ours_2t,
            "scaling_2threads": _median(ours_s) / _median(ours_2t),
            "n_failed_cells": int((~np.isfinite(ours_traces).all(axis=1)).sum()),
            "warnings": [str(w.message) for w in caught],
        },
        myokit_summary=myokit_summary,
    )


def bench_vc(model, params: pd.DataFrame, repeats: int, log) -> dict:
    import sbi_twins

    protocol = sbi_twins.load_protocol(VC_PROTOCOL)
    times = protocol.times(VC_SAMPLE_MS)
    n = len(params)
    pmap = params_mapping(params)

    def ours():
        return model.simulate_vc(protocol, pmap, VC_SAMPLE_MS)

    run = MyokitRun(protocol, protocol.duration_ms, VC_SAMPLE_MS, "membrane.i_ion")
    msg = f"VC: {n} cells x {times.size} samples; warm-up call (compiles if not cached) ..."
    c = compare_with_myokit(ours, params, run, repeats, log, "VC", msg, no_logging=True)
    i_ref, i_tighter = c.reference, c.tighter
    return {
        "protocol": VC_PROTOCOL,
        "sample_interval_ms": VC_SAMPLE_MS,
        "n_samples": int(times.size),
        "n_cells": n,
        "repeats": repeats,
        "ours": c.ours_summary,
        "myokit_default": {
            **c.myokit_summary,
            "tolerances": "myokit defaults (abs 1e-6, rel 1e-4, no max step)",
        },
        "reference": {
            **TIGHT,
            "ms_per_cell": c.reference_ms_per_cell,
            "self_check_cell0_vs_tighter": {
                **TIGHTER,
                "max_abs": _f(np.abs(i_ref[0] - i_tighter[0]).max()),
                "rms": _f(np.sqrt(np.mean((i_ref[0] - i_tighter[0]) ** 2))),
            },
        },
        "speedup_ours_vs_myokit_per_core": c.speedup,
        "accuracy": {
            "band": VC_BAND,
            "ours": vc_errors(c.ours, i_ref),
            "myokit_default": vc_errors(c.myokit, i_ref),
        },
        "alignment": check_alignment(protocol, times),
    }


def bench_ap(model, params: pd.DataFrame, repeats: int, duration_ms: float, log) -> dict:
    n = len(params)
    pmap = params_mapping(params)

    def ours():
        return model.simulate_ap(pmap, duration_ms, AP_SAMPLE_MS)

    run = MyokitRun(None, duration_ms, AP_SAMPLE_MS, "membrane.V")
    msg = f"AP: {n} cells x {duration_ms / 1000:g} s; warm-up call ..."
    c = compare_with_myokit(ours, params, run, repeats, log, "AP", msg)
    f_ref, source = ap_feature_table(c.reference, AP_SAMPLE_MS)
    f_ours, _ = ap_feature_table(c.ours, AP_SAMPLE_MS)
    f_myokit, _ = ap_feature_table(c.myokit, AP_SAMPLE_MS)
    f_tighter, _ = ap_feature_table(c.tighter, AP_SAMPLE_MS)
    self_check = {k: _f(abs(f_ref[k].iloc[0] - f_tighter[k].iloc[0])) for k in AP_COMPARED}
    self_check["same_beats"] = bool(f_ref["n_beats"].iloc[0] == f_tighter["n_beats"].iloc[0])
    return {
        "duration_ms": duration_ms,
        "sample_interval_ms": AP_SAMPLE_MS,
        "n_samples": int(c.ours.shape[1]),
        "n_cells": n,
        "repeats": repeats,
        "features_from": source,
        "ours": {**c.ours_summary, "settings": "simulate_ap defaults"},
        "myokit_default": c.myokit_summary,
        "reference": {
            **TIGHT,
            "ms_per_cell": c.reference_ms_per_cell,
            "self_check_cell0_vs_tighter": {**TIGHTER, **self_check},
        },
        "speedup_ours_vs_myokit_per_core": c.speedup,
        "accuracy": {
            "band": AP_BAND,
            "ours": ap_errors(f_ours, f_ref),
            "myokit_default": ap_errors(f_myokit, f_ref),
        },
        "reference_features": {
            "n_beats": f_ref["n_beats"].tolist(),
            "baseline_cell0": {k: _f(f_ref[k].iloc[0]) for k in f_ref.columns},
        },
    }


# -------------------------------------------------------------------------------------------
# Report
# -------------------------------------------------------------------------------------------
def _fmt(x, spec=".3g") -> str:
    if x is None:
        return "–"
    if isinstance(x, float) and not math.isfinite(x):
        return "–"
    return format(x, spec)


def markdown(res: dict) -> str:
    m, vc, ap, comp = res["machine"], res.get("vc"), res.get("ap"), res.get("compile")
    lines = [
        f"## Simulator benchmark — Kernik 2019 ({res['config']['n_cells']} cells, "
        f"±{int(PERTURBATION * 100)}% on 52 parameters)",
        "",
        f"{m['cpu_model']}, {m['logical_cpus']} logical CPUs; numba {m['numba']}, "
        f"myokit {m['myokit']} (SUNDIALS {m['sundials']}); {m['date']}; "
        f"commit {str(m['git_commit'])[:10]}"
        + (
            " (+ local changes in sbi_twins/ or simulators/)"
            if m["sbi_twins_or_models_modified"]
            else ""
        ),
        "",
        "Per-core = 1 Numba thread; median over repeats; ours and myokit timed alternately.",
        "",
    ]
    if vc:
        o, k, acc = vc["ours"], vc["myokit_default"], vc["accuracy"]
        lines += [
            f"### Voltage clamp `{vc['protocol']}`, I_ion every {vc['sample_interval_ms']} ms "
            f"({vc['n_samples']:,} samples)",
            "",
            "| simulator | ms/cell/core | cells/s/core | max\\|ΔI\\| worst (median) | "
            "RMS worst (median) | cells in band |",
            "|---|---|---|---|---|---|",
            f"| ours (1 thread) | {o['ms_per_cell_1thread']:.2f} | "
            f"{o['cells_per_s_1thread']:.0f} | {_fmt(acc['ours']['max_abs_worst'])} "
            f"({_fmt(acc['ours']['max_abs_median'])}) | {_fmt(acc['ours']['rms_worst'])} "
            f"({_fmt(acc['ours']['rms_median'])}) | {acc['ours']['n_cells_in_band']}"
            f"/{vc['n_cells']} |",
            f"| myokit CVODE default tol. | {k['ms_per_cell']:.1f} | {k['cells_per_s']:.1f} | "
            f"{_fmt(acc['myokit_default']['max_abs_worst'])} "
            f"({_fmt(acc['myokit_default']['max_abs_median'])}) | "
            f"{_fmt(acc['myokit_default']['rms_worst'])} "
            f"({_fmt(acc['myokit_default']['rms_median'])}) | "
            f"{acc['myokit_default']['n_cells_in_band']}/{vc['n_cells']} |",
            f"| myokit, same but no logging | {k['ms_per_cell_no_logging']:.1f} | "
            f"{1e3 / k['ms_per_cell_no_logging']:.1f} | | | |",
            f"| reference CVODE (abs 1e-10, rel 1e-8, max step 0.5) | "
            f"{vc['reference']['ms_per_cell']:.0f} | | (reference) | | |",
            "",
            f"- **speed-up ours/myokit per core: {vc['speedup_ours_vs_myokit_per_core']:.1f}×** "
            f"(target ≥ 30×)",
            f"- ours with {o['threads_2']} threads: {o['cells_per_s_2threads']:.0f} cells/s "
            f"(×{o['scaling_2threads']:.2f} vs 1 thread)",
            f"- band: max|ΔI| ≤ {VC_BAND['max_abs']}, RMS ≤ {VC_BAND['rms']} pA/pF; ours worst "
            f"cell {acc['ours']['worst_cell']} at t = {_fmt(acc['ours']['worst_time_ms'], '.1f')}"
            f" ms; failed cells: ours {o['n_failed_cells']}, myokit {k['n_failed_cells']}",
            f"- reference self-check (cell 0 vs abs 1e-12, rel 1e-10, max step 0.1): max "
            f"{_fmt(vc['reference']['self_check_cell0_vs_tighter']['max_abs'])}, RMS "
            f"{_fmt(vc['reference']['self_check_cell0_vs_tighter']['rms'])} pA/pF",
            f"- alignment: {vc['alignment']['n_samples_myokit']} myokit samples vs "
            f"{vc['alignment']['n_samples_ours']} ours; max |Δt| "
            f"{_fmt(vc['alignment']['max_abs_time_diff_ms'])} ms, max |ΔV_cmd| "
            f"{_fmt(vc['alignment']['max_abs_command_diff_mV'])} mV",
            f"- first call in this process (incl. any compilation): {o['first_call_s']:.1f} s; "
            f"myokit C compilation: {k['compile_s']:.1f} s",
            "",
        ]
    if ap:
        o, k, acc = ap["ours"], ap["myokit_default"], ap["accuracy"]
        lines += [
            f"### Spontaneous AP, {ap['duration_ms'] / 1000:g} s, V every "
            f"{ap['sample_interval_ms']} ms ({ap['n_samples']:,} samples)",
            "",
            f"Features from {ap['features_from']}; reference beats in "
            f"{acc['ours']['n_cells_beating_ref']}/{ap['n_cells']} cells.",
            "",
            "| simulator | ms/cell/core | cells/s/core | same beat count | "
            + " | ".join(f"\\|Δ{c}\\| max (median) [{AP_UNITS[c]}]" for c in AP_COMPARED)
            + " | cells in band |",
            "|---|---|---|---|" + "---|" * len(AP_COMPARED) + "---|",
        ]
        for label, ms, cps, a in (
            ("ours (1 thread)", o["ms_per_cell_1thread"], o["cells_per_s_1thread"], acc["ours"]),
            (
                "myokit CVODE default tol.",
                k["ms_per_cell"],
                k["cells_per_s"],
                acc["myokit_default"],
            ),
        ):
            lines.append(
                f"| {label} | {ms:.2f} | {cps:.1f} | {a['n_cells_same_beats']}/{a['n_cells']} | "
                + " | ".join(f"{_fmt(a[c]['max'])} ({_fmt(a[c]['median'])})" for c in AP_COMPARED)
                + f" | {a['n_cells_in_band']}/{a['n_cells']} |"
            )
        sc = ap["reference"]["self_check_cell0_vs_tighter"]
        lines += [
            f"| reference CVODE (abs 1e-10, rel 1e-8, max step 0.5) | "
            f"{ap['reference']['ms_per_cell']:.0f} | | | " + " | " * len(AP_COMPARED) + "|",
            "",
            f"- **speed-up ours/myokit per core: {ap['speedup_ours_vs_myokit_per_core']:.1f}×**",
            f"- ours with {o['threads_2']} threads: {o['cells_per_s_2threads']:.1f} cells/s "
            f"(×{o['scaling_2threads']:.2f} vs 1 thread); failed cells: ours "
            f"{o['n_failed_cells']}, myokit {k['n_failed_cells']}",
            "- bands: same beats, |ΔCL|, |ΔAPD90| ≤ 1 ms, |Δfirst upstroke| ≤ 0.5 ms, "
            "|ΔMDP|, |Δpeak| ≤ 0.5 mV",
            "- reference self-check (cell 0 vs tighter): "
            + ", ".join(f"{c} {_fmt(sc[c])}" for c in AP_COMPARED)
            + f", same beats {sc['same_beats']}",
            f"- first call in this process: {o['first_call_s']:.1f} s; myokit C compilation: "
            f"{k['compile_s']:.1f} s",
            "",
        ]
    if comp:
        c, w = comp["cold"], comp["warm"]
        lines += [
            "### Kernel compile times (fresh subprocesses)",
            "",
            "| cache | process start → done (s) | import (s) | load_model (s) | "
            "first simulate_vc (s) | first simulate_ap (s) | simulate calls (s) |",
            "|---|---|---|---|---|---|---|",
        ]
        for label, r in (("cold (empty)", c), ("warm (same cache)", w)):
            lines.append(
                f"| {label} | {r['process_wall_s']:.1f} | {r['import_s']:.2f} | "
                f"{r['load_model_s']:.2f} | {r['first_simulate_vc_s']:.2f} | "
                f"{r['first_simulate_ap_s']:.2f} | {r['simulate_calls_s']:.2f} |"
            )
        lines += ["", f"({comp['what']})", ""]
        if not comp["same_kernel_module"]:
            lines += [
                f"**Warning:** the warm run generated a different kernel module "
                f"({w['kernel_module']} vs {c['kernel_module']}): the generated source "
                "changed between the two runs, so the warm figure is not a cache hit.",
                "",
            ]
    lines.append(f"Total benchmark wall time: {res['wall_s']:.0f} s")
    return "\n".join(lines)


# -------------------------------------------------------------------------------------------
def main(argv=None) -> int:
    if argv is None and CHILD_FLAG in sys.argv[1:]:
        compile_child()
        return 0
    args, n_cells, repeats = _common.parse_args(
        __doc__,
        argv,
        size=("cells", "cells per batch", 3, 32),
        repeats=(2, 5),
        quick_help="smoke run: 3 cells, 2 repeats, 2 s of AP",
        seed_help="seed of the parameter draws",
        default_out=DEFAULT_OUT,
        extra=lambda ap: ap.add_argument(
            "--no-compile",
            action="store_true",
            help="skip the cold/warm compile-time subprocesses (~1 min)",
        ),
    )
    ap_duration = 2000.0 if args.quick else AP_DURATION_MS

    import sbi_twins

    log = _common.Log()
    params = draw_parameters(n_cells, args.seed)
    model = sbi_twins.load_model(str(MODEL_FILE))
    res = {
        "config": {
            "n_cells": n_cells,
            "repeats": repeats,
            "quick": args.quick,
            "seed": args.seed,
            "perturbation": PERTURBATION,
            "parameters": list(params.columns),
            "model_file": str(MODEL_FILE.name),
            "kernel_module": getattr(model.kernels, "__name__", None),
        },
        "machine": _common.machine_info(
            libraries=(_common.numba_info, _common.myokit_info),
            avx512f=True,
            watched_paths=("sbi_twins", "simulators"),
        ),
    }
    res["vc"] = bench_vc(model, params, repeats, log)
    res["ap"] = bench_ap(model, params, repeats, ap_duration, log)
    if not args.no_compile:
        log("compile times: cold and warm subprocesses ...")
        res["compile"] = measure_compile()
    _common.write_results(res, markdown, args.out, log.elapsed())
    return 0


if __name__ == "__main__":
    sys.exit(main())
