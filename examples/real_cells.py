"""Real iPSC-CMs end to end: quality control, posterior, amplifier check and twins' APs.

For each cell of ``shared/data/clark_ipsc`` (Clark et al. 2023, Europace; data
Christini-Lab/iPSC-leak-artifact, BSD-3-Clause) this example

1. reads the voltage-clamp recording ``Compensation_rspre_0`` (the sodium I-V steps of the
   bundled ``clark_na_iv`` protocol, recorded without series-resistance compensation or
   prediction) and the spontaneous current-clamp recording ``Pre-drug_spont``;
2. checks both against the QC rules, with the cell's membrane test (``cell-params.csv``) and the
   series-resistance limit of the estimator's prior;
3. fits the voltage-clamp recording with the bundled estimator ``clark_na_iv`` (prior
   ``kernik2019_real_rs0``) and writes the cell's HTML report, with the spontaneous APs of 100
   twins against the recorded ones;
4. compares the recording parameters the posterior infers (Cm, access resistance, their
   product the clamp time constant, seal) with the amplifier's own readings, with 90 %
   intervals, and the twins' AP features (CL, APD90, MDP, peak) with the recorded ones.

The authors' currents are already divided by the amplifier's Cm, so the recording informs Cm
mainly through the clamp's time constant Rs x Cm; Rs and Cm on their own trade off.

The twins beat without the seal leak of the current-clamp recording: the Kernik 2019 model file
has no leak current, and a leak inferred in voltage clamp belongs to another seal (the two
trials are minutes apart, with different membrane tests). Clark et al. 2023 show that a 1 GΩ
leak alone depolarises an iPSC-CM's MDP by several mV; read the MDP comparison with that in mind.

    python examples/real_cells.py [--cells ../shared/data/clark_ipsc/cells] [--out out/real_cells]

About 2 minutes on 2 cores (most of it the posterior-predictive checks and the twins' APs).
Writes ``OUT/<cell>/report.html`` (and its data), ``OUT/amplifier.csv``, ``OUT/aps.csv`` and
``OUT/amplifier.png``.
"""

from __future__ import annotations

import argparse
import dataclasses
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

import sbi_twins as st
from sbi_twins.inference import ImplausibleRecordingError, MisspecificationWarning
from sbi_twins.physiology import QCRules, qc
from sbi_twins.report import cell_report, plot_amplifier_comparison

CELLS = Path(__file__).resolve().parents[2] / "shared" / "data" / "clark_ipsc" / "cells"
#: Posterior draws per cell, and how many of them are simulated as beating twins.
DRAWS, TWINS = 10_000, 100
#: The recording parameters compared with the amplifier: posterior column, the reading in
#: cell-params.csv (and its scale), unit. The reading "Rm" is the input resistance, seal and
#: membrane in parallel: a lower bound on the seal. "rs_cm" is the clamp's time constant
#: Rs x Cm (MΩ x pF = µs), which the current transients measure directly.
AMPLIFIER = {
    "recording.cm_pF": ("Cm", 1.0, "pF"),
    "recording.rs_MOhm": ("Ra", 1.0, "MOhm"),
    "rs_cm": ("Ra x Cm", 1.0, "us"),
    "recording.r_seal_GOhm": ("Rm", 1e-3, "GOhm"),
}
INTERVAL = 0.9


def voltage_clamp(path: Path) -> st.Recording:
    """A Compensation file as a voltage-clamp Recording with its command.

    The authors' CSV has a ``Voltage (V)`` column (the command) next to ``Current (pA/pF)``;
    both could be a signal, so each is read by name and the voltage becomes the command.
    """
    current = st.load_recording(path, channel="Current (pA/pF)")
    command = st.load_recording(path, channel="Voltage (V)").to_unit("mV").signal
    return dataclasses.replace(current, command=command)


def membrane_test(folder: Path, trial: str) -> pd.Series:
    """The amplifier's readings before a trial: Cm (pF), Ra (MΩ), Rm (MΩ)."""
    return pd.read_csv(folder / "cell-params.csv").set_index("trial_type").loc[trial]


def as_measured(readings: pd.Series) -> dict[str, float]:
    """Membrane-test readings in the keys of :func:`sbi_twins.physiology.qc`."""
    return {"cm_pF": readings["Cm"], "rs_MOhm": readings["Ra"], "r_seal_GOhm": readings["Rm"] / 1e3}


