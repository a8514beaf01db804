"""Speed of a drug screen: N twins × 6 E-4031 doses with ``sbi_twins.screen``, against myokit.

The work is that of ``examples/drug_screen.py``: the bundled default estimator's demo cell
(``simulate_cells(1, seed=SEED)``) is fitted and its posterior draws
(``post.sample(N, seed=SEED + 1)``) are its twins; ``sbi_twins.screen`` settles every twin for
10 s without drug, then runs 20 s at each of the doses 0, 10, 30, 50, 100, 300 nM of E-4031 from
the settled state and classifies the last 10 s (``sbi_twins.twins.screen``, module docstring).

One run measures, under the same machine load:

1. **Ours**: the ``st.screen`` call, wall and CPU seconds (``time.process_time``: all threads of
   the process). ``model.simulate_ap`` is wrapped on the model instance for the run, so the
   screen's own settling calls (those with ``return_final_state=True``), its dose simulations
   and the rest (EAD detection, features, tables) are timed separately inside the same call.
   A tiny screen runs first, untimed, so kernel loading/compilation is not counted.
2. **myokit CVODE** (default tolerances, ``benchmarks/simulator.py``'s ``myokit_simulation``) on
   a sample of the same (twin, dose) pairs: from the model file's initial state, 10 s with the
   twin's parameters, then 20 s from that state with the drug's channel parameters scaled
   exactly as the screen scales them (``sbi_twins.twins.drugs``: the screen's potencies and
   ``blocked_parameters``), V logged every 0.5 ms like the screen's traces. Only ``sim.run`` is
   timed (CPU: ``time.thread_time``; myokit runs in this thread). The CVODE trace is judged by
   ``sbi_twins.detect_eads`` with the screen's criterion and window, and its outcome compared
   with the screen's. The sample is drawn round-robin over the outcomes the screen found
   (rarest first, distinct twins, random within an outcome) so that EADs and repolarisation
   failures are checked when they occur; myokit's cost of the whole screen is then projected
   with the screen's own outcome counts as weights (settling: mean per twin × N).

Projections to 10,000 × 6 are labelled as such: linear in N from this run's wall time (at this
run's machine load, logged), and from its CPU seconds divided by 2 cores (the screen alone on
the machine with perfect scaling over its 2 Numba threads: a lower bound).

Usage::

    python benchmarks/screen.py                              # 10,000 twins × 6, 6 myokit pairs
    python benchmarks/screen.py --quick                      # 100 twins, 4 myokit pairs
    python benchmarks/screen.py --twins 100 --myokit-sample 4
"""

from __future__ import annotations

import hashlib
import math
import os
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))
import _common  # noqa: E402
from _common import finite_or_none as _f  # noqa: E402

DEFAULT_OUT = HERE / "results" / "screen.json"
DRUG = "E-4031"
DOSES_NM = (0.0, 10.0, 30.0, 50.0, 100.0, 300.0)
TARGET_TWINS = 10_000
TARGET_MIN = 15.0


def _extra(ap) -> None:
    ap.add_argument("--estimator", default="default", help="bundled name or estimator path")
    ap.add_argument(
        "--myokit-sample",
        type=int,
        default=None,
        help="(twin, dose) pairs re-run with myokit CVODE (default 6; --quick 4)",
    )
    ap.add_argument("--batch-size", type=int, default=256, help="screen batch (default 256)")


