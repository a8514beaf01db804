"""Robustness of the kernels on prior draws: NaN rows, the retry of failed cells, CVODE.

On N draws of the ``kernik2019_pm40`` prior (seed), in batches of 256 cells (a dataset chunk),
one run measures:

1. **Ideal voltage clamp** (``simulate_vc``, ``clark2022``, I_ion every 0.1 ms): the rows that are
   NaN without the retry (``retry=False``) and with it (the default, which simulates failed cells
   again with the stiff kernel), the time of both (1 Numba thread, timed alternately), that the
   rows of cells that did not fail are bit-identical, and the retried rows against CVODE at tight
   tolerances (abs 1e-10, rel 1e-8, max step 0.5 ms) in the band of ``tests/test_accuracy.py``
   (max|ΔI| <= 0.25, RMS <= 0.005 pA/pF). For comparison, in the same band: CVODE at its default
   tolerances on the retried cells, and a control sample of rows that needed no retry. CVODE at
   default tolerances runs on every draw, to count the draws it cannot do.
2. **Series-resistance clamp** (``simulate_vc_artefacts`` with each draw's recording
   parameters, the step of datasets): the same, in the band of the series-resistance check of
   ``tests/test_accuracy.py`` (max 20, RMS 0.15 pA/pF, after the first ms), CVODE integrating the
   same equations written into the myokit model and started from the kernel's initial membrane
   potential. CVODE runs only on the retried cells and the control sample (a second each).
3. **Current clamp** (``simulate_ap``, 10 s of spontaneous activity, defaults): NaN rows (the
   current-clamp kernel has no retry), and CVODE at default tolerances on every draw.

Usage::

    python benchmarks/robustness.py             # 1000 draws, seed 0 (~40 min on 2 loaded vCPUs)
    python benchmarks/robustness.py --quick     # 64 draws
    python benchmarks/robustness.py --draws 300 --seed 1 --out /tmp/robustness.json

Needs myokit with SUNDIALS (CVODE) and a C compiler.
"""

from __future__ import annotations

import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))
import _common  # noqa: E402
from _common import finite_or_none as _f  # noqa: E402

sys.path.insert(0, str(HERE.parent / "tests"))  # the CVODE models the accuracy tests use
from cvode_models import run_segments, series_resistance_model  # noqa: E402
from simulator import MODEL_FILE, TIGHT, VC_BAND, myokit_run, myokit_simulation  # noqa: E402

DEFAULT_OUT = HERE / "results" / "robustness.json"
PRIOR = "kernik2019_pm40"
PROTOCOL = "clark2022"
SAMPLE_MS = 0.1
BATCH = 256  # cells per call: a dataset chunk
CONTROL_PER_BATCH = 8  # rows that needed no retry, compared with CVODE for reference
AP_DURATION_MS = 10_000.0
AP_SAMPLE_MS = 0.5
#: Band of the series-resistance check in tests/test_accuracy.py (after the first ms).
ARTEFACT_BAND = dict(max_abs=20.0, rms=0.15)
ARTEFACT_SKIP_MS = 1.0
ARTEFACT_TIGHT = dict(abs_tol=1e-10, rel_tol=1e-8, max_step_ms=1.0)


# -------------------------------------------------------------------------------------------
# CVODE on the series-resistance clamp (the equations of KernelSource.artefact_kernel)
# -------------------------------------------------------------------------------------------
def artefact_simulation(tolerances: dict | None):
    """A myokit simulation of the model clamped through series resistance, with offset and leak
    (``tests/cvode_models.py``, shared with ``tests/test_accuracy.py``); returns
    ``(simulation, index of V)``.
    """
    import myokit

    model, v = series_resistance_model(MODEL_FILE)
    sim = myokit.Simulation(model)
    if tolerances is not None:
        sim.set_tolerance(tolerances["abs_tol"], tolerances["rel_tol"])
        sim.set_max_step_size(tolerances["max_step_ms"])
    return sim, v.index()


def artefact_run(sim, v_index: int, protocol, params: pd.DataFrame, clamp, v_start) -> np.ndarray:
    """Recorded current of each cell (NaN rows where CVODE fails), segment by segment so that
    the command is smooth within every run; V starts at ``v_start`` (the kernel's start).
    """
    import myokit

    times = protocol.times(SAMPLE_MS)
    out = np.full((len(params), times.size), np.nan)
    for i in range(len(params)):
        sim.reset()
        for name, value in params.iloc[i].items():
            sim.set_constant(name, float(value))
        for name, value in zip(("tau", "voff", "gl", "el"), clamp[i], strict=True):
            sim.set_constant(f"xclamp.{name}", float(value))
        state = sim.state()
        state[v_index] = float(v_start[i])
        sim.set_state(state)
        try:
            out[i] = run_segments(sim, protocol, "xclamp.rec", SAMPLE_MS)
        except (myokit.SimulationError, ArithmeticError):
            continue
    return out


