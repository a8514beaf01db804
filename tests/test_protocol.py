"""Tests for sbi_twins.protocol: bundled protocols, voltage semantics and TOML errors."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from sbi_twins.protocol import Protocol, Segment, load_protocol

DATA = Path(__file__).parent / "data"

GOOD_HEADER = 'name = "t"\nholding_mV = -80\n'
SEG_STEP = '[[segment]]\ntype = "step"\nduration_ms = 10\nv_mV = -80\n'


def write(tmp_path: Path, text: str, name: str = "p.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


# --- bundled protocols ------------------------------------------------------------------


def test_clark2022_duration_and_grid():
    proto = load_protocol("clark2022")
    assert proto.name == "clark2022"
    assert proto.holding_mV == -80.0
    assert len(proto.segments) == 25
    assert proto.duration_ms == pytest.approx(11455.1, abs=1e-9)
    t = proto.times(0.1)
    assert t.shape == (114552,)
    assert t[0] == 0.0 and t[-1] == pytest.approx(11455.1, abs=1e-9)
    assert proto.edges_ms.shape == (26,)
    assert proto.source.endswith("clark2022.toml")
    assert "4829" in proto.reference


def test_clark2022_spot_values():
    proto = load_protocol("clark2022")
    t = proto.times(0.1)
    v = proto.voltage(t)
    assert v[0] == -80.0
    assert v[19999] == -80.0 and v[20000] == 6.0  # first edge at 2000 ms is right-continuous
    # Ramp -2 -> -34 over 103 ms, starting at 3471 ms.
    assert proto.voltage(3471.0) == -2.0
    assert proto.voltage(3471.0 + 51.5) == pytest.approx(-18.0)
    assert proto.voltage(3574.0) == -80.0  # the ramp's end edge belongs to the next step
    # The 8.1 ms step at -118 mV covers exactly 81 samples.
    assert np.count_nonzero(v == -118.0) == 81
    assert v[-1] == -80.0 and proto.voltage(1e6) == -80.0
    assert proto.voltage(-5.0) == -80.0


def test_every_edge_on_grid_takes_new_segment_value():
    proto = load_protocol("clark2022")
    t = proto.times(0.1)
    v = proto.voltage(t)
    for start, seg in zip(proto.edges_ms[:-1], proto.segments, strict=True):
        k = round(start / 0.1)
        assert v[k] == seg.v_start_mV, f"sample at edge {start} ms"


def test_kernik_steps_matches_reference_command():
    ref = np.load(DATA / "kernik_steps_vcmd.npz")
    proto = load_protocol("kernik_steps")
    assert proto.duration_ms == 10000.0
    np.testing.assert_array_equal(proto.voltage(ref["vc_t_ms"]), ref["vc_vcmd"])
    np.testing.assert_array_equal(proto.voltage(proto.times(0.1)), ref["vc_vcmd"])
    assert proto.times(0.1).shape == ref["vc_t_ms"].shape


def test_voltage_keeps_shape():
    proto = load_protocol("kernik_steps")
    assert proto.voltage(np.zeros((2, 3))).shape == (2, 3)
    assert proto.voltage(1200.0).shape == ()
    with pytest.raises(ValueError, match="NaN"):
        proto.voltage([0.0, np.nan])


# --- sine segments ----------------------------------------------------------------------


def test_sine_segment_values():
    seg = Segment.sine(1000, offset_mV=-30, amplitude_mV=20, frequency_hz=2)
    assert seg.v_end_mV == seg.v_start_mV == -30.0
    # 2 Hz: period 500 ms; peak at 125 ms, trough at 375 ms.
    np.testing.assert_allclose(
        seg.voltage_at(np.array([0.0, 125.0, 250.0, 375.0])),
        [-30.0, -10.0, -30.0, -50.0],
        atol=1e-12,
    )
    shifted = Segment.sine(1000, -30, 20, 2, phase_rad=math.pi / 2)
    assert shifted.voltage_at(np.array(0.0)) == pytest.approx(-10.0)


def test_sine_in_protocol_and_from_toml(tmp_path):
    path = write(
        tmp_path,
        GOOD_HEADER
        + """