def main(argv=None) -> int:
    args, n_twins, _ = _common.parse_args(
        __doc__,
        argv,
        size=("twins", "twins screened at each dose", 100, TARGET_TWINS),
        repeats=(1, 1),
        quick_help="100 twins, 4 myokit pairs",
        seed_help="the demo cell is simulate_cells(1, seed=SEED), the twins sample(N, seed=SEED+1)",
        default_out=DEFAULT_OUT,
        extra=_extra,
    )
    n_myokit = args.myokit_sample if args.myokit_sample is not None else (4 if args.quick else 6)
    if n_myokit < 0:
        raise SystemExit("--myokit-sample must be >= 0")
    log = _common.Log()
    import numba

    import sbi_twins as st
    from sbi_twins.twins.population import make_twins

    load_start = os.getloadavg()
    est = st.load_estimator(args.estimator)
    _, X = est.simulate_cells(1, seed=args.seed)
    post = est.fit(X[0])
    log(f"estimator {args.estimator!r} loaded, demo cell (seed {args.seed}) fitted")
    twins = make_twins(est.cell_model(), post.sample(n_twins, seed=args.seed + 1))
    model = est.cell_model()
    drug = st.load_drug(DRUG)
    log(f"{n_twins} twins of the demo cell drawn; warm-up screen (untimed) ...")

    t0 = time.perf_counter()
    st.screen(model, twins.iloc[:2], drug, DOSES_NM, settle_ms=10.0, duration_ms=20.0,
              window_ms=10.0)
    warmup_s = time.perf_counter() - t0

    log(f"screen: {n_twins} twins x {len(DOSES_NM)} doses (batch {args.batch_size}) ...")
    timer = _SimulateTimer(model)
    try:
        w0, c0 = time.perf_counter(), time.process_time()
        result = st.screen(model, twins, drug, DOSES_NM, batch_size=args.batch_size,
                           progress=True)
        screen_wall, screen_cpu = time.perf_counter() - w0, time.process_time() - c0
    finally:
        timer.restore()
    load_after_screen = os.getloadavg()
    log(f"screen done in {screen_wall:.1f} s wall, {screen_cpu:.1f} s CPU")

    ours = _ours_summary(timer.calls, screen_wall, screen_cpu, n_twins, len(DOSES_NM))
    res = {
        "config": {
            "estimator": str(est.path),
            "model": model.name,
            "model_sha256": model.file_hash,
            "drug": drug.name,
            "ic50_nM": {c: b.ic50_nM for c, b in drug.channels.items()},
            "doses_nM": list(DOSES_NM),
            "twins": n_twins,
            "pairs": n_twins * len(DOSES_NM),
            "batch_size": args.batch_size,
            "seed": args.seed,
            "quick": args.quick,
            "screen_settings": {k: v for k, v in result.settings.items() if k != "model_sha256"},
            "myokit_sample": n_myokit,
        },
        "machine": _common.machine_info(
            libraries=(_common.numba_info, _common.myokit_info),
            watched_paths=("sbi_twins", "simulators"),
        ),
        "numba_threads_used": numba.get_num_threads(),
        "load_average_1min": {
            "start": load_start[0],
            "after_screen": load_after_screen[0],
        },
        "warmup_s": warmup_s,
        "ours": ours,
        "projection_10k": _projection(ours, n_twins),
        "outcomes": _outcome_table(result),
    }
    if n_myokit:
        log(f"myokit CVODE on {n_myokit} sampled (twin, dose) pairs ...")
        res["myokit"] = _myokit(model, twins, drug, result, n_myokit, args.seed, ours, log)
    res["load_average_1min"]["end"] = os.getloadavg()[0]
    _common.write_results(res, _markdown, args.out, log.elapsed())
    return 0


# -------------------------------------------------------------------------------------------
# Ours
# -------------------------------------------------------------------------------------------
class _SimulateTimer:
    """Times every ``model.simulate_ap`` call (wall, process CPU, cells) while installed.

    It is set as an attribute of the model instance, which shadows the method for this object
    only; :meth:`restore` removes it.
    """

    def __init__(self, model) -> None:
        self.model = model
        self.inner = model.simulate_ap
        self.calls: list[dict] = []
        model.simulate_ap = self

    def __call__(self, params=None, *args, **kwargs):
        w0, c0 = time.perf_counter(), time.process_time()
        out = self.inner(params, *args, **kwargs)
        wall, cpu = time.perf_counter() - w0, time.process_time() - c0
        settle = bool(kwargs.get("return_final_state", False))
        cells = (out[0] if settle else out).shape[0]
        self.calls.append({"settle": settle, "wall_s": wall, "cpu_s": cpu, "cells": cells})
        return out

    def restore(self) -> None:
        del self.model.simulate_ap


