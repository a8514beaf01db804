"""Fault injection: bad inputs and faults against every layer (issue 20).

The cases are the issue's table of faults, by its IDs (``D`` datasets, ``P``/``M``/``K``
protocols, model files and the kernel cache, ``T`` training, ``F`` fitting recordings, ``C``
command-line settings); a letter after an ID (``D12b``) is a variant of the same fault. Each
case runs in its own subprocess (its own process group, with a timeout and an address-space
limit, so a case that allocates without bound or hangs cannot harm the machine) and is judged:

``clean error``
    the run stops with a message that says what is wrong and where (the case's pattern);
``right answer``
    the run succeeds and its result is right (a healed cache, a redone chunk, no orphans...);
``unhelpful error``
    a one-line error that does not say what is wrong or where;
``only flagged``
    a recording that must be refused is fitted, with no more than a warning that it is unlike
    the training cells;
``silently wrong``
    the run succeeds with a wrong or misleading result (NaN rows, a warning blaming the cells,
    orphaned workers, a file on disk replaced: "DATA LOST");
``traceback``
    a raw exception from inside (numpy, json, numba...) or an unexpected error;
``hang``
    no end within the timeout (the process group is killed).

The fit cases start from one cell simulated by the bundled ``default`` estimator (clark2022,
0.1 ms, pA/pF), written as the issue describes each input (the CSV tables as ``sbi-twins demo``
writes its example cell); "right answer" there means the observation the estimator sees is the
clean cell's. They use a copy of the bundled estimator that keeps a misspecification reference
(the bundle's own; for a bundle without one, computed once as ``fit`` would on first use, so
that each fit does not simulate 400 cells again).
The training cases start from a finished 2-epoch run on a 12-cell reference dataset.

It also measures what the integrity checks cost when a dataset is first read (synthetic datasets
of 2,000 and 20,000 cells shaped like clark2022 ones, with and without recorded checksums).

Usage::

    python benchmarks/faults.py                     # every case against this checkout
    python benchmarks/faults.py --only D06,K01      # some cases (--only F prefix: all F cases)
    python benchmarks/faults.py --only T03,F21 --merge --no-cost
        # rerun some cases into the last full run's JSON (their rows replaced, the rerun noted)
    python benchmarks/faults.py --checkout DIR --max-timeout 60 --out /tmp/faults_old.json
        # the same cases against another source tree, e.g. `git archive` of an older commit
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))
import _common  # noqa: E402

DEFAULT_OUT = HERE / "results" / "faults.json"

SHORT_PROTOCOL = """
name = "short_steps"
holding_mV = -80.0
[[segment]]
type = "step"
duration_ms = 200
v_mV = -80
[[segment]]
type = "step"
duration_ms = 100
v_mV = {step_mV}
[[segment]]
type = "ramp"
duration_ms = 100
v_start_mV = 20
v_end_mV = -100
"""
QUIET_PRIOR = """
model = "kernik2019"
[[parameter]]
name = "ik1.g_K1"
distribution = "uniform"
low = 8
high = 10
"""
#: Raw exceptions that mean "nobody caught this": never a clean error, whatever the message.
RAW = {"UnicodeDecodeError", "JSONDecodeError", "MemoryError", "AttributeError", "KeyError",
       "UnpicklingError", "EOFError", "TypeError", "IndexError"}  # fmt: skip


# -------------------------------------------------------------------------------------------
# Running a case
# -------------------------------------------------------------------------------------------
@dataclass
class Run:
    """What a subprocess did: exit status (None: killed after the timeout) and its output."""

    returncode: int | None
    stdout: str
    stderr: str
    seconds: float


@dataclass
class Context:
    """Where the cases run: scratch directory, environment, input files, limits."""

    work: Path
    env: dict[str, str]
    memory_bytes: int
    max_timeout: float
    files: dict[str, Path] = field(default_factory=dict)
    reference_args: list[str] = field(default_factory=list)  # the CLI command that made it

    def limited(self) -> None:
        """Subprocess pre-exec: cap the address space (a runaway allocation fails there)."""
        resource.setrlimit(resource.RLIMIT_AS, (self.memory_bytes, self.memory_bytes))

    def start(self, argv: list[str], env: dict[str, str] | None = None) -> subprocess.Popen:
        return subprocess.Popen(
            argv,
            env=env or self.env,
            cwd=self.work,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,  # its own process group: a hang is killed whole
            preexec_fn=self.limited,
        )

    def run(self, argv: list[str], timeout: float, env: dict[str, str] | None = None) -> Run:
        start = time.perf_counter()
        process = self.start(argv, env)
        try:
            out, err = process.communicate(timeout=min(timeout, self.max_timeout))
            code = process.returncode
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            out, err = process.communicate()
            code = None
        return Run(code, out, err, time.perf_counter() - start)

    def cli(self, args: list[str], timeout: float = 120.0) -> Run:
        return self.run([sys.executable, "-m", "sbi_twins.cli", *args], timeout)

    def python(self, code: str, timeout: float = 120.0, env: dict[str, str] | None = None) -> Run:
        return self.run([sys.executable, "-c", code], timeout, env)

    def dataset_copy(self, name: str) -> Path:
        target = self.work / name
        shutil.rmtree(target, ignore_errors=True)
        shutil.copytree(self.files["reference"], target)
        return target


#: Wraps a case's ``_case()`` so the child reports its value (and warnings) or its exception.
_API = """
import json, sys, warnings
{code}
try:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        value = _case()
    result = {{"value": value, "warnings": [f"{{w.category.__name__}}: {{w.message}}"
                                           for w in caught]}}
except Exception as error:
    result = {{"raised": type(error).__name__, "message": str(error)}}
