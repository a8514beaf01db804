"""Protocol-aware observation scheme: a full-rate voltage-clamp trace -> a fixed-length vector.

The same function reduces simulated and recorded traces, so that inference compares like with
like. A trace sampled on ``protocol.times(sample_interval_ms)`` (``T`` samples, end point
included) is cut into ``L`` contiguous windows; each observation is the **mean** of the samples
in its window (a one-sample window is that sample). Averaging, rather than picking samples,
lowers the noise of a recording by ``sqrt(n)`` on an ``n``-sample window.

Windows
-------
The windows tile the trace: every sample is in exactly one window, in time order. Each segment
of the protocol is tiled on its own (samples are assigned to segments as by
:meth:`Protocol.voltage`, right-continuous at edges), so no window ever straddles an edge, in
particular none straddles a jump of the command. Within a segment, with ``t`` the time of the
window's first sample since the segment start:

* **After a jump** (the segment starts at a voltage different from where the command was, or
  after a segment too short to hold a sample): every sample is its own window for the first
  `dense_ms`; then a window is ``(growth - 1) * t`` long, so window edges are spaced
  geometrically (each window ends ``growth`` times further from the edge than it starts) and
  the resolution follows the time scale of the transients: INa peaks within a millisecond of a
  depolarising step, tail currents decay over tens to hundreds of ms.
* Widths are capped at `max_window_ms` on steps, so long plateaus are still sampled every
  `max_window_ms`, and at `ramp_window_ms` on ramps and sines, which keep changing the voltage
  and are therefore tiled at that moderate, nearly uniform resolution (after the dense start
  when they begin with a jump, as most ramps of clark2022 do).
* A step that continues the command **without a jump** (e.g. the first segment at the holding
  potential) starts with `ramp_window_ms`-long windows and then grows as above.
* A remainder shorter than half the intended width at the end of a segment is merged into the
  last window, so segments do not end in a sliver (a noisy one-sample window on a recording).

Widths are rounded to whole samples and are at least one sample. The default settings
(:class:`ObservationSettings`) reduce clark2022 at 0.1 ms from 114,552 samples to 1552 windows.
How well other layouts keep the INa peak and the plateaus, and what applying the scheme costs,
is measured by ``benchmarks/observation.py`` (BENCHMARKS.md, "Observation scheme").
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np

from .._util import check_number, check_positive
from ..protocol import _EDGE_TOL_MS, Protocol, load_protocol

__all__ = ["STORAGE_DTYPE", "ObservationScheme", "ObservationSettings"]

#: dtype in which to store observation vectors (e.g. training sets of simulations). float16
#: keeps 11 significant bits, so its error grows with |I| and is largest exactly at the big INa
#: currents, where the information is; float32's rounding is far below a recording's noise
#: (both measured in BENCHMARKS.md, "Observation scheme").
STORAGE_DTYPE = np.dtype(np.float32)

# A command change smaller than this at a segment edge is round-off, not a jump.
_JUMP_TOL_MV = 1e-9


@dataclass(frozen=True)
class ObservationSettings:
    """Window layout of an :class:`ObservationScheme` (see the module docstring).

    Parameters
    ----------
    dense_ms : float, default 1.0
        After a voltage jump, every sample is kept for this long (ms); >= 0.
    growth : float, default 1.2
        After the dense span a window is ``(growth - 1) * t`` long, ``t`` the time since the
        segment start; >= 1 (1 keeps every sample after a jump, up to the caps below).
    max_window_ms : float, default 40.0
        Longest window on a step (ms); > 0.
    ramp_window_ms : float, default 2.5
        Longest window on a ramp or sine, and first window of a step without a jump (ms); > 0.
        Keep it well below the period of any sine.
    """

    dense_ms: float = 1.0
    growth: float = 1.2
    max_window_ms: float = 40.0
    ramp_window_ms: float = 2.5

    def __post_init__(self) -> None:
        # Plain floats: to_dict() and the content hash must not depend on int vs float.
        for name in ("max_window_ms", "ramp_window_ms"):
            object.__setattr__(self, name, check_positive(name, getattr(self, name)))
        object.__setattr__(self, "dense_ms", check_number("dense_ms", self.dense_ms, minimum=0.0))
        object.__setattr__(self, "growth", check_number("growth", self.growth, minimum=1.0))


class ObservationScheme:
    """Fixed windows over a protocol's sample grid; :meth:`apply` averages a trace over them.

    Build one with :meth:`for_protocol` (or :meth:`from_dict` to restore a saved one).

    Parameters
    ----------
    protocol : Protocol or str or path
        The clamp protocol, or the name of a bundled one, or a ``.toml`` path.
    sample_interval_ms : float
        Sample interval of the traces (ms); it must divide the protocol's duration.
    settings : ObservationSettings, optional
        Window layout; the defaults give about 1500 windows for clark2022 at 0.1 ms.

    Attributes
    ----------
    protocol_name, protocol_hash : str
        Name and :meth:`Protocol.content_hash` of the protocol.
    sample_interval_ms : float
    settings : ObservationSettings
    n_samples : int
        Length ``T`` of the traces the scheme accepts (``protocol.times(sample_interval_ms)``).
    starts, stops : numpy.ndarray
        int64, shape ``(L,)``: window ``k`` covers samples ``starts[k]:stops[k]``. Read-only.
    times_ms : numpy.ndarray
        float64, shape ``(L,)``: centre of each window (midpoint of its first and last sample
        times), for plotting.
    """

    def __init__(
        self,
        protocol: Protocol | str | os.PathLike[str],
        sample_interval_ms: float,
        settings: ObservationSettings | None = None,
    ) -> None:
        if not isinstance(protocol, Protocol):
            protocol = load_protocol(protocol)
        self.settings = ObservationSettings() if settings is None else settings
        times = protocol.times(sample_interval_ms)  # validates the interval
        self.protocol_name = protocol.name
        self.protocol_hash = protocol.content_hash()
        self.sample_interval_ms = float(sample_interval_ms)
        self.n_samples = times.size
        self.starts, self.stops = _windows(protocol, times, self.sample_interval_ms, self.settings)
        self.times_ms = 0.5 * (times[self.starts] + times[self.stops - 1])
        self._counts = (self.stops - self.starts).astype(np.float64)
        for arr in (self.starts, self.stops, self.times_ms):
            arr.flags.writeable = False

    @classmethod
    def for_protocol(
        cls,
        protocol: Protocol | str | os.PathLike[str],
        sample_interval_ms: float = 0.1,
        **settings: float,
    ) -> ObservationScheme:
        """Build the scheme for `protocol` at `sample_interval_ms`.

        Parameters
        ----------
        protocol : Protocol or str or path
            The protocol (or a bundled name or ``.toml`` path).
        sample_interval_ms : float, default 0.1
            Sample interval of the full-rate traces (ms).
        **settings : float
            Fields of :class:`ObservationSettings` (``dense_ms``, ``growth``,
            ``max_window_ms``, ``ramp_window_ms``); the rest keep their defaults.

        Raises
        ------
        ValueError
            If a setting is unknown or invalid, or the interval does not divide the duration.
        """
        return cls(protocol, sample_interval_ms, _settings_from(settings))

    def __len__(self) -> int:
        return self.starts.size

    def __repr__(self) -> str:
        return (
            f"ObservationScheme({self.protocol_name!r} every {self.sample_interval_ms:g} ms: "
            f"{self.n_samples} samples -> {len(self)} windows)"
        )

    def apply(self, traces: np.ndarray, *, allow_nonfinite: bool = False) -> np.ndarray:
        """Average full-rate traces over the windows.

        Parameters
        ----------
        traces : array-like
            Shape ``(T,)`` or ``(N, T)`` with ``T = n_samples``: currents sampled on
            ``protocol.times(sample_interval_ms)``. Any real dtype (float32 is fine); window
            sums are accumulated in float64.
        allow_nonfinite : bool, default False
            If true, a trace containing NaN or inf gives an all-NaN row (e.g. the NaN rows of
            cells a simulation could not integrate) instead of an error.

        Returns
        -------
        numpy.ndarray
            float32, shape ``(L,)`` for a 1-D input, else ``(N, L)``. A window mean beyond
            float32's range (about 3.4e38) becomes ±inf.

        Raises
        ------
        ValueError
            If the shape does not match the scheme, or (unless `allow_nonfinite`) a sample is
            NaN or infinite.
        """
        x = np.asarray(traces)
        if x.ndim not in (1, 2):
            raise ValueError(
                f"traces must have shape (T,) or (N, T), got {x.ndim} dimensions {x.shape}"
            )
        if x.shape[-1] != self.n_samples:
            raise ValueError(self._length_message(x.shape[-1]))
        if not (np.issubdtype(x.dtype, np.floating) or np.issubdtype(x.dtype, np.integer)):
            raise ValueError(
                f"traces must be a real (float) array of currents, got dtype {x.dtype}"
            )
        bad = ~np.isfinite(x)
        bad_rows = bad.any(axis=-1)
        if bad_rows.any() and not allow_nonfinite:
            raise ValueError(self._nonfinite_message(bad))
        sums = np.add.reduceat(x, self.starts, axis=-1, dtype=np.float64)
        # A mean past float32's range becomes ±inf, as documented: the caller says what that
        # means for its data, so numpy's bare overflow warning would only come before it.
        with np.errstate(over="ignore"):
            out = (sums / self._counts).astype(np.float32)
        # One bad sample makes the whole observation unusable. (For 1-D input `bad_rows` is a
        # 0-d bool, and indexing with a true 0-d bool selects the whole vector.)
        out[bad_rows] = np.nan
        return out

    def _nonfinite_message(self, bad: np.ndarray) -> str:
        n_bad = np.count_nonzero(bad)
        first = np.argwhere(bad)[0]
        at = f"t = {first[-1] * self.sample_interval_ms:g} ms"
        if bad.ndim == 1:
            where = f"the trace contains {n_bad} non-finite sample(s) (NaN or inf), first at {at}"
            fix = "fix or drop the trace, or pass allow_nonfinite=True to get an all-NaN result"
        else:
            rows = np.count_nonzero(bad.any(axis=1))
            where = (
                f"traces contain {n_bad} non-finite sample(s) (NaN or inf) in {rows} of "
                f"{bad.shape[0]} rows, first in row {first[0]} at {at}"
            )
            fix = "drop those rows, or pass allow_nonfinite=True to get all-NaN rows for them"
        return f"{where}; {fix}"

    def _length_message(self, given: int) -> str:
        si = f"{self.sample_interval_ms:g}"
        end = (self.n_samples - 1) * self.sample_interval_ms
        hint = (
            " (one short: the grid includes the end point)" if given == self.n_samples - 1 else ""
        )
        return (
            f"traces have {given} samples{hint}, but this scheme for protocol "
            f"{self.protocol_name!r} at sample_interval_ms={si} expects {self.n_samples} "
            f"(0 to {end:g} ms, end point included); resample the recording onto "
            f"protocol.times({si}) (e.g. with np.interp), or build the scheme with the "
            "recording's sample interval"
        )

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-able description: settings, protocol, sample interval and length.

        ``windows_hash`` fingerprints the window indices, so :meth:`from_dict` also detects a
        change of the layout algorithm between the version that saved and the one that loads.
        """
        windows = np.concatenate([self.starts, self.stops]).astype("<i8").tobytes()
        return {
            "protocol_name": self.protocol_name,
            "protocol_hash": self.protocol_hash,
            "sample_interval_ms": self.sample_interval_ms,
            "n_samples": self.n_samples,
            "length": len(self),
            "settings": asdict(self.settings),
            "windows_hash": hashlib.sha256(windows).hexdigest()[:16],
        }

    @classmethod
    def from_dict(
        cls, d: Mapping[str, Any], protocol: Protocol | str | os.PathLike[str]
    ) -> ObservationScheme:
        """Rebuild a scheme from :meth:`to_dict` output and check it is the same one.

        Parameters
        ----------
        d : mapping
            Output of :meth:`to_dict` (e.g. read back from JSON).
        protocol : Protocol or str or path
            The protocol the scheme was built for.

        Raises
        ------
        ValueError
            If a field is missing, the protocol's content hash differs from the stored one, or
            the rebuilt windows differ from the stored ones (the message names what differs).
        """
        missing = [k for k in _DICT_KEYS if k not in d]
        if missing:
            raise ValueError(
                f"observation scheme dict lacks {', '.join(missing)}; expected the output of "
                "ObservationScheme.to_dict()"
            )
        if not isinstance(protocol, Protocol):
            protocol = load_protocol(protocol)
        if protocol.content_hash() != d["protocol_hash"]:
            raise ValueError(
                f"protocol mismatch: the scheme was built for protocol {d['protocol_name']!r} "
                f"with content hash {d['protocol_hash'][:16]}..., but protocol "
                f"{protocol.name!r} hashes to {protocol.content_hash()[:16]}...; pass the "
                "protocol the observations were made with"
            )
        rebuilt = cls(protocol, d["sample_interval_ms"], _settings_from(d["settings"]))
        now = rebuilt.to_dict()
        diffs = [f"{k}: stored {d[k]!r}, rebuilt {now[k]!r}" for k in _DICT_KEYS if d[k] != now[k]]
        if diffs:
            raise ValueError(
                "the rebuilt observation scheme differs from the stored one ("
                + "; ".join(diffs)
                + "); the window layout changed since it was saved, so its observations are "
                "not comparable with this version's"
            )
        return rebuilt

    def content_hash(self) -> str:
        """Return 16 hex digits of the sha256 of the canonical JSON of :meth:`to_dict`."""
        canonical = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:16]


