"""API contract of sbi_twins.engine: loading, parameters, input validation, failure reporting,
pacing and the on-disk kernel cache.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import myokit
import numpy as np
import pandas as pd
import pytest

from sbi_twins import Protocol, Segment, SimulationWarning, load_model
from sbi_twins.physiology.features import upstroke_times

DATA = Path(__file__).parent / "data"
SIMULATORS = Path(__file__).resolve().parent.parent / "simulators"

#: A short HH clamp protocol with a step and a ramp (quick to simulate).
HH_PROTO = Protocol(
    "hh_short", -75.0, (Segment.step(5, -75), Segment.step(5, 0), Segment.ramp(5, -100, 40))
)
#: A short Kernik clamp protocol.
KERNIK_PROTO = Protocol("kernik_short", -80.0, (Segment.step(50, -80), Segment.step(50, 0)))


def run_python(code: str, env: dict[str, str], timeout: float) -> dict:
    """Run ``code`` in a fresh interpreter; it must print one JSON object as its last line."""
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


# -- loading -------------------------------------------------------------------------------------


def test_kernik_parameters_cover_the_parameter_table(kernik):
    table = pd.read_csv(DATA / "kernik2019_parameters.csv")
    names = kernik.parameter_names
    assert isinstance(names, tuple) and len(names) == 131 and len(set(names)) == 131
    defaults = dict(zip(names, kernik.default_parameters, strict=True))
    missing = set(table["model_name"]) - set(names)
    assert not missing
    for name, baseline in zip(table["model_name"], table["baseline_value"], strict=True):
        assert defaults[name] == baseline, name


def test_default_parameters_and_matrix(kernik):
    assert kernik.default_parameters.shape == (131,)
    assert kernik.default_parameters.dtype == np.float64
    assert np.isfinite(kernik.default_parameters).all()
    matrix = kernik.parameter_matrix(None)
    assert matrix.shape == (1, 131) and matrix.flags.c_contiguous
    np.testing.assert_array_equal(matrix[0], kernik.default_parameters)
    assert len(kernik.initial_state) == len(kernik.state_names) == 22


def test_unknown_model_name_lists_available():
    with pytest.raises(FileNotFoundError, match="kernik2019") as info:
        load_model("kernik2020")
    assert "hh1952" in str(info.value)


def test_missing_model_file():
    with pytest.raises(FileNotFoundError):
        load_model(Path("/nonexistent/model.mmt"))


def test_unparsable_model_file_shows_myokit_message_and_line(tmp_path):
    lines = (SIMULATORS / "hh1952.mmt").read_text().splitlines()
    lineno = next(k for k, line in enumerate(lines, start=1) if line.startswith("g_Na = 120"))
    lines[lineno - 1] = "g_Na = 120 *"
    path = tmp_path / "broken.mmt"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(myokit.ParseError) as myokit_error:
        myokit.parse_model(path.read_text())
    with pytest.raises(ValueError) as info:
        load_model(path)
    message = str(info.value)
    assert str(path) in message
    assert myokit_error.value.line == lineno
    assert myokit_error.value.desc in message  # myokit's own description of the error
    assert f"line {lineno}" in message


def test_model_without_membrane_potential_label(tmp_path):
    text = (SIMULATORS / "hh1952.mmt").read_text()
    assert "label membrane_potential" in text
    path = tmp_path / "nolabel.mmt"
    path.write_text(text.replace("label membrane_potential", ""))
    with pytest.raises(ValueError, match="membrane_potential") as info:
        load_model(path)
    assert "label membrane_potential" in str(info.value)  # says how to fix it


# -- parameters ------------------------------------------------------------------------------


def test_unknown_parameter_lists_valid_names_and_suggests(kernik):
    with pytest.raises(ValueError) as info:
        kernik.parameter_matrix({"ikr.scale_kr": [1.0]})
    message = str(info.value)
    assert "'ikr.scale_kr'" in message
    assert "did you mean 'ikr.scale_Kr'" in message
    assert all(name in message for name in kernik.parameter_names)


@pytest.mark.parametrize("bad", [[1.0, np.nan], [np.inf, 1.0], [1.0, -np.inf]])
def test_non_finite_parameter_values(hh, bad):
    with pytest.raises(ValueError, match="ina.g_Na.*non-finite"):
        hh.parameter_matrix({"ina.g_Na": bad})


def test_two_dimensional_values(hh):
    with pytest.raises(ValueError, match="shape"):
        hh.parameter_matrix({"ina.g_Na": np.ones((2, 2))})


def test_inconsistent_lengths(hh):
    with pytest.raises(ValueError, match="different lengths"):
        hh.parameter_matrix({"ina.g_Na": [100.0, 120.0], "ik.g_K": [30.0, 36.0, 40.0]})


@pytest.mark.parametrize("bad", [[1.0, 2.0], "not params", np.ones(8)])
def test_params_of_wrong_type(hh, bad):
    with pytest.raises(ValueError, match="params must be"):
        hh.parameter_matrix(bad)


def test_non_numeric_and_empty_values(hh):
    with pytest.raises(ValueError, match="numeric"):
        hh.parameter_matrix({"ina.g_Na": ["a", "b"]})
    with pytest.raises(ValueError, match="zero cells"):
        hh.parameter_matrix({"ina.g_Na": []})


def test_dataframe_and_mapping_inputs_are_identical(hh):
    frame = pd.DataFrame({"ik.g_K": [30.0, 36.0, 42.0], "ina.g_Na": [100.0, 120.0, 140.0]})
    as_dict = {"ina.g_Na": np.array([100.0, 120.0, 140.0]), "ik.g_K": [30.0, 36.0, 42.0]}
    broadcast = {"ina.g_Na": [100.0, 120.0, 140.0], "ik.g_K": [30.0, 36.0, 42.0], "il.g_L": 0.3}
    m_frame, m_dict = hh.parameter_matrix(frame), hh.parameter_matrix(as_dict)
    np.testing.assert_array_equal(m_frame, m_dict)
    np.testing.assert_array_equal(m_frame, hh.parameter_matrix(broadcast))
    # Names not given keep their defaults.
    g_l = hh.parameter_names.index("il.g_L")
    assert (m_frame[:, g_l] == hh.default_parameters[g_l]).all()

    np.testing.assert_array_equal(
        hh.simulate_vc(HH_PROTO, frame), hh.simulate_vc(HH_PROTO, as_dict)
    )
    v_frame = hh.simulate_ap(frame, 20, 0.1, cycle_length_ms=10)
    np.testing.assert_array_equal(v_frame, hh.simulate_ap(as_dict, 20, 0.1, cycle_length_ms=10))
    # The cells really differ, so the comparison above is not trivial.
    assert not np.array_equal(v_frame[0], v_frame[2])


def test_output_shapes(hh):
    params = {"ina.g_Na": [100.0, 120.0]}
    assert hh.simulate_vc(HH_PROTO, params).shape == (2, HH_PROTO.times(0.1).size)
    assert hh.simulate_vc(HH_PROTO, params, sample_interval_ms=0.5).shape == (2, 31)
    assert hh.simulate_ap(params, 20, 0.5).shape == (2, 41)


def test_initial_state_shape_is_checked(hh):
    with pytest.raises(ValueError, match="initial_state"):
        hh.simulate_ap(None, 10, 0.5, initial_state=np.zeros(3))


# -- protocol and timing arguments ------------------------------------------------------------


def test_unknown_protocol_name(hh):
    with pytest.raises(FileNotFoundError, match="clark2022") as info:
        hh.simulate_vc("no_such_protocol")
    assert "kernik_steps" in str(info.value)


def test_sample_interval_must_divide_protocol(kernik):
    with pytest.raises(ValueError, match="sample_interval_ms"):
        kernik.simulate_vc("kernik_steps", sample_interval_ms=0.3)


def test_sample_interval_must_divide_duration(hh):
    with pytest.raises(ValueError, match="must be a whole multiple"):
        hh.simulate_ap(None, 10.0, 0.3)


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(duration_ms=0.0),
        dict(duration_ms=-5.0),
        dict(sample_interval_ms=0.0),
        dict(atol_mV=0.0),
        dict(rtol=-1.0),
        dict(dt_max_ms=float("nan")),
        dict(cycle_length_ms=-10.0),
    ],
)
def test_non_positive_ap_arguments(hh, kwargs):
    args = dict(duration_ms=10.0, sample_interval_ms=0.5) | kwargs
    with pytest.raises(ValueError, match="must be a finite number > 0"):
        hh.simulate_ap(None, **args)


@pytest.mark.parametrize("cycle_length", [1.5, 2.0])
def test_cycle_length_not_longer_than_stimulus(hh, cycle_length):
    with pytest.raises(ValueError, match="stimulus_duration_ms"):
        hh.simulate_ap(None, 10.0, 0.5, cycle_length_ms=cycle_length, stimulus_duration_ms=2.0)


# -- failures of single cells -------------------------------------------------------------------


def test_non_finite_vc_cell_is_nan_and_named(kernik):
    params = {"extra.Ko": [5.4, -1.0, 5.4, 5.4]}  # Ko < 0: log(Ko/Ki) in E_K is NaN
    with pytest.warns(SimulationWarning, match=r"1 cell\(s\) \(index 1\)"):
        current = kernik.simulate_vc(KERNIK_PROTO, params)
    assert np.isnan(current[1]).all()
    assert np.isfinite(current[[0, 2, 3]]).all()
    with warnings.catch_warnings():
        warnings.simplefilter("error", SimulationWarning)
        alone = kernik.simulate_vc(KERNIK_PROTO)
    np.testing.assert_array_equal(current[[0, 2, 3]], np.repeat(alone, 3, axis=0))


def test_non_finite_ap_cell_is_nan_and_named(kernik):
    """Run in a subprocess with a timeout: a kernel that misses the blow-up may never return."""
    kernik.simulate_ap(None, 1.0, 0.5)  # compile into the shared cache first
    code = """
        import json, warnings
        import numpy as np
        from sbi_twins import load_model, SimulationWarning
        m = load_model("kernik2019")
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            v = m.simulate_ap({"extra.Ko": [5.4, -1.0, 5.4]}, 100.0, 0.5)
        ours = [w for w in caught if issubclass(w.category, SimulationWarning)]
        alone = m.simulate_ap(None, 100.0, 0.5)
        print(json.dumps({
            "warnings": [str(w.message) for w in ours],
            "nan_rows": np.isnan(v).all(axis=1).tolist(),
            "others_match": bool(np.array_equal(v[[0, 2]], np.repeat(alone, 2, axis=0))),
        }))
    """
    try:
        result = run_python(code, dict(os.environ), timeout=60)
    except subprocess.TimeoutExpired:
        pytest.fail(
            "simulate_ap did not return within 60 s for a batch with one cell whose "
            "right-hand side is NaN (extra.Ko = -1)"
        )
    assert result["nan_rows"] == [False, True, False]
    assert result["others_match"]
    assert len(result["warnings"]) == 1 and "(index 1)" in result["warnings"][0]


# -- pacing ----------------------------------------------------------------------------------


def test_paced_kernik_follows_the_stimulus(kernik):
    """Baseline Kernik beats every 982 ms on its own; paced at 800 ms, every stimulus
    (t = 0, 800, ..., 3200 ms) triggers exactly one upstroke within 10 ms.
    """
    stimuli = np.arange(0.0, 4000.0, 800.0)
    paced = upstroke_times(kernik.simulate_ap(None, 4000, 0.5, cycle_length_ms=800)[0], 0.5)
    assert paced.size == stimuli.size
    assert np.all((paced >= stimuli) & (paced <= stimuli + 10.0)), paced
    spontaneous = upstroke_times(kernik.simulate_ap(None, 4000, 0.5)[0], 0.5)
    assert not np.any((spontaneous[:, None] >= stimuli) & (spontaneous[:, None] <= stimuli + 10))


# -- the disk cache -----------------------------------------------------------------------------


_CACHE_PROBE = """
    import json
    import numpy as np
    from numba.core import event
    from sbi_twins import Protocol, Segment, load_model
    m = load_model("hh1952")
    proto = Protocol("p", -75.0, (Segment.step(5, -75), Segment.ramp(5, -75, 20)))
    with event.install_recorder("numba:compile") as compiles:
        current = m.simulate_vc(proto)
        voltage = m.simulate_ap(None, 20, 0.1, cycle_length_ms=10)
    stats = {name: getattr(m.kernels, name).stats for name in ("simulate_vc", "simulate_ap_lanes")}
    print(json.dumps({
        "compile_events": len(compiles.buffer),
        "hits": {k: sum(s.cache_hits.values()) for k, s in stats.items()},
        "misses": {k: sum(s.cache_misses.values()) for k, s in stats.items()},
        "kernel_file": m.kernels.__file__,
        "current": current.tolist(),
        "voltage": voltage.tolist(),
    }))