def _ours_summary(calls, wall: float, cpu: float, n_twins: int, n_doses: int) -> dict:
    """The screen's time split into settling, dose simulations and the rest."""
    pairs = n_twins * n_doses
    parts = {}
    for name, settle in (("settle", True), ("doses", False)):
        chosen = [c for c in calls if c["settle"] == settle]
        parts[name] = {
            "calls": len(chosen),
            "cells": sum(c["cells"] for c in chosen),
            "wall_s": sum(c["wall_s"] for c in chosen),
            "cpu_s": sum(c["cpu_s"] for c in chosen),
        }
    parts["rest"] = {
        "what": "EAD detection, features, potencies, tables (screen minus simulate_ap calls)",
        "wall_s": wall - parts["settle"]["wall_s"] - parts["doses"]["wall_s"],
        "cpu_s": cpu - parts["settle"]["cpu_s"] - parts["doses"]["cpu_s"],
    }
    for part in parts.values():
        part["cpu_ms_per_pair"] = 1e3 * part["cpu_s"] / pairs
        part["wall_ms_per_pair"] = 1e3 * part["wall_s"] / pairs
    parts["settle"]["cpu_ms_per_twin"] = 1e3 * parts["settle"]["cpu_s"] / n_twins
    settled_all = parts["settle"]["cells"] == n_twins and parts["settle"]["calls"] > 0
    return {
        "wall_s": wall,
        "cpu_s": cpu,
        "cpu_per_wall": cpu / wall,
        "cpu_ms_per_pair": 1e3 * cpu / pairs,
        "wall_ms_per_pair": 1e3 * wall / pairs,
        "pairs_per_s": pairs / wall,
        "settle_separated": settled_all,
        "parts": parts,
    }


def _projection(ours: dict, n_twins: int) -> dict:
    """10,000 × 6 projected from this run (linear in the number of twins)."""
    scale = TARGET_TWINS / n_twins
    from_wall = ours["wall_s"] * scale
    from_cpu = ours["cpu_s"] * scale / 2
    return {
        "measured": n_twins == TARGET_TWINS,
        "scale": scale,
        "from_wall_min": from_wall / 60,
        "from_cpu_2cores_min": from_cpu / 60,
        "target_min": TARGET_MIN,
        "over_target_from_wall": from_wall / 60 / TARGET_MIN,
        "over_target_from_cpu": from_cpu / 60 / TARGET_MIN,
    }


def _outcome_table(result) -> list[dict]:
    """Outcome counts and EAD / abnormal incidence per dose."""
    from sbi_twins.physiology.eads import OUTCOMES

    counts = pd.crosstab(result.outcomes["dose_nM"], result.outcomes["outcome"])
    ead = result.incidence().set_index("dose_nM")
    abnormal = result.incidence(event="abnormal").set_index("dose_nM")
    kinds = list(OUTCOMES) + sorted(set(counts.columns) - set(OUTCOMES))
    rows = []
    for dose in result.doses_nM:
        row = {"dose_nM": dose}
        for kind in kinds:
            row[kind] = int(counts.loc[dose, kind]) if kind in counts.columns else 0
        row.update(
            p_ead=_f(ead.loc[dose, "p_ead"]),
            ead_ci=[_f(ead.loc[dose, "ci_low"]), _f(ead.loc[dose, "ci_high"])],
            p_abnormal=_f(abnormal.loc[dose, "p_abnormal"]),
            abnormal_ci=[_f(abnormal.loc[dose, "ci_low"]), _f(abnormal.loc[dose, "ci_high"])],
            APD90_median=_f(result.outcomes.loc[result.outcomes["dose_nM"] == dose,
                                                "APD90"].median()),
        )
        rows.append(row)
    return rows


# -------------------------------------------------------------------------------------------
# myokit on a sample of the same work
# -------------------------------------------------------------------------------------------
def _pick_pairs(outcomes: pd.DataFrame, k: int, seed: int) -> pd.DataFrame:
    """``k`` rows of the screen's outcomes, round-robin over outcomes (rarest first), random
    within an outcome, each twin at most once while unused twins remain.
    """
    rng = np.random.default_rng(seed)
    twin = outcomes["twin"].to_numpy()
    by_outcome = outcomes.groupby("outcome").indices
    order = sorted(by_outcome, key=lambda o: (len(by_outcome[o]), o))
    queues = {o: list(rng.permutation(by_outcome[o])) for o in order}
    chosen: list[int] = []
    used: set = set()
    k = min(k, len(outcomes))
    while len(chosen) < k:
        for outcome in order:
            queue = queues[outcome]
            if not queue:
                continue
            row = next((r for r in queue if twin[r] not in used), queue[0])
            queue.remove(row)
            chosen.append(int(row))
            used.add(twin[row])
            if len(chosen) == k:
                break
    return outcomes.iloc[chosen]