_DICT_KEYS = (
    "protocol_name",
    "protocol_hash",
    "sample_interval_ms",
    "n_samples",
    "length",
    "settings",
    "windows_hash",
)


def _settings_from(values: Mapping[str, Any]) -> ObservationSettings:
    """ObservationSettings from a mapping, with a ValueError (not TypeError) for unknown keys."""
    known = [f.name for f in fields(ObservationSettings)]
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise ValueError(
            f"unknown observation setting(s) {', '.join(unknown)}; valid: {', '.join(known)}"
        )
    return ObservationSettings(**values)


def _windows(
    protocol: Protocol, times: np.ndarray, si: float, settings: ObservationSettings
) -> tuple[np.ndarray, np.ndarray]:
    """Window start and stop indices tiling ``times``, segment by segment."""
    # First sample of each segment: the first time not before its start edge (right-continuous
    # with the tolerance of Protocol.voltage); the last sample (t = duration) joins the last one.
    first = np.searchsorted(times, protocol.edges_ms[:-1] - _EDGE_TOL_MS)
    bounds = np.append(first, times.size)
    previous_end = protocol.holding_mV
    jumped = False
    starts: list[int] = []
    for k, seg in enumerate(protocol.segments):
        jumped |= abs(float(seg.voltage_at(np.array(0.0))) - previous_end) > _JUMP_TOL_MV
        previous_end = float(seg.voltage_at(np.array(seg.duration_ms)))
        a, b = int(bounds[k]), int(bounds[k + 1])
        if a == b:  # shorter than a sample: its change shows up in the next segment
            continue
        cap_ms = settings.max_window_ms if seg.kind == "step" else settings.ramp_window_ms
        cap = max(1, round(cap_ms / si))
        floor = 1 if jumped else min(cap, max(1, round(settings.ramp_window_ms / si)))
        # Dense span in samples; the tolerance stops round-off (1.0 / 0.1 = 10.000000000000002)
        # from adding a sample.
        dense = math.ceil((settings.dense_ms - _EDGE_TOL_MS) / si) if jumped else 0
        t0 = protocol.edges_ms[k]
        i = a
        while i < b:
            if i - a < dense:
                width = 1
            else:
                width = min(cap, max(floor, round((settings.growth - 1) * (times[i] - t0) / si)))
            stop = i + width
            if b - stop < width / 2:  # no sliver at the segment end
                stop = b
            starts.append(i)
            i = stop
        jumped = False
    start_arr = np.array(starts, dtype=np.int64)
    return start_arr, np.append(start_arr[1:], times.size)
