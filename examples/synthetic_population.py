"""A small synthetic population: draw cells, keep the beating ones, record them, look at them.

Runs in a few minutes on a laptop (the first run also compiles the Kernik 2019 kernels, ~2 min):

    python examples/synthetic_population.py [--out population] [-n 200]

The same as ``sbi-twins simulate -n 200 --out population``; rerunning resumes.
"""

from __future__ import annotations

import argparse

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

import sbi_twins as st  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="population")
    parser.add_argument("-n", type=int, default=200)
    args = parser.parse_args()

    spec = st.DatasetSpec(
        model="kernik2019", prior="kernik2019_pm40", protocol="clark2022", seed=0, chunk_size=64
    )
    ds = st.simulate_dataset(args.out, args.n, spec)
    print(ds, f"acceptance {ds.acceptance_rate:.1%}")
    print(ds.candidates["status"].value_counts().to_string())

    names = ["ina.g_Na", "ikr.g_Kr", "recording.rs_MOhm", "recording.rs_compensation"]
    print(ds.parameters[names].describe().round(3).to_string())

    scheme = ds.manifest["observation"]
    fig, ax = plt.subplots(figsize=(10, 4), constrained_layout=True)
    for row in ds.observations[:8]:  # memory-mapped: only these rows are read
        ax.plot(row, lw=0.6)
    ax.set(
        xlabel=f"observation index (L = {scheme['length']})",
        ylabel="current (pA/pF)",
        ylim=(-60, 40),
        title="8 recorded cells, reduced by the observation scheme",
    )
    fig.savefig(f"{args.out}/observations.png", dpi=120)
    print(f"wrote {args.out}/observations.png")


if __name__ == "__main__":
    main()
