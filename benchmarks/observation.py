"""What the observation scheme keeps and loses, as a function of its length (Kernik 2019).

Random cells of the ``kernik2019_pm40`` prior are simulated under ``clark2022`` at 0.1 ms (114,552
samples) and reduced by ``sbi_twins.data.windows.ObservationScheme`` at several settings (scheme
lengths L from ~500 to ~5000, the default among them). For each L:

* **INa peak**: the most negative current at command voltages >= -60 mV (INa does not open
  below; this leaves out the large inward IK1/If currents at -120 mV), in the observation vs in
  the full trace, relative error per cell (worst and median over cells).
* **Reconstruction**: the observation linearly interpolated back to full rate, segment by
  segment (window values at window centres; held constant from the first/last centre to the
  segment edges, never interpolated across an edge), RMS error against the full trace in pA/pF:
  over all samples, and over plateau samples (steps, at least 50 ms after the segment start).
* **Apply time** per cell: ``scheme.apply`` on the whole batch, float64 and float32 input,
  median over repeats, divided by the number of cells.
* **Storage dtype**: observations rounded to float16 and to float32, against the exact (float64)
  window means: max |error| (pA/pF), relative error of the INa peak value, and the error relative
  to the noise of a recording, ``|error| / (sigma / sqrt(n))`` on an n-sample window, for a noise
  RMS sigma = 0.1 pA/pF (a good recording; 0.5 is a noisy one, ratios 5x smaller).

Usage::

    python benchmarks/observation.py            # full run: 32 cells, 5 repeats (~1-2 min)
    python benchmarks/observation.py --quick    # smoke run: 4 cells, 2 repeats
    python benchmarks/observation.py --cells 64 --out /tmp/observation.json
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))
import _common  # noqa: E402

DEFAULT_OUT = HERE / "results" / "observation.json"

MODEL = "kernik2019"
PRIOR = "kernik2019_pm40"
PROTOCOL = "clark2022"
SAMPLE_MS = 0.1
INA_MIN_MV = -60.0  # INa peak searched where the command is at least this
PLATEAU_AFTER_MS = 50.0  # plateau samples: on steps, at least this long after the segment start
NOISE_RMS = 0.1  # pA/pF, noise of a good recording (0.1-0.5 is typical)

# Settings per target length (clark2022 at 0.1 ms); None = the module defaults.
CONFIGS = {
    "~500": {"dense_ms": 0.5, "growth": 2.0, "max_window_ms": 100.0, "ramp_window_ms": 10.0},
    "~1000": {"dense_ms": 1.0, "growth": 1.3, "max_window_ms": 80.0, "ramp_window_ms": 5.0},
    "default": None,
    "~2000": {"dense_ms": 1.0, "growth": 1.15, "max_window_ms": 30.0, "ramp_window_ms": 1.8},
    "~5000": {"dense_ms": 2.0, "growth": 1.05, "max_window_ms": 5.0, "ramp_window_ms": 1.0},
}


# -------------------------------------------------------------------------------------------
# Measurements
# -------------------------------------------------------------------------------------------
def segment_bounds(protocol, times: np.ndarray) -> np.ndarray:
    """First sample of each segment, then ``times.size`` (samples on an edge start the new one)."""
    return np.append(np.searchsorted(times, protocol.edges_ms[:-1] - 1e-9), times.size)


def reconstruct(scheme, obs: np.ndarray, times: np.ndarray, bounds: np.ndarray) -> np.ndarray:
    """Full-rate traces linearly interpolated from the window values, segment by segment."""
    out = np.empty((obs.shape[0], times.size))
    window_segment = np.searchsorted(bounds, scheme.starts, side="right") - 1
    for k in range(bounds.size - 1):
        a, b = bounds[k], bounds[k + 1]
        mine = window_segment == k
        for n in range(obs.shape[0]):
            out[n, a:b] = np.interp(times[a:b], scheme.times_ms[mine], obs[n, mine])
    return out


def ina_peaks(values: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Per row, the most negative value where `mask` is true."""
    return np.where(mask, values, np.inf).min(axis=1)


def time_apply(scheme, traces: np.ndarray, repeats: int) -> float:
    """Median seconds per cell of ``scheme.apply`` on the batch."""
    seconds = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        scheme.apply(traces)
        seconds.append(time.perf_counter() - t0)
    return float(np.median(seconds)) / traces.shape[0]


