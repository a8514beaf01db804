"""Screens in chunks: cost of writing and resuming them, and local worker processes.

The same screen (twins of the demo cell, E-4031 at 6 doses, the default protocol: 10 s settling,
20 s per dose) run side by side: in one process (Numba threads on every core); in chunks
(``--chunk-twins``) written to a directory (one process); in chunks on 2 worker processes (one
Numba thread each); then resumed with every other chunk deleted, and rerun once finished (read
back).
Every variant's outcome table must equal the one-process table.

Usage::

    python benchmarks/screen_chunks.py            # 1000 twins, ~5 min
    python benchmarks/screen_chunks.py --quick    # 200 twins in chunks of 50
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))
import _common  # noqa: E402

DEFAULT_OUT = HERE / "results" / "screen_chunks.json"
DOSES_NM = (0.0, 10.0, 30.0, 50.0, 100.0, 300.0)


def main(argv=None) -> None:
    args, n_twins, _ = _common.parse_args(
        __doc__,
        argv,
        size=("twins", "twins screened at each dose", 200, 1000),
        repeats=(1, 1),
        quick_help="200 twins in chunks of 50",
        seed_help="the demo cell is simulate_cells(1, seed=SEED), the twins sample(N, seed=SEED+1)",
        default_out=DEFAULT_OUT,
        extra=lambda ap: ap.add_argument(
            "--chunk-twins", type=int, default=None, help="twins per chunk (default 256)"
        ),
    )
    chunk = args.chunk_twins or (50 if args.quick else 256)
    log = _common.Log()
    import pandas as pd

    import sbi_twins as st

    est = st.load_estimator("default")
    _, X = est.simulate_cells(1, seed=args.seed)
    twins = est.fit(X[0]).sample(n_twins, seed=args.seed + 1)
    model = est.cell_model()
    st.screen(model, twins.iloc[:2], "E-4031", DOSES_NM, settle_ms=10.0, duration_ms=20.0,
              window_ms=10.0)  # compiled kernels loaded: not timed
    rows, reference = [], None
    with tempfile.TemporaryDirectory() as tmp:
        variants = [
            ("one process (Numba threads)", {}),
            ("chunks written, one process", {"out": Path(tmp) / "one"}),
            ("chunks on 2 worker processes", {"out": Path(tmp) / "two", "workers": 2}),
            ("resumed, every other chunk deleted", {"out": Path(tmp) / "two", "workers": 2}),
            ("rerun when finished (read back)", {"out": Path(tmp) / "two", "workers": 2}),
        ]
        for _, options in variants[1:]:
            options["chunk_twins"] = chunk
        for name, options in variants:
            if name.startswith("resumed"):
                for written in sorted((options["out"] / "chunks").iterdir())[::2]:
                    written.unlink()
            start = time.perf_counter()
            result = st.screen(model, twins, "E-4031", DOSES_NM, **options)
            seconds = time.perf_counter() - start
            if reference is None:
                reference = result.outcomes
            pd.testing.assert_frame_equal(result.outcomes, reference)  # raises if not
            rows.append({"variant": name, "seconds": seconds})
            log(f"{name}: {seconds:.1f} s, outcomes equal")
    base = rows[0]["seconds"]
    for row in rows:
        row["ratio"] = row["seconds"] / base
    res = {
        "machine": _common.machine_info(),
        "twins": n_twins,
        "chunk_twins": chunk,
        "doses_nM": list(DOSES_NM),
        "outcomes_equal": True,
        "rows": rows,
    }
    _common.write_results(res, _markdown, args.out, log.elapsed())


def _markdown(res: dict) -> str:
    lines = [
        f"{res['twins']} twins x {len(res['doses_nM'])} doses of E-4031, chunks of "
        f"{res['chunk_twins']} twins; "
        "every variant's outcomes equal the one-process table",
        "",
        "| variant | wall (s) | vs one process |",
        "|---|---|---|",
    ]
    lines += [f"| {r['variant']} | {r['seconds']:.1f} | {r['ratio']:.2f} |" for r in res["rows"]]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
