"""Can the ±40 % Kernik 2019 prior reach real iPSC-CMs, and does the prior shipped for real
cells? Spontaneous AP features of real cells against those of each prior's beating cells.

Real cells: the spontaneous current-clamp recordings (``Pre-drug_spont``, 10 s at I = 0, before
any drug) of Clark et al. 2023 (Europace; data: GitHub Christini-Lab/iPSC-leak-artifact,
BSD-3-Clause), read with ``load_recording`` and measured with
``sbi_twins.physiology.recording_ap_features`` (1 kHz zero-phase low-pass, then ``ap_features``).
A cell is *beating* when it has at least 3 complete beats (4 upstrokes through -20 mV), the QC
rule ``beats_present``; only beating cells are compared.

Prior cells: N draws of ``kernik2019_pm40`` (model parameters; the recording parameters do not
act in current clamp), simulated spontaneously with ``simulate_ap`` for ``settle + 10 s`` from the
model's initial state; the last 10 s are measured with the same features. The *beating
population* is the draws with at least 3 complete beats in that window.

Reach, per feature (CL, APD90, MDP, peak): is the real cell inside the 1-99 % range of the
beating population? And jointly: the distance from each real cell to its nearest prior cell in
the four features standardised by the population's standard deviations, against the same
distance from each prior cell to its nearest other prior cell (the population's own spacing).
A real cell the prior reaches sits as close to the population as its members sit to each other.

Variants (``--variants`` picks some, ``--baseline-only`` skips them all), each measured the
same way:

* *seal leak*: the same draws with a seal leak in current clamp (Clark et al. 2023):
  ``I_leak = (V - E_leak) / (R_seal Cm)`` added to the model's ionic current, with
  ``R_seal ~ log-uniform(1, 2) GΩ``, ``Cm ~ log-uniform(25, 75) pF`` (the membrane tests of Clark
  et al.'s cells: 26-72 pF) and ``E_leak = 0 mV`` drawn per cell. The model file is written to a
  temporary folder (the kernel compiles once, about a minute).
* *wide K⁺*: the prior with the conductances of IK1, IKr and IKs (and Ito, fixed in the prior)
  log-uniform from ×1/4 to ×4 instead of ±40 %: more repolarising current shortens the AP.
* *fast repolarisation*: the shipped prior ``priors/kernik2019_real.toml``, loaded by name: the
  ±40 % prior with the IKr conductance log-uniform from ×1 to ×8 and the time-constant offset of
  ICaL inactivation (``ical.tau_f_const``) ×0.2 to ×1, the two changes that shorten the Kernik
  AP most (one at a time, ×4 g_Kr takes the baseline APD90 from 413 to 217 ms, ×0.5
  tau_f_const to 293 ms; ×4 g_K1 silences the cell). Its other difference, a wider
  access-resistance range, does not act in current clamp. The differences from the ±40 % prior
  are read from the two files and written to the results.

The baseline population is always simulated: its standard deviations are the distance scale of
every population.

Usage::

    python benchmarks/prior_reach.py                          # 1000 draws, the 2 shared cells
    python benchmarks/prior_reach.py --cells-dir /tmp/clark_cells   # + more cells (below)
    python benchmarks/prior_reach.py --quick                  # 100 draws
    python benchmarks/prior_reach.py --cells-dir /tmp/clark_cells --variants real
                                                     # baseline + kernik2019_real only

``--cells-dir DIR`` adds every ``DIR/<cell>/Pre-drug_spont.csv`` (or ``.csv.gz``). To get the
dataset's: ``fetch`` GitHub Christini-Lab/iPSC-leak-artifact and copy each
``data/cells/<cell>/Pre-drug_spont.csv`` there (``git show HEAD:<path> > DIR/<cell>/...``);
they are not copied into this repository. ``data/cells`` lists 37 cells at commit 098c4cd; the
stored snapshot fetched for this benchmark held the recordings of 29 of them (8 files absent).
"""

from __future__ import annotations

import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))
import _common  # noqa: E402
from _common import finite_or_none as _f  # noqa: E402

