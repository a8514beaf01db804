"""Fault injection: bad inputs and faults against the data and engine layers (issue 20).

Each case runs in its own subprocess (its own process group, with a timeout and an address-space
limit, so a case that allocates without bound or hangs cannot harm the machine) and is judged:

``clean error``
    the run stops with a message that says what is wrong and where (the case's pattern);
``right answer``
    the run succeeds and its result is right (a healed cache, a redone chunk, no orphans...);
``unhelpful error``
    a one-line error that does not say what is wrong or where;
``silently wrong``
    the run succeeds with a wrong or misleading result (NaN rows, a warning blaming the cells,
    orphaned workers);
``traceback``
    a raw exception from inside (numpy, json, numba...) or an unexpected error;
``hang``
    no end within the timeout (the process group is killed).

It also measures what the integrity checks cost when a dataset is first read (synthetic datasets
of 2,000 and 20,000 cells shaped like clark2022 ones, with and without recorded checksums).

Usage::

    python benchmarks/faults.py                     # every case against this checkout
    python benchmarks/faults.py --only D06,K01      # some cases
    python benchmarks/faults.py --checkout DIR --max-timeout 60 --out /tmp/faults_old.json
        # the same cases against another source tree, e.g. `git archive` of an older commit
"""

from __future__ import annotations

import argparse
import json
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


def _damaged_shard(ctx: Context, name: str, damage: str, expect: str) -> tuple[str, str]:
    """Damage a file of chunk 1 of a copy of the reference dataset, then read it as training."""
    directory = ctx.dataset_copy(name)
    code = f"""
        import json, numpy as np
        from pathlib import Path
        from sbi_twins.data import open_dataset
        directory = Path({str(directory)!r})
        chunk = directory / "chunks" / "000001"
        {damage}
        def _case():
            ds = open_dataset(directory)
            x = np.asarray(ds.observations[:])
            return {{"cells": len(ds), "finite": bool(np.isfinite(x).all()),
                     "parameters_finite": bool(np.isfinite(ds.parameters.to_numpy()).all())}}
    """
    run, result = api(ctx, code)
    return judge_error(run, result, expect)


_DAMAGES = {
    "truncate": (
        "p = chunk / 'observations.npy'; p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])"
    ),
    "header": (
        "p = chunk / 'observations.npy'; b = bytearray(p.read_bytes()); "
        "b[12:40] = b\"{'descr': <<garbage>>, 'sha\"; p.write_bytes(bytes(b))"
    ),
    "nan": "p = chunk / 'observations.npy'; a = np.load(p); a[0, 3] = np.nan; np.save(p, a)",
    "garbage": (
        "p = chunk / 'observations.npy'; b = bytearray(p.read_bytes()); "
        "b[-64:] = np.random.default_rng(0).bytes(64); p.write_bytes(bytes(b))"
    ),
    "missing": "(chunk / 'theta.npy').unlink()",
    "old_nan": (
        "for m in directory.glob('chunks/*/done.json'):\n"
        "            r = json.loads(m.read_text()); r.pop('sha256', None); "
        "m.write_text(json.dumps(r))\n"
        "        p = chunk / 'observations.npy'; a = np.load(p); a[0, 3] = np.nan; np.save(p, a)"
    ),
}
_CHUNK1 = r"chunk 1 of .* is damaged \({what}.*\): delete .*000001 and rerun"


def _record_case(ctx: Context, name: str, write: str, expect: str) -> tuple[str, str]:
    directory = ctx.dataset_copy(name)
    code = f"""
        from pathlib import Path
        from sbi_twins.data import open_dataset
        directory = Path({str(directory)!r})
        {write}
        def _case():
            ds = open_dataset(directory)
            return {{"cells": len(ds), "observations": list(ds.observations.shape)}}
    """
    run, result = api(ctx, code)
    return judge_error(run, result, expect)


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


def _shard(name: str, damage: str, what: str) -> Callable[[Context], tuple[str, str]]:
    expect = _CHUNK1.format(what=what)
    return partial(_damaged_shard, name=name, damage=_DAMAGES[damage], expect=expect)


def _done(name: str, content: str, what: str) -> Callable[[Context], tuple[str, str]]:
    write = f"(directory / 'chunks/000001/done.json').write_bytes({content})"
    return partial(_record_case, name=name, write=write, expect=_CHUNK1.format(what=what))


def _leak(name: str, old: str, new: str, expect: str) -> Callable[[Context], tuple[str, str]]:
    return lambda ctx: _model_file_case(ctx, _leak_with(ctx, name, old, new), expect)


_TRUNCATED_MANIFEST = "m = directory / 'manifest.json'; m.write_text(m.read_text()[:300])"

CASES = [
    Case("D04", "kill -9 the main process of a 2-worker `simulate`",
         partial(_process_case, name="d04", kill="kill")),
    Case("D05", "Ctrl-C (SIGINT to the group) during a 2-worker `simulate`, then rerun",
         partial(_process_case, name="d05", kill="int")),
    Case("D06", "`simulate` with a protocol step to 1e6 mV", d06),
    Case("D06b", "`simulate --no-viability` with a step to +200 mV (every cell fails)", d06b),
    Case("D07", "`simulate` with a prior under which no cell beats", d07),
    Case("D10", "truncated observations.npy, then read as training does",
         _shard("d10", "truncate", "observations.npy: truncated")),
    Case("D11", "damaged .npy header of observations.npy",
         _shard("d11", "header", "observations.npy: damaged .npy header")),
    Case("D12", "NaN written into observations.npy (a valid .npy file)",
         _shard("d12", "nan", "observations.npy: checksum mismatch")),
    Case("D14", "random bytes over the end of observations.npy",
         _shard("d14", "garbage", "observations.npy: checksum mismatch")),
    Case("D15", "theta.npy of a chunk deleted", _shard("d15", "missing", "theta.npy is missing")),
    Case("D16", "NaN in observations of a dataset without checksums (old format)",
         _shard("d16", "old_nan", "observations.npy: NaN or infinite")),
    Case("D18", "a chunk directory without done.json, then the same `simulate` again", d18),
    Case("D19", "done.json is not JSON",
         _done("d19", "b'{garbage'", "done.json is not readable JSON")),
    Case("D20", "done.json holds binary bytes",
         _done("d20", "bytes(range(256))", "done.json is not readable JSON")),
    Case("D21", "done.json is a JSON list",
         _done("d21", "b'[1, 2]'", "done.json is not a JSON object")),
    Case("D22", "done.json lacks its counts",
         _done("d22", "b'{\"chunk\": 1}'", "done.json has no count")),
    Case("D23", "manifest.json truncated",
         partial(_record_case, name="d23", write=_TRUNCATED_MANIFEST,
                 expect=r"manifest.json is not a readable dataset manifest.*restore it")),
    Case("C24", "`simulate --chunk-size 100000000`", c24),
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
    args = ap.parse_args(argv)
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
            if wanted and case.id not in wanted:
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
    _common.write_results(res, markdown, args.out, log.elapsed())


if __name__ == "__main__":
    main()