def _myokit(model, twins, drug, result, k: int, seed: int, ours: dict, log) -> dict:
    import myokit
    from simulator import MODEL_FILE, myokit_simulation

    from sbi_twins import detect_eads
    from sbi_twins.physiology.eads import EADCriterion
    from sbi_twins.twins.drugs import blocked_parameters, fraction_remaining
    from sbi_twins.twins.population import parameter_columns, trace_features

    if hashlib.sha256(MODEL_FILE.read_bytes()).hexdigest() != model.file_hash:
        raise SystemExit(f"the screen's model is not {MODEL_FILE}: myokit would run other work")
    s = result.settings
    if s["cycle_length_ms"] is not None:
        raise SystemExit("only the spontaneous screen is compared with myokit")
    settle_ms, duration_ms, dt = s["settle_ms"], s["duration_ms"], s["sample_interval_ms"]
    start_ms = duration_ms - s["window_ms"]
    start = math.ceil(start_ms / dt - 1e-9)  # as the screen
    criterion = EADCriterion(**s["criterion"])
    channels = {c: tuple(p) for c, p in s["channels"].items()}
    potencies = drug.potencies(len(twins), s["seed"], ic50_log10_sd=s["ic50_log10_sd"],
                               hill_log_sd=s["hill_log_sd"])
    params = twins[parameter_columns(twins)]
    twin_row = {int(t): i for i, t in enumerate(twins["twin"])}

    sim, compile_s = myokit_simulation()  # default tolerances
    default_state = np.asarray(sim.default_state(), float)
    state_diff = float(np.abs(default_state - model.initial_state).max())
    pairs = _pick_pairs(result.outcomes.reset_index(drop=True), k, seed)
    n_samples = int(round(duration_ms / dt)) + 1
    V = np.full((len(pairs), n_samples), np.nan)
    rows = []
    for j, (_, pair) in enumerate(pairs.iterrows()):
        i = twin_row[int(pair["twin"])]
        dose = float(pair["dose_nM"])
        fractions = {
            c: fraction_remaining(dose, potencies[f"{c}.ic50_nM"].to_numpy()[[i]],
                                  potencies[f"{c}.hill"].to_numpy()[[i]])
            for c in channels
        }
        control = params.iloc[[i]]
        blocked = blocked_parameters(model, control, fractions, channels)
        row = {"twin": int(pair["twin"]), "dose_nM": dose, "error": None,
               "remaining": {c: float(f[0]) for c, f in fractions.items()}}
        sim.reset()
        for name, value in control.iloc[0].items():
            sim.set_constant(name, float(value))
        try:
            w0, c0 = time.perf_counter(), time.thread_time()
            sim.run(settle_ms, log=myokit.LOG_NONE)
            row["settle_wall_s"] = time.perf_counter() - w0
            row["settle_cpu_s"] = time.thread_time() - c0
            for name in (p for c in channels for p in channels[c]):
                sim.set_constant(name, float(blocked[name].iloc[0]))
            sim.set_time(0)
            w0, c0 = time.perf_counter(), time.thread_time()
            d = sim.run(duration_ms + dt / 2, log=["membrane.V"], log_interval=dt)
            row["dose_wall_s"] = time.perf_counter() - w0
            row["dose_cpu_s"] = time.thread_time() - c0
            trace = np.asarray(d["membrane.V"], float)
            if trace.size != n_samples:
                raise RuntimeError(f"myokit logged {trace.size} samples, expected {n_samples}")
            V[j] = trace
        except (myokit.SimulationError, ArithmeticError) as error:
            row["error"] = str(error).splitlines()[0]
        rows.append(row)
        log(f"  myokit pair {j + 1}/{len(pairs)}: twin {row['twin']}, {dose:g} nM, "
            f"{row.get('settle_cpu_s', math.nan):.2f} + {row.get('dose_cpu_s', math.nan):.2f}"
            " s CPU")
    verdict = detect_eads(V, dt, criterion, start_ms=start_ms)
    features = trace_features(V[:, start:], dt, criterion.threshold_mV)
    features[~verdict["outcome"].isin(["normal", "ead"]).to_numpy()] = np.nan
    for j, row in enumerate(rows):
        pair = pairs.iloc[j]
        failed = row["error"] is not None or not np.isfinite(V[j]).all()
        row.update(
            ours_outcome=str(pair["outcome"]),
            myokit_outcome="simulation_failed" if failed else str(verdict["outcome"].iloc[j]),
            ours_beats=None if pd.isna(pair["n_beats"]) else int(pair["n_beats"]),
            myokit_beats=None if pd.isna(verdict["n_beats"].iloc[j])
            else int(verdict["n_beats"].iloc[j]),
            ours_ead_events=None if pd.isna(pair["n_ead_events"]) else int(pair["n_ead_events"]),
            myokit_ead_events=None if pd.isna(verdict["n_ead_events"].iloc[j])
            else int(verdict["n_ead_events"].iloc[j]),
            ours_APD90=_f(pair["APD90"]),
            myokit_APD90=_f(features["APD90"].iloc[j]),
            ours_CL=_f(pair["CL"]),
            myokit_CL=_f(features["CL"].iloc[j]),
        )
        row["agree"] = row["ours_outcome"] == row["myokit_outcome"]
    return {
        "tolerances": "myokit defaults (abs 1e-6, rel 1e-4, no max step)",
        "compile_s": compile_s,
        "initial_state_max_abs_diff": state_diff,
        "sampling": "round-robin over the screen's outcomes, rarest first, distinct twins",
        "pairs": rows,
        "n_agree": sum(r["agree"] for r in rows),
        **_myokit_projection(rows, result.outcomes, ours),
    }


