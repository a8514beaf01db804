"""Make tests/data/format2_bundle/: a tiny estimator bundle of format 2 and what it gives.

The bundle (``estimator.pt``) is trained for 2 epochs on 300 cells of the small problem of
``tests/test_train.py`` (three conductances, a 520 ms step protocol); ``expected.npz`` holds
one observation and 50 posterior draws of it (seed 0). ``tests/test_train.py`` checks that
this version still loads the bundle and draws the same values. Rerun only when the bundle
format changes on purpose (then bump BUNDLE_FORMAT and keep a fixture of each format read).

    python tests/data/make_format2_bundle.py
"""

import shutil
import sys
import tempfile
import textwrap
from dataclasses import replace
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE.parent.parent / "benchmarks")]
from test_train import PRIOR, PROTOCOL, SMALL  # noqa: E402

from sbi_twins import DatasetSpec, load_estimator, simulate_dataset, train_estimator  # noqa: E402

OUT = Path(__file__).resolve().parent / "format2_bundle"

with tempfile.TemporaryDirectory() as work:
    work = Path(work)
    (work / "prior.toml").write_text(textwrap.dedent(PRIOR))
    (work / "protocol.toml").write_text(textwrap.dedent(PROTOCOL))
    spec = DatasetSpec(
        prior=str(work / "prior.toml"),
        protocol=str(work / "protocol.toml"),
        seed=5,
        chunk_size=300,
        viability=None,
    )
    ds = simulate_dataset(work / "ds", 300, spec, workers=1, progress=False)
    train_estimator(ds.directory, work / "est", replace(SMALL, max_epochs=2), progress=False)
    OUT.mkdir(exist_ok=True)
    shutil.copy(work / "est" / "estimator.pt", OUT / "estimator.pt")
    estimator = load_estimator(OUT)
    observation = np.asarray(ds.observations[0], dtype=float)
    draws = estimator.posteriors(observation)[0].sample(50, seed=0)[list(estimator.names)]
    np.savez(OUT / "expected.npz", observation=observation, draws=draws.to_numpy())
    print(f"wrote {OUT}: {(OUT / 'estimator.pt').stat().st_size / 1e3:.0f} kB")
