"""Real iPSC-CMs: quality control and action-potential features of the shared recordings.

For each cell of ``shared/data/clark_ipsc`` (Clark et al. 2023, Europace; data
Christini-Lab/iPSC-leak-artifact, BSD-3-Clause), reads the voltage-clamp recording
``Compensation_rspre_0`` (sodium I-V steps, the bundled ``clark_na_iv`` protocol) and the
spontaneous current-clamp recording ``Pre-drug_spont``, checks both against the QC rules with
the cell's membrane test (``cell-params.csv``), and prints the QC tables and the AP features.
Takes a few seconds; nothing is simulated:

    python examples/real_cells.py [--cells /work/shared/data/clark_ipsc/cells]

Fitting these cells needs an estimator trained on ``clark_na_iv``; the bundled one is for
``clark2022``, so this example stops at QC.
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import pandas as pd

import sbi_twins as st
from sbi_twins.physiology import qc, recording_ap_features

CELLS = Path("/work/shared/data/clark_ipsc/cells")


def voltage_clamp(path: Path) -> st.Recording:
    """A Compensation file as a voltage-clamp Recording with its command.

    The authors' CSV has a ``Voltage (V)`` column (the command) next to ``Current (pA/pF)``;
    both could be a signal, so each is read by name and the voltage becomes the command.
    """
    current = st.load_recording(path, channel="Current (pA/pF)")
    command = st.load_recording(path, channel="Voltage (V)").to_unit("mV").signal
    return dataclasses.replace(current, command=command)


def membrane_test(folder: Path, trial: str) -> dict[str, float]:
    """Cm (pF), access resistance (MΩ) and input resistance (GΩ) measured before a trial.

    The input resistance is seal and membrane in parallel: a lower bound on the seal.
    """
    params = pd.read_csv(folder / "cell-params.csv").set_index("trial_type").loc[trial]
    return {"cm_pF": params["Cm"], "rs_MOhm": params["Ra"], "r_seal_GOhm": params["Rm"] / 1e3}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cells", type=Path, default=CELLS, help="folder of cell folders")
    args = parser.parse_args()
    pd.set_option("display.width", 160)
    pd.set_option("display.max_colwidth", 90)

    protocol = st.load_protocol("clark_na_iv")
    features = {}
    for folder in sorted(p for p in args.cells.iterdir() if p.is_dir()):
        vc = voltage_clamp(folder / "Compensation_rspre_0.csv.gz")
        vc_table = qc(vc, protocol=protocol, measured=membrane_test(folder, "rspre0"))
        spont = st.load_recording(folder / "Pre-drug_spont.csv.gz", channel="Voltage (V)")
        cc_table = qc(spont, measured=membrane_test(folder, "spont"))
        for what, table in (("voltage clamp, clark_na_iv", vc_table), ("spontaneous", cc_table)):
            print(f"\n== {folder.name}, {what}: {table.attrs['summary']}")
            checked = table[table["passed"].notna()]
            print(checked[["rule", "value", "unit", "threshold", "passed"]].to_string(index=False))
        features[folder.name] = recording_ap_features(spont).iloc[0]
    print("\n== spontaneous AP features (1 kHz zero-phase low-pass, then ap_features)")
    print(pd.DataFrame(features).T.round(1).to_string())


if __name__ == "__main__":
    main()