def amplifier_rows(
    cell: str, samples: pd.DataFrame, readings: pd.Series, prior: st.Prior
) -> list[dict]:
    """The inferred recording parameters against the amplifier's readings, one row each.

    ``agrees``: the reading lies in the posterior's central interval; for the seal, whose
    reading is only a lower bound, that the interval reaches above it.
    """
    tail = (1 - INTERVAL) / 2
    bounds = {p.name: (p.low, p.high) for p in prior.parameters}
    samples = samples.assign(rs_cm=samples["recording.rs_MOhm"] * samples["recording.cm_pF"])
    bounds["rs_cm"] = tuple(
        np.multiply(bounds["recording.rs_MOhm"], bounds["recording.cm_pF"])
    )
    readings = readings.copy()
    readings["Ra x Cm"] = readings["Ra"] * readings["Cm"]
    rows = []
    for name, (reading, scale, unit) in AMPLIFIER.items():
        low, median, high = samples[name].quantile([tail, 0.5, 1 - tail])
        amplifier = float(readings[reading]) * scale
        lower_bound = name == "recording.r_seal_GOhm"
        rows.append({
            "cell": cell, "parameter": name.removeprefix("recording."), "unit": unit,
            "amplifier": amplifier, "median": median, "low": low, "high": high,
            "agrees": high >= amplifier if lower_bound else low <= amplifier <= high,
            "prior_low": bounds[name][0], "prior_high": bounds[name][1],
        })
    return rows


def fit_cell(
    est: st.Estimator, folder: Path, out: Path, rules: QCRules
) -> tuple[list[dict], pd.DataFrame | None]:
    """QC, fit and report one cell; its amplifier rows and its twins' AP comparison."""
    vc = voltage_clamp(folder / "Compensation_rspre_0.csv.gz")
    spont = st.load_recording(folder / "Pre-drug_spont.csv.gz", channel="Voltage (V)")
    vc_readings, spont_readings = membrane_test(folder, "rspre0"), membrane_test(folder, "spont")
    for what, recording, readings, protocol in (
        ("voltage clamp, clark_na_iv", vc, vc_readings, est.protocol),
        ("spontaneous", spont, spont_readings, None),
    ):
        table = qc(recording, rules, protocol, measured=as_measured(readings))
        print(f"\n== {folder.name}, {what}: QC {table.attrs['summary']}")
        checked = table[table["passed"].notna()]
        print(checked[["rule", "value", "unit", "threshold", "passed"]].to_string(index=False))
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", MisspecificationWarning)
            post = est.fit(vc)
    except ImplausibleRecordingError as error:
        print(f"not fitted: {error}")
        return [], None
    for warning in caught:
        print(f"warning: {warning.message}")
    verdict = post.misspecification()
    beyond = ", ".join(f"{name} {side}" for name, side in verdict.beyond_prior.items())
    print(f"misspecification p = {verdict.p_value:.3g} ({'flagged' if verdict.flag else 'ok'}; "
          f"{verdict.note}{'; pushed outside the prior: ' + beyond if beyond else ''})")
    cell_out = out / folder.name
    saved = post.save(cell_out, DRAWS, seed=0)
    cell_report(post, cell_out, n=DRAWS, title=folder.name, saved=saved, twins_ap=TWINS,
                recorded_ap=spont)
    print(f"report: {cell_out / 'report.html'}")
    contraction = saved[1]["contraction"].sort_values(ascending=False)
    print("most contracted (1 - posterior/prior variance): "
          + ", ".join(f"{name} {value:.2f}" for name, value in contraction.head(8).items()))
    aps = pd.read_csv(cell_out / "twins_ap_comparison.csv", index_col="feature")
    return amplifier_rows(folder.name, saved[0], vc_readings, est.prior), aps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cells", type=Path, default=CELLS, help="folder of cell folders")
    parser.add_argument("--estimator", default="clark_na_iv", help="bundled name or .pt file")
    parser.add_argument("--out", type=Path, default=Path("out/real_cells"), help="output folder")
    args = parser.parse_args()
    if not args.cells.is_dir():
        parser.error(f"--cells {args.cells} is not a folder (the cells of shared/data/clark_ipsc)")
    pd.set_option("display.width", 160)
    start = time.perf_counter()

    est = st.load_estimator(args.estimator)
    rules = QCRules.for_prior(est.prior)
    amplifier, aps = [], {}
    for folder in sorted(p for p in args.cells.iterdir() if p.is_dir()):
        rows, comparison = fit_cell(est, folder, args.out, rules)
        amplifier += rows
        if comparison is not None:
            aps[folder.name] = comparison
    if not amplifier:
        raise SystemExit("no cell could be fitted")

    table = pd.DataFrame(amplifier)
    table.to_csv(args.out / "amplifier.csv", index=False)
    print(f"\n== recording parameters: posterior median and {INTERVAL:.0%} interval vs amplifier")
    shown = ["cell", "parameter", "unit", "amplifier", "median", "low", "high", "agrees"]
    print(table[shown].round(3).to_string(index=False))
    fig = plot_amplifier_comparison(table)
    fig.savefig(args.out / "amplifier.png", dpi=130)
    ap_table = pd.concat(aps, names=["cell"]).reset_index()
    ap_table.to_csv(args.out / "aps.csv", index=False)
    print("\n== spontaneous APs: recorded vs the twins' median and 90 % range")
    print(ap_table.round(1).to_string(index=False))
    print(f"\nwrote {args.out} in {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