def storage_errors(exact: np.ndarray, counts: np.ndarray, peak_mask: np.ndarray) -> dict:
    """Errors of float16 and float32 copies of the exact window means."""
    peak_idx = np.where(peak_mask, exact, np.inf).argmin(axis=1)
    rows = np.arange(exact.shape[0])
    peak = exact[rows, peak_idx]
    out = {}
    for name in ("float16", "float32"):
        err = np.abs(exact.astype(name).astype(np.float64) - exact)
        noise_ratio = err * np.sqrt(counts) / NOISE_RMS
        out[name] = {
            "max_abs": float(err.max()),
            "rms": float(np.sqrt(np.mean(err**2))),
            "ina_peak_rel_worst": float((err[rows, peak_idx] / np.abs(peak)).max()),
            "ina_peak_abs_worst": float(err[rows, peak_idx].max()),
            "noise_ratio_max": float(noise_ratio.max()),
            "noise_ratio_rms": float(np.sqrt(np.mean(noise_ratio**2))),
        }
    return out


def bench_config(label, settings, protocol, traces, times, bounds, repeats) -> dict:
    from sbi_twins.data.windows import ObservationScheme

    scheme = ObservationScheme.for_protocol(protocol, SAMPLE_MS, **(settings or {}))
    counts = (scheme.stops - scheme.starts).astype(float)
    exact = np.add.reduceat(traces, scheme.starts, axis=1) / counts
    obs = scheme.apply(traces)

    v = protocol.voltage(times)
    window_mask = v[scheme.starts] >= INA_MIN_MV
    sample_mask = np.repeat(window_mask, scheme.stops - scheme.starts)
    peak_full = ina_peaks(traces, sample_mask[None, :])
    peak_obs = ina_peaks(obs.astype(float), window_mask[None, :])
    peak_rel = np.abs(peak_obs - peak_full) / np.abs(peak_full)

    err = reconstruct(scheme, obs.astype(float), times, bounds) - traces
    plateau = np.zeros(times.size, bool)
    for k, seg in enumerate(protocol.segments):
        a, b = bounds[k], bounds[k + 1]
        if seg.kind == "step":
            plateau[a:b] = times[a:b] - protocol.edges_ms[k] >= PLATEAU_AFTER_MS
    rms = np.sqrt(np.mean(err**2, axis=1))
    rms_plateau = np.sqrt(np.mean(err[:, plateau] ** 2, axis=1))
    worst_cell = int(np.argmax(rms))
    return {
        "label": label,
        "settings": scheme.to_dict()["settings"],
        "length": len(scheme),
        "content_hash": scheme.content_hash(),
        "ina_peak_rel_worst": float(peak_rel.max()),
        "ina_peak_rel_median": float(np.median(peak_rel)),
        "ina_peak_worst_cell": int(np.argmax(peak_rel)),
        "recon_rms_median": float(np.median(rms)),
        "recon_rms_worst": float(rms.max()),
        "recon_worst_cell": worst_cell,
        "recon_worst_time_ms": float(times[np.argmax(np.abs(err[worst_cell]))]),
        "recon_rms_plateau_median": float(np.median(rms_plateau)),
        "recon_rms_plateau_worst": float(rms_plateau.max()),
        "n_plateau_samples": int(plateau.sum()),
        "apply_ms_per_cell_float64": 1e3 * time_apply(scheme, traces, repeats),
        "apply_ms_per_cell_float32": 1e3 * time_apply(scheme, traces.astype(np.float32), repeats),
        "storage": storage_errors(exact, counts, window_mask[None, :]),
    }


