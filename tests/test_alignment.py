"""Putting recordings onto an estimator's protocol grid, and fitting Recordings."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import DATA

from sbi_twins import Protocol, Segment, load_estimator
from sbi_twins.recording.alignment import command_differences, onto_protocol
from sbi_twins.recording.io import Recording

#: 50.3 ms: an odd multiple of 0.1 ms, so a 0.2 ms recording ends 0.1 ms before it.
PROTOCOL = Protocol(
    "three_steps",
    -80.0,
    (Segment.step(10.0, -80.0), Segment.step(20.3, -10.0), Segment.ramp(20.0, 20.0, -60.0)),
)


def _recording(interval=0.1, unit="pA/pF", scale=1.0, command=True, duration=None, **metadata):
    t = np.arange(0.0, (duration or PROTOCOL.duration_ms) + 1e-9, interval)
    current = np.sin(t / 7.0) * scale
    return Recording.from_arrays(
        current,
        interval,
        unit,
        command=PROTOCOL.voltage(t) if command else None,
        metadata=metadata,
    )


def test_a_recording_on_the_grid_is_used_as_it_is():
    rec = _recording()
    trace, notes = onto_protocol(rec, PROTOCOL, 0.1)
    np.testing.assert_array_equal(trace, rec.signal)
    assert notes == ["command checked against protocol 'three_steps'"]


def test_a_current_in_pa_is_divided_by_the_capacitance():
    rec = _recording(unit="pA", scale=30.0)
    with pytest.raises(ValueError, match="needs the membrane capacitance"):
        onto_protocol(rec, PROTOCOL, 0.1)
    trace, notes = onto_protocol(rec, PROTOCOL, 0.1, cm_pF=30.0)
    np.testing.assert_allclose(trace, _recording().signal)
    assert "divided the current by Cm = 30 pF to get pA/pF" in notes
    trace, _ = onto_protocol(_recording(unit="nA", scale=0.03, cm_pF=30.0), PROTOCOL, 0.1)
    np.testing.assert_allclose(trace, _recording().signal)  # nA and Cm from the metadata


def test_a_coarser_recording_is_resampled_and_its_last_sliver_held():
    """A 0.2 ms recording of a 50.3 ms protocol ends at 50.2 ms: it can still be fitted."""
    rec = _recording(interval=0.2)
    assert rec.time_ms[-1] == pytest.approx(50.2)
    trace, notes = onto_protocol(rec, PROTOCOL, 0.1)
    grid = PROTOCOL.times(0.1)
    np.testing.assert_allclose(trace, np.interp(grid, rec.time_ms, rec.signal))
    assert trace[-1] == rec.signal[-1]
    assert any("resampled from 0.2 ms to 0.1 ms" in n for n in notes)
    assert any("held the last sample over the final 0.1 ms" in n for n in notes)


def test_a_longer_recording_is_cut_and_a_shorter_one_refused():
    longer = _recording(duration=60.0)
    trace, notes = onto_protocol(longer, PROTOCOL, 0.1, check_command=False)
    assert trace.size == PROTOCOL.times(0.1).size
    assert any("ignored the 9.7 ms recorded after the protocol's end" in n for n in notes)
    with pytest.raises(ValueError, match="ends 10.3 ms early"):
        onto_protocol(_recording(duration=40.0), PROTOCOL, 0.1)


def test_a_command_that_is_not_the_protocols_is_refused_with_the_segment_named():
    t = np.arange(0.0, PROTOCOL.duration_ms + 1e-9, 0.1)
    command = PROTOCOL.voltage(t)
    command[(t > 15) & (t < 25)] = 0.0  # the second step at 0 mV, not -10 mV
    rec = Recording.from_arrays(np.zeros(t.size), 0.1, "pA/pF", command=command)
    [line] = command_differences(rec, PROTOCOL)
    assert line.startswith("segment 2 (10-30.3 ms, step): recorded 0.00 mV where the protocol")
    with pytest.raises(ValueError, match=r"command is not protocol 'three_steps'.*\n  segment 2"):
        onto_protocol(rec, PROTOCOL, 0.1)
    trace, _ = onto_protocol(rec, PROTOCOL, 0.1, check_command=False)
    assert trace.size == t.size


def test_a_missing_command_is_said_and_current_clamp_is_refused():
    _, notes = onto_protocol(_recording(command=False), PROTOCOL, 0.1)
    assert "holds no command waveform, so it could not be checked" in notes[0]
    voltage = Recording.from_arrays(np.zeros(100), 0.1, "mV", mode="current_clamp")
    with pytest.raises(ValueError, match="current-clamp recording; this estimator reads"):
        onto_protocol(voltage, PROTOCOL, 0.1)


def test_an_estimator_fits_a_recording_like_its_trace():
    estimator = load_estimator(DATA / "format2_bundle")
    _, traces = estimator.simulate_cells(1, seed=3)
    times = estimator.protocol.times(estimator.sample_interval_ms)
    cm = 25.0
    rec = Recording.from_arrays(
        traces[0] * cm,
        estimator.sample_interval_ms,
        "pA",
        command=estimator.protocol.voltage(times),
        metadata={"cm_pF": cm},
    )
    from_recording = estimator.fit(rec)
    np.testing.assert_allclose(from_recording.observation, estimator.fit(traces[0]).observation)
    assert any("divided the current by Cm = 25 pF" in n for n in from_recording.preprocessing)
    with pytest.raises(ValueError, match="a Recording knows its sample interval"):
        estimator.fit(rec, sample_interval_ms=0.1)
