"""Cost and agreement of the viability filter (``sbi_twins.physiology``) on random prior draws.

On N draws of the ``kernik2019_pm40`` prior (model parameters only: recording parameters, if the
prior has any, do not affect spontaneous activity), one run measures:

1. Verdicts of ``check_viability`` with the default rules: acceptance rate and reasons.
2. Cost: wall time per draw with 1 Numba thread (per core) and 2 threads, and the mean simulated
   time per cell, with early exit (default ``chunk_ms``) and without it (``chunk_ms`` = settle +
   window: the window is simulated in one piece, then judged); also that both give the same
   verdicts.
3. Numerics: verdicts of the default (coarse) settings against strict ones: V every 0.1 ms,
   ``simulate_ap``'s default tolerances and step cap, whole window in one piece.
4. Against the SPEC §11 rule: 60 s runs at ``simulate_ap`` defaults judged on 50-60 s by
   ``ap_features`` (≥ 3 complete beats, i.e. 4 crossings, peak > 0 mV, MDP < -50 mV), compared
   with the filter for several settle times and interval limits.

Usage::

    python benchmarks/viability.py             # 200 draws, seed 0 (~2 min on 2 vCPUs)
    python benchmarks/viability.py --quick     # 24 draws, 1 timing repeat
    python benchmarks/viability.py --draws 1000 --seed 2 --out /tmp/viability.json

Timings are medians over repeats (the machine is shared and noisy); the kernel is compiled and
warmed up before timing.
"""

from __future__ import annotations

import sys
import time
import warnings
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))
import _common  # noqa: E402
from _common import finite_or_none as _f  # noqa: E402
from _common import median as _median  # noqa: E402

DEFAULT_OUT = HERE / "results" / "viability.json"
PRIOR = "kernik2019_pm40"
BATCH = 50  # cells per call in the reference runs (bounds the memory of 0.1 ms traces)

#: Settle times and interval limits compared with the SPEC rule (the rest of the rules default).
SWEEP = [
    (1000, 2500),
    (2000, 2500),
    (3000, 2500),
    (5000, 2500),
    (10000, 2500),
    (3000, 3000),
    (10000, 3000),
]
STUDY_WINDOW_MS = (50_000.0, 60_000.0)


def draw_parameters(model, n: int, seed: int) -> pd.DataFrame:
    from sbi_twins import load_prior

    return load_prior(PRIOR).sample(n, seed=seed)  # the cell simulations ignore recording.*


# -------------------------------------------------------------------------------------------
# Measurements
# -------------------------------------------------------------------------------------------
def in_batches(fn, theta: pd.DataFrame) -> pd.DataFrame:
    return pd.concat([fn(theta.iloc[i : i + BATCH]) for i in range(0, len(theta), BATCH)])


def timed(fn, repeats: int, threads: int) -> tuple[list[float], pd.DataFrame]:
    import numba

    numba.set_num_threads(threads)
    times, result = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t0)
    return times, result


def bench_cost(model, theta: pd.DataFrame, repeats: int, log) -> tuple[dict, pd.DataFrame]:
    import numba

    from sbi_twins.physiology.viability import ViabilityRules, acceptance_summary, check_viability

    rules = ViabilityRules()
    whole = rules.settle_ms + rules.window_ms
    n = len(theta)
    two = min(2, numba.config.NUMBA_NUM_THREADS)
    check_viability(model, theta.iloc[:2], rules)  # compile / load the kernel
    res = {}
    tables = {}
    for label, chunk in (("early_exit", None), ("whole_window", whole)):
        kwargs = {} if chunk is None else {"chunk_ms": whole}

        def run(kwargs=kwargs):
            return check_viability(model, theta, rules, **kwargs)

        log(f"cost: {label}, 1 and {two} threads x {repeats} ...")
        t1, table = timed(run, repeats, 1)
        t2, _ = timed(run, repeats, two)
        tables[label] = table
        res[label] = {
            "chunk_ms": chunk if chunk is not None else 500.0,
            "mean_simulated_ms": float(table["simulated_ms"].mean()),
            "ms_per_draw_1thread": 1e3 * _median(t1) / n,
            "ms_per_draw_2threads": 1e3 * _median(t2) / n,
            "draws_per_s_2threads": n / _median(t2),
            "batch_s_1thread": t1,
            "batch_s_2threads": t2,
        }
    numba.set_num_threads(two)
    early, full = tables["early_exit"], tables["whole_window"]
    res["threads_2"] = two
    res["speedup_early_exit_1thread"] = (
        res["whole_window"]["ms_per_draw_1thread"] / res["early_exit"]["ms_per_draw_1thread"]
    )
    res["same_verdicts_early_vs_whole"] = int((early["reason"] == full["reason"]).sum())
    res["summary"] = acceptance_summary(early)
    res["rules"] = rules.to_dict()
    return res, early


