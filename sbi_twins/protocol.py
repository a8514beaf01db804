"""Voltage-clamp protocols: piecewise command voltages made of steps, ramps and sines.

A :class:`Protocol` is plain data (segments back to back from t = 0) plus two queries:
the sample grid (:meth:`Protocol.times`) and the command voltage on any times
(:meth:`Protocol.voltage`). Segment ``k`` is active on ``[start_k, end_k)``, so the command
is right-continuous: a sample exactly at an edge takes the new segment's value.

Protocols are stored as TOML files; see :func:`load_protocol` for the format.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import math
import os
import re
import tomllib
from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np

from ._resources import resolve
from ._util import (
    check_number,
    check_positive,
    format_bytes,
    refuse_directory,
    whole_multiple,
)

__all__ = ["Protocol", "Segment", "load_protocol"]

SegmentKind = Literal["step", "ramp", "sine"]
_KINDS: tuple[str, ...] = ("step", "ramp", "sine")

# Times within this distance of a segment edge count as on the edge. It absorbs float
# round-off of grids like 0.1 * k (error ~1e-12 ms) without moving genuine samples.
_EDGE_TOL_MS = 1e-9

#: Largest command magnitude (mV) a protocol may reach, holding level included. Clamp protocols
#: stay within about ±150 mV; beyond ±250 mV the models' rate expressions overflow and every cell
#: fails, so such a value is a typo or a unit slip (µV for mV), refused when the protocol is made.
MAX_ABS_VOLTAGE_MV = 250.0
#: Most samples :meth:`Protocol.times` gives (8 bytes each per cell and array: 0.4 GB): longer
#: grids are refused before anything is allocated (e.g. a protocol of 1e10 ms).
MAX_SAMPLES = 50_000_000


@dataclass(frozen=True)
class Segment:
    """One piece of a protocol: a step, a linear ramp or a sine around an offset.

    Parameters
    ----------
    kind : {"step", "ramp", "sine"}
        Waveform type.
    duration_ms : float
        Length of the segment in ms; positive and finite.
    v_start_mV, v_end_mV : float
        Voltage at the start and end (mV). A step has one level (both equal); a ramp goes
        linearly from start to end; for a sine ``v_start_mV`` is the offset and
        ``v_end_mV`` must equal it.
    amplitude_mV, frequency_hz, phase_rad : float, default 0
        Sine only: ``V(t) = v_start_mV + amplitude_mV * sin(2 pi f t / 1000 + phase_rad)``
        with ``t`` in ms since the segment start. Must stay 0 for steps and ramps.
    """

    kind: SegmentKind
    duration_ms: float
    v_start_mV: float
    v_end_mV: float
    amplitude_mV: float = 0.0
    frequency_hz: float = 0.0
    phase_rad: float = 0.0

    def __post_init__(self) -> None:
        if self.kind not in _KINDS:
            raise ValueError(
                f"unknown segment type {self.kind!r}; valid types: {', '.join(_KINDS)}"
            )
        for field in (
            "duration_ms",
            "v_start_mV",
            "v_end_mV",
            "amplitude_mV",
            "frequency_hz",
            "phase_rad",
        ):
            # Plain floats, so equality, hashing and to_dict() don't depend on int vs float.
            object.__setattr__(self, field, check_number(field, getattr(self, field)))
        check_positive("duration_ms", self.duration_ms)
        check_number("frequency_hz", self.frequency_hz, minimum=0.0)
        if self.kind in ("step", "sine") and self.v_end_mV != self.v_start_mV:
            what = "level" if self.kind == "step" else "offset"
            raise ValueError(
                f"a {self.kind} segment has one {what}: v_start_mV ({self.v_start_mV}) and "
                f"v_end_mV ({self.v_end_mV}) must be equal"
            )
        sine_fields = (self.amplitude_mV, self.frequency_hz, self.phase_rad)
        if self.kind != "sine" and sine_fields != (0, 0, 0):
            raise ValueError(
                f"amplitude_mV, frequency_hz and phase_rad only apply to sine segments; "
                f"leave them 0 for a {self.kind}"
            )

    @classmethod
    def step(cls, duration_ms: float, v_mV: float) -> Segment:
        """Return a constant segment at `v_mV`."""
        return cls("step", duration_ms, v_mV, v_mV)

    @classmethod
    def ramp(cls, duration_ms: float, v_start_mV: float, v_end_mV: float) -> Segment:
        """Return a linear ramp from `v_start_mV` to `v_end_mV`."""
        return cls("ramp", duration_ms, v_start_mV, v_end_mV)

    @classmethod
    def sine(
        cls,
        duration_ms: float,
        offset_mV: float,
        amplitude_mV: float,
        frequency_hz: float,
        phase_rad: float = 0.0,
    ) -> Segment:
        """Return a sine of `amplitude_mV` and `frequency_hz` around `offset_mV`."""
        return cls("sine", duration_ms, offset_mV, offset_mV, amplitude_mV, frequency_hz, phase_rad)

    def voltage_range(self) -> tuple[float, float]:
        """Return the lowest and highest command (mV) of the segment."""
        if self.kind == "sine":
            swing = abs(self.amplitude_mV)
            return self.v_start_mV - swing, self.v_start_mV + swing
        return min(self.v_start_mV, self.v_end_mV), max(self.v_start_mV, self.v_end_mV)

    def voltage_at(self, t_in_segment_ms: np.ndarray) -> np.ndarray:
        """Return the command voltage (mV) at times measured from the segment start.

        Parameters
        ----------
        t_in_segment_ms : np.ndarray
            Times in ms since the segment start, normally in ``[0, duration_ms]``.
            Ramps are held at their end values outside that interval.

        Returns
        -------
        np.ndarray
            Voltages, same shape as the input, float64.
        """
        t = np.asarray(t_in_segment_ms, dtype=float)
        if self.kind == "step":
            return np.full(t.shape, self.v_start_mV)
        if self.kind == "ramp":
            frac = np.clip(t / self.duration_ms, 0.0, 1.0)
            return self.v_start_mV + (self.v_end_mV - self.v_start_mV) * frac
        phase = 2.0 * np.pi * self.frequency_hz * t / 1000.0 + self.phase_rad
        return self.v_start_mV + self.amplitude_mV * np.sin(phase)


@dataclass(frozen=True)
class Protocol:
    """A voltage-clamp protocol: segments played back to back from t = 0.

    Parameters
    ----------
    name : str
        Short identifier, e.g. ``"clark2022"``.
    holding_mV : float
        Command voltage before t = 0.
    segments : tuple of Segment
        At least one segment; a list is accepted and stored as a tuple.
    description : str, optional
        Free text.
    source : str, optional
        File the protocol was loaded from, or ``""``. Not part of :meth:`content_hash`.
    reference : str, optional
        Literature reference for the protocol.

    Raises
    ------
    ValueError
        No segments, a non-finite holding level, or a command (holding level included) beyond
        ``±MAX_ABS_VOLTAGE_MV`` (250 mV); the message names the segment.
    """

    name: str
    holding_mV: float
    segments: tuple[Segment, ...]
    description: str = ""
    source: str = ""
    reference: str = ""

    def __post_init__(self) -> None:
        segments = tuple(self.segments)
        object.__setattr__(self, "segments", segments)
        if not segments:
            raise ValueError(f"protocol {self.name!r} has no segments; add at least one")
        for i, seg in enumerate(segments, start=1):
            if not isinstance(seg, Segment):
                raise ValueError(f"segment {i} must be a Segment, got {type(seg).__name__}")
        object.__setattr__(self, "holding_mV", check_number("holding_mV", self.holding_mV))
        voltage, number = self.most_extreme_command()
        if abs(voltage) > MAX_ABS_VOLTAGE_MV:
            where = f"segment {number} ({segments[number - 1].kind})" if number else "holding_mV"
            raise ValueError(
                f"{where} of protocol {self.name!r} commands {voltage:+g} mV, outside the range "
                f"a protocol may use (|V| <= {MAX_ABS_VOLTAGE_MV:g} mV; beyond it the models' "
                "rate expressions overflow); check the value and its unit (mV)"
            )

    def most_extreme_command(self) -> tuple[float, int]:
        """Return the command of largest magnitude (mV) and where it is.

        Returns
        -------
        (float, int)
            The voltage and the 1-based number of its segment (0: the holding level).
        """
        candidates = [(self.holding_mV, 0)] + [
            (v, number)
            for number, segment in enumerate(self.segments, start=1)
            for v in segment.voltage_range()
        ]
        return max(candidates, key=lambda c: abs(c[0]))

    @property
    def duration_ms(self) -> float:
        """Total duration in ms (sum of segment durations)."""
        return math.fsum(seg.duration_ms for seg in self.segments)

    @property
    def edges_ms(self) -> np.ndarray:
        """Segment start times followed by the end time, shape ``(n_segments + 1,)``."""
        return np.concatenate([[0.0], np.cumsum([seg.duration_ms for seg in self.segments])])

    def times(self, sample_interval_ms: float) -> np.ndarray:
        """Return the sample grid ``0, si, 2 si, ..., duration_ms`` (end point included).

        Parameters
        ----------
        sample_interval_ms : float
            Sample interval in ms; the duration must be a whole multiple of it.

        Returns
        -------
        np.ndarray
            ``round(duration_ms / si) + 1`` times in ms, ``np.arange(n) * si``.

        Raises
        ------
        ValueError
            If the interval is not positive and finite, or does not divide the duration, or the
            grid would have more than :data:`MAX_SAMPLES` samples (checked before allocating).
        """
        si = check_positive("sample_interval_ms", sample_interval_ms)
        duration = self.duration_ms
        samples = duration / si + 1
        if samples > MAX_SAMPLES:
            raise ValueError(
                f"protocol {self.name!r} lasts {duration:g} ms: sampled every {si:g} ms its trace "
                f"would be {samples:.4g} samples long ({format_bytes(8 * samples)} per cell), "
                f"more than the {MAX_SAMPLES:,} samples supported; shorten the protocol (check "
                "its durations are in ms) or sample it more coarsely"
            )
        n_intervals = whole_multiple(
            duration,
            si,
            name=f"the duration of protocol {self.name!r} (ms)",
            step_name="sample_interval_ms",
            hint=_suggest_divisor(duration, si),
        )
        if n_intervals < 1:
            raise ValueError(
                f"sample_interval_ms ({si:g}) is longer than protocol {self.name!r} "
                f"({duration:g} ms); {_suggest_divisor(duration, si)}"
            )
        return np.arange(n_intervals + 1) * si

    def segment_index(self, times_ms: np.ndarray) -> np.ndarray:
        """Index (from 0) of the segment each time lies in, right-continuous at the edges as
        :meth:`voltage` is; times before 0 count to the first segment, times at or after the
        end to the last.
        """
        t = np.asarray(times_ms, dtype=float)
        idx = np.searchsorted(self.edges_ms[:-1], t + _EDGE_TOL_MS, side="right") - 1
        return np.clip(idx, 0, len(self.segments) - 1)

    def voltage(self, times_ms: np.ndarray) -> np.ndarray:
        """Return the command voltage (mV) at the given times.

        Segments are active on ``[start, end)`` (right-continuous; times within 1e-9 ms of
        an edge count as on it). Before t = 0 the command is `holding_mV`; from
        `duration_ms` on it stays at the value the last segment reaches at its end
        (``v_end_mV`` for a step or ramp; the sine's value there, so no jump, for a sine).

        Parameters
        ----------
        times_ms : array-like
            Times in ms, any shape, finite.

        Returns
        -------
        np.ndarray
            Voltages, same shape as `times_ms`, float64.
        """
        t = np.asarray(times_ms, dtype=float)
        if not np.all(np.isfinite(t)):
            raise ValueError("times_ms contains NaN or infinite values")
        flat = t.ravel()
        edges = self.edges_ms
        starts = edges[:-1]
        nudged = flat + _EDGE_TOL_MS
        idx = self.segment_index(flat)
        out = np.full(flat.shape, self.holding_mV)
        after = nudged >= edges[-1]
        before = nudged < 0  # at the holding potential
        for i, seg in enumerate(self.segments):
            mask = (idx == i) & ~after & ~before
            if mask.any():
                # Clip: a time a hair below the edge (round-off) belongs to the segment start.
                out[mask] = seg.voltage_at(np.maximum(flat[mask] - starts[i], 0.0))
        last = self.segments[-1]
        out[after] = last.voltage_at(np.array(last.duration_ms))
        return out.reshape(t.shape)

    def to_dict(self) -> dict[str, Any]:
        """Return the definition as a plain JSON-able dict."""
        return {
            "name": self.name,
            "holding_mV": self.holding_mV,
            "description": self.description,
            "reference": self.reference,
            "source": self.source,
            "segments": [asdict(seg) for seg in self.segments],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Protocol:
        """The protocol of a :meth:`to_dict` record (as stored in manifests).

        A record that also holds a ``hash`` (manifests store one) must match it, so a record
        edited by hand is refused instead of silently describing another protocol.
        """
        try:
            protocol = cls(
                data["name"],
                data["holding_mV"],
                tuple(Segment(**segment) for segment in data["segments"]),
                description=data.get("description", ""),
                source=data.get("source", ""),
                reference=data.get("reference", ""),
            )
        except (KeyError, TypeError) as e:
            raise ValueError(f"not a protocol record ({type(e).__name__}: {e})") from None
        if "hash" in data and protocol.content_hash() != data["hash"]:
            raise ValueError(f"the record of protocol {protocol.name!r} does not match its hash")
        return protocol

    def content_hash(self) -> str:
        """Return the sha256 hex digest of the definition (excluding `source`).

        Two protocols with the same segments, levels and texts hash equally wherever they
        were loaded from; any change of a level or duration changes the hash.
        """
        definition = self.to_dict()
        del definition["source"]
        canonical = json.dumps(definition, sort_keys=True, separators=(",", ":"), allow_nan=False)
        return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def _suggest_divisor(duration_ms: float, sample_interval_ms: float) -> str:
    """Suggest the largest 'round' interval <= the requested one that divides the duration."""
    for exponent in range(3, -7, -1):
        for mantissa in (5.0, 2.5, 2.0, 1.0):
            cand = mantissa * 10.0**exponent
            n = round(duration_ms / cand)
            divides = n >= 1 and abs(n * cand - duration_ms) <= 1e-9 * duration_ms
            if cand <= sample_interval_ms and divides:
                return f"try sample_interval_ms={cand:g}"
    return "choose an interval that divides the duration exactly"


# --- TOML loading -----------------------------------------------------------------------

_TOP_KEYS = ("name", "description", "reference", "holding_mV", "segment")
_REQUIRED = {
    "step": ("duration_ms", "v_mV"),
    "ramp": ("duration_ms", "v_start_mV", "v_end_mV"),
    "sine": ("duration_ms", "offset_mV", "amplitude_mV", "frequency_hz"),
}
_OPTIONAL = {"step": (), "ramp": (), "sine": ("phase_rad",)}
_HEADER = re.compile(r"^\s*\[\[\s*segment\s*\]\]")


def load_protocol(name_or_path: str | os.PathLike[str]) -> Protocol:
    """Load a protocol by bundled name or from a TOML file.

    Parameters
    ----------
    name_or_path : str or os.PathLike
        A bundled protocol name (e.g. ``"clark2022"``, ``"kernik_steps"``) or a path to a
        ``.toml`` file.

    Returns
    -------
    Protocol
        The protocol, with `source` set to the file it came from.

    Raises
    ------
    FileNotFoundError
        If the file does not exist or the name is not bundled (lists the bundled names).
    ValueError
        If the file is not valid TOML or not a valid protocol; the message names the file,
        the segment (1-based) and the line of its ``[[segment]]`` header.

    Notes
    -----
    Format::

        name = "clark2022"              # optional, defaults to the file name
        description = "..."             # optional
        reference = "..."               # optional
        holding_mV = -80.0              # required; command before t = 0

        [[segment]]                     # repeat, in playback order
        type = "step"                   # step: duration_ms, v_mV
        duration_ms = 2000
        v_mV = -80

        [[segment]]
        type = "ramp"                   # ramp: duration_ms, v_start_mV, v_end_mV
        ...

        [[segment]]
        type = "sine"                   # sine: duration_ms, offset_mV, amplitude_mV,
        ...                             #       frequency_hz, phase_rad (optional, 0)
    """
    try:
        path = resolve(name_or_path, "protocols", ".toml")
    except FileNotFoundError:
        refuse_directory(name_or_path, "a .toml protocol file")
        raise
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path}: not a text .toml protocol file ({exc.reason})") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"{path}: TOML syntax error: {exc}") from None

    unknown = sorted(set(data) - set(_TOP_KEYS))
    if unknown:
        raise ValueError(
            f"{path}: unknown top-level key(s) {', '.join(unknown)}"
            f"{_did_you_mean(unknown, _TOP_KEYS)}; allowed: {', '.join(_TOP_KEYS)}"
        )
    if "holding_mV" not in data:
        raise ValueError(
            f"{path}: missing required field 'holding_mV' (command voltage before t = 0)"
        )
    raw_segments = data.get("segment", [])
    if not isinstance(raw_segments, list) or not all(isinstance(s, dict) for s in raw_segments):
        raise ValueError(
            f"{path}: 'segment' must be an array of tables; write each one as [[segment]]"
        )
    if not raw_segments:
        raise ValueError(f"{path}: no segments; add at least one [[segment]] table")

    header_lines = [n for n, line in enumerate(text.splitlines(), start=1) if _HEADER.match(line)]
    if len(header_lines) != len(raw_segments):  # e.g. inline tables: no header lines to point at
        header_lines = []
    segments = []
    for i, raw in enumerate(raw_segments, start=1):
        where = f"{path}: segment {i}" + (f" (line {header_lines[i - 1]})" if header_lines else "")
        segments.append(_parse_segment(raw, where))

    for key in ("name", "description", "reference"):
        if not isinstance(data.get(key, ""), str):
            raise ValueError(f"{path}: {key!r} must be a string, got {data[key]!r}")
    try:
        return Protocol(
            name=data.get("name", path.stem),
            holding_mV=_number(data["holding_mV"], "holding_mV"),
            segments=tuple(segments),
            description=data.get("description", ""),
            source=str(path),
            reference=data.get("reference", ""),
        )
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from None


def _parse_segment(raw: dict[str, Any], where: str) -> Segment:
    """Build one Segment from its TOML table; `where` prefixes every error message."""
    if "type" not in raw:
        raise ValueError(f"{where}: missing required field 'type' (one of: {', '.join(_KINDS)})")
    kind = raw["type"]
    if kind not in _KINDS:
        raise ValueError(
            f"{where}: unknown segment type {kind!r}; valid types: {', '.join(_KINDS)}"
        )
    allowed = ("type", *_REQUIRED[kind], *_OPTIONAL[kind])
    unknown = sorted(set(raw) - set(allowed))
    if unknown:
        raise ValueError(
            f"{where}: unknown key(s) {', '.join(unknown)} for a {kind} segment"
            f"{_did_you_mean(unknown, allowed)}; allowed: {', '.join(allowed)}"
        )
    for key in _REQUIRED[kind]:
        if key not in raw:
            raise ValueError(f"{where}: missing required field {key!r} for a {kind} segment")
    try:
        values = {key: _number(raw[key], key) for key in raw if key != "type"}
        if kind == "step":
            return Segment.step(values["duration_ms"], values["v_mV"])
        if kind == "ramp":
            return Segment.ramp(values["duration_ms"], values["v_start_mV"], values["v_end_mV"])
        return Segment.sine(
            values["duration_ms"],
            values["offset_mV"],
            values["amplitude_mV"],
            values["frequency_hz"],
            values.get("phase_rad", 0.0),
        )
    except ValueError as exc:
        raise ValueError(f"{where}: {exc}") from None


def _number(value: Any, key: str) -> float:
    """Return `value` as a finite float; reject strings, booleans, inf and nan."""
    # Checked here (not only in Segment) so the message uses the TOML key, e.g. offset_mV;
    # bools are refused: `v_mV = true` is a typo, not 1 mV.
    return check_number(repr(key), value)


def _did_you_mean(unknown: list[str], allowed: tuple[str, ...]) -> str:
    """Return ' (did you mean ...?)' for near-miss keys, or ''."""
    hints = [
        f"{m[0]!r} for {u!r}" for u in unknown if (m := difflib.get_close_matches(u, allowed, n=1))
    ]
    return f" (did you mean {', '.join(hints)}?)" if hints else ""