DEFAULT_OUT = HERE / "results" / "prior_reach.json"
SHARED_CELLS = Path("/work/shared/data/clark_ipsc/cells")
PRIOR = "kernik2019_pm40"
#: The prior shipped for real cells (the "fast repolarisation" population).
REAL_PRIOR = "kernik2019_real"
FEATURES = ("CL", "APD90", "MDP", "peak")
UNITS = {"CL": "ms", "APD90": "ms", "MDP": "mV", "peak": "mV"}
QUANTILES = (0.01, 0.99)
SETTLE_MS = 5_000.0
WINDOW_MS = 10_000.0
SAMPLE_MS = 0.5
BATCH = 100  # cells per simulate_ap call: 100 x 30,001 samples x 8 B = 24 MB
SEAL_GOHM = (1.0, 2.0)
CM_PF = (25.0, 75.0)
#: Changed priors: parameter -> (distribution, low, high) multipliers replacing the ±40 %.
WIDE_K = {
    name: ("log_uniform", 0.25, 4.0) for name in ("ik1.g_K1", "ikr.g_Kr", "iks.g_Ks", "ito.g_to")
}
#: ``--variants`` keys and their labels in the results.
VARIANTS = {
    "seal": "+ seal leak",
    "wide-k": "wide K⁺",
    "real": f"fast repolarisation ({REAL_PRIOR})",
}
E_LEAK_MV = 0.0


# -------------------------------------------------------------------------------------------
# Real cells
# -------------------------------------------------------------------------------------------
def spontaneous_files(extra_dirs: list[Path]) -> list[Path]:
    """Pre-drug spontaneous recordings of the shared cells and of every cell in `extra_dirs`."""
    files: dict[str, Path] = {}
    for folder in [SHARED_CELLS, *extra_dirs]:
        for path in sorted(folder.glob("*/Pre-drug_spont.csv*")):
            files.setdefault(path.parent.name, path)  # the shared copy first
    return [files[name] for name in sorted(files)]


def real_cells(files: list[Path]) -> pd.DataFrame:
    """AP features and QC verdict of each recording; ``beating``: >= 3 complete beats."""
    from sbi_twins import load_recording
    from sbi_twins.physiology import qc, recording_ap_features

    rows = []
    for path in files:
        # Clark et al.'s CSVs hold the potential in "Voltage (V)" and a zero current column
        recording = load_recording(path, channel="Voltage (V)")
        features = recording_ap_features(recording).iloc[0]
        table = qc(recording)
        verdict = table.set_index("rule")["passed"]
        rows.append(
            {
                "cell": path.parent.name,
                "shared": path.is_relative_to(SHARED_CELLS),
                "n_beats": int(features["n_beats"]),
                **{name: float(features[name]) for name in FEATURES},
                "beating": bool(verdict["beats_present"]),
                "qc_ap_pass": bool(table.attrs["passed"]),
                "qc": table.attrs["summary"],
            }
        )
    return pd.DataFrame(rows)


# -------------------------------------------------------------------------------------------
# Prior cells
# -------------------------------------------------------------------------------------------
def seal_model_file(folder: Path) -> Path:
    """Kernik 2019 with a seal leak ``seal.g_seal * (V - seal.E_seal)`` in its ionic current."""
    text = (_common.REPO / "simulators" / "kernik2019.mmt").read_text()
    old = "+ ibna.i_bNa + ibca.i_bCa)"
    if text.count(old) != 1:
        raise RuntimeError(f"simulators/kernik2019.mmt changed: no single '{old}' to extend")
    text = text.replace(old, "+ ibna.i_bNa + ibca.i_bCa + seal.i_seal)")
    text += (
        "\n#\n# Seal leak of a current-clamp recording (benchmarks/prior_reach.py; Clark et al."
        " 2023):\n# g_seal = 1 / (R_seal Cm), in nS/pF = pA/pF/mV\n#\n[seal]\n"
        "g_seal = 0\n    in [nS/pF]\nE_seal = 0\n    in [mV]\n"
        "i_seal = g_seal * (membrane.V - E_seal)\n    in [A/F]\n"
    )
    path = folder / "kernik2019_seal.mmt"
    path.write_text(text)
    return path