"""


def test_second_process_loads_compiled_kernels_from_disk(tmp_path):
    env = dict(os.environ, SBI_TWINS_CACHE=str(tmp_path / "cache"))
    first = run_python(_CACHE_PROBE, env, timeout=600)
    second = run_python(_CACHE_PROBE, env, timeout=600)

    assert first["kernel_file"].startswith(str(tmp_path / "cache"))
    assert first["compile_events"] > 0  # the cache really was cold
    assert first["misses"] == {"simulate_vc": 1, "simulate_ap_lanes": 1}

    assert second["compile_events"] == 0
    assert second["misses"] == {"simulate_vc": 0, "simulate_ap_lanes": 0}
    assert second["hits"] == {"simulate_vc": 1, "simulate_ap_lanes": 1}
    assert second["kernel_file"] == first["kernel_file"]
    assert second["current"] == first["current"] and second["voltage"] == first["voltage"]


def test_ap_continues_from_its_final_state(kernik):
    """Two 1.5 s pieces chained through the final state follow one 3 s run: the adaptive step
    restarts at the join, so agreement is within the integration tolerance, not exact.
    """
    whole = kernik.simulate_ap(duration_ms=3000)
    first, state = kernik.simulate_ap(duration_ms=1500, return_final_state=True)
    second = kernik.simulate_ap(duration_ms=1500, initial_state=state)
    assert state.shape == (1, len(kernik.state_names))
    assert first[0, -1] == pytest.approx(state[0, kernik.state_names.index("membrane.V")])
    np.testing.assert_array_equal(first, whole[:, :3001])
    joined = np.concatenate([first, second[:, 1:]], axis=1)
    assert np.abs(joined - whole).max() < 0.5


# -- bad model files, bad parameters, failing protocols (issue 20) ------------------------------


# -- the lane-blocked current-clamp kernel --------------------------------------------------------

#: The lane and per-cell kernels take the same steps, so their traces differ by rounding, unless
#: an error estimate sits on its tolerance and the rounding changes a step: then by as much as
#: the tolerance allows (BENCHMARKS.md: 256 prior draws, 20 s, median max|dV| 3e-12 mV, worst
#: 11 mV on an upstroke 0.04 ms apart). Bands: max|dV| of most cells, and upstroke times.
LANES_VS_CELL_MV = 1e-6
LANES_VS_CELL_UPSTROKE_MS = 0.05


def _assert_lanes_match_cells(lanes: np.ndarray, cell: np.ndarray, dt: float) -> None:
    assert np.median(np.abs(lanes - cell).max(axis=1)) <= LANES_VS_CELL_MV
    for ours, theirs in zip(lanes, cell, strict=True):
        up_ours, up_theirs = upstroke_times(ours, dt), upstroke_times(theirs, dt)
        assert up_ours.size == up_theirs.size
        np.testing.assert_allclose(up_ours, up_theirs, rtol=0, atol=LANES_VS_CELL_UPSTROKE_MS)


def _scaled_kernik_cells(kernik, n: int, seed: int) -> pd.DataFrame:
    """``n`` Kernik cells with every parameter scaled by U(0.7, 1.3); row 0 the defaults."""
    scale = np.random.default_rng(seed).uniform(0.7, 1.3, (n, len(kernik.parameter_names)))
    scale[0] = 1.0
    return pd.DataFrame(kernik.default_parameters * scale, columns=kernik.parameter_names)


@pytest.mark.parametrize("cycle_length", [None, 400.0], ids=["spontaneous", "paced"])
def test_lane_kernel_matches_the_per_cell_kernel(kernik, cycle_length):
    """19 cells (one whole block of lanes and a part-filled one), 2 s: same traces up to
    rounding, same final states.
    """
    cells = _scaled_kernik_cells(kernik, 19, seed=3)
    kwargs = dict(cycle_length_ms=cycle_length, return_final_state=True)
    lanes, end_lanes = kernik.simulate_ap(cells, 2000, 0.5, **kwargs)
    cell, end_cell = kernik.simulate_ap(cells, 2000, 0.5, lane_blocks=False, **kwargs)
    assert lanes.shape == cell.shape == (19, 4001)
    assert np.isfinite(lanes).all()
    assert upstroke_times(lanes[0], 0.5).size >= 2
    _assert_lanes_match_cells(lanes, cell, 0.5)
    assert np.isfinite(end_lanes).all() and end_lanes.shape == end_cell.shape


def test_lane_kernel_paced_hh_matches_the_per_cell_kernel(hh):
    params = {"ina.g_Na": [120.0, 100.0, 140.0]}
    lanes = hh.simulate_ap(params, 50, 0.1, cycle_length_ms=10)
    cell = hh.simulate_ap(params, 50, 0.1, cycle_length_ms=10, lane_blocks=False)
    assert upstroke_times(lanes[0], 0.1).size == 5  # every stimulus fires
    _assert_lanes_match_cells(lanes, cell, 0.1)


def test_failing_lane_does_not_spoil_its_block(kernik):
    """A cell whose right-hand side is NaN is a NaN row; the other lanes of its block give
    exactly what they give without it.
    """
    cells = _scaled_kernik_cells(kernik, 18, seed=4)
    bad = cells.copy()
    bad.loc[5, "extra.Ko"] = -1.0  # log of a negative concentration: NaN
    with pytest.warns(SimulationWarning, match=r"1 cell\(s\) \(index 5\)"):
        v_bad, end_bad = kernik.simulate_ap(bad, 300, 0.5, return_final_state=True)
    v_good = kernik.simulate_ap(cells, 300, 0.5)
    assert np.isnan(v_bad[5]).all() and np.isnan(end_bad[5]).all()
    others = np.arange(18) != 5
    np.testing.assert_array_equal(v_bad[others], v_good[others])


def test_a_binary_file_is_not_a_model(tmp_path):
    path = tmp_path / "model.mmt"
    path.write_bytes(b"\x7fELF\x02\x01\x01\x00" + bytes(range(256)))
    with pytest.raises(ValueError, match=r"model.mmt is not a text .mmt file \(byte \d+"):
        load_model(path)


def test_a_directory_is_not_a_model(tmp_path):
    with pytest.raises(IsADirectoryError, match="is a directory, not a .mmt model file"):
        load_model(tmp_path)
    folder = tmp_path / "cell.mmt"
    folder.mkdir()
    with pytest.raises(IsADirectoryError, match="cell.mmt is a directory"):
        load_model(folder)


@pytest.mark.parametrize(
    "line, replacement, named",
    [
        ("g = 0.05", "g = nan", "parameter value.*membrane.g = nan"),
        ("g = 0.05", "g = 1e999", "parameter value.*membrane.g = inf"),
        ("E = -10", "E = -1e999", "parameter value.*membrane.E = -inf"),
        ("membrane.V = -80", "membrane.V = 1e999", "initial state value.*membrane.V = inf"),
        ("gate.x = 0.5", "gate.x = nan", "initial state value.*gate.x = nan"),
    ],
)
def test_non_finite_literals_in_the_model_file_are_refused(tmp_path, line, replacement, named):
    text = (DATA / "passive_leak.mmt").read_text()
    assert line in text
    path = tmp_path / "leak.mmt"
    path.write_text(text.replace(line, replacement, 1))
    with pytest.raises(ValueError, match=rf"leak.mmt: non-finite {named}.*finite number"):
        load_model(path)


def test_negative_conductances_are_refused_unless_allowed(hh, kernik):
    with pytest.raises(ValueError, match=r"'ina.g_Na' .* negative for 1 cell\(s\) \(index 1;"):
        hh.parameter_matrix({"ina.g_Na": [120.0, -5.0, 100.0]})
    with pytest.raises(ValueError, match="'ikr.scale_Kr'.*allow_negative=True"):
        kernik.parameter_matrix({"ikr.scale_Kr": -1.0})
    with pytest.raises(ValueError, match="'il.g_L'"):
        hh.simulate_vc(HH_PROTO, {"il.g_L": [-0.3]})
    allowed = hh.parameter_matrix({"ina.g_Na": [120.0, -5.0]}, allow_negative=True)
    assert allowed[1, hh.parameter_names.index("ina.g_Na")] == -5.0
    assert hh.simulate_vc(HH_PROTO, {"il.g_L": [-0.3]}, allow_negative=True).shape[0] == 1
    # reversal potentials and other parameters may be negative
    hh.parameter_matrix({"ina.E_Na": [-50.0], "ik.E_K": [-80.0]})


def test_conductance_rule():
    from sbi_twins.engine.model import is_conductance

    for name in ("ina.g_Na", "membrane.g", "ical.p_CaL", "inak.P_NaK", "ikr.scale_Kr"):
        assert is_conductance(name), name
    for name in ("ina.E_Na", "membrane.gx", "ical.rel_p_Ca", "phys.T", "extra.Ko"):
        assert not is_conductance(name), name


def test_every_cell_failing_blames_the_protocol(kernik):
    proto = Protocol("hot", -80.0, (Segment.step(50, -80), Segment.step(50, 200)))
    # without the retry: the stiff kernel integrates +200 mV (within 0.002 pA/pF of CVODE)
    with pytest.warns(SimulationWarning, match=r"Every cell failed.*'hot'.*\+200 mV, in segment 2"):
        current = kernik.simulate_vc(proto, {"ina.g_Na": [9.0, 12.0]}, retry=False)
    assert np.isnan(current).all()
    with pytest.warns(SimulationWarning, match="Check those parameter sets") as record:
        kernik.simulate_vc(KERNIK_PROTO, {"extra.Ko": [5.4, -1.0]})
    assert "Every cell" not in str(record[0].message)


def test_a_protocol_too_long_to_sample_is_refused_before_simulating(hh):
    proto = Protocol("long", -75.0, (Segment.step(1e10, -75),))
    with pytest.raises(ValueError, match=r"'long' lasts 1e\+10 ms.*1e\+11 samples long"):
        hh.simulate_vc(proto)


# -- a damaged kernel cache heals (issue 20: K01, K02) ------------------------------------------

_HEAL_PROBE = """
    import json, sys, warnings
    from sbi_twins import Protocol, Segment, load_model
    from sbi_twins.engine import kernel_cache
    if {disable_healing}:
        kernel_cache.purge = lambda name: 0  # healing deletes nothing: it cannot help
    proto = Protocol("p", -75.0, (Segment.step(5, -75), Segment.ramp(5, -75, 20)))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            model = load_model("hh1952")
            current = model.simulate_vc(proto).tolist()
            result = {{"current": current, "file": model.kernels.__file__}}
        except OSError as error:
            result = {{"error": f"{{type(error).__name__}}: {{error}}"}}
    result["warnings"] = [
        str(w.message) for w in caught if issubclass(w.category, kernel_cache.KernelCacheWarning)
    ]
    print(json.dumps(result))
