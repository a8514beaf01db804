"""Protocols to and from files (:mod:`sbi_twins.recording.protocol_io`): protocols rebuilt from
recorded commands (ABF fixtures, synthetic commands, a real iPSC-CM recording), the TOML round
trip, ATF and CSV stimulus files, the ``sbi-twins protocol`` command, and the messages of bad
input.
"""

from __future__ import annotations

import dataclasses
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from sbi_twins import cli
from sbi_twins.protocol import Protocol, Segment, load_protocol
from sbi_twins.recording import (
    Recording,
    load_recording,
    protocol_from_recording,
    protocol_to_toml,
    write_atf,
    write_command_csv,
)
from sbi_twins.recording.alignment import command_differences

DATA = Path(__file__).parent / "data"
CLARK_FILE = DATA / "clark_ipsc" / "Compensation_rspre_0.csv.gz"


def clark_recording() -> Recording:
    """The real recording of ``tests/data/clark_ipsc`` as a voltage-clamp Recording.

    Its CSV holds two columns a signal could be (``Voltage (V)``, which is the command, and
    ``Current (pA/pF)``), so each is read by name and the voltage becomes the command.
    """
    current = load_recording(CLARK_FILE, channel="Current (pA/pF)")
    command = load_recording(CLARK_FILE, channel="Voltage (V)").to_unit("mV").signal
    return dataclasses.replace(current, command=command)


def sampled(protocol: Protocol, interval: float, **metadata) -> Recording:
    """A recording of the protocol's command on its grid without the end point (as a rig's)."""
    times = protocol.times(interval)[:-1]
    return Recording.from_arrays(
        np.zeros(times.size), interval, "pA", command=protocol.voltage(times), metadata=metadata
    )


def largest_difference(protocol: Protocol, recording: Recording) -> float:
    """Largest |protocol - command| over the recording's samples, on the exact grid."""
    grid = np.arange(recording.time_ms.size) * protocol.duration_ms / recording.time_ms.size
    return float(np.max(np.abs(protocol.voltage(grid) - recording.command)))


# --------------------------------------------------------------------------- from recordings


@pytest.mark.parametrize(
    ("name", "sweep", "unit", "kinds"),
    [
        ("model_vc_ramp.abf", 0, None, ["step", "ramp", "ramp", "step"]),
        ("model_vc_ramp.abf", 3, None, ["step", "ramp", "ramp", "step"]),
        ("05210017_vc_abf1.abf", 2, None, ["step", "step", "step"]),
        ("2018_12_09_pCLAMP11_0001.abf", 4, "pA", ["step", "step", "step"]),
        ("2020_06_16_0000.abf", 1, None, ["step"]),
    ],
)
def test_abf_commands_are_rebuilt_within_the_tolerance(name, sweep, unit, kinds):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        recording = load_recording(DATA / "abf" / name, sweep=sweep, signal_unit=unit)
    protocol = protocol_from_recording(recording, "rebuilt")
    assert [segment.kind for segment in protocol.segments] == kinds
    n = recording.time_ms.size
    assert protocol.duration_ms == pytest.approx(n * recording.sample_interval_ms, rel=1e-12)
    assert largest_difference(protocol, recording) <= 0.1
    assert protocol.holding_mV == recording.metadata["command_holding"]
    assert name in protocol.description and f"sweep {sweep}" in protocol.description


def test_the_ramps_of_an_abf_file_are_found_where_its_epochs_are():
    """Epochs: 37 holding samples (1/64 of 2400), ramps -70 -> -80 and back over 1000 samples
    each (pyabf includes both end values, so the first ramp's Protocol end lies one step past
    -80), then -70 mV.
    """
    recording = load_recording(DATA / "abf" / "model_vc_ramp.abf", sweep=1)
    segments = protocol_from_recording(recording, "ramp").segments
    assert [(s.kind, s.duration_ms) for s in segments] == [
        ("step", 1.85),
        ("ramp", 50.0),
        ("ramp", 49.95),
        ("step", 18.2),
    ]
    assert (segments[1].v_start_mV, segments[2].v_start_mV, segments[2].v_end_mV) == (-70, -80, -70)
    assert segments[1].v_end_mV == pytest.approx(-70 - 10 * 1000 / 999, abs=1e-6)


@pytest.mark.parametrize("name", ["clark2022", "kernik_steps", "clark_na_iv"])
def test_a_sampled_protocol_is_rebuilt_exactly(name):
    original = load_protocol(name)
    rebuilt = protocol_from_recording(sampled(original, 0.1), name)
    assert rebuilt.segments == original.segments
    assert rebuilt.holding_mV == original.holding_mV


def test_ramps_that_start_at_the_level_before_them_start_at_their_corner():
    """A ramp leaving a step continuously is within tolerance of the step for a while; the
    segments still start where the waveform bends, not a few samples later.
    """
    original = Protocol(
        "corners",
        -80.0,
        (
            Segment.step(10, -80),
            Segment.ramp(20, -80, -40),
            Segment.step(10, -40),
            Segment.ramp(10, -40, -100),
            Segment.ramp(5, -100, -20),
            Segment.step(10, -20),
        ),
    )
    assert protocol_from_recording(sampled(original, 0.1), "corners").segments == original.segments