def changed_prior(folder: Path, name: str, changes: dict[str, tuple[str, float, float]]) -> Path:
    """The bundled prior with the multipliers of some parameters replaced (added if absent)."""
    text = (_common.REPO / "priors" / f"{PRIOR}.toml").read_text()
    uniform = 'distribution = "uniform"\nlow = 0.6\nhigh = 1.4'
    for parameter, (distribution, low, high) in changes.items():
        entry = f'name = "{parameter}"\n'
        changed = f'distribution = "{distribution}"\nlow = {low}\nhigh = {high}'
        if entry + uniform in text:
            text = text.replace(entry + uniform, entry + changed)
        elif entry not in text:
            text += f"\n[[parameter]]\n{entry}{changed}\n"
        else:
            raise RuntimeError(f"priors/{PRIOR}.toml changed: cannot replace {parameter}")
    path = folder / f"{name}.toml"
    path.write_text(text)
    return path


def prior_differences(base, other) -> dict:
    """Parameters whose prior differs between two loaded priors: name -> both definitions."""
    entries = [{p["name"]: p for p in prior.to_dict()["parameters"]} for prior in (base, other)]
    names = list(dict.fromkeys([*entries[0], *entries[1]]))
    return {
        name: {PRIOR: entries[0].get(name), REAL_PRIOR: entries[1].get(name)}
        for name in names
        if entries[0].get(name) != entries[1].get(name)
    }


def seal_parameters(n: int, seed: int) -> pd.DataFrame:
    """Per cell: R_seal, Cm (log-uniform), E_leak, and the leak conductance density they make."""
    rng = np.random.default_rng(seed)
    r_seal = np.exp(rng.uniform(*np.log(SEAL_GOHM), n))
    cm = np.exp(rng.uniform(*np.log(CM_PF), n))
    return pd.DataFrame(
        {
            "r_seal_GOhm": r_seal,
            "cm_pF": cm,
            "seal.g_seal": 1.0 / (r_seal * cm),  # 1/GOhm = 1 nS
            "seal.E_seal": np.full(n, E_LEAK_MV),
        }
    )


def simulate_population(model, theta: pd.DataFrame, log) -> pd.DataFrame:
    """AP features of the last 10 s of ``SETTLE_MS + WINDOW_MS`` of spontaneous activity."""
    from sbi_twins.physiology import ap_features

    skip = round(SETTLE_MS / SAMPLE_MS)
    parts = []
    for start in range(0, len(theta), BATCH):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # failed cells are NaN rows, counted below
            V = model.simulate_ap(
                theta.iloc[start : start + BATCH],
                duration_ms=SETTLE_MS + WINDOW_MS,
                sample_interval_ms=SAMPLE_MS,
            )
        parts.append(ap_features(V[:, skip:], SAMPLE_MS))
        log(f"  simulated {min(start + BATCH, len(theta))}/{len(theta)} cells")
    features = pd.concat(parts, ignore_index=True)
    features["failed"] = features["n_beats"].isna()
    features["beating"] = (features["n_beats"] >= 4) & features[list(FEATURES)].notna().all(axis=1)
    return features


# -------------------------------------------------------------------------------------------
# Reach
# -------------------------------------------------------------------------------------------
def nearest_distances(points: np.ndarray, population: np.ndarray, exclude_self: bool) -> np.ndarray:
    """Euclidean distance from each point to its nearest member of `population`."""
    d = np.sqrt(((points[:, None, :] - population[None, :, :]) ** 2).sum(axis=2))
    if exclude_self:
        np.fill_diagonal(d, np.inf)
    return d.min(axis=1)