# -------------------------------------------------------------------------------------------
# Numbers
# -------------------------------------------------------------------------------------------
def band_table(ours: np.ndarray, ref: np.ndarray, band: dict, skip: np.ndarray | None = None):
    """Per-cell max|Δ| and RMS of ``ours - ref`` (over the samples not in ``skip``) and a
    summary: worst, median and cells in ``band``; cells NaN in either are left out.
    """
    diff = ours - ref if skip is None else (ours - ref)[:, ~skip]
    max_abs = np.abs(diff).max(axis=1)
    rms = np.sqrt(np.mean(diff**2, axis=1))
    compared = np.isfinite(max_abs) & np.isfinite(rms)
    inside = compared & (max_abs <= band["max_abs"]) & (rms <= band["rms"])
    some = compared.any()
    return {
        "n_compared": int(compared.sum()),
        "n_in_band": int(inside.sum()),
        "max_abs_worst": _f(np.nanmax(max_abs)) if some else None,
        "max_abs_median": _f(np.nanmedian(max_abs)) if some else None,
        "rms_worst": _f(np.nanmax(rms)) if some else None,
        "rms_median": _f(np.nanmedian(rms)) if some else None,
        "per_cell_max_abs": [_f(x) for x in max_abs],
        "per_cell_rms": [_f(x) for x in rms],
    }