def _myokit_projection(rows: list[dict], outcomes: pd.DataFrame, ours: dict) -> dict:
    """The CPU seconds of myokit for the whole screen, from the sample: settling mean × twins, dose
    runs by the screen's outcome (the sample's per-outcome mean, or its overall mean for an
    outcome not sampled) × that outcome's count.
    """
    timed = [r for r in rows if r["error"] is None]
    if not timed:
        return {"projected": None}
    n_twins = outcomes["twin"].nunique()
    settle = float(np.mean([r["settle_cpu_s"] for r in timed]))
    dose_all = float(np.mean([r["dose_cpu_s"] for r in timed]))
    by_outcome = {}
    for r in timed:
        by_outcome.setdefault(r["ours_outcome"], []).append(r["dose_cpu_s"])
    dose_total = 0.0
    for outcome, count in outcomes["outcome"].value_counts().items():
        times = by_outcome.get(outcome)
        dose_total += count * (float(np.mean(times)) if times else dose_all)
    total = settle * n_twins + dose_total
    pairs = len(outcomes)
    sims_cpu = ours["parts"]["settle"]["cpu_s"] + ours["parts"]["doses"]["cpu_s"]
    return {
        "settle_cpu_s_per_twin": settle,
        "dose_cpu_s_per_pair_sample_mean": dose_all,
        "dose_cpu_s_per_pair_weighted": dose_total / pairs,
        "settle_wall_s_per_twin": float(np.mean([r["settle_wall_s"] for r in timed])),
        "dose_wall_s_per_pair": float(np.mean([r["dose_wall_s"] for r in timed])),
        "projected": {
            "cpu_s": total,
            "cpu_ms_per_pair": 1e3 * total / pairs,
            "cpu_s_10k": total * TARGET_TWINS / n_twins,
            "wall_min_10k_1core": total * TARGET_TWINS / n_twins / 60,
            "wall_min_10k_2cores": total * TARGET_TWINS / n_twins / 120,
        },
        "ratio_cpu_screen": total / ours["cpu_s"],
        "ratio_cpu_simulations": total / sims_cpu,
        "ratio_cpu_settle": settle / (1e-3 * ours["parts"]["settle"]["cpu_ms_per_twin"]),
        "ratio_cpu_doses": dose_total / ours["parts"]["doses"]["cpu_s"],
    }