# -------------------------------------------------------------------------------------------
# Report
# -------------------------------------------------------------------------------------------
def markdown(res: dict) -> str:
    cfg, m = res["config"], res["machine"]
    lines = [
        (
            f"## Observation scheme — {cfg['protocol']} every {cfg['sample_interval_ms']} ms "
            f"({cfg['n_samples']:,} samples), {cfg['n_cells_used']} {cfg['prior']} cells"
        ),
        "",
        (
            f"{m['cpu_model']}, {m['logical_cpus']} logical CPUs; numpy {m['numpy']}; "
            f"{m['date']}; commit {str(m['git_commit'])[:10]}"
        ),
        "",
        (
            "INa peak: most negative current at command >= -60 mV. Reconstruction: per-segment "
            "linear interpolation of the window means; plateau = steps >= 50 ms after the edge. "
            "Errors in pA/pF, worst (median) over cells."
        ),
        "",
        (
            "| settings | L | INa peak rel. err | recon. RMS, all | recon. RMS, plateau | "
            "apply ms/cell f64 / f32 |"
        ),
        "|---|---|---|---|---|---|",
    ]
    for r in res["results"]:
        s = r["settings"]
        lines.append(
            f"| {r['label']}: dense {s['dense_ms']:g}, growth {s['growth']:g}, max "
            f"{s['max_window_ms']:g}, ramp {s['ramp_window_ms']:g} ms | {r['length']} | "
            f"{r['ina_peak_rel_worst']:.2e} ({r['ina_peak_rel_median']:.1e}) | "
            f"{r['recon_rms_worst']:.3f} ({r['recon_rms_median']:.3f}) | "
            f"{r['recon_rms_plateau_worst']:.4f} ({r['recon_rms_plateau_median']:.4f}) | "
            f"{r['apply_ms_per_cell_float64']:.3f} / {r['apply_ms_per_cell_float32']:.3f} |"
        )
    lines += [
        "",
        (
            "Storage dtype (errors against the exact float64 window means; noise ratio = "
            f"|error| / ({NOISE_RMS} pA/pF / sqrt(window samples))):"
        ),
        "",
        (
            "| settings | L | dtype | max \\|err\\| | RMS err | INa peak rel. err (abs) | "
            "noise ratio max (RMS) |"
        ),
        "|---|---|---|---|---|---|---|",
    ]
    for r in res["results"]:
        for dtype, e in r["storage"].items():
            lines.append(
                f"| {r['label']} | {r['length']} | {dtype} | {e['max_abs']:.2e} | "
                f"{e['rms']:.1e} | {e['ina_peak_rel_worst']:.1e} ({e['ina_peak_abs_worst']:.2e}) "
                f"| {e['noise_ratio_max']:.2f} ({e['noise_ratio_rms']:.3f}) |"
            )
    sim = res["simulation"]
    lines += [
        "",
        (
            f"Simulation for comparison: {sim['ms_per_cell']:.1f} ms/cell (batch of "
            f"{cfg['n_cells']}, default threads); cells that failed to integrate (NaN rows, "
            f"left out): {sim['n_failed']}."
        ),
        "",
        f"Total benchmark wall time: {res['wall_s']:.0f} s",
    ]
    return "\n".join(lines)


# -------------------------------------------------------------------------------------------
def main(argv=None) -> int:
    args, n_cells, repeats = _common.parse_args(
        __doc__,
        argv,
        size=("cells", "cells", 4, 32),
        repeats=(2, 5),
        quick_help="smoke run: 4 cells, 2 repeats",
        seed_help="seed of the prior draws",
        default_out=DEFAULT_OUT,
    )

    import sbi_twins

    log = _common.Log()
    protocol = sbi_twins.load_protocol(PROTOCOL)
    times = protocol.times(SAMPLE_MS)
    model = sbi_twins.load_model(MODEL)
    # an ideal clamp: simulate_vc ignores the draws' recording columns
    params = sbi_twins.load_prior(PRIOR).sample(n_cells, seed=args.seed)
    log("warm-up simulation (compiles the kernels if not cached) ...")
    model.simulate_vc(protocol, params.iloc[:1], SAMPLE_MS)
    log(f"simulating {n_cells} cells ...")
    t0 = time.perf_counter()
    traces = model.simulate_vc(protocol, params, SAMPLE_MS)
    sim_s = time.perf_counter() - t0
    ok = np.isfinite(traces).all(axis=1)
    traces = traces[ok]

    res = {
        "config": {
            "model": MODEL,
            "prior": PRIOR,
            "protocol": PROTOCOL,
            "sample_interval_ms": SAMPLE_MS,
            "n_samples": int(times.size),
            "n_cells": n_cells,
            "n_cells_used": int(ok.sum()),
            "repeats": repeats,
            "seed": args.seed,
            "quick": args.quick,
            "ina_min_mV": INA_MIN_MV,
            "plateau_after_ms": PLATEAU_AFTER_MS,
            "noise_rms": NOISE_RMS,
        },
        "machine": _common.machine_info(),
        "simulation": {"ms_per_cell": 1e3 * sim_s / n_cells, "n_failed": int((~ok).sum())},
        "results": [],
    }
    bounds = segment_bounds(protocol, times)
    for label, settings in CONFIGS.items():
        log(f"scheme {label} ...")
        res["results"].append(
            bench_config(label, settings, protocol, traces, times, bounds, repeats)
        )
    _common.write_results(res, markdown, args.out, log.elapsed())
    return 0


if __name__ == "__main__":
    sys.exit(main())