def reach(real: pd.DataFrame, population: pd.DataFrame, scale: pd.Series | None = None) -> dict:
    """Per-feature 1-99 % ranges, which real cells lie inside, and the nearest-cell distances.

    Distances are in units of `scale` (default: the population's standard deviations); the
    variants use the baseline population's, so their distances compare.
    """
    beating = population[population["beating"]]
    cells = real[real["beating"]]
    low = beating[list(FEATURES)].quantile(QUANTILES[0])
    high = beating[list(FEATURES)].quantile(QUANTILES[1])
    inside = (cells[list(FEATURES)] >= low) & (cells[list(FEATURES)] <= high)
    sd = beating[list(FEATURES)].std()
    scale = sd if scale is None else scale
    prior_z = ((beating[list(FEATURES)] - beating[list(FEATURES)].mean()) / scale).to_numpy()
    real_z = ((cells[list(FEATURES)] - beating[list(FEATURES)].mean()) / scale).to_numpy()
    to_prior = nearest_distances(real_z, prior_z, exclude_self=False)
    within = nearest_distances(prior_z, prior_z, exclude_self=True)
    per_cell = []
    for (_, cell), (_, flags), distance in zip(
        cells.iterrows(), inside.iterrows(), to_prior, strict=True
    ):
        per_cell.append(
            {
                "cell": cell["cell"],
                **{name: _f(cell[name]) for name in FEATURES},
                **{f"{name}_inside": bool(flags[name]) for name in FEATURES},
                "all_inside": bool(flags.all()),
                "nearest_prior_distance": float(distance),
                "qc_ap_pass": bool(cell["qc_ap_pass"]),
            }
        )
    return {
        "n_draws": len(population),
        "n_failed": int(population["failed"].sum()),
        "n_beating": len(beating),
        "range": {
            name: {"q01": _f(low[name]), "q99": _f(high[name]), "sd": _f(sd[name])}
            for name in FEATURES
        },
        "cells": per_cell,
        "n_cells": len(cells),
        "n_all_inside": int(inside.all(axis=1).sum()),
        "n_inside_by_feature": {name: int(inside[name].sum()) for name in FEATURES},
        "distance_scale": {name: _f(scale[name]) for name in FEATURES},
        "median_real_to_prior": _f(np.median(to_prior)) if to_prior.size else None,
        "median_prior_to_prior": _f(np.median(within)),
        "p95_prior_to_prior": _f(np.quantile(within, 0.95)),
    }