print("\\n" + json.dumps(result, default=str))
"""


def api(ctx: Context, code: str, timeout: float = 120.0, env: dict | None = None) -> tuple:
    """Run ``code`` (which defines ``_case()``) through :data:`_API`: (run, result or None)."""
    run = ctx.python(_API.format(code=textwrap.dedent(code)), timeout, env)
    try:
        return run, json.loads(run.stdout.strip().splitlines()[-1])
    except (IndexError, json.JSONDecodeError):
        return run, None


def judge_error(run: Run, result: dict | None, expect: str) -> tuple[str, str]:
    """Outcome of a case that should stop with an error matching ``expect``."""
    if run.returncode is None:
        return "hang", f"killed after {run.seconds:.0f} s"
    if result is None:
        return "traceback", _last_line(run.stderr)
    if "raised" not in result:
        return "silently wrong", f"no error: {json.dumps(result['value'])[:120]}"
    detail = f"{result['raised']}: {result['message']}"
    if result["raised"] not in RAW and re.search(expect, result["message"], re.S):
        return "clean error", detail
    return ("traceback" if result["raised"] in RAW else "unhelpful error"), detail


def judge_cli_error(run: Run, expect: str) -> tuple[str, str]:
    """Outcome of a CLI run that should end in one line matching ``expect`` (status 2)."""
    if run.returncode is None:
        return "hang", f"killed after {run.seconds:.0f} s"
    if "Traceback" in run.stderr:
        return "traceback", _last_line(run.stderr)
    if run.returncode == 0:
        return "silently wrong", "finished: " + _last_line(run.stdout)
    line = _last_line(run.stderr)
    if run.returncode == 2 and re.search(expect, run.stderr, re.S):
        return "clean error", line
    return ("traceback" if "unexpected" in line else "unhelpful error"), line


def _last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else "(no output)"


# -------------------------------------------------------------------------------------------
# The cases
# -------------------------------------------------------------------------------------------
@dataclass
class Case:
    """One fault: its ID, what is done, and how to run and judge it."""

    id: str
    what: str
    run: Callable[[Context], tuple[str, str]]


def _simulate_args(ctx: Context, out: str, *extra: str) -> list[str]:
    return ["simulate", "--out", str(ctx.work / out), "--quiet", "--workers", "1", *extra]


def d06(ctx: Context) -> tuple[str, str]:
    protocol = str(ctx.files["wild"])
    run = ctx.cli(_simulate_args(ctx, "d06", "-n", "50", "--protocol", protocol), timeout=300)
    return judge_cli_error(run, r"segment 2 \(step\).*\+1e\+06 mV")


def d06b(ctx: Context) -> tuple[str, str]:
    args = ["-n", "50", "--protocol", str(ctx.files["hot"]), "--no-viability", "--ideal-clamp"]
    run = ctx.cli(_simulate_args(ctx, "d06b", *args), timeout=300)
    return judge_cli_error(run, r"of \d+ draws accepted.*simulation_failed")


def d07(ctx: Context) -> tuple[str, str]:
    args = ["-n", "50", "--prior", str(ctx.files["quiet"]), "--protocol", str(ctx.files["short"])]
    run = ctx.cli(_simulate_args(ctx, "d07", *args), timeout=900)
    return judge_cli_error(run, r"0 of \d+ draws accepted.*too_few_beats")


# Damage done to chunk 1 of a copy of the reference dataset (in this process, before the case).
def _npy_data_offset(path: Path) -> int:
    """Where the array data of a .npy file starts (after its header)."""
    array = np.load(path, mmap_mode="r")
    offset = int(array.offset)
    del array  # closes the map before the file is rewritten
    return offset


def _truncate(directory: Path, chunk: Path) -> None:
    path = chunk / "observations.npy"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _break_header(directory: Path, chunk: Path) -> None:
    path = chunk / "observations.npy"
    data = bytearray(path.read_bytes())
    data[12:40] = b"{'descr': <<garbage>>, 'sha"
    path.write_bytes(bytes(data))


def _zero_theta_header(directory: Path, chunk: Path) -> None:
    """The first 16 bytes of theta.npy zeroed (the issue's D15/D16)."""
    path = chunk / "theta.npy"
    data = bytearray(path.read_bytes())
    data[:16] = bytes(16)
    path.write_bytes(bytes(data))


def _ff_over_data(directory: Path, chunk: Path) -> None:
    """Up to 4 kB of observation data overwritten with 0xFF bytes (NaN floats), header intact."""
    path = chunk / "observations.npy"
    data = bytearray(path.read_bytes())
    start = _npy_data_offset(path)
    stop = min(len(data), start + 4096)
    data[start:stop] = b"\xff" * (stop - start)
    path.write_bytes(bytes(data))


def _one_nan(directory: Path, chunk: Path) -> None:
    path = chunk / "observations.npy"
    array = np.load(path)
    array[0, 3] = np.nan
    np.save(path, array)


def _scaled(directory: Path, chunk: Path) -> None:
    """Finite garbage: the observations x1e6 in a valid .npy file."""
    path = chunk / "observations.npy"
    np.save(path, np.load(path) * np.float32(1e6))


def _garbage_tail(directory: Path, chunk: Path) -> None:
    path = chunk / "observations.npy"
    data = bytearray(path.read_bytes())
    data[-64:] = np.random.default_rng(0).bytes(64)
    path.write_bytes(bytes(data))


def _theta_missing(directory: Path, chunk: Path) -> None:
    (chunk / "theta.npy").unlink()


def _old_format_nan(directory: Path, chunk: Path) -> None:
    """A dataset written before checksums were recorded, with a NaN in a shard."""
    for marker in directory.glob("chunks/*/done.json"):
        record = json.loads(marker.read_text())
        record.pop("sha256", None)
        marker.write_text(json.dumps(record))
    _one_nan(directory, chunk)


def _done_json(content: bytes) -> Callable[[Path, Path], None]:
    return lambda directory, chunk: (chunk / "done.json").write_bytes(content)


def _truncated_manifest(directory: Path, chunk: Path) -> None:
    manifest = directory / "manifest.json"
    manifest.write_text(manifest.read_text()[:100])


Damage = Callable[[Path, Path], None]
_CHUNK1 = r"chunk 1 of .* is damaged \({what}.*\): delete .*000001 and rerun"
_MANIFEST = r"manifest.json is not a readable dataset manifest.*restore it"


def _damaged_copy(ctx: Context, name: str, damage: Damage) -> Path:
    directory = ctx.dataset_copy(name)
    damage(directory, directory / "chunks" / "000001")
    return directory


def _read_damaged(ctx: Context, name: str, damage: Damage, expect: str) -> tuple[str, str]:
    """Open a damaged copy and read its parameters and observations, as training does."""
    directory = _damaged_copy(ctx, name, damage)
    code = f"""
        import numpy as np
        from sbi_twins.data import open_dataset
        def _case():
            ds = open_dataset({str(directory)!r})
            x = np.asarray(ds.observations[:])
            return {{"cells": len(ds), "finite": bool(np.isfinite(x).all()),
                     "parameters_finite": bool(np.isfinite(ds.parameters.to_numpy()).all())}}
    """
    run, result = api(ctx, code)
    return judge_error(run, result, expect)


def _train_damaged(ctx: Context, name: str, damage: Damage, expect: str) -> tuple[str, str]:
    """`sbi-twins train` on a damaged copy: refused before anything is written."""
    directory = _damaged_copy(ctx, name, damage)
    out = ctx.work / f"{name}_estimator"
    outcome, detail = judge_cli_error(ctx.cli(_train_args(directory, out)), expect)
    if outcome == "clean error" and out.exists():
        return "unhelpful error", f"{detail} (but {out.name} was written)"
    return outcome, detail


def _resimulate_damaged(ctx: Context, name: str, damage: Damage, expect: str) -> tuple[str, str]:
    """The damaged copy's own `sbi-twins simulate` command, run again."""
    directory = _damaged_copy(ctx, name, damage)
    return judge_cli_error(ctx.cli(ctx.reference_args[:-2] + ["--out", str(directory)]), expect)


def _train_args(dataset: Path, out: Path, *extra: str) -> list[str]:
    return ["train", str(dataset), "--out", str(out), "--max-epochs", "2", "--quiet", *extra]


def d18(ctx: Context) -> tuple[str, str]:
    directory = ctx.dataset_copy("d18")
    (directory / "chunks" / "000001" / "done.json").unlink()
    run = ctx.cli(ctx.reference_args[:-2] + ["--out", str(directory)])
    if run.returncode is None:
        return "hang", f"killed after {run.seconds:.0f} s"
    if run.returncode != 0:
        return judge_cli_error(run, "(?!)")  # any error is a failure here
    return "right answer", "rerun redid the chunk: " + _last_line(run.stdout)


def c24(ctx: Context) -> tuple[str, str]:
    args = ["-n", "5", "--protocol", str(ctx.files["short"]), "--chunk-size", "100000000"]
    run = ctx.cli(_simulate_args(ctx, "c24", *args))
    return judge_cli_error(run, r"chunk_size 100000000 is too large.*memory")


def p12(ctx: Context) -> tuple[str, str]:
    code = f"""
        from sbi_twins import load_model, load_protocol
        def _case():
            protocol = load_protocol({str(ctx.files["wild"])!r})
            current = load_model("kernik2019").simulate_vc(protocol, {{"ina.g_Na": [9.0, 12.0]}})
            return {{"all_nan": bool((current != current).all())}}
    """
    run, result = api(ctx, code)
    return judge_error(run, result, r"segment 2 \(step\).*\+1e\+06 mV.*250")


def p13(ctx: Context) -> tuple[str, str]:
    code = f"""
        from sbi_twins import load_model, load_protocol
        def _case():
            protocol = load_protocol({str(ctx.files["hot"])!r})
            current = load_model("kernik2019").simulate_vc(protocol, {{"ina.g_Na": [9.0, 12.0]}})
            return {{"all_nan": bool((current != current).all())}}
    """
    run, result = api(ctx, code)
    if result is None or "raised" in result or run.returncode is None:
        return judge_error(run, result, "(?!)")
    warned = " ".join(result["warnings"])
    if re.search(r"Every cell failed.*\+200 mV", warned):
        return "right answer", warned
    return "silently wrong", warned or "no warning"


def p26(ctx: Context) -> tuple[str, str]:
    code = """
        from sbi_twins import Protocol, Segment, load_model
        def _case():
            protocol = Protocol("long", -75.0, (Segment.step(1e10, -75),))
            return list(load_model("hh1952").simulate_vc(protocol).shape)
    """
    run, result = api(ctx, code)
    return judge_error(run, result, r"would be 1e\+11 samples long")


def _model_file_case(ctx: Context, content: str, expect: str) -> tuple[str, str]:
    code = f"""
        import numpy as np
        from sbi_twins import Protocol, Segment, load_model
        def _case():
            {content}
            m = load_model(path)
            proto = Protocol("p", -80.0, (Segment.step(5, -80), Segment.step(5, 0)))
            return {{"finite": bool(np.isfinite(m.simulate_vc(proto)).all())}}
    """
    run, result = api(ctx, code)
    return judge_error(run, result, expect)


def _leak_with(ctx: Context, name: str, old: str, new: str) -> str:
    """passive_leak.mmt with one line changed; the code line that names the file."""
    path = ctx.work / f"{name}.mmt"
    path.write_text(ctx.files["leak"].read_text().replace(old, new, 1))
    return f"path = {str(path)!r}"


def m05(ctx: Context) -> tuple[str, str]:
    path = ctx.work / "binary.mmt"
    path.write_bytes(b"\x7fELF\x02\x01\x01\x00" + bytes(range(256)) * 4)
    return _model_file_case(ctx, f"path = {str(path)!r}", "not a text .mmt file")


def m07(ctx: Context) -> tuple[str, str]:
    folder = ctx.work / "folder.mmt"
    folder.mkdir(exist_ok=True)
    return _model_file_case(ctx, f"path = {str(folder)!r}", "is a directory")


def _negative(ctx: Context, model: str, name: str, value: float) -> tuple[str, str]:
    code = f"""
        import numpy as np
        from sbi_twins import load_model, load_protocol
        def _case():
            m = load_model({model!r})
            proto = load_protocol({str(ctx.files["short"])!r})
            x = m.simulate_vc(proto, {{{name!r}: [{value}, {value}]}})
            return {{"finite": bool(np.isfinite(x).all())}}
    """
    run, result = api(ctx, code)
    return judge_error(run, result, rf"'{re.escape(name)}'.*negative.*allow_negative")


def _cache_case(ctx: Context, name: str, damage: Callable[[Path], None]) -> tuple[str, str]:
    """Compile hh1952 into a fresh cache, damage its files, and simulate again."""
    env = dict(ctx.env, SBI_TWINS_CACHE=str(ctx.work / f"cache_{name}"))
    code = """
        from sbi_twins import Protocol, Segment, load_model
        def _case():
            m = load_model("hh1952")
            proto = Protocol("p", -75.0, (Segment.step(5, -75), Segment.ramp(5, -75, 20)))
            return {"current": m.simulate_vc(proto).tolist(), "file": m.kernels.__file__}
    """
    run, first = api(ctx, code, timeout=600, env=env)
    if first is None or "raised" in first:
        return "traceback", "could not compile the model: " + _last_line(run.stderr)
    damage(Path(first["value"]["file"]))
    run, again = api(ctx, code, timeout=600, env=env)
    if again is None or "raised" in again or run.returncode is None:
        return judge_error(run, again, "(?!)")
    if again["value"]["current"] != first["value"]["current"]:
        return "silently wrong", "healed, but the current differs"
    warned = [w for w in again["warnings"] if "KernelCache" in w]
    return "right answer", (warned[0] if warned else "no warning")


def _truncate_kernel(kernel: Path) -> None:
    """Cut the module before the decorator of ``simulate_vc``: it still imports, without it."""
    text = kernel.read_text()
    kernel.write_text(text[: text.rindex("\n@", 0, text.index("def simulate_vc(")) + 1])


def _scramble_compiled(kernel: Path) -> None:
    for path in (kernel.parent / "__pycache__").glob(f"{kernel.stem}.*.nb[ic]"):
        path.write_bytes(os.urandom(path.stat().st_size))


def _process_case(ctx: Context, name: str, kill: str) -> tuple[str, str]:
    """A 2-worker run interrupted (SIGINT to its group, as Ctrl-C) or killed (-9, main only)."""
    out = ctx.work / name
    common = ["simulate", "--out", str(out), "--quiet", "--chunk-size", "8"]
    common += ["--protocol", str(ctx.files["short"])]
    process = ctx.start(
        [sys.executable, "-m", "sbi_twins.cli", *common, "-n", "100000", "--workers", "2"]
    )
    deadline = time.time() + 300
    while not list(out.glob("chunks/*/done.json")) and time.time() < deadline:
        if process.poll() is not None:
            return "traceback", _last_line(process.stderr.read())
        time.sleep(0.05)
    workers = _children(process.pid)
    if kill == "int":
        os.killpg(process.pid, signal.SIGINT)
    else:
        os.kill(process.pid, signal.SIGKILL)
    try:
        process.wait(timeout=60)  # not communicate(): orphans would hold its pipes open
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        return "hang", "did not stop within 60 s of the signal"
    survivors = _survivors(workers, 5.0)
    try:
        os.killpg(process.pid, signal.SIGKILL)  # clean up whatever is left of the group
    except ProcessLookupError:
        pass
    stderr = process.stderr.read()
    if survivors:
        return "silently wrong", f"{len(survivors)} of {len(workers)} child processes survived"
    if kill != "int":
        return "right answer", f"all {len(workers)} child processes gone within 5 s"
    if "Traceback" in stderr:
        return "traceback", f"{stderr.count('Traceback')} traceback(s) printed"
    lines = stderr.strip().splitlines()
    resumed = ctx.cli(common + ["-n", "3", "--workers", "1"])
    if len(lines) == 1 and process.returncode == 130 and resumed.returncode == 0:
        return "clean error", f"{lines[0]}; rerun resumed"
    return "unhelpful error", f"{len(lines)} stderr lines, status {process.returncode}"


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                found.append(int(entry.name))
    return found


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _survivors(pids: list[int], within_s: float) -> list[int]:
    deadline = time.time() + within_s
    while any(_alive(p) for p in pids) and time.time() < deadline:
        time.sleep(0.05)
    return [p for p in pids if _alive(p)]


# -------------------------------------------------------------------------------------------
# Fitting recordings (F, C21, C22): one cell simulated by the bundled estimator, written the
# way the issue describes each input, then `sbi-twins fit`
# -------------------------------------------------------------------------------------------
#: Seed of the simulated cell every fit case starts from.
CELL_SEED = 5
#: Posterior draws of each fit (what is judged is the observation and the messages).
FIT_SAMPLES = "200"
#: Largest relative RMS difference between the observation of a genuine 0.2 ms recording
#: (resampled onto the 0.1 ms grid) and that of the same cell at 0.1 ms (measured: 0.03;
#: another cell: 2.8, the recording shifted by 50 ms: 0.9).
RESAMPLED_RTOL = 0.1

_FIT_INPUTS = """
import json
import numpy as np
import pandas as pd
from pathlib import Path
from sbi_twins import load_estimator
work = Path({work!r})
estimator = load_estimator("default")
if "misspecification_reference" not in estimator.manifest:
    # the reference fit() would simulate on first use (400 cells), computed once for all cases
    reference = estimator.misspecification_reference()
    estimator.manifest["misspecification_reference"] = reference.to_dict()
estimator.save(work / "default.pt")
cells, traces = estimator.simulate_cells(1, seed={seed})
x = traces[0]
np.save(work / "cell.npy", x)
times = estimator.protocol.times(estimator.sample_interval_ms)
# the table `sbi-twins demo` writes (example_cell.csv)
table = pd.DataFrame(
    {{"time_ms": times, "command_mV": estimator.protocol.voltage(times), "current_pA_pF": x}}
)
table.to_csv(work / "f10.csv", columns=["current_pA_pF"], index=False, header=False)
table.to_csv(work / "f11.csv", index=False, sep=";")
table.to_csv(work / "f12.csv", index=False, sep="\\t")
table.assign(**{{"": ""}}).to_csv(work / "f13.csv", index=False)
table.to_csv(work / "f14.csv", index=False, sep=";", decimal=",")
np.save(work / "f05.npy", x[None, :])
np.save(work / "f06.npy", x[:, None])
(work / "f08.npy").write_bytes(b"")
np.save(work / "f17.npy", x * 100)
np.save(work / "f18.npy", x * 0.1)
np.save(work / "f19.npy", np.zeros_like(x))
np.save(work / "f20.npy", -x)
np.save(work / "f21.npy", x * 1e40)
np.save(work / "f22.npy", np.concatenate([x[500:], np.full(500, x[-1])]))  # started 50 ms late
np.save(work / "f27.npy", x[::2])
print(json.dumps({{"samples": int(x.size), "truth": cells.iloc[0].to_dict()}}))
"""


def _fit_setup(ctx: Context) -> Path:
    """The inputs of the fit cases, and the observation of the clean cell (made once)."""
    if "fit_error" in ctx.files:
        raise RuntimeError(ctx.files["fit_error"])
    if "clean_fit" in ctx.files:
        return ctx.files["clean_fit"]
    run = ctx.python(_FIT_INPUTS.format(work=str(ctx.work), seed=CELL_SEED), timeout=3600)
    if run.returncode != 0:
        ctx.files["fit_error"] = "could not make the fit inputs: " + _last_line(run.stderr)
        raise RuntimeError(ctx.files["fit_error"])
    clean = _fit(ctx, "clean", "cell.npy")
    if clean.returncode != 0 or "warning" in clean.stderr:
        ctx.files["fit_error"] = "the clean cell is not fitted cleanly: " + _last_line(clean.stderr)
        raise RuntimeError(ctx.files["fit_error"])
    ctx.files["clean_fit"] = ctx.work / "fit_clean"
    return ctx.files["clean_fit"]


def _fit(ctx: Context, name: str, recording: str, *extra: str) -> Run:
    args = ["fit", str(ctx.work / recording), "--estimator", str(ctx.work / "default.pt")]
    args += ["--samples", FIT_SAMPLES, "--out", str(ctx.work / f"fit_{name}"), *extra]
    return ctx.cli(args, timeout=900)


def _observation_gap(ctx: Context, name: str) -> float:
    """Relative RMS difference between the case's observation and the clean cell's."""
    clean = np.load(_fit_setup(ctx) / "observation.npy")
    got = np.load(ctx.work / f"fit_{name}" / "observation.npy")
    if got.shape != clean.shape:
        return math.inf
    return float(np.sqrt(np.mean((got - clean) ** 2) / np.mean(clean**2)))


def _warnings(run: Run) -> list[str]:
    return [line for line in run.stderr.splitlines() if ": warning: " in line]


_FLAGGED = "unlike every cell the estimator was trained on"


def _fit_case(
    ctx: Context, name: str, recording: str, extra: tuple[str, ...] = (),
    expect: str | None = None, flagged_ok: bool = False, rtol: float = 1e-6,
) -> tuple[str, str]:  # fmt: skip
    """Fit one input. ``expect``: the error it must end in (a regex); None: it must be fitted
    as the clean cell is (observation within ``rtol``, not flagged). ``flagged_ok``: a fit
    that warns it is unlike the training cells is right too (a recording the estimator was
    never trained for must be refused or flagged, never fitted with confidence).
    """
    try:
        _fit_setup(ctx)
    except RuntimeError as error:
        return "traceback", str(error)
    run = _fit(ctx, name, recording, *extra)
    warned = _warnings(run)
    if run.returncode != 0 or "Traceback" in run.stderr:
        return judge_cli_error(run, expect or "(?!)")
    flagged = any(_FLAGGED in line for line in warned)
    if flagged and flagged_ok:
        return "right answer", "fitted and flagged: " + warned[-1]
    gap = _observation_gap(ctx, name)
    summary = _last_line(run.stdout)
    if expect is None and gap <= rtol and not flagged:
        note = f" (warned: {' / '.join(warned)})" if warned else ""
        return "right answer", f"observation as the clean cell's (gap {gap:.2g}){note}"
    what = f"fitted (observation {gap:.2g} off the clean cell's): {summary}"
    if flagged:
        return "only flagged", what + " / " + warned[-1]
    return "silently wrong", what + (f" / {warned[-1]}" if warned else "")


def _fitted(
    name: str, recording: str, *extra: str, expect: str | None = None, flagged_ok: bool = False,
    rtol: float = 1e-6,
) -> Callable[[Context], tuple[str, str]]:  # fmt: skip
    return partial(
        _fit_case, name=name, recording=recording, extra=extra, expect=expect,
        flagged_ok=flagged_ok, rtol=rtol,
    )  # fmt: skip


def _damaged_estimator(ctx: Context, name: str, write: str, expect: str) -> tuple[str, str]:
    """`fit` with a damaged estimator file: ``write`` is "truncated", "random" or "dir"."""
    try:
        _fit_setup(ctx)
    except RuntimeError as error:
        return "traceback", str(error)
    bundle = (ctx.work / "default.pt").read_bytes()
    if write == "random":
        target = ctx.work / f"{name}.pt"
        target.write_bytes(np.random.default_rng(0).bytes(len(bundle)))
    elif write == "truncated":
        target = ctx.work / f"{name}.pt"
        target.write_bytes(bundle[:3_000_000])
    else:  # a trained directory whose estimator.pt is truncated
        target = ctx.work / name
        target.mkdir(exist_ok=True)
        (target / "estimator.pt").write_bytes(bundle[:3_000_000])
    args = ["fit", str(ctx.work / "cell.npy"), "--estimator", str(target), "--samples", "200"]
    run = ctx.cli(args + ["--out", str(ctx.work / f"fit_{name}")])
    return judge_cli_error(run, expect)


def c21(ctx: Context) -> tuple[str, str]:
    try:
        _fit_setup(ctx)
    except RuntimeError as error:
        return "traceback", str(error)
    args = ["fit", str(ctx.work / "cell.npy"), "--estimator", str(ctx.work / "default.pt")]
    run = ctx.cli(args + ["--samples", "1", "--out", str(ctx.work / "fit_c21")], timeout=900)
    outcome, detail = judge_cli_error(run, r"--samples.*>= ?\d")
    if outcome == "silently wrong":
        summary = ctx.work / "fit_c21" / "summary.csv"
        rows = summary.read_text().splitlines()[1:] if summary.exists() else []
        empty = sum(cell in ("", "nan", "NaN") for row in rows for cell in row.split(",")[1:])
        detail += f" ({empty} NaN cells in summary.csv)" if empty else ""
    return outcome, detail


def c22(ctx: Context) -> tuple[str, str]:
    out = ctx.work / "demo_c22"
    run = ctx.cli(["demo", "--twins", "0", "--samples", "200", "--out", str(out)], timeout=900)
    outcome, detail = judge_cli_error(run, r"--twins.*>= 1")
    if outcome == "clean error" and (out / "example_cell.csv").exists():
        return "unhelpful error", detail + " (after writing example_cell.csv)"
    return outcome, detail


# -------------------------------------------------------------------------------------------
# Training (T, C14, C15, C19): a finished 2-epoch run on the reference dataset, copied and
# damaged; datasets of another protocol and of 2 cells
# -------------------------------------------------------------------------------------------
def _train_setup(ctx: Context) -> Path:
    """The finished training run the T cases start from (made once)."""
    if "train_error" in ctx.files:
        raise RuntimeError(ctx.files["train_error"])
    if "trained" in ctx.files:
        return ctx.files["trained"]
    trained = ctx.work / "trained"
    run = ctx.cli(_train_args(ctx.files["reference"], trained), timeout=1800)
    if run.returncode != 0:
        ctx.files["train_error"] = "could not train on the reference dataset: " + _last_line(
            run.stderr
        )
        raise RuntimeError(ctx.files["train_error"])
    ctx.files["trained"] = trained
    return trained


def _run_copy(ctx: Context, name: str) -> Path:
    target = ctx.work / name
    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(_train_setup(ctx), target)
    return target


def _dataset(ctx: Context, name: str, n: int, protocol: str) -> Path:
    """A dataset made like the reference one, with another size or protocol (made once)."""
    out = ctx.work / name
    if not (out / "size.json").exists():
        args = ctx.reference_args[:-2] + ["--out", str(out)]
        args[args.index("-n") + 1] = str(n)
        args[args.index("--protocol") + 1] = str(ctx.files[protocol])
        run = ctx.cli(args, timeout=600)
        if run.returncode != 0:
            raise RuntimeError(f"could not make dataset {name}: " + _last_line(run.stderr))
    return out


def _damaged_checkpoint(ctx: Context, name: str, file: str, damage: str) -> tuple[str, str]:
    """Rerun a finished run whose checkpoint ``file`` is truncated or random bytes."""
    try:
        run_dir = _run_copy(ctx, name)
    except RuntimeError as error:
        return "traceback", str(error)
    path = run_dir / file
    data = path.read_bytes()
    if damage == "truncate":
        path.write_bytes(data[: min(1_000_000, len(data) // 2)])
    else:
        path.write_bytes(np.random.default_rng(1).bytes(len(data)))
    run = ctx.cli(_train_args(ctx.files["reference"], run_dir), timeout=1800)
    if run.returncode == 0 and "Traceback" not in run.stderr:
        warned = _warnings(run)
        if any(file in line for line in warned):  # healed: the stage retrained, and said so
            return "right answer", warned[0]
        return "silently wrong", "finished without a word on the damaged checkpoint"
    return judge_cli_error(run, rf"{re.escape(file)}.*damaged.*(delete|remove)")


def t06(ctx: Context) -> tuple[str, str]:
    try:
        two = _dataset(ctx, "two_cells", 2, "short")
    except RuntimeError as error:
        return "traceback", str(error)
    run = ctx.cli(_train_args(two, ctx.work / "t06"), timeout=1800)
    return judge_cli_error(run, r"2 cells.*(at least|needs?|more)")


def t09(ctx: Context) -> tuple[str, str]:
    """Train another protocol's dataset into a finished run's directory without checkpoints."""
    try:
        run_dir = _run_copy(ctx, "t09")
        other = _dataset(ctx, "other_protocol", 12, "other")
    except RuntimeError as error:
        return "traceback", str(error)
    for path in [*run_dir.glob("*checkpoint*"), run_dir / "checkpoint.identity"]:
        path.unlink(missing_ok=True)
    before = (run_dir / "estimator.pt").read_bytes()
    run = ctx.cli(_train_args(other, run_dir), timeout=1800)
    lost = (run_dir / "estimator.pt").read_bytes() != before
    if lost:
        return "silently wrong", f"DATA LOST: estimator.pt replaced ({_last_line(run.stdout)})"
    return judge_cli_error(run, r"t09.*(estimator|trained|another|not empty)")


def t10(ctx: Context) -> tuple[str, str]:
    directory = ctx.dataset_copy("t10")
    before = (directory / "manifest.json").read_bytes()
    run = ctx.cli(_train_args(directory, directory))
    if (directory / "manifest.json").read_bytes() != before:
        return "silently wrong", "DATA LOST: the dataset's manifest.json was overwritten"
    return judge_cli_error(run, r"--out .*t10 is a dataset directory")


def _train_option(ctx: Context, name: str, option: str, value: str, expect: str):
    out = ctx.work / name
    run = ctx.cli(_train_args(ctx.files["reference"], out, option, value))
    outcome, detail = judge_cli_error(run, expect)
    if outcome == "clean error" and out.exists():
        return "unhelpful error", f"{detail} (but {out.name} was written)"
    return outcome, detail


def _leak(name: str, old: str, new: str, expect: str) -> Callable[[Context], tuple[str, str]]:
    return lambda ctx: _model_file_case(ctx, _leak_with(ctx, name, old, new), expect)


def _read(name: str, damage: Damage, what: str) -> Callable[[Context], tuple[str, str]]:
    return partial(_read_damaged, name=name, damage=damage, expect=_CHUNK1.format(what=what))


def _train_on(name: str, damage: Damage, expect: str) -> Callable[[Context], tuple[str, str]]:
    return partial(_train_damaged, name=name, damage=damage, expect=expect)


def _no_cell_read(name: str, damage: Damage, what: str) -> Callable[[Context], tuple[str, str]]:
    """Open a damaged copy (its records are read, no shard)."""
    code = """
        from sbi_twins.data import open_dataset
        def _case():
            ds = open_dataset({directory!r})
            return {{"cells": len(ds), "observations": list(ds.observations.shape)}}
    """

    def run(ctx: Context) -> tuple[str, str]:
        directory = _damaged_copy(ctx, name, damage)
        result = api(ctx, code.format(directory=str(directory)))
        return judge_error(*result, what)

    return run


#: The error of a fit refused as implausible, with the way to fit it anyway.
_REFUSED = r"not one the estimator can fit: .*{what}.*--no-plausibility-check"
#: What a damaged estimator file's error must say: its name, and how to get a good one.
_BAD_BUNDLE = r"{file}.*damaged.*(copy|download|reinstall|retrain|restore|replace)"

CASES = [
    # --- data layer: generating and reading datasets --------------------------------------
    Case("D04", "kill -9 the main process of a 2-worker `simulate`",
         partial(_process_case, name="d04", kill="kill")),
    Case("D05", "Ctrl-C (SIGINT to the group) during a 2-worker `simulate`, then rerun",
         partial(_process_case, name="d05", kill="int")),
    Case("D06", "`simulate` with a protocol step to 1e6 mV", d06),
    Case("D06b", "`simulate --no-viability` with a step to +200 mV (every cell fails)", d06b),
    Case("D07", "`simulate` with a prior under which no cell beats", d07),
    Case("D10", "truncated observations.npy, then read as training does",
         _read("d10", _truncate, "observations.npy: truncated")),
    Case("D11", "truncated observations.npy, then `train`",
         _train_on("d11", _truncate, _CHUNK1.format(what="observations.npy: truncated"))),
    Case("D12", "0xFF over the observation data (NaN floats), header intact: read",
         _read("d12", _ff_over_data, "observations.npy: checksum mismatch")),
    Case("D12b", "one NaN written into observations.npy (a valid .npy file): read",
         _read("d12b", _one_nan, "observations.npy: checksum mismatch")),
    Case("D12c", "NaN in observations of a dataset without checksums (old format): read",
         _read("d12c", _old_format_nan, "observations.npy: NaN or infinite")),
    Case("D13", "0xFF over the observation data (NaN floats), then `train`",
         _train_on("d13", _ff_over_data, _CHUNK1.format(what="observations.npy: checksum"))),
    Case("D14", "observations x1e6 (finite garbage, a valid .npy file), then `train`",
         _train_on("d14", _scaled, _CHUNK1.format(what="observations.npy: checksum"))),
    Case("D14b", "random bytes over the end of observations.npy: read",
         _read("d14b", _garbage_tail, "observations.npy: checksum mismatch")),
    Case("D15", "first 16 bytes of theta.npy zeroed: read",
         _read("d15", _zero_theta_header, "theta.npy: damaged .npy header")),
    Case("D15b", "damaged .npy header of observations.npy: read",
         _read("d15b", _break_header, "observations.npy: damaged .npy header")),
    Case("D15c", "theta.npy of a chunk deleted: read",
         _read("d15c", _theta_missing, "theta.npy is missing")),
    Case("D16", "first 16 bytes of theta.npy zeroed, then `train`",
         _train_on("d16", _zero_theta_header,
                   _CHUNK1.format(what="theta.npy: damaged .npy header"))),
    Case("D18", "a chunk directory without done.json, then the same `simulate` again", d18),
    Case("D19", "done.json is not JSON: read",
         _no_cell_read("d19", _done_json(b"{garbage"),
                       _CHUNK1.format(what="done.json is not readable JSON"))),
    Case("D19b", "done.json holds binary bytes: read",
         _no_cell_read("d19b", _done_json(bytes(range(256))),
                       _CHUNK1.format(what="done.json is not readable JSON"))),
    Case("D19c", "done.json is a JSON list: read",
         _no_cell_read("d19c", _done_json(b"[1, 2]"),
                       _CHUNK1.format(what="done.json is not a JSON object"))),
    Case("D19d", "done.json lacks its counts: read",
         _no_cell_read("d19d", _done_json(b'{"chunk": 1}'),
                       _CHUNK1.format(what="done.json has no count"))),
    Case("D20", "done.json is not JSON, then the same `simulate` again",
         partial(_resimulate_damaged, name="d20", damage=_done_json(b"garbage"),
                 expect=_CHUNK1.format(what="done.json is not readable JSON"))),
    Case("D21", "manifest.json truncated, then the same `simulate` again",
         partial(_resimulate_damaged, name="d21", damage=_truncated_manifest,
                 expect=_MANIFEST)),
    Case("D22", "manifest.json truncated: read",
         _no_cell_read("d22", _truncated_manifest, _MANIFEST)),
    Case("D23", "manifest.json truncated, then `train`",
         _train_on("d23", _truncated_manifest, _MANIFEST)),
    Case("C24", "`simulate --chunk-size 100000000`", c24),
    # --- engine layer: protocols, model files, kernel cache --------------------------------
    Case("P12", "protocol file with a step to 1e6 mV, loaded and simulated", p12),
    Case("P13", "protocol with a step to +200 mV: every cell fails", p13),
    Case("P26", "protocol 1e10 ms long, simulated at 0.1 ms", p26),
    Case("M05", "load_model on a binary file named .mmt", m05),
    Case("M07", "load_model on a directory", m07),
    Case("M12", "model file with a parameter = nan",
         _leak("m12", "g = 0.05", "g = nan", r"non-finite parameter.*membrane.g = nan")),
    Case("M13", "model file with a parameter = 1e999 (inf)",
         _leak("m13", "g = 0.05", "g = 1e999", r"non-finite parameter.*membrane.g = inf")),
    Case("M14", "model file with an initial state = -1e999",
         _leak("m14", "membrane.V = -80", "membrane.V = -1e999",
               r"non-finite initial state.*membrane.V = -inf")),
    Case("M20", "hh1952 simulated with ina.g_Na = -5",
         partial(_negative, model="hh1952", name="ina.g_Na", value=-5.0)),
    Case("M21", "kernik2019 simulated with ikr.scale_Kr = -1",
         partial(_negative, model="kernik2019", name="ikr.scale_Kr", value=-1.0)),
    Case("K01", "generated kernel .py truncated in the cache",
         partial(_cache_case, name="k01", damage=_truncate_kernel)),
    Case("K02", "Numba .nbi/.nbc files overwritten with random bytes",
         partial(_cache_case, name="k02", damage=_scramble_compiled)),
    # --- inference layer: training ---------------------------------------------------------
    Case("T03", "`train` rerun on a run whose summary_checkpoint.pt is truncated",
         partial(_damaged_checkpoint, name="t03", file="summary_checkpoint.pt",
                 damage="truncate")),
    Case("T04", "`train` rerun on a run whose flow_checkpoint.pt is random bytes",
         partial(_damaged_checkpoint, name="t04", file="flow_checkpoint.pt", damage="random")),
    Case("T06", "`train` on a dataset of 2 cells", t06),
    Case("T09", "`train` another protocol's dataset into a finished run without checkpoints",
         t09),
    Case("T10", "`train DATASET --out DATASET`", t10),
    Case("C14", "`train --max-epochs 0`",
         partial(_train_option, name="c14", option="--max-epochs", value="0",
                 expect=r"--max-epochs.*>= 1")),
    Case("C15", "`train --batch-size 0`",
         partial(_train_option, name="c15", option="--batch-size", value="0",
                 expect=r"--batch-size.*>= 1")),
    Case("C19", "`train --device tpu`",
         partial(_train_option, name="c19", option="--device", value="tpu",
                 expect=r"device must be 'cpu' or 'cuda'.*'tpu'")),
    # --- inference layer: fitting recordings (a cell simulated by the bundled estimator) ---
    Case("F05", "`fit` a (1, T) .npy trace", _fitted("f05", "f05.npy")),
    Case("F06", "`fit` a (T, 1) column .npy trace", _fitted("f06", "f06.npy")),
    Case("F08", "`fit` a zero-byte .npy file",
         _fitted("f08", "f08.npy", expect=r"f08.npy is empty.*numpy.save")),
    Case("F10", "`fit` a single-column CSV without header",
         _fitted("f10", "f10.csv",
                 expect=r"f10.csv: line 1 is data, not a header.*--unit.*--sample-interval")),
    Case("F10b", "`fit` the headerless CSV with --unit pA/pF --sample-interval 0.1",
         _fitted("f10b", "f10.csv", "--unit", "pA/pF", "--sample-interval", "0.1")),
    Case("F11", "`fit` a CSV with ';' separators", _fitted("f11", "f11.csv")),
    Case("F12", "`fit` a tab-separated file named .csv", _fitted("f12", "f12.csv")),
    Case("F13", "`fit` a CSV with an empty trailing column", _fitted("f13", "f13.csv")),
    Case("F14", "`fit` a CSV with ';' and decimal commas (European locale)",
         _fitted("f14", "f14.csv")),
    Case("F17", "`fit` a trace in pA instead of pA/pF (x100)",
         _fitted("f17", "f17.npy", expect=_REFUSED.format(what="pA rather than pA/pF"))),
    Case("F18", "`fit` a trace in nA of a 100 pF cell (x0.1)",
         _fitted("f18", "f18.npy", expect=_REFUSED.format(what="in nA"), flagged_ok=True)),
    Case("F19", "`fit` an all-zero trace",
         _fitted("f19", "f19.npy", expect=_REFUSED.format(what="flat"))),
    Case("F20", "`fit` a sign-flipped trace",
         _fitted("f20", "f20.npy", expect=_REFUSED.format(what="sign convention flipped"))),
    Case("F21", "`fit` a trace x1e40 (float32 overflow)",
         _fitted("f21", "f21.npy",
                 expect=r"not one the estimator can fit: (?!.*\binf).*--no-plausibility")),
    Case("F22", "`fit` a trace shifted by 50 ms (recording started late)",
         _fitted("f22", "f22.npy", expect=_REFUSED.format(what=""), flagged_ok=True)),
    Case("F24", "`fit` a 0.1 ms trace with a wrong --sample-interval 0.2",
         _fitted("f24", "cell.npy", "--sample-interval", "0.2",
                 expect=r"(--sample-interval|sample_interval_ms|sample interval).*0\.2")),
    Case("F27", "`fit` a genuine 0.2 ms trace with --sample-interval 0.2",
         _fitted("f27", "f27.npy", "--sample-interval", "0.2", rtol=RESAMPLED_RTOL)),
    Case("F28", "`fit --sample-interval 0`",
         _fitted("f28", "cell.npy", "--sample-interval", "0",
                 expect=r"(--sample-interval|sample_interval_ms).*(> ?0|positive)")),
    Case("F29", "`fit --sample-interval -0.1`",
         _fitted("f29", "cell.npy", "--sample-interval", "-0.1",
                 expect=r"(--sample-interval|sample_interval_ms).*(> ?0|positive)")),
    Case("F30", "`fit --sample-interval nan`",
         _fitted("f30", "cell.npy", "--sample-interval", "nan",
                 expect=r"(--sample-interval|sample_interval_ms).*(finite|nan)")),
    Case("F33", "`fit` with an estimator file truncated to 3 MB",
         partial(_damaged_estimator, name="f33", write="truncated",
                 expect=_BAD_BUNDLE.format(file="f33.pt"))),
    Case("F34", "`fit` with an estimator file of random bytes",
         partial(_damaged_estimator, name="f34", write="random",
                 expect=_BAD_BUNDLE.format(file="f34.pt"))),
    Case("F40", "`fit` with a trained directory whose estimator.pt is truncated",
         partial(_damaged_estimator, name="f40", write="dir",
                 expect=_BAD_BUNDLE.format(file="f40/estimator.pt"))),
    Case("C21", "`fit --samples 1`", c21),
    Case("C22", "`demo --twins 0 --samples 200`", c22),
]  # fmt: skip


# -------------------------------------------------------------------------------------------
# Set-up, the cost of the integrity checks, the report
# -------------------------------------------------------------------------------------------
def prepare(ctx: Context, log: _common.Log) -> None:
    """Input files and a small reference dataset (12 cells in 8-draw chunks), made once."""
    for name, text in {
        "short": SHORT_PROTOCOL.format(step_mV=-10),
        "hot": SHORT_PROTOCOL.format(step_mV=200),
        "wild": SHORT_PROTOCOL.format(step_mV=1e6),
        "other": SHORT_PROTOCOL.format(step_mV=0).replace("short_steps", "other_steps"),
        "quiet": QUIET_PRIOR,
    }.items():
        ctx.files[name] = ctx.work / f"{name}.toml"
        ctx.files[name].write_text(text)
    ctx.files["leak"] = _common.REPO / "tests" / "data" / "passive_leak.mmt"
    reference = ctx.work / "reference"
    args = ["simulate", "-n", "12", "--protocol", str(ctx.files["short"]), "--chunk-size", "8"]
    args += ["--seed", "11", "--workers", "1", "--quiet", "--out", str(reference)]
    ctx.files["reference"], ctx.reference_args = reference, args
    log("making the reference dataset (12 cells)")
    run = ctx.cli(args, timeout=600)
    if run.returncode != 0:
        raise SystemExit(f"could not make the reference dataset:\n{run.stderr}")


_COST = """
import json, shutil, time
import numpy as np
from pathlib import Path
import hashlib
from sbi_twins.data import open_dataset
work = Path({work!r})
manifest = json.loads((work / "clark" / "manifest.json").read_text())
manifest["chunk_size"] = 256
L, D = manifest["observation"]["length"], len(manifest["parameter_names"])
rows = []
for cells in (2000, 20000):
    for checksums in (True, False):
        out = work / f"cost_{{cells}}_{{checksums}}"
        shutil.rmtree(out, ignore_errors=True)
        (out / "chunks").mkdir(parents=True)
        (out / "manifest.json").write_text(json.dumps(manifest))
        rng, k, total = np.random.default_rng(0), 0, 0
        while total < cells:
            folder = out / "chunks" / f"{{k:06d}}"
            folder.mkdir()
            status = np.ones(256, np.int8)
            status[:70] = 0
            arrays = {{"theta": rng.random((256, D)), "seeds": rng.integers(0, 2**62, 256),
                      "status": status, "observations": rng.standard_normal((70, L), np.float32)}}
            record = {{"chunk": k, "candidates": 256, "accepted": 70}}
            for name, array in arrays.items():
                np.save(folder / f"{{name}}.npy", array)
            if checksums:
                record["sha256"] = {{
                    f"{{n}}.npy": hashlib.sha256((folder / f"{{n}}.npy").read_bytes()).hexdigest()
                    for n in arrays
                }}
            (folder / "done.json").write_text(json.dumps(record))
            k, total = k + 1, total + 70
        (out / "size.json").write_text(json.dumps({{"n": cells}}))
        start = time.perf_counter()
        ds = open_dataset(out)
        ds.parameters, ds.observations
        first = time.perf_counter() - start
        start = time.perf_counter()
        ds.parameters, ds.observations
        again = time.perf_counter() - start
        start = time.perf_counter()
        verify = ds.verify() if hasattr(ds, "verify") else None
        full = time.perf_counter() - start if verify else None
        size = sum(p.stat().st_size for p in out.rglob("*.npy"))
        rows.append({{"cells": cells, "checksums": checksums, "mb": size / 1e6,
                     "first_read_s": first, "again_s": again, "verify_s": full}})
        shutil.rmtree(out)
print(json.dumps(rows))
"""


def integrity_cost(ctx: Context, log: _common.Log) -> list[dict]:
    """Seconds to open a dataset and read its parameters and observations the first time."""
    log("measuring the cost of the integrity checks")
    clark = ["simulate", "-n", "1", "--no-viability", "--ideal-clamp", "--chunk-size", "1"]
    run = ctx.cli(clark + ["--workers", "1", "--quiet", "--out", str(ctx.work / "clark")], 600)
    if run.returncode != 0:
        return []
    run = ctx.python(_COST.format(work=str(ctx.work)), timeout=600)
    try:
        return json.loads(run.stdout.strip().splitlines()[-1])
    except (IndexError, json.JSONDecodeError):
        log("cost measurement failed: " + _last_line(run.stderr))
        return []


def markdown(res: dict) -> str:
    lines = [
        f"Faults against `{res['checkout']}` ({res['machine']['date']}, commit "
        f"{str(res['machine']['git_commit'])[:10]})",
        "",
        "| case | fault | outcome | detail | s |",
        "|---|---|---|---|---|",
    ]
    for row in res["cases"]:
        detail = row["detail"].replace("|", "/").replace("\n", " ")
        detail = detail if len(detail) < 150 else detail[:147] + "..."
        lines.append(
            f"| {row['id']} | {row['what']} | **{row['outcome']}** | {detail} | "
            f"{row['seconds']:.0f} |"
        )
    counts: dict[str, int] = {}
    for row in res["cases"]:
        counts[row["outcome"]] = counts.get(row["outcome"], 0) + 1
    lines += ["", "Outcomes: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))]
    for rerun in res.get("reruns", []):
        lines += [
            "",
            f"Rerun on {rerun['date']} (commit {str(rerun['git_commit'])[:10]}"
            f"{' with uncommitted changes' if rerun['modified'] else ''}): "
            + ", ".join(rerun["cases"]),
        ]
    if res["integrity_cost"]:
        lines += [
            "",
            "Integrity checks on first read (open + parameters + observations), synthetic "
            "clark2022-shaped datasets:",
            "",
            "| cells | MB | checksums | first read s | again s | verify() s |",
            "|---|---|---|---|---|---|",
        ]
        for row in res["integrity_cost"]:
            verify = "-" if row["verify_s"] is None else f"{row['verify_s']:.3f}"
            lines.append(
                f"| {row['cells']:,} | {row['mb']:.0f} | {'yes' if row['checksums'] else 'no'} | "
                f"{row['first_read_s']:.3f} | {row['again_s']:.3f} | {verify} |"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", default="", help="comma-separated case IDs (default: all)")
    ap.add_argument("--checkout", type=Path, default=None, help="source tree to test instead")
    ap.add_argument("--max-timeout", type=float, default=900.0, help="cap on every case's timeout")
    ap.add_argument("--memory-gb", type=float, default=8.0, help="address-space cap per case")
    ap.add_argument("--no-cost", action="store_true", help="skip the integrity-cost measurement")
    ap.add_argument("--keep", action="store_true", help="keep the scratch directory")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"JSON (default {DEFAULT_OUT})")
    ap.add_argument(
        "--merge",
        action="store_true",
        help="with --only: replace those cases' rows in the --out JSON and keep the rest",
    )
    args = ap.parse_args(argv)
    if args.merge and not (args.only and args.out.is_file()):
        ap.error(f"--merge reruns some cases (--only) into an existing --out ({args.out})")
    log = _common.Log()
    env = dict(os.environ, PYTHONWARNINGS="ignore::DeprecationWarning")
    checkout = (args.checkout or _common.REPO).resolve()
    if args.checkout is not None:
        env["PYTHONPATH"] = str(checkout)  # shadows the installed package
    work = Path(tempfile.mkdtemp(prefix="sbi-twins-faults-"))
    ctx = Context(work, env, int(args.memory_gb * 1e9), args.max_timeout)
    wanted = {c.strip() for c in args.only.split(",") if c.strip()}
    try:
        prepare(ctx, log)
        rows = []
        for case in CASES:
            if wanted and not any(case.id == w or case.id.startswith(w) for w in wanted):
                continue
            start = time.perf_counter()
            outcome, detail = case.run(ctx)
            detail = detail.replace(str(work), "$TMP")  # the scratch directory, for short lines
            rows.append(
                {"id": case.id, "what": case.what, "outcome": outcome, "detail": detail,
                 "seconds": time.perf_counter() - start}
            )  # fmt: skip
            log(f"{case.id}: {outcome} ({detail[:100]})")
        cost = [] if args.no_cost else integrity_cost(ctx, log)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    res = {
        "machine": _common.machine_info(libraries=[_common.numba_info]),
        "checkout": str(checkout),
        "cases": rows,
        "integrity_cost": cost,
    }
    wall = log.elapsed()
    if args.merge:
        res, wall = merged(json.loads(args.out.read_text()), res, wall)
    _common.write_results(res, markdown, args.out, wall)


def merged(previous: dict, rerun: dict, wall_s: float) -> tuple[dict, float]:
    """The results of ``previous`` with the cases of ``rerun`` replaced (in :data:`CASES`
    order), the rerun recorded under ``reruns``, and the wall time of both.
    """
    new = {row["id"]: row for row in rerun["cases"]}
    order = {case.id: k for k, case in enumerate(CASES)}
    kept = [row for row in previous["cases"] if row["id"] not in new]
    machine = rerun["machine"]
    modified = _common.git("status", "--porcelain", "--", "sbi_twins", "benchmarks")
    note = {
        "date": machine["date"],
        "git_commit": machine["git_commit"],
        "modified": bool(modified),
        "cases": list(new),
    }
    res = {
        **previous,
        "cases": sorted([*kept, *new.values()], key=lambda row: order.get(row["id"], len(order))),
        "integrity_cost": rerun["integrity_cost"] or previous["integrity_cost"],
        "reruns": [*previous.get("reruns", []), note],
    }
    return res, previous["wall_s"] + wall_s


if __name__ == "__main__":
    main()
