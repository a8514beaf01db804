"""Reading recordings (:mod:`sbi_twins.recording.io`): every ABF fixture against pyabf's own
reading, CSV tables and their round trips, arrays, unit conversions, and the message each kind
of bad input gets.
"""

from __future__ import annotations

import dataclasses
import gzip
import re
import warnings
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pyabf
import pyabf.stimulus
import pytest

import sbi_twins as st
from sbi_twins.recording import Recording, load_recording
from sbi_twins.recording import io as recording_io

ABF_DIR = Path(__file__).parent / "data" / "abf"


def read_with_pyabf(name: str, sweep: int, channel: int) -> SimpleNamespace:
    """One sweep of one channel as pyabf reads it (the reference for the loader)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pyabf warns about a stimulus file it cannot find
        abf = pyabf.ABF(ABF_DIR / name)
        abf.setSweep(sweep, channel=channel)
        return SimpleNamespace(
            abf=abf,
            x_s=np.array(abf.sweepX, dtype=float),
            y=np.array(abf.sweepY, dtype=float),
            c=np.array(abf.sweepC, dtype=float),
            units_y=abf.sweepUnitsY,
            units_c=abf.sweepUnitsC,
        )


# --------------------------------------------------------------------------- ABF fixtures

# (file, sweep, channel=, channel read, mode, signal unit, command source)
ABF_CASES = [
    # ABF2, voltage clamp, ramp epochs of an amplifier model cell
    ("model_vc_ramp.abf", 3, None, 0, "voltage_clamp", "pA", "epochs"),
    # ABF1, 2 channels; channel 0 is *named* "Voltage 0" but its unit is pA: a current
    ("05210017_vc_abf1.abf", 2, None, 0, "voltage_clamp", "pA", "epochs"),
    # the second channel by name: its own DAC (waveform off) holds at -80 mV
    ("05210017_vc_abf1.abf", 5, "Current 1", 1, "voltage_clamp", "pA", "holding"),
    # ABF2, current clamp, a 0 -> 10 pA ramp in sweep 1
    ("17o05027_ic_ramp.abf", 1, None, 0, "current_clamp", "mV", "epochs"),
    # ABF2, gap-free current clamp with 2 channels (mV, pA); the command DAC is in pA
    ("2020_07_29_0062.abf", 0, None, 0, "current_clamp", "mV", "epochs"),
    # ABF2, event-driven with variable-length sweeps: each sweep read at its own length
    ("2020_06_16_0000.abf", 0, None, 0, "voltage_clamp", "pA", "holding"),
    ("2020_06_16_0000.abf", 1, None, 0, "voltage_clamp", "pA", "holding"),
    ("2020_06_16_0000.abf", 2, 0, 0, "voltage_clamp", "pA", "holding"),
]


@pytest.mark.parametrize(
    ("name", "sweep", "channel", "read", "mode", "unit", "source"),
    ABF_CASES,
    ids=[f"{c[0]}-sweep{c[1]}-ch{c[3]}" for c in ABF_CASES],
)
def test_abf_fixtures_load_as_pyabf_reads_them(name, sweep, channel, read, mode, unit, source):
    rec = load_recording(ABF_DIR / name, sweep=sweep, channel=channel)
    ref = read_with_pyabf(name, sweep, read)
    assert rec.mode == mode
    assert rec.signal_unit == ref.units_y == unit
    np.testing.assert_array_equal(rec.signal, ref.y)
    np.testing.assert_allclose(rec.time_ms, ref.x_s * 1e3, rtol=1e-12, atol=1e-9)
    assert rec.sample_interval_ms == pytest.approx(1e3 / ref.abf.sampleRate, rel=1e-12)
    # the command is pyabf's sweepC, already in mV (voltage clamp) or pA (current clamp)
    assert ref.units_c == ("mV" if mode == "voltage_clamp" else "pA")
    np.testing.assert_array_equal(rec.command, ref.c)
    assert (rec.command_mV is rec.command) == (mode == "voltage_clamp")
    meta = rec.metadata
    assert meta["source"] == str(ABF_DIR / name) and meta["format"] == "ABF"
    assert (meta["sweep"], meta["channel"]) == (sweep, read)
    assert meta["channel_name"] == ref.abf.adcNames[read]
    assert meta["abf_version"] == ref.abf.abfVersionString
    assert meta["sample_rate_Hz"] == pytest.approx(ref.abf.sampleRate)
    assert meta["command_source"] == source
    assert meta["command_holding"] == ref.abf.holdingCommand[read]  # DAC already in mV / pA
    assert "cm_pF" not in meta  # none of these files telegraphed a capacitance


def test_abf_versions_and_acquisition_modes_are_reported():
    cases = {
        "05210017_vc_abf1.abf": (
            "1.8.3.0",
            "episodic",
            "Apply ACh with imaging (VC) 2 (no movies)",
        ),
        "model_vc_ramp.abf": ("2.6.0.0", "episodic", "0204 Cm ramp"),
        "2020_07_29_0062.abf": ("2.9.0.0", "gap-free", "Current_Clamp_gap free"),
        "2020_06_16_0000.abf": (
            "2.3.0.0",
            "event-driven (variable-length sweeps)",
            "10kHzAquisitionTriggered",
        ),
    }
    for name, (version, acquisition, protocol) in cases.items():
        meta = load_recording(ABF_DIR / name).metadata
        assert (meta["abf_version"], meta["acquisition"], meta["protocol"]) == (
            version,
            acquisition,
            protocol,
        )


def test_event_driven_sweeps_have_their_own_lengths():
    abf = pyabf.ABF(ABF_DIR / "2020_06_16_0000.abf")
    lengths = [
        load_recording(ABF_DIR / "2020_06_16_0000.abf", sweep=s).time_ms.size for s in range(3)
    ]
    assert lengths == list(abf._synchArraySection.lLength) == [3540, 70040, 16040]


def test_the_voltage_clamp_ramp_command_is_the_epoch_table():
    rec = load_recording(ABF_DIR / "model_vc_ramp.abf")
    # holding -70 mV for sweepPointCount/64 = 37 points, ramp to -80 mV, ramp back to -70 mV
    assert rec.command[0] == -70.0 and rec.command.min() == pytest.approx(-80.0)
    assert np.argmin(rec.command) == pytest.approx(37 + 1000, abs=1)


def test_a_command_played_from_a_missing_stimulus_file_is_none_with_a_warning():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        rec = load_recording(ABF_DIR / "171116sh_0015.abf", sweep=1)
    messages = [str(w.message) for w in caught]
    assert len(messages) == 1, messages  # ours only: pyabf's own warning is absorbed
    assert caught[0].category is UserWarning
    assert re.search(
        r"171116sh_0015\.abf, sweep 1: the command could not be read \(it was played from the "
        r"stimulus file 'sine sweep magnitude 20\.abf', which is not next to the ABF file; put "
        r"it there to read the command\), so the recording has command=None; it must come from "
        r"a protocol file",
        messages[0],
    )
    assert rec.command is None and rec.command_mV is None
    assert rec.metadata["command_source"] == "missing"
    ref = read_with_pyabf("171116sh_0015.abf", 1, 0)
    assert np.isnan(ref.c).all()  # pyabf has no command either
    np.testing.assert_array_equal(rec.signal, ref.y)
    assert rec.signal_unit == "pA" and rec.mode == "voltage_clamp"


def test_an_untrusted_unit_label_is_refused_with_the_value_range():
    path = ABF_DIR / "2018_12_09_pCLAMP11_0001.abf"
    data = pyabf.ABF(path).data[0]
    expected = (
        rf"2018_12_09_pCLAMP11_0001\.abf: channel 0 \('IN 0'\) says its unit is 'A', but its "
        rf"values run from {re.escape(f'{data.min():.6g}')} to {re.escape(f'{data.max():.6g}')}"
        r": too large to be a current.*Pass signal_unit="
    )
    with pytest.raises(ValueError, match=expected):
        load_recording(path)


def test_signal_unit_overrides_an_untrusted_label():
    rec = load_recording(ABF_DIR / "2018_12_09_pCLAMP11_0001.abf", sweep=4, signal_unit="nA")
    ref = read_with_pyabf("2018_12_09_pCLAMP11_0001.abf", 4, 0)
    assert ref.units_y == "A" and rec.signal_unit == "nA" and rec.mode == "voltage_clamp"
    np.testing.assert_array_equal(rec.signal, ref.y)
    np.testing.assert_array_equal(rec.command, ref.c)
    assert rec.metadata["channel_unit"] == "A"  # what the file said
    # a rescaling override: the same values written in uA are nA * 1000
    in_ua = load_recording(ABF_DIR / "2018_12_09_pCLAMP11_0001.abf", sweep=4, signal_unit="uA")
    np.testing.assert_allclose(in_ua.signal, ref.y * 1e3)


def test_a_recorded_channel_stands_in_for_an_unreadable_command(monkeypatch):
    """When the DAC waveform cannot be rebuilt, a recorded channel in the command's unit (here
    the injected current I_Com, pA, of a current-clamp file) is the command.
    """

    def unreadable(self, sweep=0):
        return np.full(self.abf.sweepPointCount, np.nan)

    monkeypatch.setattr(pyabf.stimulus.Stimulus, "stimulusWaveform", unreadable)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a stand-in command is no cause for a warning
        rec = load_recording(ABF_DIR / "2020_07_29_0062.abf")
    ref = read_with_pyabf("2020_07_29_0062.abf", 0, 1)
    assert ref.units_y == "pA"
    np.testing.assert_array_equal(rec.command, ref.y)
    assert rec.metadata["command_source"] == "recorded channel 1 ('I_Com')"


def test_a_pulse_train_without_period_or_width_is_not_trusted():
    epochs = SimpleNamespace(
        types=["Step", "Step", "Pulse"],
        p1s=[0, 100, 200],
        p2s=[100, 200, 300],
        levels=[0.0, 0.0, 2.5],
        pulsePeriods=[0, 0, 0],
        pulseWidths=[0, 0, 0],
    )
    assert "Pulse epoch (samples 200 to 300, level 2.5)" in recording_io._flat_train_reason(epochs)
    epochs.pulsePeriods[2], epochs.pulseWidths[2] = 20, 5
    assert recording_io._flat_train_reason(epochs) is None


def test_a_telegraphed_capacitance_is_read_and_a_given_one_wins(monkeypatch):
    class WithTelegraphedCm(pyabf.ABF):  # a subclass: pyabf checks isinstance(abf, ABF)
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self._adcSection.fTelegraphMembraneCap[0] = 31.5

    monkeypatch.setattr(pyabf, "ABF", WithTelegraphedCm)
    rec = load_recording(ABF_DIR / "model_vc_ramp.abf")
    assert rec.metadata["cm_pF"] == 31.5
    np.testing.assert_allclose(rec.to_unit("pA/pF").signal, rec.signal / 31.5)
    assert load_recording(ABF_DIR / "model_vc_ramp.abf", cm_pF=20.0).metadata["cm_pF"] == 20.0


def test_a_telegraph_at_rest_is_no_capacitance():
    # the Axopatch 200B of this file telegraphed 0.049 pF: compensation off, not a cell
    abf = pyabf.ABF(ABF_DIR / "2020_07_29_0062.abf")
    assert 0 < abf._adcSection.fTelegraphMembraneCap[0] < 0.1
    assert "cm_pF" not in load_recording(ABF_DIR / "2020_07_29_0062.abf").metadata


# --------------------------------------------------------------------------- ABF errors


@pytest.mark.parametrize(
    ("name", "cut"),
    [("model_vc_ramp.abf", 0.5), ("05210017_vc_abf1.abf", 0.5), ("model_vc_ramp.abf", 0.002)],
)
def test_a_truncated_abf_file_is_refused(tmp_path, name, cut):
    data = (ABF_DIR / name).read_bytes()
    path = tmp_path / name
    path.write_bytes(data[: int(len(data) * cut)])
    with pytest.raises(ValueError, match=r"cannot be read as an ABF file .*truncated, corrupt"):
        load_recording(path)


def test_a_text_file_named_abf_is_refused(tmp_path):
    path = tmp_path / "notes.abf"
    path.write_text("time_ms,I (pA)\n0,1\n")
    with pytest.raises(ValueError, match=r"notes\.abf: cannot be read as an ABF file"):
        load_recording(path)


def test_a_sweep_pyabf_cannot_cut_out_is_refused(monkeypatch):
    set_sweep = pyabf.ABF.setSweep

    def damaged_at_sweep_2(self, sweepNumber, *args, **kwargs):
        if sweepNumber == 2:
            raise AssertionError()  # pyabf checks the sweep layout with asserts
        return set_sweep(self, sweepNumber, *args, **kwargs)

    monkeypatch.setattr(pyabf.ABF, "setSweep", damaged_at_sweep_2)
    with pytest.raises(ValueError, match=r"sweep 2 of channel 0 cannot be read .*sweep table"):
        load_recording(ABF_DIR / "model_vc_ramp.abf", sweep=2)


def test_sweep_out_of_range_lists_the_valid_range():
    with pytest.raises(
        ValueError,
        match=r"sweep 6 is out of range: the file has 6 sweep\(s\), "
        r"numbered 0 to 5",
    ):
        load_recording(ABF_DIR / "05210017_vc_abf1.abf", sweep=6)
    with pytest.raises(ValueError, match=r"sweep -1 is out of range"):
        load_recording(ABF_DIR / "05210017_vc_abf1.abf", sweep=-1)
    with pytest.raises(ValueError, match=r"sweep 1\.0 is out of range"):
        load_recording(ABF_DIR / "05210017_vc_abf1.abf", sweep=1.0)


@pytest.mark.parametrize("channel", [2, "Vm", -1])
def test_a_missing_channel_lists_the_channels(channel):
    with pytest.raises(
        ValueError,
        match=rf"no channel {re.escape(repr(channel))}; the file's channels are 0 'Voltage 0' "
        r"\(pA\), 1 'Current 1' \(pA\)",
    ):
        load_recording(ABF_DIR / "05210017_vc_abf1.abf", channel=channel)


def test_a_current_channel_of_a_current_clamp_file_is_refused():
    with pytest.raises(
        ValueError,
        match=r"channel 1 \('I_Com'\) records a current \(pA\), but the file is a current-clamp "
        r"recording .*choose a voltage channel: 0 \('Potential'\)",
    ):
        load_recording(ABF_DIR / "2020_07_29_0062.abf", channel="I_Com")


def test_csv_options_are_refused_for_abf_files():
    with pytest.raises(ValueError, match="time_unit applies to CSV files only"):
        load_recording(ABF_DIR / "model_vc_ramp.abf", time_unit="s")
    with pytest.raises(ValueError, match="sample_interval_ms applies to CSV files only"):
        load_recording(ABF_DIR / "model_vc_ramp.abf", sample_interval_ms=0.1)


def test_an_unknown_signal_unit_override_is_refused():
    with pytest.raises(ValueError, match=r"signal_unit must be a current or voltage unit.*'kg'"):
        load_recording(ABF_DIR / "model_vc_ramp.abf", signal_unit="kg")


# --------------------------------------------------------------------------- paths


def test_a_missing_file_is_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nothere\.abf: no such file"):
        load_recording(tmp_path / "nothere.abf")


def test_a_directory_and_a_wrong_extension_are_refused(tmp_path):
    with pytest.raises(ValueError, match="is a directory"):
        load_recording(tmp_path)
    path = tmp_path / "trace.txt"
    path.write_text("time_ms,I (pA)\n0,1\n0.1,2\n")
    with pytest.raises(ValueError, match=r"unsupported file type '\.txt'; expected \.abf"):
        load_recording(path)
    with pytest.raises(ValueError, match="path must be a file path"):
        load_recording(42)


# --------------------------------------------------------------------------- CSV files


def write(tmp_path: Path, text: str, name: str = "trace.csv") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_csv_round_trip_voltage_clamp(tmp_path):
    rng = np.random.default_rng(0)
    command = np.repeat([-80.0, 20.0, -40.0], 100)
    rec = Recording.from_arrays(
        rng.normal(size=300), 0.1, "pA/pF", command=command, metadata={"cm_pF": 30.0}
    )
    path = tmp_path / "vc.csv"
    frame = {"time_ms": rec.time_ms, "I (pA/pF)": rec.signal, "command_mV": rec.command}
    pd.DataFrame(frame).to_csv(path, index=False)
    back = load_recording(path)
    np.testing.assert_array_equal(back.time_ms, rec.time_ms)
    np.testing.assert_array_equal(back.signal, rec.signal)
    np.testing.assert_array_equal(back.command, rec.command)
    assert (back.signal_unit, back.mode) == ("pA/pF", "voltage_clamp")
    assert back.metadata["signal_column"] == "I (pA/pF)"
    assert back.metadata["sample_rate_Hz"] == pytest.approx(10_000)


def test_csv_round_trip_current_clamp_in_other_units(tmp_path):
    """Seconds, volts and nA in the headers; the values come back in those units."""
    rng = np.random.default_rng(1)
    rec = Recording.from_arrays(
        -70 + rng.normal(size=500),
        0.05,
        "mV",
        command=np.where(np.arange(500) > 100, 150.0, 0.0),
        mode="current_clamp",
    )
    path = tmp_path / "cc.csv.gz"
    frame = pd.DataFrame(
        {
            "Time (s)": rec.time_ms / 1e3,
            "Voltage (V)": rec.signal / 1e3,
            "I_stim (nA)": rec.command / 1e3,
        }
    )
    with gzip.open(path, "wt") as file:
        frame.to_csv(file, index=False, sep="\t")
    back = load_recording(path)
    assert (back.signal_unit, back.mode, back.metadata["separator"]) == ("V", "current_clamp", "\t")
    np.testing.assert_allclose(back.to_unit("mV").signal, rec.signal, rtol=1e-14)
    np.testing.assert_allclose(back.command, rec.command, rtol=1e-14)
    np.testing.assert_allclose(back.time_ms, rec.time_ms, rtol=1e-12, atol=1e-12)


def test_a_european_csv_is_read_with_its_decimal_commas(tmp_path):
    path = write(
        tmp_path,
        "Zeit (s);Strom (pA);Command (mV)\n"
        "0,0000;-12,5;-80\n0,0001;3,25;-80\n0,0002;1e-1;40,5\n0,0003;-0,75;40,5\n",
    )
    rec = load_recording(path)
    np.testing.assert_array_equal(rec.signal, [-12.5, 3.25, 0.1, -0.75])
    np.testing.assert_array_equal(rec.command, [-80, -80, 40.5, 40.5])
    np.testing.assert_allclose(rec.time_ms, [0, 0.1, 0.2, 0.3], atol=1e-12)
    assert (rec.metadata["separator"], rec.metadata["decimal"]) == (";", ",")
    # as many commas per line in the header as in the rows: still not the separator
    path.write_text("Zeit, s;Strom, pA\n0,0;1,5\n0,1;2,5\n")
    with pytest.raises(ValueError, match=r"columns found: 'Zeit, s', 'Strom, pA';"):
        load_recording(path)
    rec = load_recording(path, channel="Strom, pA", signal_unit="pA", sample_interval_ms=100)
    np.testing.assert_array_equal(rec.signal, [1.5, 2.5])


def test_a_single_column_csv_with_a_sample_interval(tmp_path):
    path = write(tmp_path, "# exported by hand\nI_nA\n0.5\n-1.25\n2\n")
    rec = load_recording(path, sample_interval_ms=0.5)
    np.testing.assert_array_equal(rec.signal, [0.5, -1.25, 2.0])
    np.testing.assert_array_equal(rec.time_ms, [0.0, 0.5, 1.0])
    assert rec.signal_unit == "nA" and rec.command is None


def test_csv_times_not_starting_at_zero_are_shifted(tmp_path):
    path = write(tmp_path, "t (ms),V (mV)\n1500,-80\n1500.5,-79\n1501,-78\n")
    rec = load_recording(path)
    np.testing.assert_array_equal(rec.time_ms, [0.0, 0.5, 1.0])
    assert rec.metadata["time_offset_ms"] == 1500 and rec.mode == "current_clamp"


def test_csv_units_from_arguments_and_the_signal_column_by_name(tmp_path):
    path = write(tmp_path, "time,I,I_leak_subtracted\n0,1,2\n2,3,4\n4,5,6\n")
    rec = load_recording(path, channel="I_leak_subtracted", signal_unit="pA", time_unit="us")
    np.testing.assert_array_equal(rec.signal, [2, 4, 6])
    np.testing.assert_allclose(rec.time_ms, [0, 0.002, 0.004])
    assert load_recording(path, channel=1, signal_unit="pA", time_unit="ms").signal[0] == 1


BAD_CSV = [
    # (file content, load_recording keywords, message)
    ("", {}, "the file is empty"),
    ("\n  \n# only a comment\n", {}, "the file is empty"),
    ("time_ms,I (pA)\n", {}, "has a header but no data rows"),
    ("time_ms,I (pA)\n0,1\n", {}, "only one data row; a recording needs at least 2 samples"),
    ("0,1\n0.1,2\n", {}, "line 1 is data, not a header"),
    ("time_ms,I (pA)\n0,1\n0.1,2,3\n", {}, "line 3 has 3 field\\(s\\), the header has 2"),
    ("time_ms\n0\n0.1\n", {}, "no signal column; columns found: 'time_ms'; expected one time"),
    (
        "time_ms,I (pA),V (mV)\n0,1,2\n0.1,2,3\n",
        {},
        "ambiguous columns: 'I \\(pA\\)', 'V \\(mV\\)' could each be the signal; pass channel=",
    ),
    (
        "time_ms,Time (s),I (pA)\n0,0,1\n0.1,0.0001,2\n",
        {},
        "ambiguous columns: 'time_ms', 'Time \\(s\\)' could each be the time column",
    ),
    (
        "time_ms,I (pA)\n0,1\n0.1,abc\n0.2,3\n",
        {},
        "line 3, column 'I \\(pA\\)' is not a number: 'abc'",
    ),
    (
        "time_ms,I (pA)\n0,1\n0.1,NaN\n0.2,nan\n",
        {},
        "line 3, column 'I \\(pA\\)' is missing \\('NaN'\\) \\(1 more",
    ),
    ("time_ms,I (pA)\n0,1\n0.1,\n0.2,3\n", {}, "line 3, column 'I \\(pA\\)' is empty"),
    ("time_ms,I (pA)\n0,1\n0.1,inf\n", {}, "is not finite: 'inf'"),
    (
        "I (pA)\n1\n2\n",
        {},
        "no time column \\(columns found: 'I \\(pA\\)'\\); add one .* sample_interval_ms=",
    ),
    (
        "time_ms,I (pA)\n0,1\n0.1,2\n",
        {"sample_interval_ms": 0.1},
        "pass sample_interval_ms= only for files without",
    ),
    (
        "time,I (pA)\n0,1\n0.1,2\n",
        {},
        "the time column 'time' states no unit; name it like 'time_ms'",
    ),
    (
        "time_ms,I\n0,1\n0.1,2\n",
        {},
        "the signal column 'I' states no unit; name it like 'I \\(pA\\)'",
    ),
    ("time_ms,I (furlongs)\n0,1\n0.1,2\n", {}, "has the unknown unit 'furlongs'"),
    (
        "time_ms,I (pA)\n0,1\n0.1,2\n0.25,3\n0.3,4\n",
        {},
        "time_ms is not evenly spaced: sample 2 is at 0.25 ms",
    ),
    ("time_ms,I (pA)\n0,1\n0.1,2\n0.1,3\n", {}, "time_ms must increase strictly: sample 2"),
    (
        "time_ms,I (pA),command (pA)\n0,1,2\n0.1,2,3\n",
        {},
        "the command column 'command \\(pA\\)' must be in voltage units",
    ),
    (
        "time_ms,V (mV),command_mV\n0,1,2\n0.1,2,3\n",
        {},
        "must be in current units in a current-clamp",
    ),
    (
        "t;I (pA)\n0,5;1.5\n1,0;2,5\n",
        {"time_unit": "ms"},
        "numbers mix decimal commas \\('0,5'\\) and decimal points \\('1.5'\\)",
    ),
    ("Time (s),I (pA)\n0,0\n0,1\n", {}, "time_ms must increase strictly"),
    (
        "time_ms,I (A)\n0,-5\n0.1,-3\n",
        {},
        "column 'I \\(A\\)' says its unit is 'A', but its values run from -5 to -3",
    ),
    ("time_ms,V (mV)\n0,0.00001\n0.1,0.00002\n", {}, "too small to be a voltage from a cell"),
    ("time_ms,I (pA)\n0,1\n0.1,2\n", {"sweep": 1}, "a CSV file holds one sweep"),
    (
        "time_ms,I (pA)\n0,1\n0.1,2\n",
        {"channel": "time_ms"},
        "column 'time_ms' is the time column, not a signal",
    ),
    (
        "time_ms,I (pA)\n0,1\n0.1,2\n",
        {"channel": "Vm"},
        "no single column 'Vm'; columns found: 'time_ms', 'I \\(pA\\)'",
    ),
    (
        "time_ms,I (pA)\n0,1\n0.1,2\n",
        {"time_unit": "fortnight"},
        "time_unit must be one of s, sec, ms",
    ),
    (
        "I (pA)\n1\n2\n",
        {"time_unit": "s", "sample_interval_ms": 1},
        "time_unit= was given but the file has no time column",
    ),
    ("time_ms,I (pA)\n0,1\n0.1,2\n", {"cm_pF": -3}, "cm_pF must be a finite number > 0"),
]


@pytest.mark.parametrize(("content", "kwargs", "message"), BAD_CSV)
def test_bad_csv_files_are_refused_with_a_message(tmp_path, content, kwargs, message):
    path = write(tmp_path, content)
    with pytest.raises(ValueError, match=message):
        load_recording(path, **kwargs)


def test_a_corrupt_gzip_file_is_refused(tmp_path):
    path = tmp_path / "trace.csv.gz"
    path.write_bytes(gzip.compress(b"time_ms,I (pA)\n0,1\n0.1,2\n")[:-12])
    with pytest.raises(ValueError, match="not a valid gzip file"):
        load_recording(path)


def test_a_csv_error_names_the_file(tmp_path):
    path = write(tmp_path, "time_ms,I (pA)\n0,1\n0.1,2\n0.3,3\n", name="cell7.csv")
    with pytest.raises(ValueError, match=r"cell7\.csv: time_ms is not evenly spaced"):
        load_recording(path)


# --------------------------------------------------------------------------- Recording


def test_from_arrays_builds_the_time_grid_and_rescales_rare_units():
    rec = Recording.from_arrays([1.0, 2.0, 3.0], 0.25, "uA", metadata={"cell": 3})
    np.testing.assert_array_equal(rec.time_ms, [0.0, 0.25, 0.5])
    np.testing.assert_array_equal(rec.signal, [1e3, 2e3, 3e3])
    assert (rec.signal_unit, rec.mode, rec.command, rec.metadata) == (
        "nA",
        "voltage_clamp",
        None,
        {"cell": 3},
    )
    assert rec.sample_interval_ms == 0.25
    assert "voltage_clamp, 3 samples every 0.25 ms, signal in nA, no command" in repr(rec)


def test_a_recording_cannot_be_changed():
    rec = Recording.from_arrays([1.0, 2.0], 0.1, "pA", command=[-80.0, -80.0])
    with pytest.raises(ValueError, match="read-only"):
        rec.signal[0] = 5.0
    with pytest.raises(ValueError, match="read-only"):
        rec.command[0] = 5.0
    with pytest.raises(dataclasses.FrozenInstanceError):
        rec.mode = "current_clamp"


def test_unit_conversions_match_hand_computed_values():
    rec = Recording.from_arrays([1.5, -2.0], 0.1, "nA")
    np.testing.assert_allclose(rec.to_unit("pA").signal, [1500.0, -2000.0])
    np.testing.assert_allclose(rec.to_unit("A").signal, [1.5e-9, -2e-9])
    density = rec.to_unit("pA/pF", cm_pF=30.0)
    np.testing.assert_allclose(density.signal, [50.0, -66.66666666666667])
    assert density.signal_unit == "pA/pF" and density.metadata["cm_pF"] == 30.0
    back = Recording.from_arrays([2.0, -4.0], 0.1, "pA/pF", metadata={"cm_pF": 25.0})
    np.testing.assert_allclose(back.to_unit("nA").signal, [0.05, -0.1])
    volts = Recording.from_arrays([-0.08, 0.04], 0.1, "V", mode="current_clamp")
    np.testing.assert_allclose(volts.to_unit("mV").signal, [-80.0, 40.0])
    assert volts.to_unit("V").signal_unit == "V"


def test_a_density_conversion_needs_a_capacitance():
    rec = Recording.from_arrays([1.0, 2.0], 0.1, "pA")
    with pytest.raises(
        ValueError,
        match=r"converting pA to pA/pF needs the membrane capacitance.*"
        r"cm_pF=25\.0",
    ):
        rec.to_unit("pA/pF")
    with pytest.raises(ValueError, match="cm_pF must be a finite number > 0"):
        rec.to_unit("pA/pF", cm_pF=0)


def test_a_current_cannot_become_a_voltage():
    with pytest.raises(ValueError, match=r"cannot convert a current \(pA\) to a voltage \(mV\)"):
        Recording.from_arrays([1.0, 2.0], 0.1, "pA").to_unit("mV")
    with pytest.raises(ValueError, match=r"cannot convert a voltage \(mV\) to a current density"):
        Recording.from_arrays([1.0, 2.0], 0.1, "mV", mode="current_clamp").to_unit("pA/pF", 20)
    with pytest.raises(ValueError, match="unit must be one of 'pA/pF', 'pA'"):
        Recording.from_arrays([1.0, 2.0], 0.1, "pA").to_unit("mA")


BAD_RECORDINGS = [
    (
        dict(time_ms=[0, 1, 2], signal=[1, np.nan, np.nan]),
        r"signal has 2 NaN value\(s\), at samples 1, 2 \(t = 1 ms, 2 ms\)",
    ),
    (
        dict(time_ms=[0, 1, 2], signal=[1, np.inf, 3]),
        r"signal has 1 infinite value\(s\), at sample 1",
    ),
    (
        dict(time_ms=[0, 1, 2], signal=[1, 2, 3], command=[0, np.nan, 0]),
        r"command has 1 NaN value\(s\), at sample 1",
    ),
    (
        dict(time_ms=[0, 1, 2], signal=[1, 2, 3], command=[0, 0]),
        "command has 2 samples but time_ms has 3",
    ),
    (dict(time_ms=[0, 1, 2], signal=[1, 2]), "signal has 2 samples but time_ms has 3"),
    (dict(time_ms=[0], signal=[1]), "at least 2 samples, got 1"),
    (dict(time_ms=[[0, 1]], signal=[[1, 2]]), r"time_ms must be 1-D .* shape \(1, 2\)"),
    (dict(time_ms=[1, 2, 3], signal=[1, 2, 3]), "time_ms must start at 0, got 1 ms"),
    (dict(time_ms=[0, 2, 1], signal=[1, 2, 3]), "time_ms must increase strictly: sample 2"),
    (dict(time_ms=[0, 1, 2.01, 3], signal=[1, 2, 3, 4]), "not evenly spaced: sample 2"),
    (dict(time_ms=[0, np.nan], signal=[1, 2]), r"time_ms has 1 NaN value\(s\)"),
    (dict(time_ms=[0, 1], signal=["a", "b"]), "signal must be an array of numbers"),
    (dict(time_ms=[0, 1], signal=[1, 2], signal_unit="mA"), "signal_unit must be one of"),
    (dict(time_ms=[0, 1], signal=[1, 2], mode="dynamic_clamp"), "mode must be one of"),
    (
        dict(time_ms=[0, 1], signal=[1, 2], signal_unit="mV"),
        "a voltage-clamp recording records a current, but signal_unit is 'mV'; "
        "pass mode='current_clamp'",
    ),
    (dict(time_ms=[0, 1], signal=[1, 2], metadata=[1]), "metadata must be a dict"),
]


@pytest.mark.parametrize(("fields", "message"), BAD_RECORDINGS)
def test_bad_recordings_are_refused_with_a_message(fields, message):
    fields = {"signal_unit": "pA", **fields}
    with pytest.raises(ValueError, match=message):
        Recording(**fields)


def test_the_even_grid_tolerance_is_a_thousandth_of_a_step():
    # 3 kHz sampling written as seconds: 7 decimals are off the grid by <= 0.015 % of a step,
    # 5 decimals by up to 1.5 %
    exact = np.arange(1000) / 3000
    fine = Recording(np.round(exact, 7) * 1e3, np.zeros(1000), "pA")
    assert fine.sample_interval_ms == pytest.approx(1 / 3)
    with pytest.raises(ValueError, match="not evenly spaced.*allowed: 0.1% of a step"):
        Recording(np.round(exact, 5) * 1e3, np.zeros(1000), "pA")


def test_the_loaders_are_public():
    assert st.load_recording is load_recording and st.Recording is Recording


def test_a_voltage_and_a_current_column_exported_together_are_told_apart():
    """Clark et al.'s exports hold `Voltage (V)` and `Current (pA/pF)` in every file: in voltage
    clamp the voltage is the (held, stepwise) command, in current clamp the current is the
    (zero) injected command; the column that holds its value is the command.
    """
    from conftest import DATA

    cell = DATA / "clark_ipsc"
    vc = load_recording(cell / "Compensation_rspre_0.csv.gz")
    assert vc.mode == "voltage_clamp" and vc.signal_unit == "pA/pF"
    assert vc.metadata["command_column"] == "Voltage (V)"
    assert set(np.unique(np.round(vc.command_mV))) >= {-80.0, -70.0, 60.0}
    spontaneous = sorted(cell.glob("*spont*.csv*"))[0]
    cc = load_recording(spontaneous)
    assert cc.mode == "current_clamp" and cc.signal_unit in ("V", "mV")
    assert not cc.command.any()