[[segment]]
type = "step"
duration_ms = 100
v_mV = -80

[[segment]]
type = "sine"
duration_ms = 1000
offset_mV = -30
amplitude_mV = 20
frequency_hz = 2
""",
    )
    proto = load_protocol(path)
    assert proto.segments[1] == Segment.sine(1000, -30, 20, 2)
    assert proto.voltage(100.0) == pytest.approx(-30.0)
    assert proto.voltage(100.0 + 125.0) == pytest.approx(-10.0)
    # After the end the command stays where the sine ended (1100 ms: 2 full periods -> offset).
    assert proto.voltage(5000.0) == pytest.approx(-30.0)


# --- Segment / Protocol validation ------------------------------------------------------


@pytest.mark.parametrize(
    "args, extra, match",
    [
        (("step", 0, 0, 0), {}, "duration_ms must be a finite number > 0"),
        (("step", math.inf, 0, 0), {}, "duration_ms must be a finite number, got inf"),
        (("ramp", 1, math.nan, 0), {}, "v_start_mV must be a finite number, got nan"),
        (("sine", 1, 0, 0), {"frequency_hz": -1}, "frequency_hz"),
        (("step", 1, 0, 5), {}, "must be equal"),
        (("ramp", 1, 0, 5), {"amplitude_mV": 3}, "only apply to sine"),
        (("square", 1, 0, 0), {}, "step, ramp, sine"),
        (("step", "1", 0, 0), {}, "duration_ms must be a finite number, got '1'"),
    ],
)
def test_segment_validation(args, extra, match):
    with pytest.raises(ValueError, match=match):
        Segment(*args, **extra)


def test_protocol_validation():
    with pytest.raises(ValueError, match="no segments"):
        Protocol("empty", -80.0, ())
    with pytest.raises(ValueError, match="holding_mV must be a finite number"):
        Protocol("x", math.nan, (Segment.step(1, 0),))
    proto = Protocol("x", -80, [Segment.step(1, 0)])  # list accepted, stored as tuple
    assert isinstance(proto.segments, tuple) and proto.holding_mV == -80.0


# --- times() ----------------------------------------------------------------------------


@pytest.mark.parametrize("si", [0.0, -0.1, math.nan, math.inf])
def test_times_rejects_bad_interval(si):
    with pytest.raises(ValueError, match="sample_interval_ms must be a finite number > 0"):
        load_protocol("clark2022").times(si)


def test_times_rejects_non_divisor_and_suggests_one():
    with pytest.raises(ValueError, match=r"must be a whole multiple.*try sample_interval_ms=0\.1"):
        load_protocol("clark2022").times(0.3)
    assert load_protocol("kernik_steps").times(0.5).shape == (20001,)


# --- hashing / dict ---------------------------------------------------------------------


def test_content_hash_stable_and_sensitive(tmp_path):
    a = load_protocol("kernik_steps")
    text = Path(a.source).read_text()
    copy = load_protocol(write(tmp_path, text, "copy.toml"))
    assert copy.source != a.source
    assert copy.content_hash() == a.content_hash() == load_protocol("kernik_steps").content_hash()
    # int vs float spelling of the same number does not matter
    as_floats = text.replace("v_mV = -80\n", "v_mV = -80.0\n")
    floats = load_protocol(write(tmp_path, as_floats, "f.toml"))
    assert floats.content_hash() == a.content_hash()
    changed = load_protocol(write(tmp_path, text.replace("v_mV = -120", "v_mV = -121"), "c.toml"))
    assert changed.content_hash() != a.content_hash()
    d = a.to_dict()
    assert json.loads(json.dumps(d)) == d
    assert d["segments"][1] == {
        "kind": "step",
        "duration_ms": 500.0,
        "v_start_mV": -120.0,
        "v_end_mV": -120.0,
        "amplitude_mV": 0.0,
        "frequency_hz": 0.0,
        "phase_rad": 0.0,
    }


# --- loading and TOML errors ------------------------------------------------------------


def test_unknown_name_lists_bundled():
    with pytest.raises(FileNotFoundError, match="unknown protocol 'nope'.*clark2022.*kernik_steps"):
        load_protocol("nope")


def test_missing_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.toml"):
        load_protocol(tmp_path / "missing.toml")
    with pytest.raises(FileNotFoundError):
        load_protocol("missing.toml")


def test_name_defaults_to_file_stem(tmp_path):
    path = write(tmp_path, "holding_mV = -80\n" + SEG_STEP, "my_proto.toml")
    proto = load_protocol(str(path))
    assert proto.name == "my_proto" and proto.duration_ms == 10.0


def test_toml_syntax_error(tmp_path):
    path = write(tmp_path, GOOD_HEADER + "[[segment]]\ntype = step\n")
    with pytest.raises(ValueError, match="TOML syntax error") as exc:
        load_protocol(path)
    assert str(path) in str(exc.value) and "line 4" in str(exc.value)


def test_missing_field_names_field_segment_and_line(tmp_path):
    # segment 2 header is on line 8 (2 top-level lines, 4 segment lines, a blank line)
    ramp = '[[segment]]\ntype = "ramp"\nduration_ms = 5\nv_start_mV = 0\n'
    path = write(tmp_path, GOOD_HEADER + SEG_STEP + "\n" + ramp)
    with pytest.raises(ValueError) as exc:
        load_protocol(path)
    msg = str(exc.value)
    assert str(path) in msg and "segment 2" in msg and "line 8" in msg and "'v_end_mV'" in msg


def test_missing_type(tmp_path):
    path = write(tmp_path, GOOD_HEADER + "[[segment]]\nduration_ms = 5\nv_mV = 0\n")
    with pytest.raises(ValueError, match=r"segment 1 \(line 3\): missing required field 'type'"):
        load_protocol(path)


def test_unknown_segment_type_lists_valid(tmp_path):
    path = write(tmp_path, GOOD_HEADER + '[[segment]]\ntype = "square"\nduration_ms = 5\n')
    match = r"segment 1 \(line 3\): unknown segment type 'square'; valid types: step, ramp, sine"
    with pytest.raises(ValueError, match=match):
        load_protocol(path)


def test_unknown_key_lists_allowed(tmp_path):
    path = write(tmp_path, GOOD_HEADER + SEG_STEP.replace("duration_ms", "duraton_ms"))
    with pytest.raises(ValueError) as exc:
        load_protocol(path)
    msg = str(exc.value)
    assert "duraton_ms" in msg and "did you mean" in msg
    assert "allowed: type, duration_ms, v_mV" in msg and "segment 1 (line 3)" in msg


@pytest.mark.parametrize(
    "value, match",
    [
        ("0", "duration_ms must be a finite number > 0"),
        ("-5", "duration_ms must be a finite number > 0"),
        ("inf", "'duration_ms' must be a finite number"),
        ("nan", "'duration_ms' must be a finite number"),
    ],
)
def test_bad_duration(tmp_path, value, match):
    segment = SEG_STEP.replace("duration_ms = 10", f"duration_ms = {value}")
    path = write(tmp_path, GOOD_HEADER + segment)
    with pytest.raises(ValueError, match=match) as exc:
        load_protocol(path)
    assert "segment 1 (line 3)" in str(exc.value)


@pytest.mark.parametrize("value", ['"abc"', "true", "[1, 2]"])
def test_non_numeric_value(tmp_path, value):
    path = write(tmp_path, GOOD_HEADER + SEG_STEP.replace("v_mV = -80", f"v_mV = {value}"))
    with pytest.raises(ValueError, match=r"segment 1 \(line 3\): 'v_mV' must be a finite number"):
        load_protocol(path)


def test_non_finite_sine_offset_names_toml_key(tmp_path):
    path = write(
        tmp_path,
        GOOD_HEADER + '[[segment]]\ntype = "sine"\nduration_ms = 5\n'
        "offset_mV = -inf\namplitude_mV = 1\nfrequency_hz = 1\n",
    )
    match = r"segment 1 \(line 3\): 'offset_mV' must be a finite number"
    with pytest.raises(ValueError, match=match):
        load_protocol(path)


def test_non_numeric_holding(tmp_path):
    path = write(tmp_path, 'holding_mV = "low"\n' + SEG_STEP)
    with pytest.raises(ValueError, match="'holding_mV' must be a finite number"):
        load_protocol(path)


def test_no_segments(tmp_path):
    path = write(tmp_path, GOOD_HEADER)
    with pytest.raises(ValueError, match=r"no segments; add at least one \[\[segment\]\]") as exc:
        load_protocol(path)
    assert str(path) in str(exc.value)


def test_single_bracket_segment(tmp_path):
    path = write(tmp_path, GOOD_HEADER + SEG_STEP.replace("[[segment]]", "[segment]"))
    with pytest.raises(ValueError, match=r"write each one as \[\[segment\]\]"):
        load_protocol(path)


def test_missing_holding_and_unknown_top_key(tmp_path):
    with pytest.raises(ValueError, match="missing required field 'holding_mV'"):
        load_protocol(write(tmp_path, SEG_STEP, "a.toml"))
    with pytest.raises(ValueError, match=r"unknown top-level key\(s\) holding_mv.*'holding_mV'"):
        load_protocol(write(tmp_path, "holding_mv = -80\n" + SEG_STEP, "b.toml"))


# --- physiological range and size limits (issue 20: P12, P13, P26) -------------------------


@pytest.mark.parametrize(
    "segments, holding, where, voltage",
    [
        ((Segment.step(10, -80), Segment.step(10, 1e6)), -80, r"segment 2 \(step\)", r"\+1e\+06"),
        ((Segment.ramp(10, -80, 300),), -80, r"segment 1 \(ramp\)", r"\+300"),
        ((Segment.sine(10, 0, 260, 5),), -80, r"segment 1 \(sine\)", r"-260"),
        ((Segment.step(10, -80),), -251, "holding_mV", "-251"),
    ],
)
def test_commands_beyond_250_mV_are_refused_naming_the_segment(segments, holding, where, voltage):
    with pytest.raises(ValueError, match=rf"{where} of protocol 'p' commands {voltage} mV.*250"):
        Protocol("p", holding, segments)


def test_commands_up_to_250_mV_are_allowed_and_the_extreme_is_found():
    proto = Protocol("p", -80, (Segment.step(10, -80), Segment.sine(10, 0, 250, 5)))
    assert proto.most_extreme_command() == (-250.0, 2)
    assert Protocol("p", -80, (Segment.step(10, 40),)).most_extreme_command() == (-80.0, 0)


def test_toml_command_out_of_range_names_file_and_segment(tmp_path):
    step = SEG_STEP.replace("v_mV = -80", "v_mV = 1000000")
    path = write(tmp_path, GOOD_HEADER + SEG_STEP + step)
    with pytest.raises(ValueError, match=rf"{path}: segment 2 \(step\) .* \+1e\+06 mV"):
        load_protocol(path)


def test_a_grid_too_long_is_refused_before_allocating():
    proto = Protocol("long", -80, (Segment.step(1e10, -80),))
    with pytest.raises(ValueError, match=r"would be 1e\+11 samples long \(800 GB per cell\)"):
        proto.times(0.1)
    assert proto.times(1e4).size == 1_000_001  # the same protocol sampled coarsely is fine


def test_a_directory_or_binary_file_is_not_a_protocol(tmp_path):
    with pytest.raises(IsADirectoryError, match="is a directory, not a .toml protocol file"):
        load_protocol(tmp_path)
    folder = tmp_path / "p.toml"
    folder.mkdir()
    with pytest.raises(IsADirectoryError, match="p.toml is a directory"):
        load_protocol(folder)
    binary = tmp_path / "b.toml"
    binary.write_bytes(bytes(range(256)))
    with pytest.raises(ValueError, match="b.toml: not a text .toml protocol file"):
        load_protocol(binary)
