"""E-4031 screen of the digital twins of one cell.

The bundled default estimator's demo cell (a viable ±40 % Kernik 2019 cell, recorded under the
clark2022 protocol with the recording artefact model) is fitted; its posterior draws are its
digital twins. Every twin is settled without drug and then exposed to E-4031 at six doses
(drugs/e-4031.toml: IKr block only); each (twin, dose) is classified as normal, EAD,
repolarisation failure or no beats. The incidence table printed per dose is the posterior
probability that this cell shows an EAD (``p_ead``) or any abnormal repolarisation, EAD or
repolarisation failure (``p_abnormal``), with the Monte-Carlo interval of the twins; the true
cell (which the demo knows) is screened too, for comparison. The figure goes to
``out/drug_screen.png`` and the screen's HTML report to ``out/drug_screen/report.html``.

The bundled E-4031 IC50 (294 nM, drugs/e-4031.toml) is the only one this project could check
against its source; E-4031 potency depends on the assay, so ``--ic50-nM`` replaces it, e.g.
with your own assay's value.

Run: ``.venv/bin/python examples/drug_screen.py [--twins 300] [--ic50-nM X] [--out out]``
(about 2-3 minutes on 2 cores for 300 twins).
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path

import sbi_twins as st
from sbi_twins.report import plot_screen, screen_report

DOSES_NM = (0, 10, 30, 50, 100, 300)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--twins", type=int, default=300, help="posterior draws (twins)")
    parser.add_argument("--ic50-nM", type=float, help="E-4031 IKr IC50 (nM) to use instead")
    parser.add_argument("--out", default="out", help="folder of the figure")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()

    est = st.load_estimator("default")
    theta, X = est.simulate_cells(1, seed=0)
    post = est.fit(X[0])
    twins = post.sample(args.twins, seed=1)
    model = est.cell_model()

    drug = st.load_drug("E-4031")
    if args.ic50_nM is not None:
        ikr = dataclasses.replace(drug.channels["IKr"], ic50_nM=args.ic50_nM,
                                  source=f"--ic50-nM {args.ic50_nM:g} (command line)")
        drug = st.Drug(drug.name, {"IKr": ikr})
    result = st.screen(model, twins, drug, DOSES_NM, progress=True)
    truth = st.screen(model, theta.iloc[[0]], drug, DOSES_NM)

    ead = result.incidence().drop(columns=["cell", "n_failed_sim"])
    abnormal = result.incidence(event="abnormal")
    table = ead.assign(n_abnormal=abnormal["n_abnormal"], p_abnormal=abnormal["p_abnormal"],
                       abnormal_low=abnormal["ci_low"], abnormal_high=abnormal["ci_high"])
    table["true cell"] = truth.outcomes["outcome"].to_numpy()
    print(f"\nE-4031 (IKr IC50 {drug.channels['IKr'].ic50_nM:g} nM) on {len(twins)} twins of "
          "the demo cell; intervals: 95 % Wilson")
    print(table.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    top = table.iloc[-1]
    print(f"\nTo confirm an abnormal-repolarisation incidence of {top['p_abnormal']:.2f} at "
          f"{top['dose_nM']:g} nM to ±0.10 in real cells: "
          f"{st.cells_needed(float(top['p_abnormal']), 0.10)} cells.")
    plot_screen(result, out / "drug_screen.png", event="abnormal")
    report = screen_report(result, out / "drug_screen", title="E-4031, twins of the demo cell")
    print(f"figure: {out / 'drug_screen.png'}; report: {report}; "
          f"{time.perf_counter() - start:.0f} s in all")


if __name__ == "__main__":
    main()