def bench_numerics(model, theta: pd.DataFrame, coarse: pd.DataFrame, log) -> dict:
    from sbi_twins.physiology.viability import ViabilityRules, check_viability

    rules = ViabilityRules()
    strict = replace(rules, sample_interval_ms=0.1, atol_mV=0.02, rtol=2e-3, dt_max_ms=0.2)
    whole = strict.settle_ms + strict.window_ms
    log(f"numerics: strict settings on {len(theta)} draws ...")
    t0 = time.perf_counter()
    ref = in_batches(lambda th: check_viability(model, th, strict, chunk_ms=whole), theta)
    strict_s = time.perf_counter() - t0
    same = coarse["reason"].to_numpy() == ref["reason"].to_numpy()
    ok_both = ((coarse["reason"] == "ok") & (ref["reason"] == "ok")).to_numpy()
    errors = {}
    for col in ("peak", "MDP", "CL"):
        d = np.abs(coarse[col].to_numpy() - ref[col].to_numpy())[ok_both]
        errors[col] = {
            "median": _f(np.median(d)) if d.size else None,
            "p95": _f(np.percentile(d, 95)) if d.size else None,
            "max": _f(d.max()) if d.size else None,
        }
    differing = [
        {"draw": int(i), "coarse": coarse["reason"].iloc[i], "strict": ref["reason"].iloc[i]}
        for i in np.flatnonzero(~same)
    ]
    return {
        "strict_rules": strict.to_dict(),
        "strict_wall_s": strict_s,
        "strict_ms_per_draw_2threads": 1e3 * strict_s / len(theta),
        "n_same_reason": int(same.sum()),
        "n_same_viable": int((coarse["viable"].to_numpy() == ref["viable"].to_numpy()).sum()),
        "strict_acceptance_rate": float(ref["viable"].mean()),
        "differing": differing,
        "abs_errors_ok_in_both": errors,
        "n_ok_in_both": int(ok_both.sum()),
    }


def study_verdicts(model, theta: pd.DataFrame, log) -> pd.Series:
    from sbi_twins import SimulationWarning
    from sbi_twins.physiology.features import ap_features

    dt = 0.5
    lo, hi = (round(t / dt) for t in STUDY_WINDOW_MS)
    log(f"SPEC rule: {len(theta)} draws x {hi * dt / 1000:g} s at simulate_ap defaults ...")

    def judge(th):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", SimulationWarning)
            V = model.simulate_ap(th, hi * dt, dt)
        f = ap_features(V[:, lo:], dt)
        return pd.DataFrame({"ok": (f["n_beats"] >= 4) & (f["peak"] > 0) & (f["MDP"] < -50)})

    return in_batches(judge, theta)["ok"].to_numpy()


def bench_study(model, theta: pd.DataFrame, log) -> dict:
    from sbi_twins.physiology.viability import ViabilityRules, check_viability

    study = study_verdicts(model, theta, log)
    rows = []
    for settle, interval in SWEEP:
        rules = ViabilityRules(settle_ms=settle, max_interval_ms=interval)
        t0 = time.perf_counter()
        table = check_viability(model, theta, rules)
        wall = time.perf_counter() - t0
        ours = table["viable"].to_numpy()
        rows.append(
            {
                "settle_ms": settle,
                "max_interval_ms": interval,
                "is_default": rules == ViabilityRules(),
                "acceptance_rate": float(ours.mean()),
                "agreement": float((ours == study).mean()),
                "accepted_only_by_filter": int((ours & ~study).sum()),
                "accepted_only_by_spec_rule": int((~ours & study).sum()),
                "mean_simulated_ms": float(table["simulated_ms"].mean()),
                "wall_s_2threads": wall,
            }
        )
        log(
            f"  settle {settle} ms, max interval {interval} ms: agreement "
            f"{rows[-1]['agreement']:.3f}"
        )
    return {
        "window_ms": list(STUDY_WINDOW_MS),
        "acceptance_rate": float(study.mean()),
        "rule": "ap_features on 50-60 s: n_beats >= 4 (3 complete beats), peak > 0, MDP < -50",
        "sweep": rows,
    }