# -------------------------------------------------------------------------------------------
# Report
# -------------------------------------------------------------------------------------------
def markdown(res: dict) -> str:
    variants = res["variants"]
    names = list(variants)
    base = variants[names[0]]
    lines = [
        f"Real cells: {res['n_recordings']} spontaneous recordings (`Pre-drug_spont`), "
        f"{res['n_beating_real']} beating (>= 3 complete beats); prior: {base['n_draws']} draws "
        f"of `{PRIOR}` (and of `{REAL_PRIOR}` for its population), features of the last "
        f"{WINDOW_MS / 1e3:g} s after {SETTLE_MS / 1e3:g} s.",
        "",
        "| population | beating draws | "
        + " | ".join(f"{n} 1-99 % ({UNITS[n]})" for n in FEATURES)
        + " |",
        "|---|---|" + "---|" * len(FEATURES),
    ]
    for name in names:
        v = variants[name]
        ranges = " | ".join(
            f"{v['range'][f]['q01']:.0f} to {v['range'][f]['q99']:.0f}" for f in FEATURES
        )
        lines.append(f"| {name} | {v['n_beating']}/{v['n_draws']} | {ranges} |")
    lines += [
        "",
        "| cell | QC (AP rules) | "
        + " | ".join(f"{n} ({UNITS[n]})" for n in FEATURES)
        + " | "
        + " | ".join(f"inside, {n}" for n in names)
        + " |",
        "|---|---|" + "---|" * len(FEATURES) + "---|" * len(names),
    ]
    by_variant = {n: {c["cell"]: c for c in variants[n]["cells"]} for n in names}
    for cell in base["cells"]:
        values = " | ".join(f"{cell[f]:.0f}" for f in FEATURES)
        marks = []
        for n in names:
            c = by_variant[n][cell["cell"]]
            outside = [f for f in FEATURES if not c[f"{f}_inside"]]
            marks.append("all 4" if not outside else "out: " + ", ".join(outside))
        qc_mark = "pass" if cell["qc_ap_pass"] else "fail"
        lines.append(f"| {cell['cell']} | {qc_mark} | {values} | " + " | ".join(marks) + " |")
    lines += [
        "",
        "| population | cells with all 4 inside | inside, by feature (CL, APD90, MDP, peak) | "
        "median distance real → nearest prior | median prior → nearest prior (95 %) |",
        "|---|---|---|---|---|",
    ]
    for name in names:
        v = variants[name]
        by_feature = ", ".join(str(v["n_inside_by_feature"][f]) for f in FEATURES)
        lines.append(
            f"| {name} | {v['n_all_inside']}/{v['n_cells']} | {by_feature} | "
            f"{v['median_real_to_prior']:.2f} | {v['median_prior_to_prior']:.2f} "
            f"({v['p95_prior_to_prior']:.2f}) |"
        )
    lines.append(
        "\nDistances in the four features, each divided by its standard deviation in the "
        "baseline population."
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    def extra(ap) -> None:
        ap.add_argument(
            "--cells-dir",
            type=Path,
            action="append",
            default=[],
            help="folder of <cell>/Pre-drug_spont.csv[.gz] (repeatable)",
        )
        ap.add_argument(
            "--variants",
            nargs="+",
            choices=list(VARIANTS),
            default=list(VARIANTS),
            help="variants to measure besides the baseline (default: all): seal = seal leak "
            f"(compiles a model, about a minute), wide-k = wide K+, real = {REAL_PRIOR}",
        )
        ap.add_argument("--baseline-only", action="store_true", help="skip the variants")

    args, n_draws, _ = _common.parse_args(
        __doc__,
        argv,
        size=("draws", "prior draws", 100, 1000),
        repeats=(1, 1),
        quick_help="100 draws",
        seed_help="seed of the prior draws and of the seal parameters",
        default_out=DEFAULT_OUT,
        extra=extra,
    )
    log = _common.Log()
    from sbi_twins import load_model, load_prior

    files = spontaneous_files(args.cells_dir)
    log(f"{len(files)} spontaneous recordings")
    real = real_cells(files)
    log(f"{int(real['beating'].sum())} beating")
    theta = load_prior(PRIOR).sample(n_draws, seed=args.seed)
    log(f"baseline: {n_draws} draws of {PRIOR}")
    kernik = load_model("kernik2019")
    baseline = simulate_population(kernik, theta, log)
    variants = {"prior ±40 %": reach(real, baseline)}
    scale = baseline.loc[baseline["beating"], list(FEATURES)].std()
    chosen = [] if args.baseline_only else [k for k in VARIANTS if k in args.variants]
    real_prior = load_prior(REAL_PRIOR)
    with tempfile.TemporaryDirectory() as folder:
        for key in chosen:
            log(VARIANTS[key])
            if key == "seal":
                seal = seal_parameters(n_draws, args.seed + 1)[["seal.g_seal", "seal.E_seal"]]
                log("  the modified model compiles once")
                model = load_model(seal_model_file(Path(folder)))
                draws = pd.concat([theta, seal], axis=1)
            else:
                prior = (
                    real_prior
                    if key == "real"
                    else load_prior(changed_prior(Path(folder), "changed", WIDE_K))
                )
                model = kernik
                draws = prior.sample(n_draws, seed=args.seed)
            population = simulate_population(model, draws, log)
            variants[VARIANTS[key]] = reach(real, population, scale)
    res = {
        "prior": PRIOR,
        "settle_ms": SETTLE_MS,
        "window_ms": WINDOW_MS,
        "sample_interval_ms": SAMPLE_MS,
        "seal": {"r_seal_GOhm": SEAL_GOHM, "cm_pF": CM_PF, "e_leak_mV": E_LEAK_MV},
        "wide_k": WIDE_K,
        "real_prior": {
            "name": REAL_PRIOR,
            "file": f"priors/{Path(real_prior.source).name}",
            "hash": real_prior.content_hash(),
            "differences_from_" + PRIOR: prior_differences(load_prior(PRIOR), real_prior),
        },
        "seed": args.seed,
        "n_recordings": len(real),
        "n_beating_real": int(real["beating"].sum()),
        "real_cells": real.astype(object).where(real.notna(), None).to_dict(orient="records"),
        "variants": variants,
        "machine": _common.machine_info(libraries=[_common.numba_info]),
    }
    _common.write_results(res, markdown, args.out, log.elapsed())


if __name__ == "__main__":
    main()
