"""Protocols to and from files: rebuilt from a recording's command, written as TOML, ATF or CSV.

* :func:`protocol_from_recording` turns the command waveform of a voltage-clamp recording into
  a :class:`~sbi_twins.protocol.Protocol` of steps and ramps that reproduces it within a stated
  tolerance, so a recording made with a protocol nobody wrote down can be simulated and fitted.
* :func:`protocol_to_toml` writes a protocol in the TOML format :func:`load_protocol` reads
  (``load_protocol`` of the text gives back the same protocol, content hash included).
* :func:`write_atf` and :func:`write_command_csv` sample a protocol for an amplifier: an Axon
  Text File (ATF 1.0) that Clampex plays as a stimulus file, or a plain two-column CSV.

How a command becomes steps and ramps
-------------------------------------
Samples are grouped into runs from left to right; each run is as long as one straight line
(slope free, anchored at the run's first sample) stays within the tolerance of every sample.
Where the line runs past a corner of the waveform (a ramp that starts from the level of the step
before it is within tolerance of that step for a few samples), the run is cut back to the last
corner it crossed: a sample where the second difference of the command is not zero, i.e. where
the exact waveform changes slope or jumps. A run whose samples all lie within the tolerance of
one level is a step; any other run is a ramp (the least-squares line, or the anchored line where
that one is off by more than the tolerance). A run of ``n`` samples lasts ``n`` sample
intervals, so a sample on an edge takes the new segment's value, as in :class:`Protocol`; the
protocol lasts as long as the recording (its ``times()`` grid has one more point, the end, which
a fit holds from the last sample). Levels are rounded to 1e-6 mV, which the tolerance absorbs.

The pre-epoch holding of an ABF sweep (1/64 of its samples at the holding level) is the first
step like any other.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np

from .._util import (
    atomic_write_text,
    check_integer,
    check_number,
    check_positive,
    package_version,
)
from ..protocol import Protocol, Segment
from .io import VOLTAGE_CLAMP, Recording

__all__ = [
    "DEFAULT_TOLERANCE_MV",
    "protocol_from_recording",
    "protocol_to_toml",
    "write_atf",
    "write_command_csv",
]

#: Default largest difference (mV) between a command and the protocol rebuilt from it: above the
#: resolution of a 16-bit DAC (about 0.006-0.03 mV at the usual command gains) and of commands
#: written to text, far below the 1 mV steps published protocols use (clark2022 has -80 and -81).
DEFAULT_TOLERANCE_MV = 0.1
#: Smallest tolerance accepted: levels are rounded to 1e-6 mV, which must stay inside it.
MIN_TOLERANCE_MV = 1e-4
#: Default cap on the number of segments: a command that needs more is not made of steps and
#: ramps (a sine, or noise), and a protocol of thousands of segments hides that.
MAX_SEGMENTS = 2000

_LEVEL_DECIMALS = 6  # 1e-6 mV
_TIME_DECIMALS = 9  # 1e-9 ms, the edge tolerance of Protocol.voltage
# Rounding levels moves a segment by at most 1e-6 mV at its ends; the fit keeps this margin.
_ROUNDING_MARGIN_MV = 2e-6


def protocol_from_recording(
    recording: Recording,
    name: str,
    *,
    tolerance_mV: float = DEFAULT_TOLERANCE_MV,
    max_segments: int = MAX_SEGMENTS,
) -> Protocol:
    """The protocol of steps and ramps that a voltage-clamp recording's command played.

    Parameters
    ----------
    recording : Recording
        A voltage-clamp recording with a command (``recording.command_mV`` not None).
    name : str
        Name of the protocol, e.g. ``"my_iv"``.
    tolerance_mV : float, default 0.1
        Largest difference allowed between the command and the protocol at any sample; samples
        within it of one level are merged into a step. At least 1e-4 mV.
    max_segments : int, default 2000
        Refuse commands that need more segments than this (sines, noise).

    Returns
    -------
    Protocol
        Steps and ramps lasting ``len(command) * sample_interval_ms`` in total, with
        ``max |protocol.voltage(k * dt) - command[k]| <= tolerance_mV`` at every sample ``k``.
        ``holding_mV`` is the file's holding level (``metadata["command_holding"]``) when it
        has one, else the first sample. The description says where it came from.

    Raises
    ------
    ValueError
        A current-clamp recording, a recording without a command, an invalid name or
        tolerance, or a command that needs more than `max_segments` segments.

    Examples
    --------
    >>> rec = Recording.from_arrays(np.zeros(30), 0.1, "pA", command=[-80.0] * 10 + [0.0] * 20)
    >>> [(s.kind, s.duration_ms, s.v_start_mV) for s in protocol_from_recording(rec, "p").segments]
    [('step', 1.0, -80.0), ('step', 2.0, 0.0)]
    """
    command = _command_of(recording)
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"name must be a non-empty string, got {name!r}")
    tolerance = check_number("tolerance_mV", tolerance_mV, minimum=MIN_TOLERANCE_MV)
    limit = check_integer("max_segments", max_segments, minimum=1, what="segments")
    runs = _runs(command, tolerance - _ROUNDING_MARGIN_MV, limit, recording)
    interval = float(f"{recording.sample_interval_ms:.12g}")
    segments = tuple(
        _segment(command[a:b], interval, tolerance - _ROUNDING_MARGIN_MV) for a, b in runs
    )
    segments = _tidy_durations(segments, [b - a for a, b in runs], interval)
    holding = recording.metadata.get("command_holding")
    if not (isinstance(holding, (int, float)) and math.isfinite(holding)):
        holding = command[0]
    kinds = [s.kind for s in segments]
    source = recording.metadata.get("source")
    origin = Path(source).name if source else "an array"
    sweep = recording.metadata.get("sweep")
    description = (
        f"Rebuilt from the command of {origin}"
        + (f" (sweep {sweep})" if sweep is not None else "")
        + f" by sbi-twins {package_version()} (protocol_from_recording, tolerance "
        f"{tolerance:g} mV): {kinds.count('step')} steps, {kinds.count('ramp')} ramps."
    )
    return Protocol(name, _round_level(holding), segments, description=description)


def _command_of(recording: Recording) -> np.ndarray:
    if not isinstance(recording, Recording):
        raise ValueError(
            f"recording must be a Recording (from load_recording or Recording.from_arrays), got "
            f"{type(recording).__name__}"
        )
    if recording.mode != VOLTAGE_CLAMP:
        raise ValueError(
            f"{recording!r} is a current-clamp recording: its command is a current (pA), not a "
            "voltage protocol; a protocol can only be rebuilt from a voltage-clamp recording"
        )
    if recording.command_mV is None:
        raise ValueError(
            f"{recording!r} holds no command waveform (it was played from a stimulus file that "
            "is not at hand, or the file has no command column), so there is nothing to rebuild "
            "the protocol from; write the protocol's TOML by hand or load a file with a command"
        )
    return np.asarray(recording.command_mV, dtype=float)


def _runs(
    command: np.ndarray, tolerance: float, limit: int, recording: Recording
) -> list[tuple[int, int]]:
    """Split the samples into runs ``[a, b)`` that one straight line fits within `tolerance`."""
    n = command.size
    # Corners of the exact waveform: where its second difference is above round-off.
    round_off = min(tolerance / 10.0, 1e-9 * max(1.0, float(np.max(np.abs(command)))))
    corners = np.flatnonzero(np.abs(np.diff(command, 2)) > 4.0 * round_off) + 1
    runs: list[tuple[int, int]] = []
    start = 0
    while start < n:
        last = _line_reach(command, start, tolerance)
        # cut at the last corner inside the run (the sample after it counts: a jump's corner);
        # a run that reaches the end of the command has overshot nothing
        k = np.searchsorted(corners, last + 1, side="right") - 1
        cut = last + 1 < n and k >= 0 and corners[k] > start
        stop = int(corners[k]) if cut else last + 1
        runs.append((start, stop))
        if len(runs) > limit:
            noise = float(np.median(np.abs(np.diff(command)))) / 0.6745 / math.sqrt(2.0)
            raise ValueError(
                f"the command of {recording!r} needs more than {limit} steps and ramps within "
                f"{tolerance + _ROUNDING_MARGIN_MV:g} mV: it is not a protocol of steps and "
                "ramps (a sine, or a noisy recorded command; its sample-to-sample noise is about "
                f"{noise:.3g} mV). Raise tolerance_mV above the noise, or write the protocol's "
                "TOML by hand"
            )
        start = stop
    return runs


def _line_reach(command: np.ndarray, start: int, tolerance: float) -> int:
    """The last sample a line through ``command[start]`` can reach within `tolerance`.

    The slopes that keep sample ``i`` within tolerance form an interval; the run ends before the
    first sample at which the running intersection of these intervals is empty. Evaluated in
    blocks of doubling size, so a long run costs a few vectorised passes.
    """
    n = command.size
    anchor = command[start]
    low, high = -math.inf, math.inf
    first, block = start + 1, 64
    while first < n:
        stop = min(n, first + block)
        steps = np.arange(first, stop) - start
        values = command[first:stop] - anchor
        lows = np.maximum(np.maximum.accumulate((values - tolerance) / steps), low)
        highs = np.minimum(np.minimum.accumulate((values + tolerance) / steps), high)
        empty = np.flatnonzero(lows > highs)
        if empty.size:
            return first + int(empty[0]) - 1
        low, high = float(lows[-1]), float(highs[-1])
        first, block = stop, block * 2
    return n - 1


def _segment(values: np.ndarray, interval: float, tolerance: float) -> Segment:
    """The step or ramp of one run (durations are set by :func:`_tidy_durations`)."""
    count = values.size
    duration = count * interval
    low, high = float(values.min()), float(values.max())
    if high - low <= 2.0 * tolerance:
        median = float(np.median(values))
        level = median if max(high - median, median - low) <= tolerance else (low + high) / 2
        return Segment.step(duration, _round_level(level))
    x = np.arange(count, dtype=float)
    slope, intercept = np.polyfit(x, values, 1)
    if np.max(np.abs(intercept + slope * x - values)) > tolerance:
        # the least-squares line misses a sample: take the anchored line that fits them all
        intercept = values[0]
        steps = x[1:]
        slope = (
            np.max((values[1:] - tolerance - intercept) / steps)
            + np.min((values[1:] + tolerance - intercept) / steps)
        ) / 2.0
    return Segment.ramp(duration, _round_level(intercept), _round_level(intercept + slope * count))


def _tidy_durations(
    segments: tuple[Segment, ...], counts: list[int], interval: float
) -> tuple[Segment, ...]:
    """Durations rounded to 1e-9 ms (51.85, not 51.85000000000001) when the edges stay put."""
    exact = np.cumsum(counts) * interval
    rounded = [round(count * interval, _TIME_DECIMALS) for count in counts]
    if np.max(np.abs(np.cumsum(rounded) - exact)) > 1e-10:
        return segments
    return tuple(
        Segment(s.kind, d, s.v_start_mV, s.v_end_mV) for s, d in zip(segments, rounded, strict=True)
    )


def _round_level(value: float) -> float:
    return round(float(value), _LEVEL_DECIMALS) + 0.0  # + 0.0: no -0.0 in files


# --------------------------------------------------------------------------- TOML


def protocol_to_toml(protocol: Protocol) -> str:
    """The protocol in the TOML format :func:`~sbi_twins.protocol.load_protocol` reads.

    Parameters
    ----------
    protocol : Protocol
        Any protocol (steps, ramps, sines).

    Returns
    -------
    str
        TOML text; numbers are written exactly (shortest round-trip form), so the protocol
        loaded from it has the same :meth:`~sbi_twins.protocol.Protocol.content_hash`.
    """
    if not isinstance(protocol, Protocol):
        raise ValueError(f"protocol must be a Protocol, got {type(protocol).__name__}")
    lines = [f"# Written by sbi-twins {package_version()} (protocol_to_toml)."]
    lines.append(f"name = {_toml_string(protocol.name)}")
    for key in ("description", "reference"):
        if getattr(protocol, key):
            lines.append(f"{key} = {_toml_string(getattr(protocol, key))}")
    lines.append(f"holding_mV = {_toml_number(protocol.holding_mV)}")
    for segment in protocol.segments:
        lines += ["", "[[segment]]", f'type = "{segment.kind}"']
        fields: list[tuple[str, float]] = [("duration_ms", segment.duration_ms)]
        if segment.kind == "step":
            fields.append(("v_mV", segment.v_start_mV))
        elif segment.kind == "ramp":
            fields += [("v_start_mV", segment.v_start_mV), ("v_end_mV", segment.v_end_mV)]
        else:
            fields += [
                ("offset_mV", segment.v_start_mV),
                ("amplitude_mV", segment.amplitude_mV),
                ("frequency_hz", segment.frequency_hz),
            ]
            if segment.phase_rad:
                fields.append(("phase_rad", segment.phase_rad))
        lines += [f"{key} = {_toml_number(value)}" for key, value in fields]
    return "\n".join(lines) + "\n"


def _toml_number(value: float) -> str:
    # repr is the shortest text that reads back to the same float, and valid TOML (1e-05, 5.0)
    value = float(value) + 0.0
    if value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    return repr(value)


def _toml_string(text: str) -> str:
    # JSON escapes are TOML basic-string escapes; DEL, which JSON leaves raw, TOML forbids raw
    return json.dumps(text, ensure_ascii=False).replace("\x7f", "\\u007f")


# --------------------------------------------------------------------------- amplifier files


def write_atf(protocol: Protocol, path: str | os.PathLike[str], sample_interval_ms: float) -> Path:
    """Write the protocol's command as an Axon Text File (ATF 1.0) stimulus waveform.

    Parameters
    ----------
    protocol : Protocol
        The protocol to play.
    path : str or os.PathLike
        The ``.atf`` file to write (replaced atomically if it exists).
    sample_interval_ms : float
        The stimulus's sample interval; it must divide the protocol's duration (the grid is
        :meth:`Protocol.times`, end point included).

    Returns
    -------
    pathlib.Path
        The file written.

    Notes
    -----
    ATF is a tab-separated text format: the first record is ``ATF`` and the version (1.0); the
    second gives the number of optional header records and of data columns; then come the
    optional records (quoted ``"key=value"`` strings), one record of quoted column titles, and
    the data records. The header records here are those Clampex writes for an episodic
    stimulus (acquisition mode, comment, display range, sweep start, signal names); the columns
    are ``"Time (s)"`` and ``"Trace #1 (mV)"``. Lines end in CRLF, as in files from Clampex.
    """
    times = protocol.times(sample_interval_ms)
    volts = protocol.voltage(times)
    comment = f"{protocol.name}: {protocol.description}".replace('"', "'")
    comment = " ".join(comment.split())  # one line: no newlines or tabs inside the record
    comment = comment.encode("ascii", "replace").decode("ascii")  # ATF is an ASCII format
    optional = [
        "AcquisitionMode=Episodic Stimulation",
        f"Comment={comment} (sbi-twins {package_version()}, sha256 {protocol.content_hash()})",
        f"YTop={_fixed(np.max(volts), 6)}",
        f"YBottom={_fixed(np.min(volts), 6)}",
        "SweepStartTimesMS=0.000",
        "SignalsExported=Cmd 0",
    ]
    header = [
        "ATF\t1.0",
        f"{len(optional) + 1}\t2",  # + the Signals= record below
        *(f'"{record}"' for record in optional),
        '"Signals="\t"Cmd 0"',
        '"Time (s)"\t"Trace #1 (mV)"',
    ]
    rows = (f"{_fixed(t / 1e3, 9)}\t{_fixed(v, 6)}" for t, v in zip(times, volts, strict=True))
    text = "\r\n".join([*header, *rows]) + "\r\n"
    path = Path(path)
    atomic_write_text(path, text)
    return path


def _fixed(value: float, decimals: int) -> str:
    """Fixed-point text without trailing zeros ("0.00005", "-70"): no exponents for readers."""
    text = f"{value:.{decimals}f}".rstrip("0").rstrip(".")
    return "0" if text in ("", "-0") else text


def write_command_csv(
    protocol: Protocol, path: str | os.PathLike[str], sample_interval_ms: float
) -> Path:
    """Write the protocol's command as a CSV table with columns ``time_ms`` and ``command_mV``.

    Parameters
    ----------
    protocol : Protocol
        The protocol to sample.
    path : str or os.PathLike
        The ``.csv`` file to write (replaced atomically if it exists).
    sample_interval_ms : float
        Sample interval; it must divide the protocol's duration (grid of
        :meth:`Protocol.times`, end point included).

    Returns
    -------
    pathlib.Path
        The file written.
    """
    check_positive("sample_interval_ms", sample_interval_ms)
    times = protocol.times(sample_interval_ms)
    volts = protocol.voltage(times)
    rows = (f"{_fixed(t, 6)},{_fixed(v, 6)}" for t, v in zip(times, volts, strict=True))
    path = Path(path)
    atomic_write_text(path, "\n".join(["time_ms,command_mV", *rows]) + "\n")
    return path