# -------------------------------------------------------------------------------------------
# Report
# -------------------------------------------------------------------------------------------
def markdown(res: dict) -> str:
    m, c, num, st = res["machine"], res["cost"], res["numerics"], res["study"]
    n = res["config"]["n_draws"]
    s = c["summary"]
    r = c["rules"]
    e, w = c["early_exit"], c["whole_window"]
    lines = [
        f"## Viability filter — Kernik 2019, {n} draws of `{PRIOR}` (seed {res['config']['seed']})",
        "",
        f"{m['cpu_model']}, {m['logical_cpus']} logical CPUs; numba {m['numba']}; {m['date']}; "
        f"commit {str(m['git_commit'])[:10]}"
        + (" (+ local changes)" if m["sbi_twins_or_models_modified"] else ""),
        "",
        (
            f"Default rules: settle {r['settle_ms']:g} ms, window {r['window_ms']:g} ms, "
            f"≥ {r['min_beats']} complete beats each < {r['max_interval_ms']:g} ms apart, "
            f"mean peak > {r['min_peak_mV']:g} mV, mean MDP < {r['max_mdp_mV']:g} mV, interval CV "
            f"≤ {r['max_cl_cv']:g}; V every {r['sample_interval_ms']:g} ms, atol "
            f"{r['atol_mV']:g} mV, rtol {r['rtol']:g}, dt_max {r['dt_max_ms']:g} ms."
        ),
        "",
        f"**Acceptance: {s['n_viable']}/{s['n_cells']} = {100 * s['acceptance_rate']:.1f} %** "
        "(SPEC §11: 36.5 % of 200 draws on 50-60 s). Reasons: "
        + ", ".join(f"{k} {v}" for k, v in s["reasons"].items()),
        "",
        "### Cost",
        "",
        (
            "| run | mean simulated ms/cell | ms/draw/core (1 thread) | ms/draw wall (2 threads) "
            "| draws/s (2 threads) |"
        ),
        "|---|---|---|---|---|",
        (
            f"| early exit (chunk {e['chunk_ms']:g} ms) | {e['mean_simulated_ms']:.0f} | "
            f"{e['ms_per_draw_1thread']:.2f} | {e['ms_per_draw_2threads']:.2f} | "
            f"{e['draws_per_s_2threads']:.0f} |"
        ),
        (
            f"| whole window, one piece | {w['mean_simulated_ms']:.0f} | "
            f"{w['ms_per_draw_1thread']:.2f} | {w['ms_per_draw_2threads']:.2f} | "
            f"{w['draws_per_s_2threads']:.0f} |"
        ),
        "",
        (
            f"- early exit: ×{c['speedup_early_exit_1thread']:.2f} faster per core; same verdict "
            f"as the whole window for {c['same_verdicts_early_vs_whole']}/{n} draws"
        ),
        "",
        (
            "### Default (coarse) vs strict numerics (V every 0.1 ms, atol 0.02 mV, rtol 2e-3, "
            "dt_max 0.2 ms, whole window)"
        ),
        "",
        f"- same reason {num['n_same_reason']}/{n}, same viable/not {num['n_same_viable']}/{n}; "
        f"strict acceptance {100 * num['strict_acceptance_rate']:.1f} %; strict cost "
        f"{num['strict_ms_per_draw_2threads']:.1f} ms/draw wall (2 threads, whole window) vs "
        f"{w['ms_per_draw_2threads']:.2f} with the default numerics"
        + (f"; differing: {num['differing']}" if num["differing"] else ""),
        f"- cells ok in both ({num['n_ok_in_both']}): |Δ| median / p95 / max: "
        + "; ".join(
            f"{k} {_fmt(v['median'])} / {_fmt(v['p95'])} / {_fmt(v['max'])} "
            f"{'ms' if k == 'CL' else 'mV'}"
            for k, v in num["abs_errors_ok_in_both"].items()
        ),
        "",
        (
            "### Against the SPEC §11 rule on 50-60 s "
            f"(acceptance {100 * st['acceptance_rate']:.1f} %)"
        ),
        "",
        (
            "| settle ms | max interval ms | acceptance | agreement | only filter accepts | "
            "only SPEC rule accepts | mean simulated ms |"
        ),
        "|---|---|---|---|---|---|---|",
    ]
    for row in st["sweep"]:
        b = "**" if row["is_default"] else ""
        lines.append(
            f"| {b}{row['settle_ms']}{b} | {b}{row['max_interval_ms']}{b} | "
            f"{100 * row['acceptance_rate']:.1f} % | {b}{100 * row['agreement']:.1f} %{b} | "
            f"{row['accepted_only_by_filter']} | {row['accepted_only_by_spec_rule']} | "
            f"{row['mean_simulated_ms']:.0f} |"
        )
    lines += ["", f"Total benchmark wall time: {res['wall_s']:.0f} s"]
    return "\n".join(lines)


def _fmt(x) -> str:
    return "–" if x is None else format(x, ".3g")


# -------------------------------------------------------------------------------------------
def main(argv=None) -> int:
    args, n, repeats = _common.parse_args(
        __doc__,
        argv,
        size=("draws", "prior draws", 24, 200),
        repeats=(1, 3),
        quick_help="smoke run: 24 draws, 1 repeat",
        seed_help="seed of the prior draws",
        default_out=DEFAULT_OUT,
    )

    import sbi_twins

    log = _common.Log()
    model = sbi_twins.load_model("kernik2019")
    theta = draw_parameters(model, n, args.seed)
    res = {
        "config": {
            "n_draws": n,
            "seed": args.seed,
            "repeats": repeats,
            "quick": args.quick,
            "prior": PRIOR,
            "parameters": list(theta.columns),
        },
        "machine": _common.machine_info(
            libraries=(_common.numba_info,),
            watched_paths=("sbi_twins", "simulators", "priors"),
        ),
    }
    res["cost"], coarse = bench_cost(model, theta, repeats, log)
    res["numerics"] = bench_numerics(model, theta, coarse, log)
    res["study"] = bench_study(model, theta, log)
    _common.write_results(res, markdown, args.out, log.elapsed())
    return 0


if __name__ == "__main__":
    sys.exit(main())