def quiet(fn, *args, **kwargs):
    """``fn(*args, **kwargs)`` with simulation warnings silenced (failures are counted)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fn(*args, **kwargs)


def batches(n: int):
    """Index arrays of consecutive batches of at most :data:`BATCH` cells."""
    return [np.arange(a, min(a + BATCH, n)) for a in range(0, n, BATCH)]


# -------------------------------------------------------------------------------------------
# The clamp kernels
# -------------------------------------------------------------------------------------------
def clamp_run(simulate, cells: pd.DataFrame, extra, repeats: int, log, label: str) -> dict:
    """Run ``simulate(params, extra, retry)`` (returns the current) on every batch without and
    with the retry, timed alternately; keep the retried rows and a control sample.
    """
    n = len(cells)
    t_plain, t_retry = [], []
    failed_plain = np.zeros(n, bool)
    failed_retry = np.zeros(n, bool)
    untouched_identical = True
    kept_rows, kept_index, control_rows, control_index = [], [], [], []
    t0 = time.perf_counter()
    quiet(simulate, cells.iloc[:BATCH], extra[:BATCH] if extra is not None else None, True)
    first_call_s = time.perf_counter() - t0
    for r in range(repeats):
        seconds_plain = seconds_retry = 0.0
        for idx in batches(n):
            part, more = cells.iloc[idx], (extra[idx] if extra is not None else None)
            t0 = time.perf_counter()
            plain = quiet(simulate, part, more, False)
            t1 = time.perf_counter()
            retried = quiet(simulate, part, more, True)
            t2 = time.perf_counter()
            seconds_plain += t1 - t0
            seconds_retry += t2 - t1
            if r:
                continue
            bad = ~np.isfinite(plain).all(axis=1)
            failed_plain[idx] = bad
            failed_retry[idx] = ~np.isfinite(retried).all(axis=1)
            untouched_identical &= bool(np.array_equal(plain[~bad], retried[~bad]))
            kept_rows.append(retried[bad])
            kept_index.append(idx[bad])
            good = np.flatnonzero(~bad)[:CONTROL_PER_BATCH]
            control_rows.append(retried[good])
            control_index.append(idx[good])
        t_plain.append(seconds_plain)
        t_retry.append(seconds_retry)
        log(
            f"  {label} repeat {r + 1}/{repeats}: without retry {seconds_plain:.1f} s, "
            f"with retry {seconds_retry:.1f} s"
        )
    plain_s, retry_s = _common.median(t_plain), _common.median(t_retry)
    return {
        "n_draws": n,
        "nan_rows_without_retry": int(failed_plain.sum()),
        "nan_rows_with_retry": int(failed_retry.sum()),
        "retried_cells": np.flatnonzero(failed_plain).tolist(),
        "failed_after_retry": np.flatnonzero(failed_retry).tolist(),
        "untouched_rows_bit_identical": untouched_identical,
        "seconds_without_retry": plain_s,
        "seconds_with_retry": retry_s,
        "overhead": retry_s / plain_s - 1.0,
        "first_call_s": first_call_s,
        "_retried_rows": np.concatenate(kept_rows),
        "_retried_index": np.concatenate(kept_index),
        "_control_rows": np.concatenate(control_rows),
        "_control_index": np.concatenate(control_index),
    }


def bench_vc(model, protocol, theta: pd.DataFrame, repeats: int, log) -> dict:
    """Section 1: the ideal clamp."""
    log(f"ideal clamp: {len(theta)} draws, without and with the retry ...")
    res = clamp_run(
        lambda p, _, retry: model.simulate_vc(protocol, p, SAMPLE_MS, retry=retry),
        theta,
        None,
        repeats,
        log,
        "ideal clamp",
    )
    retried, control = res.pop("_retried_index"), res.pop("_control_index")
    ours_retried, ours_control = res.pop("_retried_rows"), res.pop("_control_rows")
    duration = protocol.duration_ms
    log("ideal clamp: CVODE at default tolerances on every draw ...")
    sim, _ = myokit_simulation(protocol)
    default_all = np.zeros(len(theta), bool)
    default_rows = {}
    wanted = set(retried.tolist())
    for idx in batches(len(theta)):
        traces, _ = quiet(myokit_run, sim, theta.iloc[idx], duration, SAMPLE_MS, "membrane.i_ion")
        default_all[idx] = np.isfinite(traces).all(axis=1)
        for j, cell in enumerate(idx):
            if cell in wanted:
                default_rows[cell] = traces[j]
    log(f"ideal clamp: tight CVODE on {retried.size} retried and {control.size} control cells ...")
    sim_tight, _ = myokit_simulation(protocol, TIGHT)
    ref_retried, _ = quiet(
        myokit_run, sim_tight, theta.iloc[retried], duration, SAMPLE_MS, "membrane.i_ion"
    )
    ref_control, _ = quiet(
        myokit_run, sim_tight, theta.iloc[control], duration, SAMPLE_MS, "membrane.i_ion"
    )
    default_retried = np.array([default_rows[c] for c in retried]).reshape(ref_retried.shape)
    res.update(
        {
            "band": VC_BAND,
            "cvode_default_failures": int((~default_all).sum()),
            "cvode_default_failed_cells": np.flatnonzero(~default_all).tolist(),
            "nan_rows_where_cvode_default_succeeds": int(
                (np.isin(np.arange(len(theta)), res["failed_after_retry"]) & default_all).sum()
            ),
            "retried_vs_tight": band_table(ours_retried, ref_retried, VC_BAND),
            "cvode_default_vs_tight_on_retried": band_table(default_retried, ref_retried, VC_BAND),
            "control_vs_tight": band_table(ours_control, ref_control, VC_BAND),
            "control_cells": control.tolist(),
        }
    )
    return res


def bench_artefact(model, protocol, theta: pd.DataFrame, clamp, repeats: int, log) -> dict:
    """Section 2: the series-resistance clamp."""
    from sbi_twins.recording import DT_MS

    log(f"series-resistance clamp: {len(theta)} draws, without and with the retry ...")
    v_start = np.full(len(theta), np.nan)

    def simulate(p, c, retry):
        current, voltage = model.simulate_vc_artefacts(
            protocol, p, c, SAMPLE_MS, dt_ms=DT_MS, retry=retry
        )
        if retry:  # the kernel's initial V, where CVODE starts
            v_start[p.index.to_numpy()] = voltage[:, 0]
        return current

    indexed = theta.reset_index(drop=True)
    res = clamp_run(simulate, indexed, clamp, repeats, log, "series-resistance clamp")
    retried, control = res.pop("_retried_index"), res.pop("_control_index")
    ours_retried, ours_control = res.pop("_retried_rows"), res.pop("_control_rows")
    skip = protocol.times(SAMPLE_MS) <= ARTEFACT_SKIP_MS
    out = {"band": ARTEFACT_BAND, "skip_first_ms": ARTEFACT_SKIP_MS, "dt_ms": DT_MS}
    for label, tolerances in (("tight", ARTEFACT_TIGHT), ("default", None)):
        log(f"series-resistance clamp: {label} CVODE on {retried.size} retried cells ...")
        sim, v_index = artefact_simulation(tolerances)
        out[label] = artefact_run(
            sim, v_index, protocol, indexed.iloc[retried], clamp[retried], v_start[retried]
        )
        if label == "tight":
            log(f"series-resistance clamp: tight CVODE on {control.size} control cells ...")
            out["control"] = artefact_run(
                sim, v_index, protocol, indexed.iloc[control], clamp[control], v_start[control]
            )
    default_ok = np.isfinite(out["default"]).all(axis=1)
    still = np.isin(retried, res["failed_after_retry"])
    res.update(
        {
            "band": ARTEFACT_BAND,
            "skip_first_ms": ARTEFACT_SKIP_MS,
            "dt_ms": DT_MS,
            "cvode_default_failures_of_retried": int((~default_ok).sum()),
            "nan_rows_where_cvode_default_succeeds": int((still & default_ok).sum()),
            "retried_vs_tight": band_table(ours_retried, out["tight"], ARTEFACT_BAND, skip),
            "cvode_default_vs_tight_on_retried": band_table(
                out["default"], out["tight"], ARTEFACT_BAND, skip
            ),
            "control_vs_tight": band_table(ours_control, out["control"], ARTEFACT_BAND, skip),
            "control_cells": control.tolist(),
        }
    )
    return res


def bench_ap(model, theta: pd.DataFrame, log) -> dict:
    """Section 3: current clamp (no retry): NaN rows, ours and CVODE at default tolerances."""
    log(f"current clamp: {len(theta)} draws, {AP_DURATION_MS / 1000:g} s ...")
    ours_failed = np.zeros(len(theta), bool)
    t0 = time.perf_counter()
    for idx in batches(len(theta)):
        v = quiet(model.simulate_ap, theta.iloc[idx], AP_DURATION_MS, AP_SAMPLE_MS)
        ours_failed[idx] = ~np.isfinite(v).all(axis=1)
    seconds = time.perf_counter() - t0
    log("current clamp: CVODE at default tolerances on every draw ...")
    sim, _ = myokit_simulation(None)
    cvode_ok = np.zeros(len(theta), bool)
    for idx in batches(len(theta)):
        traces, _ = quiet(
            myokit_run, sim, theta.iloc[idx], AP_DURATION_MS, AP_SAMPLE_MS, "membrane.V"
        )
        cvode_ok[idx] = np.isfinite(traces).all(axis=1)
    return {
        "n_draws": len(theta),
        "duration_ms": AP_DURATION_MS,
        "nan_rows": int(ours_failed.sum()),
        "failed_cells": np.flatnonzero(ours_failed).tolist(),
        "cvode_default_failures": int((~cvode_ok).sum()),
        "nan_rows_where_cvode_default_succeeds": int((ours_failed & cvode_ok).sum()),
        "seconds": seconds,
    }


# -------------------------------------------------------------------------------------------
# Report
# -------------------------------------------------------------------------------------------
def _band(t: dict) -> str:
    if not t["n_compared"]:
        return "–"
    return (
        f"{t['n_in_band']}/{t['n_compared']} (max {t['max_abs_worst']:.3g}, "
        f"RMS {t['rms_worst']:.3g})"
    )


def markdown(res: dict) -> str:
    m, c = res["machine"], res["config"]
    vc, sr, ap = res["vc"], res["artefact"], res["ap"]
    lines = [
        f"### Robustness (`python benchmarks/robustness.py`) — {c['n_draws']} draws of "
        f"`{PRIOR}` (seed {c['seed']}), `{PROTOCOL}`",
        "",
        f"{m['cpu_model']}, {m['logical_cpus']} logical CPUs; numba {m['numba']}, myokit "
        f"{m['myokit']} (SUNDIALS {m['sundials']}); {m['date']}; commit "
        f"{str(m['git_commit'])[:10]}"
        + (" (+ local changes)" if m.get("sbi_twins_or_models_modified") else ""),
        "",
        "Retry: cells whose explicit update blows up are simulated again with the stiff kernel "
        f"({c['retry']}). Bands against CVODE at abs 1e-10, rel 1e-8: the accuracy tests' "
        f"(ideal clamp max|ΔI| ≤ {VC_BAND['max_abs']}, RMS ≤ {VC_BAND['rms']} pA/pF; series "
        f"resistance ≤ {ARTEFACT_BAND['max_abs']:g}, ≤ {ARTEFACT_BAND['rms']} after the first "
        "ms); cells in band (worst max|ΔI|, worst RMS).",
        "",
        "| kernel | NaN rows without retry | NaN rows with retry | of them CVODE (default "
        "tol.) does | CVODE default-tol. failures | retried rows in band | CVODE default tol. "
        "on the same cells | control rows in band | time per "
        f"{c['n_draws']} cells without → with retry (1 thread) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for label, r, failures in (
        ("ideal clamp", vc, f"{vc['cvode_default_failures']} of {c['n_draws']}"),
        (
            f"series resistance (dt {sr['dt_ms']} ms)",
            sr,
            f"{sr['cvode_default_failures_of_retried']} of the {sr['nan_rows_without_retry']} "
            "retried",
        ),
    ):
        lines.append(
            f"| {label} | {r['nan_rows_without_retry']} | {r['nan_rows_with_retry']} | "
            f"{r['nan_rows_where_cvode_default_succeeds']} | {failures} | "
            f"{_band(r['retried_vs_tight'])} | {_band(r['cvode_default_vs_tight_on_retried'])} | "
            f"{_band(r['control_vs_tight'])} | {r['seconds_without_retry']:.1f} → "
            f"{r['seconds_with_retry']:.1f} s (+{100 * r['overhead']:.0f} %) |"
        )
    lines.append(
        f"| current clamp ({ap['duration_ms'] / 1000:g} s spontaneous; no retry) | "
        f"{ap['nan_rows']} | – | {ap['nan_rows_where_cvode_default_succeeds']} | "
        f"{ap['cvode_default_failures']} of {c['n_draws']} | – | – | – | {ap['seconds']:.1f} s |"
    )
    lines += [
        "",
        "- rows of cells that needed no retry are bit-identical with and without it: ideal "
        f"clamp {vc['untouched_rows_bit_identical']}, series resistance "
        f"{sr['untouched_rows_bit_identical']}",
        f"- first call with the retry in this process (incl. compiling the stiff kernel if "
        f"the cache is cold): ideal clamp {vc['first_call_s']:.1f} s, series resistance "
        f"{sr['first_call_s']:.1f} s",
        f"- cells still NaN after the retry: ideal clamp {vc['failed_after_retry']}, series "
        f"resistance {sr['failed_after_retry']}",
        "",
        f"Total benchmark wall time: {res['wall_s']:.0f} s",
    ]
    return "\n".join(lines)


# -------------------------------------------------------------------------------------------
def main(argv=None) -> int:
    args, n_draws, repeats = _common.parse_args(
        __doc__,
        argv,
        size=("draws", "prior draws", 64, 1000),
        repeats=(1, 2),
        quick_help="smoke run: 64 draws, 1 timing repeat",
        seed_help="seed of the prior draws",
        default_out=DEFAULT_OUT,
    )
    import myokit
    import numba

    import sbi_twins
    from sbi_twins.engine.analysis import ModelAnalysis
    from sbi_twins.recording import recording_table
    from sbi_twins.recording.artefacts import clamp_matrix

    numba.set_num_threads(1)  # per-core timings
    log = _common.Log()
    model = sbi_twins.load_model(str(MODEL_FILE))
    protocol = sbi_twins.load_protocol(PROTOCOL)
    draws = sbi_twins.load_prior(PRIOR).sample(n_draws, seed=args.seed)
    recording = [c for c in draws.columns if c.startswith("recording.")]
    theta = draws.drop(columns=recording)
    clamp = clamp_matrix(recording_table(draws[recording], n_draws))
    linear = ModelAnalysis(myokit.load_model(str(MODEL_FILE))).linear_states
    res = {
        "config": {
            "n_draws": n_draws,
            "seed": args.seed,
            "repeats": repeats,
            "quick": args.quick,
            "prior": PRIOR,
            "protocol": PROTOCOL,
            "batch": BATCH,
            "retry": "exponential (generalised Rush-Larsen) updates of "
            + ", ".join(f"`{ls.state.qname()}`" for ls in linear)
            + ", half the step",
        },
        "machine": _common.machine_info(
            libraries=(_common.numba_info, _common.myokit_info),
            watched_paths=("sbi_twins", "simulators"),
        ),
    }
    res["vc"] = bench_vc(model, protocol, theta, repeats, log)
    res["artefact"] = bench_artefact(model, protocol, theta, clamp, repeats, log)
    res["ap"] = bench_ap(model, theta, log)
    _common.write_results(res, markdown, args.out, log.elapsed())
    return 0


if __name__ == "__main__":
    sys.exit(main())