def test_a_noisy_command_keeps_its_steps_and_stays_within_the_tolerance():
    original = load_protocol("clark_na_iv")
    clean = sampled(original, 0.1)
    noise = np.random.default_rng(0).uniform(-0.04, 0.04, clean.command.size)
    noisy = dataclasses.replace(clean, command=clean.command + noise)
    rebuilt = protocol_from_recording(noisy, "noisy", tolerance_mV=0.1)
    assert [s.duration_ms for s in rebuilt.segments] == [s.duration_ms for s in original.segments]
    levels = np.array([s.v_start_mV for s in rebuilt.segments])
    np.testing.assert_allclose(levels, [s.v_start_mV for s in original.segments], atol=0.05)
    assert largest_difference(rebuilt, noisy) <= 0.1


def test_samples_within_the_tolerance_merge_and_larger_changes_split():
    command = np.r_[np.full(50, -80.0), np.full(50, -80.15), np.full(50, -79.0)]
    recording = Recording.from_arrays(np.zeros(150), 0.1, "pA", command=command)
    merged = protocol_from_recording(recording, "m", tolerance_mV=0.1)
    assert [s.duration_ms for s in merged.segments] == [10.0, 5.0]
    split = protocol_from_recording(recording, "s", tolerance_mV=0.01)
    assert [s.v_start_mV for s in split.segments] == [-80.0, -80.15, -79.0]


def test_the_real_clark_recording_plays_the_bundled_protocol():
    recording = clark_recording()
    protocol = load_protocol("clark_na_iv")
    assert recording.command_mV is not None
    assert command_differences(recording, protocol) == []
    rebuilt = protocol_from_recording(recording, "clark_na_iv")
    assert rebuilt.segments == protocol.segments
    assert largest_difference(rebuilt, recording) <= 1e-9


def test_the_clark_protocol_cites_its_source():
    protocol = load_protocol("clark_na_iv")
    assert (
        "Clark" in protocol.reference and "Christini-Lab/iPSC-leak-artifact" in protocol.reference
    )
    assert "BSD-3-Clause" in protocol.description
    assert protocol.duration_ms == 5500 and protocol.holding_mV == -80


@pytest.mark.parametrize(
    ("recording", "match"),
    [
        (
            Recording.from_arrays(
                np.zeros(10), 0.1, "mV", command=np.zeros(10), mode="current_clamp"
            ),
            "current-clamp recording: its command is a current",
        ),
        (Recording.from_arrays(np.zeros(10), 0.1, "pA"), "holds no command waveform"),
        (np.zeros(10), "recording must be a Recording"),
    ],
)
def test_recordings_without_a_voltage_command_are_refused(recording, match):
    with pytest.raises(ValueError, match=match):
        protocol_from_recording(recording, "x")


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"tolerance_mV": float("nan")}, "tolerance_mV must be a finite number >= 0.0001"),
        ({"tolerance_mV": 0.0}, "tolerance_mV must be a finite number >= 0.0001"),
        ({"name": ""}, "name must be a non-empty string"),
        ({"max_segments": 0}, "max_segments must be an integer >= 1"),
    ],
)
def test_bad_arguments_are_named(kwargs, match):
    recording = sampled(load_protocol("kernik_steps"), 1.0)
    with pytest.raises(ValueError, match=match):
        protocol_from_recording(recording, **{"name": "x", **kwargs})


def test_a_command_that_is_not_steps_and_ramps_is_refused_with_its_noise():
    times = np.arange(5000) * 0.1
    sine = (
        -40 + 30 * np.sin(2 * np.pi * times / 100) + np.random.default_rng(1).normal(0, 0.5, 5000)
    )
    recording = Recording.from_arrays(np.zeros(5000), 0.1, "pA", command=sine)
    with pytest.raises(ValueError, match=r"needs more than 100 steps and ramps .* noise is about"):
        protocol_from_recording(recording, "sine", max_segments=100)


# --------------------------------------------------------------------------- TOML


def sine_protocol() -> Protocol:
    return Protocol(
        'odd "name" \\ with\ttabs',
        -80.0,
        (
            Segment.step(250.5, -80),
            Segment.sine(1000, -30, 54.3, 0.7, 1.25e-5),
            Segment.ramp(0.1, -30.000000000000004, 1e-7),
            Segment.sine(33.3, 0.1, 2.0, 4.0),
        ),
        description="two lines\nand a DEL \x7f and ünïcödé ∆V",
        reference='Someone et al. (2031) "quoted"',
    )


@pytest.mark.parametrize("make", [lambda: load_protocol("clark2022"), sine_protocol])
def test_toml_round_trip_keeps_the_content_hash(tmp_path, make):
    protocol = make()
    path = tmp_path / "p.toml"
    path.write_text(protocol_to_toml(protocol), encoding="utf-8")
    loaded = load_protocol(path)
    assert loaded.content_hash() == protocol.content_hash()
    assert loaded.segments == protocol.segments