# -------------------------------------------------------------------------------------------
# Report
# -------------------------------------------------------------------------------------------
def _fmt(x, spec=".1f") -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "–"
    return format(x, spec)


def _markdown(res: dict) -> str:
    c, m, o, p = res["config"], res["machine"], res["ours"], res["projection_10k"]
    ss = c["screen_settings"]
    parts = o["parts"]
    load = res["load_average_1min"]
    lines = [
        f"### Drug screen: {c['twins']:,} twins × {len(c['doses_nM'])} doses of {c['drug']} "
        f"({c['pairs']:,} pairs)",
        "",
        f"{m['cpu_model']}, {m['logical_cpus']} logical CPUs, {res['numba_threads_used']} Numba "
        f"threads; numba {m['numba']}, myokit {m['myokit']} (SUNDIALS {m['sundials']}); "
        f"{m['date']}; commit {str(m['git_commit'])[:10]}"
        + (" (+ local changes in sbi_twins/ or simulators/)"
           if m["sbi_twins_or_models_modified"] else "")
        + f". 1-min load average {load['start']:.1f} before the screen, "
        f"{load['after_screen']:.1f} after it (the screen itself accounts for up to 2).",
        "",
        f"Protocol: settle {ss['settle_ms'] / 1e3:g} s without drug, "
        f"{ss['duration_ms'] / 1e3:g} s per dose from the settled state, last "
        f"{ss['window_ms'] / 1e3:g} s judged; V every {ss['sample_interval_ms']:g} ms; "
        f"spontaneous; doses {', '.join(f'{d:g}' for d in c['doses_nM'])} nM; "
        f"batch {c['batch_size']}. Untimed warm-up screen: {res['warmup_s']:.1f} s.",
        "",
        "| part of `st.screen` | wall s | CPU s | CPU ms per (twin, dose) |",
        "|---|---|---|---|",
        f"| settling ({parts['settle']['cells']:,} twins × {ss['settle_ms'] / 1e3:g} s) | "
        f"{parts['settle']['wall_s']:.1f} | {parts['settle']['cpu_s']:.1f} | "
        f"{parts['settle']['cpu_ms_per_pair']:.1f} ({parts['settle']['cpu_ms_per_twin']:.1f} "
        "per twin) |",
        f"| dose simulations ({parts['doses']['cells']:,} × {ss['duration_ms'] / 1e3:g} s) | "
        f"{parts['doses']['wall_s']:.1f} | {parts['doses']['cpu_s']:.1f} | "
        f"{parts['doses']['cpu_ms_per_pair']:.1f} |",
        f"| EAD detection, features, tables | {parts['rest']['wall_s']:.1f} | "
        f"{parts['rest']['cpu_s']:.1f} | {parts['rest']['cpu_ms_per_pair']:.1f} |",
        f"| **whole screen** | **{o['wall_s']:.1f}** | **{o['cpu_s']:.1f}** | "
        f"**{o['cpu_ms_per_pair']:.1f}** |",
        "",
        f"- {o['pairs_per_s']:.1f} pairs/s wall; CPU/wall {o['cpu_per_wall']:.2f} (2 = both cores "
        "busy all the time).",
    ]
    if p["measured"]:
        lines.append(
            f"- **10,000 × 6 measured: {p['from_wall_min']:.1f} min** wall (target "
            f"≤ {p['target_min']:g} min); CPU s ÷ 2 = {p['from_cpu_2cores_min']:.1f} min."
        )
    else:
        lines.append(
            f"- **Projection (not measured) of 10,000 × 6**, × {p['scale']:g} of this run: "
            f"{p['from_wall_min']:.1f} min from its wall time at this load; "
            f"**{p['from_cpu_2cores_min']:.1f} min** from its CPU seconds on 2 cores with "
            f"nothing else running and perfect scaling (a lower bound). Target ≤ "
            f"{p['target_min']:g} min: × {p['over_target_from_cpu']:.2f} of it by the CPU "
            "figure."
        )
    lines += [
        "",
        "| dose nM | normal | EAD | repol. failure | no beats | sim. failed | p(EAD) [95 % CI] "
        "| p(abnormal) [95 % CI] | median APD90 ms |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in res["outcomes"]:
        lines.append(
            f"| {r['dose_nM']:g} | {r['normal']} | {r['ead']} | {r['repolarisation_failure']} | "
            f"{r['no_beats']} | {r.get('simulation_failed', 0)} | {_fmt(r['p_ead'], '.3f')} "
            f"[{_fmt(r['ead_ci'][0], '.3f')}, {_fmt(r['ead_ci'][1], '.3f')}] | "
            f"{_fmt(r['p_abnormal'], '.3f')} [{_fmt(r['abnormal_ci'][0], '.3f')}, "
            f"{_fmt(r['abnormal_ci'][1], '.3f')}] | {_fmt(r['APD90_median'], '.0f')} |"
        )
    k = res.get("myokit")
    if k:
        lines += [
            "",
            f"myokit CVODE ({k['tolerances']}) on {len(k['pairs'])} of the same (twin, dose) "
            f"pairs ({k['sampling']}); C compilation {k['compile_s']:.1f} s, untimed; "
            f"initial states differ by ≤ {k['initial_state_max_abs_diff']:.1g}.",
            "",
            "| twin | dose nM | IKr left | outcome ours | outcome myokit | beats ours / myokit "
            "| EAD events ours / myokit | APD90 ours / myokit ms | myokit CPU s settle + dose |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for r in k["pairs"]:
            left = r["remaining"].get("IKr", next(iter(r["remaining"].values())))
            lines.append(
                f"| {r['twin']} | {r['dose_nM']:g} | {left:.2f} | {r['ours_outcome']} | "
                f"{r['myokit_outcome']}{'' if r['agree'] else ' **(differs)**'} | "
                f"{_fmt(r['ours_beats'], 'd')} / {_fmt(r['myokit_beats'], 'd')} | "
                f"{_fmt(r['ours_ead_events'], 'd')} / {_fmt(r['myokit_ead_events'], 'd')} | "
                f"{_fmt(r['ours_APD90'], '.0f')} / {_fmt(r['myokit_APD90'], '.0f')} | "
                + (f"{r['settle_cpu_s']:.2f} + {r['dose_cpu_s']:.2f} |" if r["error"] is None
                   else f"failed: {r['error']} |")
            )
        lines += ["", f"Outcome agreement: **{k['n_agree']}/{len(k['pairs'])}** pairs.", ""]
        q = k.get("projected")
        if q:
            lines += [
                "| same work, CPU seconds | ours (`st.screen`) | myokit CVODE | myokit / ours |",
                "|---|---|---|---|",
                f"| settling, per twin | {1e-3 * parts['settle']['cpu_ms_per_twin']:.3f} | "
                f"{k['settle_cpu_s_per_twin']:.3f} | {k['ratio_cpu_settle']:.1f}× |",
                f"| dose simulation, per pair | {1e-3 * parts['doses']['cpu_ms_per_pair']:.3f} | "
                f"{k['dose_cpu_s_per_pair_weighted']:.3f} (sample mean "
                f"{k['dose_cpu_s_per_pair_sample_mean']:.3f}) | {k['ratio_cpu_doses']:.1f}× |",
                f"| whole screen, {c['pairs']:,} pairs (myokit: projected) | {o['cpu_s']:.0f} | "
                f"{q['cpu_s']:.0f} | **{k['ratio_cpu_screen']:.1f}×** |",
                f"| 10,000 × 6 (both projected) | {o['cpu_s'] * p['scale']:.0f} | "
                f"{q['cpu_s_10k']:.0f} | |",
                "",
                f"- myokit on 10,000 × 6 (projection): {q['wall_min_10k_1core']:.0f} min on one "
                f"core, {q['wall_min_10k_2cores']:.0f} min as 2 processes on 2 idle cores; ours "
                f"{p['from_cpu_2cores_min']:.1f} min by the same CPU ÷ 2 rule.",
                f"- The ratio counts ours' whole screen (detection and tables included: "
                f"{k['ratio_cpu_simulations']:.1f}× on the simulations alone) against myokit's "
                "`sim.run` only. myokit's dose cost is weighted by the screen's outcome counts.",
            ]
    lines += ["", f"Total benchmark wall time: {res['wall_s']:.0f} s"]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