"""


def _probe(env: dict[str, str], disable_healing: bool = False) -> dict:
    return run_python(_HEAL_PROBE.format(disable_healing=disable_healing), env, timeout=600)


def test_damaged_kernel_cache_heals_or_says_to_delete_it(tmp_path):
    cache = tmp_path / "cache"
    env = dict(os.environ, SBI_TWINS_CACHE=str(cache))
    fresh = _probe(env)
    assert fresh["warnings"] == []
    kernel = Path(fresh["file"])
    compiled = sorted((kernel.parent / "__pycache__").glob(f"{kernel.stem}.*.nb[ic]"))
    assert compiled

    # K01: a generated module truncated before simulate_vc (it imports, without that kernel)
    text = kernel.read_text()
    kernel.write_text(text[: text.rindex("\n@", 0, text.index("def simulate_vc(")) + 1])
    healed = _probe(env)
    assert healed["current"] == fresh["current"]
    assert len(healed["warnings"]) == 1
    assert f"kernel cache in {cache} was damaged" in healed["warnings"][0]
    assert "truncated" in healed["warnings"][0]

    # K02: Numba's machine-code files overwritten with random bytes
    def scramble() -> None:
        for path in (kernel.parent / "__pycache__").glob(f"{kernel.stem}.*.nb[ic]"):
            path.write_bytes(os.urandom(path.stat().st_size))

    scramble()
    healed = _probe(env)
    assert healed["current"] == fresh["current"]
    assert len(healed["warnings"]) == 1 and "while Numba read the compiled" in healed["warnings"][0]

    # healing that cannot help ends in one clear error
    scramble()
    failed = _probe(env, disable_healing=True)
    assert failed["error"].startswith("KernelCacheError: the kernel cache")
    assert str(cache) in failed["error"] and "delete that directory" in failed["error"]