def test_a_rebuilt_protocol_round_trips_through_toml(tmp_path):
    recording = load_recording(DATA / "abf" / "model_vc_ramp.abf", sweep=2)
    protocol = protocol_from_recording(recording, "ramp")
    path = tmp_path / "ramp.toml"
    path.write_text(protocol_to_toml(protocol))
    assert load_protocol(path).content_hash() == protocol.content_hash()
    assert "v_end_mV = -80.01001\n" in path.read_text()  # rounded levels, not float noise


# --------------------------------------------------------------------------- ATF and CSV


def test_atf_file_has_the_format_header_and_the_command(tmp_path):
    protocol = load_protocol("clark_na_iv")
    path = write_atf(protocol, tmp_path / "na.atf", 0.5)
    raw = path.read_bytes()
    assert raw.count(b"\r\n") == raw.count(b"\n")  # CRLF throughout
    lines = raw.decode("ascii").split("\r\n")
    assert lines[0] == "ATF\t1.0"
    n_optional, n_columns = map(int, lines[1].split("\t"))
    assert n_columns == 2
    optional = lines[2 : 2 + n_optional]
    assert all(line.startswith('"') and line.endswith('"') for line in optional)
    assert '"AcquisitionMode=Episodic Stimulation"' in optional
    assert any(protocol.content_hash() in line for line in optional)
    assert lines[2 + n_optional] == '"Time (s)"\t"Trace #1 (mV)"'
    data = np.array([line.split("\t") for line in lines[3 + n_optional : -1]], dtype=float)
    times = protocol.times(0.5)
    np.testing.assert_allclose(data[:, 0] * 1e3, times, rtol=0, atol=1e-9)
    np.testing.assert_array_equal(data[:, 1], protocol.voltage(times))
    assert lines[-1] == ""


def test_myokit_reads_our_atf_file(tmp_path):
    import myokit.formats.axon as axon

    protocol = sine_protocol()
    path = write_atf(protocol, tmp_path / "sine.atf", 0.1)
    atf = axon.AtfFile(str(path))
    assert atf.version() == "1.0"
    times = protocol.times(0.1)
    np.testing.assert_allclose(np.array(atf["Time (s)"]) * 1e3, times, atol=1e-9)
    np.testing.assert_allclose(atf["Trace #1 (mV)"], protocol.voltage(times), atol=5e-7)


def test_command_csv_has_the_grid_and_the_command(tmp_path):
    protocol = load_protocol("kernik_steps")
    path = write_command_csv(protocol, tmp_path / "k.csv", 2.5)
    table = pd.read_csv(path)
    assert list(table.columns) == ["time_ms", "command_mV"]
    np.testing.assert_allclose(table["time_ms"], protocol.times(2.5), atol=1e-9)
    np.testing.assert_array_equal(table["command_mV"], protocol.voltage(protocol.times(2.5)))


@pytest.mark.parametrize("write", [write_atf, write_command_csv])
def test_an_interval_that_does_not_divide_the_protocol_is_refused(tmp_path, write):
    with pytest.raises(ValueError, match=r"whole multiple of sample_interval_ms \(0.3\)"):
        write(load_protocol("clark_na_iv"), tmp_path / "x", 0.3)
    assert not (tmp_path / "x").exists()


# --------------------------------------------------------------------------- command line


def test_cli_rebuilds_a_protocol_and_exports_it(tmp_path, capsys):
    toml = tmp_path / "ramp.toml"
    code = cli.main(
        [
            "protocol",
            "from-abf",
            str(DATA / "abf" / "model_vc_ramp.abf"),
            "--name",
            "ramp",
            "--out",
            str(toml),
            "--sweep",
            "1",
        ]
    )
    assert code == 0 and "2 steps and 2 ramps" in capsys.readouterr().out
    assert load_protocol(toml).name == "ramp"
    atf = tmp_path / "ramp.atf"
    code = cli.main(
        [
            "protocol",
            "export",
            str(toml),
            "--format",
            "atf",
            "--sample-interval",
            "0.05",
            "--out",
            str(atf),
        ]
    )
    assert code == 0 and "2401 samples every 0.05 ms" in capsys.readouterr().out
    assert atf.read_text().startswith("ATF\t1.0")
    csv = tmp_path / "na.csv"
    assert (
        cli.main(
            [
                "protocol",
                "export",
                "clark_na_iv",
                "--format",
                "csv",
                "--sample-interval",
                "1",
                "--out",
                str(csv),
            ]
        )
        == 0
    )
    assert len(pd.read_csv(csv)) == 5501


def test_cli_names_what_is_wrong_in_one_line(tmp_path, capsys):
    code = cli.main(
        [
            "protocol",
            "from-abf",
            str(DATA / "abf" / "17o05027_ic_ramp.abf"),
            "--name",
            "x",
            "--out",
            str(tmp_path / "x.toml"),
        ]
    )
    error = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in error
    assert error.startswith("sbi-twins protocol: error:") and "current-clamp recording" in error
    assert not (tmp_path / "x.toml").exists()
