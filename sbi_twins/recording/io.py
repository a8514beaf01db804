"""Real patch-clamp recordings read into one :class:`Recording`: ABF files, CSV files, arrays.

A :class:`Recording` is one sweep of one channel: the recorded signal on an even time grid from
t = 0, its unit, the clamp mode, the command when it is known, and what the file said about
where it came from (``metadata``). :func:`load_recording` reads Axon ``.abf`` files (ABF1 and
ABF2, through pyabf) and ``.csv`` / ``.csv.gz`` tables with unit-bearing headers;
:meth:`Recording.from_arrays` wraps arrays already in memory.

Units are taken from the file and checked, never guessed: a channel label that cannot be the
unit of a cell's current or voltage (values of -5 "A", say) is refused with its value range,
and ``signal_unit=`` states the real unit.
"""

from __future__ import annotations

import gzip
import math
import os
import re
import warnings
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path, PureWindowsPath
from typing import Any

import numpy as np

from .._util import check_choice, check_positive, is_integer

__all__ = ["Recording", "load_recording"]

VOLTAGE_CLAMP = "voltage_clamp"
CURRENT_CLAMP = "current_clamp"
MODES: tuple[str, ...] = (VOLTAGE_CLAMP, CURRENT_CLAMP)

#: The units a Recording's signal may be in.
SIGNAL_UNITS: tuple[str, ...] = ("pA/pF", "pA", "nA", "A", "mV", "V")
_PA_PER_UNIT = {"A": 1e12, "nA": 1e3, "pA": 1.0}
_MV_PER_UNIT = {"V": 1e3, "mV": 1.0}

#: Unit spellings found in files -> (unit of a Recording, factor that brings values to it).
#: Units no cell recording is written in (uA, fA, uV...) are rescaled to the nearest one.
_UNIT_SPELLINGS: dict[str, tuple[str, float]] = {
    "pA/pF": ("pA/pF", 1.0),
    "pA_per_pF": ("pA/pF", 1.0),
    "pA_pF": ("pA/pF", 1.0),  # "pA/pF" in a column name, e.g. current_pA_pF (sbi-twins demo)
    "pApF": ("pA/pF", 1.0),
    "A/F": ("pA/pF", 1.0),  # 1 A/F = 1 pA/pF
    "A": ("A", 1.0),
    "mA": ("A", 1e-3),
    "uA": ("nA", 1e3),
    "nA": ("nA", 1.0),
    "pA": ("pA", 1.0),
    "fA": ("pA", 1e-3),
    "V": ("V", 1.0),
    "mV": ("mV", 1.0),
    "uV": ("mV", 1e-3),
}
_MS_PER_TIME_UNIT = {"s": 1e3, "sec": 1e3, "ms": 1.0, "msec": 1.0, "us": 1e-3}

# Plausibility of a cell's signal, as bounds on the largest |value| of a channel. Whole-cell
# currents stay far below 1 uA (amplifiers saturate at tens of nA) and membrane potentials
# within +-200 mV; and a trace recorded by a 16-bit digitiser over a real cell is never
# entirely below a femtoampere or a microvolt (its noise alone is larger). A channel outside
# these bounds is labelled with the wrong unit.
_PEAK_BOUNDS = {"current": (1e-3, 1e6), "density": (1e-6, 1e5), "voltage": (1e-3, 1e3)}
_BASE_UNIT = {"current": "pA", "density": "pA/pF", "voltage": "mV"}
_QUANTITY = {"current": "a current", "density": "a current density", "voltage": "a voltage"}

# Time samples may deviate from an even grid by this fraction of the sample interval: it absorbs
# the rounding of times written to text (e.g. seconds with 6 decimals) and nothing larger.
_EVEN_GRID_RTOL = 1e-3

_ACQUISITION_MODES = {
    1: "event-driven (variable-length sweeps)",
    2: "event-driven (fixed-length sweeps)",
    3: "gap-free",
    4: "high-speed oscilloscope",
    5: "episodic",
}


def _normalise_unit_text(text: str) -> str:
    # micro is written "u", the micro sign (U+00B5) or Greek mu (U+03BC) depending on the software
    return str(text).strip().replace("\u00b5", "u").replace("\u03bc", "u")


def _parse_unit(text: str | None) -> tuple[str, float] | None:
    """(unit of a Recording, factor to it) for a unit spelling, or None if it is not one."""
    if text is None:
        return None
    return _UNIT_SPELLINGS.get(_normalise_unit_text(text))


def _kind(unit: str) -> str:
    """The kind of a unit of :data:`SIGNAL_UNITS`: "current", "density" or "voltage"."""
    if unit == "pA/pF":
        return "density"
    return "current" if unit in _PA_PER_UNIT else "voltage"


def _mode_of(unit: str) -> str:
    # a voltage clamp records a current (or its density); a current clamp records the voltage
    return CURRENT_CLAMP if _kind(unit) == "voltage" else VOLTAGE_CLAMP


def _to_base(unit: str) -> float:
    """Factor from ``unit`` to the base unit of its kind (pA, pA/pF or mV)."""
    return {**_PA_PER_UNIT, **_MV_PER_UNIT, "pA/pF": 1.0}[unit]


def _signal_unit_argument(unit: object, name: str = "signal_unit") -> tuple[str, float]:
    parsed = _parse_unit(unit) if isinstance(unit, str) else None
    if parsed is None:
        raise ValueError(
            f"{name} must be a current or voltage unit ({', '.join(SIGNAL_UNITS)}; "
            f"also uA, fA, uV), got {unit!r}"
        )
    return parsed


# --------------------------------------------------------------------------- the Recording


def _float_vector(name: str, values: object) -> np.ndarray:
    try:
        array = np.array(values, dtype=float)
    except (TypeError, ValueError) as error:
        raise ValueError(f"{name} must be an array of numbers: {error}") from None
    if array.ndim != 1:
        raise ValueError(f"{name} must be 1-D (one value per sample), got shape {array.shape}")
    return array


def _where(indices: np.ndarray, time_ms: np.ndarray) -> str:
    """Where some samples are, e.g. "samples 3, 4 (t = 0.3 ms, 0.4 ms)"."""
    shown = indices[:5]
    more = f" and {indices.size - shown.size} more" if indices.size > shown.size else ""
    times = ", ".join(f"{time_ms[i]:g} ms" for i in shown) if time_ms.size else ""
    samples = ", ".join(str(i) for i in shown)
    word = "sample" if indices.size == 1 else "samples"
    return f"{word} {samples}{more}" + (f" (t = {times})" if times else "")


def _check_finite(name: str, values: np.ndarray, time_ms: np.ndarray) -> None:
    bad = ~np.isfinite(values)
    if not bad.any():
        return
    n_nan = int(np.isnan(values).sum())
    n_inf = int(bad.sum()) - n_nan
    counts = " and ".join(
        text
        for text in (f"{n_nan} NaN" if n_nan else "", f"{n_inf} infinite" if n_inf else "")
        if text
    )
    raise ValueError(
        f"{name} has {counts} value(s), at {_where(np.flatnonzero(bad), time_ms)}; "
        "remove or interpolate them first"
    )


def _check_time_grid(time_ms: np.ndarray) -> None:
    """Finite, from 0, strictly increasing and evenly spaced (within :data:`_EVEN_GRID_RTOL`)."""
    _check_finite("time_ms", time_ms, np.array([]))
    if time_ms[0] != 0:
        raise ValueError(f"time_ms must start at 0, got {time_ms[0]:g} ms; subtract the first time")
    steps = np.diff(time_ms)
    if (steps <= 0).any():
        i = int(np.argmax(steps <= 0))
        raise ValueError(
            f"time_ms must increase strictly: sample {i + 1} ({time_ms[i + 1]:g} ms) does not "
            f"come after sample {i} ({time_ms[i]:g} ms)"
        )
    interval = time_ms[-1] / (time_ms.size - 1)
    deviation = np.abs(time_ms - interval * np.arange(time_ms.size))
    worst = int(np.argmax(deviation))
    if deviation[worst] > _EVEN_GRID_RTOL * interval:
        raise ValueError(
            f"time_ms is not evenly spaced: sample {worst} is at {time_ms[worst]:.10g} ms, "
            f"{deviation[worst]:.3g} ms off the even grid of {interval:.6g} ms steps (allowed: "
            f"{_EVEN_GRID_RTOL:.1%} of a step); resample the recording onto an even grid"
        )


def _check_unit_and_mode(unit: str, mode: str) -> None:
    check_choice("signal_unit", unit, SIGNAL_UNITS)
    check_choice("mode", mode, MODES)
    if _mode_of(unit) != mode:
        records = "a current" if mode == VOLTAGE_CLAMP else "a voltage"
        raise ValueError(
            f"a {mode.replace('_', '-')} recording records {records}, but signal_unit is "
            f"{unit!r}; pass mode={_mode_of(unit)!r} or the right unit"
        )


def _checked_command(values: object, time_ms: np.ndarray) -> np.ndarray:
    command = _float_vector("command", values)
    if command.size != time_ms.size:
        raise ValueError(f"command has {command.size} samples but time_ms has {time_ms.size}")
    _check_finite("command", command, time_ms)
    return _frozen(command)


def _frozen(array: np.ndarray) -> np.ndarray:
    array.setflags(write=False)
    return array


@dataclass(frozen=True, eq=False, repr=False)
class Recording:
    """One sweep of one channel of a patch-clamp recording, on an even time grid from 0.

    Parameters
    ----------
    time_ms : numpy.ndarray
        Sample times (T,) in ms: finite, starting at exactly 0, strictly increasing and evenly
        spaced (each time within 0.1 % of a sample interval of ``k * sample_interval_ms``).
    signal : numpy.ndarray
        What was recorded (T,), finite: the current in voltage clamp, the membrane potential in
        current clamp.
    signal_unit : {"pA/pF", "pA", "nA", "A", "mV", "V"}
        Unit of ``signal``: a current (or current density) in voltage clamp, a voltage in
        current clamp.
    command : numpy.ndarray or None
        The command waveform (T,): mV in voltage clamp, pA in current clamp; None when it is
        not known (then give the protocol separately).
    mode : {"voltage_clamp", "current_clamp"}
        The clamp mode.
    metadata : dict
        Where the recording came from: ``source`` (file), ``format``, and for ABF files
        ``sweep``, ``channel``, ``channel_name``, ``abf_version``, ``protocol``,
        ``sample_rate_Hz``, ``command_source``...; ``cm_pF`` (membrane capacitance) when
        known. Copied on construction.

    Notes
    -----
    The arrays are stored as read-only float64 copies, so a Recording never changes after it
    is made; :meth:`to_unit` returns a new one.
    """

    time_ms: np.ndarray
    signal: np.ndarray
    signal_unit: str
    command: np.ndarray | None = None
    mode: str = VOLTAGE_CLAMP
    metadata: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        time_ms = _float_vector("time_ms", self.time_ms)
        signal = _float_vector("signal", self.signal)
        if signal.size != time_ms.size:
            raise ValueError(
                f"signal has {signal.size} samples but time_ms has {time_ms.size}; "
                "they must have one value per sample"
            )
        if time_ms.size < 2:
            raise ValueError(f"a recording needs at least 2 samples, got {time_ms.size}")
        _check_time_grid(time_ms)
        _check_finite("signal", signal, time_ms)
        _check_unit_and_mode(self.signal_unit, self.mode)
        command = None if self.command is None else _checked_command(self.command, time_ms)
        if not isinstance(self.metadata, Mapping):
            raise ValueError(f"metadata must be a dict, got {type(self.metadata).__name__}")
        object.__setattr__(self, "time_ms", _frozen(time_ms))
        object.__setattr__(self, "signal", _frozen(signal))
        object.__setattr__(self, "command", command)
        object.__setattr__(self, "metadata", dict(self.metadata))

    def __repr__(self) -> str:
        command = "no command" if self.command is None else f"command in {self.command_unit}"
        source = self.metadata.get("source")
        origin = f", from {Path(source).name}" if source else ""
        return (
            f"Recording({self.mode}, {self.time_ms.size} samples every "
            f"{self.sample_interval_ms:g} ms, signal in {self.signal_unit}, {command}{origin})"
        )

    @property
    def sample_interval_ms(self) -> float:
        """The time between samples (ms), averaged over the whole recording."""
        return float(self.time_ms[-1] / (self.time_ms.size - 1))

    @property
    def command_unit(self) -> str:
        """Unit of :attr:`command`: ``"mV"`` in voltage clamp, ``"pA"`` in current clamp."""
        return "mV" if self.mode == VOLTAGE_CLAMP else "pA"

    @property
    def command_mV(self) -> np.ndarray | None:
        """The command voltage (mV) of a voltage-clamp recording; None otherwise or if unknown."""
        return self.command if self.mode == VOLTAGE_CLAMP else None

    def to_unit(self, unit: str, cm_pF: float | None = None) -> Recording:
        """The same recording with its signal in another unit.

        Parameters
        ----------
        unit : {"pA/pF", "pA", "nA", "A", "mV", "V"}
            The unit wanted: a current unit (or pA/pF) for a current, a voltage unit for a
            voltage.
        cm_pF : float, optional
            Membrane capacitance (pF), needed between a current and a current density (pA/pF);
            defaults to ``metadata["cm_pF"]``.

        Returns
        -------
        Recording
            A new recording (``metadata["cm_pF"]`` records the capacitance used).

        Raises
        ------
        ValueError
            For an unknown unit, a conversion between a current and a voltage, or a density
            conversion without a capacitance.
        """
        check_choice("unit", unit, SIGNAL_UNITS)
        source_kind, target_kind = _kind(self.signal_unit), _kind(unit)
        if (source_kind == "voltage") != (target_kind == "voltage"):
            raise ValueError(
                f"cannot convert {_QUANTITY[source_kind]} ({self.signal_unit}) to "
                f"{_QUANTITY[target_kind]} ({unit}): a recording's signal keeps its physical "
                "quantity"
            )
        factor = _to_base(self.signal_unit) / _to_base(unit)
        metadata = dict(self.metadata)
        if source_kind != target_kind:  # current <-> current density
            cm = self._capacitance(cm_pF, unit)
            factor *= cm if source_kind == "density" else 1.0 / cm
            metadata["cm_pF"] = cm
        return replace(self, signal=self.signal * factor, signal_unit=unit, metadata=metadata)

    def _capacitance(self, cm_pF: float | None, unit: str) -> float:
        if cm_pF is not None:
            return check_positive("cm_pF", cm_pF)
        if self.metadata.get("cm_pF") is not None:
            return check_positive("metadata['cm_pF']", self.metadata["cm_pF"])
        raise ValueError(
            f"converting {self.signal_unit} to {unit} needs the membrane capacitance, and this "
            f"recording does not know it: pass it, e.g. rec.to_unit({unit!r}, cm_pF=25.0), "
            "or load the file with load_recording(..., cm_pF=25.0)"
        )

    @classmethod
    def from_arrays(
        cls,
        signal: Sequence[float] | np.ndarray,
        sample_interval_ms: float,
        signal_unit: str,
        *,
        command: Sequence[float] | np.ndarray | None = None,
        mode: str = VOLTAGE_CLAMP,
        metadata: Mapping[str, Any] | None = None,
    ) -> Recording:
        """A recording from a signal sampled every ``sample_interval_ms`` from t = 0.

        Parameters
        ----------
        signal : array_like
            The recorded values (T,).
        sample_interval_ms : float
            Time between samples (ms), > 0.
        signal_unit : str
            Unit of ``signal``: one of :data:`SIGNAL_UNITS`, or uA, fA, uV (then the values
            are rescaled to nA, pA, mV).
        command : array_like, optional
            The command (T,): mV in voltage clamp, pA in current clamp.
        mode : {"voltage_clamp", "current_clamp"}
            The clamp mode; it must match the signal (a current in voltage clamp).
        metadata : dict, optional
            Anything to keep with the recording (e.g. ``{"cm_pF": 30.0}``).

        Returns
        -------
        Recording
        """
        interval = check_positive("sample_interval_ms", sample_interval_ms)
        unit, factor = _signal_unit_argument(signal_unit)
        values = _float_vector("signal", signal) * factor
        time_ms = np.arange(values.size) * interval
        return cls(time_ms, values, unit, command, mode, {} if metadata is None else metadata)


# --------------------------------------------------------------------------- loading


def load_recording(
    path: str | os.PathLike[str],
    *,
    sweep: int = 0,
    channel: int | str | None = None,
    signal_unit: str | None = None,
    time_unit: str | None = None,
    cm_pF: float | None = None,
    sample_interval_ms: float | None = None,
) -> Recording:
    """Read one sweep of one channel of a recording file.

    Parameters
    ----------
    path : str or os.PathLike
        An Axon ``.abf`` file (ABF1 or ABF2), or a ``.csv`` / ``.csv.gz`` table.
    sweep : int
        Sweep of an ABF file (from 0). CSV files hold one sweep.
    channel : int or str, optional
        ABF: the ADC channel, by index or name; by default the first channel whose unit is a
        current when the file's command is a voltage (voltage clamp), or a voltage when the
        command is a current (current clamp). CSV: the signal column, by index or header,
        when more than one column could be it.
    signal_unit : str, optional
        The signal's real unit, overriding the file's (for files whose unit label is wrong).
    time_unit : str, optional
        CSV: unit of the time column (s, ms or us) when its header does not state it.
    cm_pF : float, optional
        Membrane capacitance (pF), stored as ``metadata["cm_pF"]`` (overrides a value from the
        file); :meth:`Recording.to_unit` uses it to convert to pA/pF.
    sample_interval_ms : float, optional
        CSV without a time column: the time between rows (ms).

    Returns
    -------
    Recording

    Raises
    ------
    FileNotFoundError
        If the file does not exist.
    ValueError
        If the file cannot be read as a recording; the message says what is wrong and how to
        fix it.

    Warns
    -----
    UserWarning
        If an ABF file's command waveform cannot be read (e.g. it was played from a stimulus
        file that is not available): the recording then has ``command=None`` and
        ``metadata["command_source"] == "missing"``.

    Notes
    -----
    CSV files need a header row. Each column's unit is stated in its header, as
    ``Time (s)``, ``Current [pA/pF]`` or ``time_ms``, ``command_mV``, ``I_nA``. Columns:
    one time column (named ``time`` or ``t``, or with a time unit), one signal column (a
    current or a voltage), and optionally one command column (a name containing ``command``,
    ``cmd``, ``stim`` or ``inj``). Separators ``,``, ``;`` or tab; with ``;`` or tab, decimal
    commas are read as such. Lines starting with ``#`` are skipped, and so is the empty last
    column a separator at the end of every line makes. A file of one column of numbers without
    a header is read when ``signal_unit`` and ``sample_interval_ms`` are given.

    An ABF recording is in voltage clamp when the recorded channel is a current (and the
    command a voltage), in current clamp when it is a voltage. Channel units are trusted, not
    channel names.
    """
    path = _recording_path(path)
    is_abf = path.name.lower().endswith(".abf")
    extra: dict[str, Any] = {}
    if cm_pF is not None:
        extra["cm_pF"] = check_positive("cm_pF", cm_pF)
    override = None if signal_unit is None else _signal_unit_argument(signal_unit)
    if is_abf:
        for name, value in (("time_unit", time_unit), ("sample_interval_ms", sample_interval_ms)):
            if value is not None:
                raise ValueError(
                    f"{name} applies to CSV files only; an ABF file states its own sampling"
                )
        return _load_abf(path, sweep, channel, override, extra)
    if not (is_integer(sweep) and sweep == 0):
        raise ValueError(f"{path.name}: a CSV file holds one sweep; sweep must be 0, got {sweep!r}")
    return _load_csv(path, channel, override, time_unit, sample_interval_ms, extra)


def _recording_path(path: object) -> Path:
    if not isinstance(path, (str, os.PathLike)):
        raise ValueError(f"path must be a file path (str or Path), got {type(path).__name__}")
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file")
    if path.is_dir():
        raise ValueError(f"{path} is a directory; give a recording file (.abf, .csv, .csv.gz)")
    name = path.name.lower()
    if not name.endswith((".abf", ".csv", ".csv.gz")):
        raise ValueError(
            f"{path}: unsupported file type {''.join(path.suffixes) or '(no extension)'!r}; "
            "expected .abf (Axon), .csv or .csv.gz (columns with unit headers); for arrays "
            "in memory use Recording.from_arrays"
        )
    return path


def _implausibility(values: np.ndarray, unit: str, factor: float = 1.0) -> str | None:
    """Why ``values * factor`` (in ``unit``) cannot be a cell's signal, or None if they can.

    See :data:`_PEAK_BOUNDS`.
    """
    peak = float(np.nanmax(np.abs(values))) * factor if values.size else 0.0
    if peak == 0 or not math.isfinite(peak):
        return None  # an all-zero (unconnected) channel says nothing about its unit
    kind = _kind(unit)
    low, high = _PEAK_BOUNDS[kind]
    if low <= peak * _to_base(unit) <= high:
        return None
    return (
        f"{'too large' if peak * _to_base(unit) > high else 'too small'} to be "
        f"{_QUANTITY[kind]} from a cell in {unit} (plausible: largest |value| between {low:g} "
        f"and {high:g} {_BASE_UNIT[kind]})"
    )


def _check_unit_label(values: np.ndarray, label: str, unit: str, factor: float, what: str) -> None:
    """Refuse a unit label that the values (as written in the file) contradict."""
    problem = _implausibility(values, unit, factor)
    if problem is not None:
        raise ValueError(
            f"{what} says its unit is {label!r}, but its values run from "
            f"{np.nanmin(values):.6g} to {np.nanmax(values):.6g}: {problem}, so the unit label "
            "is wrong. Pass signal_unit= with the real unit (e.g. signal_unit='pA') to load it"
        )


# --------------------------------------------------------------------------- ABF files


def _open_abf(path: Path) -> Any:
    # imported here: only ABF files need pyabf, and importing it edits sys.path
    import pyabf

    try:
        abf = pyabf.ABF(str(path))
    except Exception as error:  # pyabf reports bad files as struct.error, ValueError, ...
        raise ValueError(
            f"{path}: cannot be read as an ABF file ({type(error).__name__}: {error}). The file "
            "is truncated, corrupt or not an Axon Binary File: copy it again from the "
            "acquisition computer, or export the sweep to CSV"
        ) from None
    return abf


@dataclass(frozen=True)
class _AbfHeader:
    """The header fields pyabf reads but does not expose publicly, for either ABF version."""

    active_dac: int
    waveform_enable: list[int]
    waveform_source: list[int]
    telegraph_enable: list[int]  # per ADC channel, in channel order
    telegraph_cm_pF: list[float]
    interval_us: float  # between two samples of one channel


def _abf_header(abf: Any) -> _AbfHeader:
    channels = range(abf.channelCount)
    if abf.abfVersion["major"] == 1:
        header = abf._headerV1
        physical = [header.nADCSamplingSeq[c] for c in channels]  # ABF1 arrays are by ADC
        return _AbfHeader(
            active_dac=header.nActiveDACChannel,
            waveform_enable=list(header.nWaveformEnable),
            waveform_source=list(header.nWaveformSource),
            telegraph_enable=[header.nTelegraphEnable[p] for p in physical],
            telegraph_cm_pF=[header.fTelegraphMembraneCap[p] for p in physical],
            interval_us=header.fADCSampleInterval * header.nADCNumChannels,
        )
    adc, dac = abf._adcSection, abf._dacSection
    return _AbfHeader(
        active_dac=abf._protocolSection.nActiveDACChannel,
        waveform_enable=list(dac.nWaveformEnable),
        waveform_source=list(dac.nWaveformSource),
        telegraph_enable=list(adc.nTelegraphEnable[: abf.channelCount]),
        telegraph_cm_pF=list(adc.fTelegraphMembraneCap[: abf.channelCount]),
        interval_us=abf._protocolSection.fADCSequenceInterval,
    )


def _describe_channels(abf: Any) -> str:
    return ", ".join(
        f"{c} {name!r} ({unit})"
        for c, (name, unit) in enumerate(zip(abf.adcNames, abf.adcUnits, strict=True))
    )


def _channel_kind(unit_label: str) -> str | None:
    parsed = _parse_unit(unit_label)
    return None if parsed is None else _kind(parsed[0])


def _is_kind(unit_label: str, wanted: str) -> bool:
    return _channel_kind(unit_label) == wanted


#: The kinds of signal each clamp mode records.
_SIGNAL_KINDS = {VOLTAGE_CLAMP: ("current", "density"), CURRENT_CLAMP: ("voltage",)}


def _file_clamp_mode(abf: Any, header: _AbfHeader) -> str | None:
    """The clamp mode the active DAC's unit implies (None when it says nothing)."""
    if not 0 <= header.active_dac < len(abf.dacUnits):
        return None
    kind = _channel_kind(abf.dacUnits[header.active_dac])
    return {"voltage": VOLTAGE_CLAMP, "current": CURRENT_CLAMP}.get(kind)


def _choose_abf_channel(abf: Any, channel: int | str | None, clamp_mode: str | None) -> int:
    if channel is None:
        wanted = _SIGNAL_KINDS.get(clamp_mode, ("current", "density", "voltage"))
        for c, unit in enumerate(abf.adcUnits):
            if _channel_kind(unit) in wanted:
                return c
        expected = " or ".join(_QUANTITY[kind] for kind in wanted)
        raise ValueError(
            f"{Path(abf.abfFilePath).name}: no channel records {expected} (channels: "
            f"{_describe_channels(abf)}); pass channel= and signal_unit="
        )
    if is_integer(channel):
        if 0 <= channel < abf.channelCount:
            return int(channel)
    elif isinstance(channel, str):
        matches = [c for c, name in enumerate(abf.adcNames) if name.strip() == channel.strip()]
        if len(matches) == 1:
            return matches[0]
        if len(matches) > 1:
            raise ValueError(
                f"{Path(abf.abfFilePath).name}: channels {matches} are all named {channel!r}; "
                "pass the channel's index"
            )
    raise ValueError(
        f"{Path(abf.abfFilePath).name}: no channel {channel!r}; the file's channels are "
        f"{_describe_channels(abf)} (pass channel= as an index or a name)"
    )


def _read_sweep(abf: Any, sweep: int, channel: int) -> np.ndarray:
    """One sweep of one channel as float64 (as written in the file's unit)."""
    try:
        abf.setSweep(sweep, channel=channel)
        return np.array(abf.sweepY, dtype=float)
    except Exception as error:  # pyabf's checks of the sweep layout are asserts and index errors
        raise ValueError(
            f"{Path(abf.abfFilePath).name}: sweep {sweep} of channel {channel} cannot be read "
            f"({type(error).__name__}: {error}); the file's sweep table is damaged"
        ) from None


def _check_sweep(abf: Any, sweep: object) -> int:
    if is_integer(sweep) and 0 <= sweep < abf.sweepCount:
        return int(sweep)
    raise ValueError(
        f"{Path(abf.abfFilePath).name}: sweep {sweep!r} is out of range: the file has "
        f"{abf.sweepCount} sweep(s), numbered 0 to {abf.sweepCount - 1}"
    )


def _abf_signal_unit(
    abf: Any, channel: int, override: tuple[str, float] | None, clamp_mode: str | None
) -> tuple[str, float]:
    """The channel's unit (and factor to it), checked against the file's clamp mode."""
    name = Path(abf.abfFilePath).name
    label = abf.adcUnits[channel]
    where = f"{name}: channel {channel} ({abf.adcNames[channel]!r})"
    unit, factor = override or _parse_unit(label) or (None, 1.0)
    if unit is None:
        raise ValueError(
            f"{where} has the unit {label!r}, which is not a current or voltage unit; "
            "pass signal_unit= with its real unit"
        )
    if clamp_mode is not None and _mode_of(unit) != clamp_mode:
        wanted = "voltage" if clamp_mode == CURRENT_CLAMP else "current"
        others = [
            f"{c} ({abf.adcNames[c]!r})"
            for c, u in enumerate(abf.adcUnits)
            if _channel_kind(u) in _SIGNAL_KINDS[clamp_mode]
        ]
        raise ValueError(
            f"{where} records {_QUANTITY[_kind(unit)]} ({unit}), but the file is a "
            f"{clamp_mode.replace('_', '-')} recording (its command is in "
            f"{_command_quantity(clamp_mode)}); choose a {wanted} channel"
            + (f": {', '.join(others)}" if others else "")
        )
    return unit, factor


#: Unit of a Recording's command, and what it is, by clamp mode.
_COMMAND_UNIT = {VOLTAGE_CLAMP: "mV", CURRENT_CLAMP: "pA"}


def _command_quantity(mode: str) -> str:
    return "mV: a voltage" if mode == VOLTAGE_CLAMP else "pA: a current"


def _load_abf(
    path: Path,
    sweep: object,
    channel: int | str | None,
    override: tuple[str, float] | None,
    extra: dict[str, Any],
) -> Recording:
    abf = _open_abf(path)
    sweep = _check_sweep(abf, sweep)
    header = _abf_header(abf)
    clamp_mode = _file_clamp_mode(abf, header)
    chosen = _choose_abf_channel(abf, channel, clamp_mode)
    unit, factor = _abf_signal_unit(abf, chosen, override, clamp_mode)
    what = f"{path.name}: channel {chosen} ({abf.adcNames[chosen]!r})"
    if override is None:
        _check_unit_label(abf.data[chosen], abf.adcUnits[chosen], unit, factor, what)
    signal = _read_sweep(abf, sweep, chosen) * factor
    mode = _mode_of(unit)
    command, command_info = _abf_command(abf, header, sweep, chosen, mode, signal.size)
    interval_ms = header.interval_us / 1e3 if header.interval_us > 0 else 1e3 / abf.sampleRate
    metadata = {
        "source": str(path),
        "format": "ABF",
        "abf_version": abf.abfVersionString,
        "protocol": None if abf.protocol in ("None", "") else abf.protocol,
        "acquisition": _ACQUISITION_MODES.get(abf.nOperationMode, f"mode {abf.nOperationMode}"),
        "sweep": sweep,
        "sweep_count": abf.sweepCount,
        "channel": chosen,
        "channel_name": abf.adcNames[chosen],
        "channel_unit": abf.adcUnits[chosen],
        "sample_rate_Hz": 1e3 / interval_ms,
        **command_info,
        **_telegraphed_capacitance(header, chosen),
        **extra,
    }
    time_ms = np.arange(signal.size) * interval_ms
    try:
        return Recording(time_ms, signal, unit, command, mode, metadata)
    except ValueError as error:
        raise ValueError(f"{what}, sweep {sweep}: {error}") from None


# Telegraphed capacitances below this are the telegraph line at rest (compensation off), not a
# cell's capacitance: the smallest cells patched have a few pF.
_MIN_TELEGRAPHED_CM_PF = 1.0


def _telegraphed_capacitance(header: _AbfHeader, channel: int) -> dict[str, float]:
    """``{"cm_pF": ...}`` when the amplifier telegraphed the whole-cell capacitance."""
    if header.telegraph_enable[channel] != 1:
        return {}
    cm = float(header.telegraph_cm_pF[channel])
    return {"cm_pF": cm} if cm >= _MIN_TELEGRAPHED_CM_PF else {}


# The command of an ABF sweep. pyabf rebuilds the DAC waveform from the epoch table (sweepC);
# it is NaN when it was played from a stimulus file that is not at hand, and flat where a
# pulse train's period or width is missing from the header. Then a recorded channel in the
# command's unit stands in, and failing that the recording has no command.


def _command_dac(abf: Any, header: _AbfHeader, channel: int, mode: str) -> int | None:
    """The DAC commanding ``channel``: its own (pyabf's pairing), else the active one."""
    wanted = "voltage" if mode == VOLTAGE_CLAMP else "current"
    for dac in (channel, header.active_dac):
        if 0 <= dac < len(abf.dacUnits) and _is_kind(abf.dacUnits[dac], wanted):
            return dac
    return None


def _waveform_source(abf: Any, header: _AbfHeader, dac: int) -> str:
    # the same decision as pyabf.stimulus.Stimulus.stimulusWaveform
    lengths = getattr(getattr(abf, "_synchArraySection", None), "lLength", [])
    if abf.sweepCount > 1 and len(set(lengths)) > 1:
        return "holding"  # variable-length (event-driven) sweeps play no waveform
    if dac >= len(header.waveform_enable) or not header.waveform_enable[dac]:
        return "holding"
    return {0: "holding", 1: "epochs", 2: "stimulus file"}.get(
        header.waveform_source[dac], "unknown"
    )


def _abf_command(
    abf: Any, header: _AbfHeader, sweep: int, channel: int, mode: str, n_samples: int
) -> tuple[np.ndarray | None, dict[str, Any]]:
    dac = _command_dac(abf, header, channel, mode)
    if dac is None:
        reason = f"no DAC output is in {_COMMAND_UNIT[mode]}"
    else:
        command, reason = _dac_command(abf, header, dac, sweep, mode, n_samples)
        if reason is None:
            unit, factor = _parse_unit(abf.dacUnits[dac])
            return command, {
                "command_source": _waveform_source(abf, header, dac),
                "command_dac": dac,
                "command_name": abf.dacNames[dac],
                # in the command's unit (mV / pA), like the command
                "command_holding": float(abf.holdingCommand[dac]) * factor * _to_base(unit),
            }
    recorded = _recorded_command(abf, sweep, channel, mode)
    if recorded is not None:
        command, source = recorded
        return command, {"command_source": source, "command_note": reason}
    warnings.warn(
        f"{Path(abf.abfFilePath).name}, sweep {sweep}: the command could not be read "
        f"({reason}), so the recording has command=None; it must come from a protocol file "
        "(sbi_twins.load_protocol) that matches the recording",
        UserWarning,
        stacklevel=4,
    )
    return None, {"command_source": "missing", "command_note": reason}


def _dac_command(
    abf: Any, header: _AbfHeader, dac: int, sweep: int, mode: str, n_samples: int
) -> tuple[np.ndarray | None, str | None]:
    """The command of one DAC in mV / pA, or None and why it cannot be trusted."""
    import pyabf.stimulus

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            waveform = pyabf.stimulus.Stimulus(abf, dac).stimulusWaveform(sweep)
            waveform = np.asarray(waveform, dtype=float)[:n_samples]
        except Exception as error:  # pyabf's stimulus code fails on some headers
            return None, f"pyabf could not rebuild it: {type(error).__name__}: {error}"
    if waveform.size < n_samples:
        return None, f"pyabf rebuilt {waveform.size} samples for a sweep of {n_samples}"
    nan = np.isnan(waveform)
    if nan.all():
        return None, _missing_waveform_reason(abf, header, dac, caught)
    if nan.any():
        return None, f"{int(nan.sum())} of its samples are NaN (an epoch pyabf cannot draw)"
    if _waveform_source(abf, header, dac) == "epochs":
        import pyabf.waveform

        epochs = pyabf.waveform.EpochTable(abf, dac).epochWaveformsBySweep[sweep]
        reason = _flat_train_reason(epochs)
        if reason is not None:
            return None, reason
    unit, factor = _parse_unit(abf.dacUnits[dac])  # a voltage or a current: see _command_dac
    command = waveform * factor * _to_base(unit)
    peak = float(np.abs(command).max())
    if peak > _PEAK_BOUNDS[_kind(unit)][1]:
        return None, (
            f"DAC {dac} ({abf.dacNames[dac]!r}) reaches {peak:g} {_COMMAND_UNIT[mode]}, "
            "which is no clamp command"
        )
    return command, None


def _missing_waveform_reason(abf: Any, header: _AbfHeader, dac: int, caught: list) -> str:
    if _waveform_source(abf, header, dac) != "stimulus file":
        return "pyabf returned no values for it"
    stimulus = next(
        (
            match.group(1).strip()
            for warning in caught
            if (match := re.search(r"Path in the ABF header: (.*)", str(warning.message)))
        ),
        "",
    )
    if not stimulus:
        return "it was played from a stimulus file that pyabf cannot find"
    name = PureWindowsPath(stimulus).name  # the header holds the acquisition PC's path
    return (
        f"it was played from the stimulus file '{name}', which is not next to the ABF file; "
        "put it there to read the command"
    )


def _flat_train_reason(epochs: Any) -> str | None:
    """Why a rebuilt waveform misses a pulse train, or None.

    pyabf draws a train epoch (pulse, triangle, cosine, biphasic) only from its period and
    width; where the header it reads has none (0), the epoch comes out flat although its level
    differs from the one before.
    """
    for i, kind in enumerate(epochs.types):
        if kind not in ("Pulse", "Tri", "Cos", "BiPhsc") or epochs.p2s[i] <= epochs.p1s[i]:
            continue
        before = epochs.levels[i - 1] if i else epochs.levels[i]
        needs_width = kind != "Cos"
        missing = epochs.pulsePeriods[i] <= 0 or (needs_width and epochs.pulseWidths[i] <= 0)
        if missing and epochs.levels[i] != before:
            return (
                f"its {kind} epoch (samples {epochs.p1s[i]} to {epochs.p2s[i]}, level "
                f"{epochs.levels[i]:g}) has no pulse period or width in the header, so pyabf "
                "would draw it flat"
            )
    return None


def _recorded_command(
    abf: Any, sweep: int, channel: int, mode: str
) -> tuple[np.ndarray, str] | None:
    """A recorded channel in the command's quantity (mV in VC, pA in CC), if the file has one."""
    wanted = "voltage" if mode == VOLTAGE_CLAMP else "current"
    for c, label in enumerate(abf.adcUnits):
        if c == channel or not _is_kind(label, wanted):
            continue
        unit, factor = _parse_unit(label)
        command = _read_sweep(abf, sweep, c) * factor * _to_base(unit)
        if _implausibility(command, _COMMAND_UNIT[mode]) is None:
            return command, f"recorded channel {c} ({abf.adcNames[c]!r})"
    return None


# --------------------------------------------------------------------------- CSV files


@dataclass(frozen=True)
class _Table:
    """A CSV file split into cells: the header, the rows and each row's line number."""

    header: list[str]
    rows: list[list[str]]
    lines: list[int]
    separator: str | None
    decimal: str


_SEPARATORS = ("\t", ";", ",")
_DECIMAL_COMMA_NUMBER = re.compile(r"[+-]?\d*,\d+([eE][+-]?\d+)?")
_MISSING_CELLS = {"", "nan", "na", "n/a", "null", "none", "-"}


def _read_text(path: Path) -> str:
    try:
        if path.name.lower().endswith(".gz"):
            with gzip.open(path) as file:
                raw = file.read()
        else:
            raw = path.read_bytes()
    except (OSError, EOFError, zlib.error) as error:
        raise ValueError(f"{path}: not a valid gzip file ({error}); compress it again") from None
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        return raw.decode("latin-1")  # e.g. a Windows export with a micro sign in a header


def _guess_separator(lines: list[str]) -> str | None:
    """The first of tab, ';', ',' that gives every sampled line the same number (> 1) of fields.

    Tab and ';' come first: a line holding one on every line is separated by it, whereas
    commas may be decimal marks (European exports) that happen to be equally many per line.
    """
    sample = lines[:50]
    for separator in _SEPARATORS:
        counts = {line.count(separator) for line in sample}
        if len(counts) == 1 and counts.pop() > 0:
            return separator
    # no consistent choice: take the header's, so the row with a wrong field count is named
    in_header = [(lines[0].count(s), s) for s in _SEPARATORS if s in lines[0]]
    return max(in_header)[1] if in_header else None


def _split(line: str, separator: str | None) -> list[str]:
    cells = line.split(separator) if separator else [line]
    return [cell.strip().strip('"').strip() for cell in cells]


def _is_number(text: str) -> bool:
    try:
        float(text.replace(",", "."))
    except ValueError:
        return False
    return True


def _guess_decimal(path: Path, rows: list[list[str]], separator: str | None) -> str:
    if separator == ",":
        return "."
    cells = [cell for row in rows[:200] for cell in row]
    comma = next((c for c in cells if _DECIMAL_COMMA_NUMBER.fullmatch(c)), None)
    point = next((c for c in cells if "." in c and _is_number(c)), None)
    if comma is not None and point is not None:
        raise ValueError(
            f"{path}: numbers mix decimal commas ({comma!r}) and decimal points ({point!r}); "
            "write every number with the same decimal mark (and no thousands separators)"
        )
    return "," if comma is not None else "."


def _read_table(path: Path, headerless: bool = False) -> _Table:
    """The file's cells. With ``headerless``, a file of one column of numbers and no header
    is read too (its column is named "signal"; the caller knows its unit and sampling).
    """
    numbered = [
        (n, line)
        for n, line in enumerate(_read_text(path).splitlines(), start=1)
        if line.strip() and not line.lstrip().startswith("#")
    ]
    if not numbered:
        raise ValueError(f"{path}: the file is empty; expected a header row and data rows")
    separator = _guess_separator([line for _, line in numbered])
    header = _split(numbered[0][1], separator)
    body = numbered[1:]
    if all(_is_number(cell) for cell in header):
        if not (headerless and len(header) == 1):
            raise ValueError(_no_header_message(path, numbered[0][0], len(header)))
        header, body = ["signal"], numbered
    cells = [_split(line, separator) for _, line in body]
    header, cells = _without_empty_trailing_columns(header, cells)
    rows, lines = [], []
    for (n, _), row in zip(body, cells, strict=True):
        if len(row) != len(header):
            raise ValueError(
                f"{path}: line {n} has {len(row)} field(s), the header has {len(header)}"
                + (
                    "; if the numbers use decimal commas, separate the columns with ';'"
                    if separator == ","
                    else ""
                )
            )
        rows.append(row)
        lines.append(n)
    if not rows:
        raise ValueError(f"{path}: the file has a header but no data rows")
    if len(rows) == 1:
        raise ValueError(
            f"{path}: the file has only one data row; a recording needs at least 2 samples"
        )
    return _Table(header, rows, lines, separator, _guess_decimal(path, rows, separator))


def _no_header_message(path: Path, line: int, columns: int) -> str:
    message = (
        f"{path}: line {line} is data, not a header; the first row must name the columns "
        "with their units, e.g. 'time_ms,I (pA)'"
    )
    if columns == 1:
        message += (
            ". A single column of values without a header is read when its unit and sample "
            "interval are given: signal_unit= and sample_interval_ms= (sbi-twins fit: --unit "
            "and --sample-interval)"
        )
    return message


def _without_empty_trailing_columns(
    header: list[str], rows: list[list[str]]
) -> tuple[list[str], list[list[str]]]:
    """The cells without the empty last column a separator at the end of every line makes
    (spreadsheet exports): dropped only when the column is empty on every line, header included
    (or the header has no field there at all).
    """
    while rows and all(len(row) == len(header) + 1 and row[-1] == "" for row in rows):
        rows = [row[:-1] for row in rows]  # the data lines end with a separator, the header not
    while (
        len(header) > 1
        and header[-1] == ""
        and all(len(row) == len(header) - 1 or row[-1:] == [""] for row in rows)
    ):
        header = header[:-1]
        rows = [row[: len(header)] if len(row) == len(header) + 1 else row for row in rows]
    return header, rows


def _parses(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _numeric_column(path: Path, table: _Table, j: int) -> np.ndarray:
    """Column ``j`` as floats; a cell that is not a finite number is an error naming its line."""
    cells = [row[j] for row in table.rows]
    texts = [c.replace(",", ".") for c in cells] if table.decimal == "," else cells
    try:
        values = np.array(texts, dtype=str).astype(float)
    except ValueError:
        k = next((k for k, text in enumerate(texts) if not _parses(text)), None)
        if k is not None:
            raise _cell_error(path, table, j, k, 1) from None
        values = np.array([float(text) for text in texts])  # forms only Python reads
    bad = np.flatnonzero(~np.isfinite(values))
    if bad.size:
        raise _cell_error(path, table, j, int(bad[0]), bad.size)
    return values


def _cell_error(path: Path, table: _Table, j: int, k: int, count: int) -> ValueError:
    cell = table.rows[k][j]
    if cell.lower() in _MISSING_CELLS:
        problem = "is empty" if cell == "" else f"is missing ({cell!r})"
    elif not _parses(cell.replace(",", ".") if table.decimal == "," else cell):
        problem = f"is not a number: {cell!r}"
    else:
        problem = f"is not finite: {cell!r}"
    others = f" ({count - 1} more such cells follow)" if count > 1 else ""
    return ValueError(
        f"{path}: line {table.lines[k]}, column {table.header[j]!r} {problem}{others}; every "
        "cell must be a finite number: remove or fill the gaps"
    )


_BRACKETED = re.compile(r"^(?P<name>.*?)\s*[(\[](?P<unit>[^)\]]*)[)\]]\s*$")
_SUFFIX_UNITS = sorted([*_UNIT_SPELLINGS, *_MS_PER_TIME_UNIT], key=len, reverse=True)
_COMMAND_WORDS = ("command", "cmd", "stim", "inj")


def _split_header(text: str) -> tuple[str, str | None]:
    """(name, unit or None) of a header such as "Time (s)", "I [pA/pF]" or "command_mV"."""
    if match := _BRACKETED.match(text):
        return match["name"].strip(), _normalise_unit_text(match["unit"])
    normalised = _normalise_unit_text(text)
    for unit in _SUFFIX_UNITS:
        if normalised.endswith("_" + unit) and len(normalised) > len(unit) + 1:
            return normalised[: -len(unit) - 1], unit
    return text, None


def _role(name: str, unit: str | None) -> str:
    lowered = name.lower()
    if unit in _MS_PER_TIME_UNIT or lowered in ("time", "t", "times"):
        return "time"
    if any(word in lowered for word in _COMMAND_WORDS):
        return "command"
    return "signal"


def _columns_text(table: _Table) -> str:
    return ", ".join(repr(h) for h in table.header)


def _one_column(path: Path, table: _Table, indices: list[int], role: str) -> int | None:
    if len(indices) > 1:
        names = ", ".join(repr(table.header[j]) for j in indices)
        raise ValueError(
            f"{path}: ambiguous columns: {names} could each be the {role} column; keep one "
            f"(columns found: {_columns_text(table)})"
        )
    return indices[0] if indices else None


def _signal_column(path: Path, table: _Table, roles: list[str], channel: int | str | None) -> int:
    expected = (
        "expected one time column (e.g. 'time_ms' or 'Time (s)'), one signal column (a "
        "current or a voltage, e.g. 'I (pA/pF)' or 'Voltage (mV)') and optionally one "
        "command column (e.g. 'command_mV')"
    )
    if channel is not None:
        by_name = [j for j, h in enumerate(table.header) if channel in (h, _split_header(h)[0])]
        chosen = int(channel) if is_integer(channel) else (by_name[0] if by_name else None)
        if chosen is None or not 0 <= chosen < len(table.header) or len(by_name) > 1:
            raise ValueError(
                f"{path}: no single column {channel!r}; columns found: {_columns_text(table)}"
            )
        if roles[chosen] != "signal":
            raise ValueError(
                f"{path}: column {table.header[chosen]!r} is the {roles[chosen]} column, not a "
                f"signal; {expected}"
            )
        return chosen
    candidates = [j for j, role in enumerate(roles) if role == "signal"]
    if not candidates:
        raise ValueError(
            f"{path}: no signal column; columns found: {_columns_text(table)}; {expected}"
        )
    if len(candidates) > 1:
        names = ", ".join(repr(table.header[j]) for j in candidates)
        raise ValueError(
            f"{path}: ambiguous columns: {names} could each be the signal; pass channel= with "
            f"the one to read (columns found: {_columns_text(table)}; {expected})"
        )
    return candidates[0]


def _spot_unnamed_command(path: Path, table: _Table, roles: list[str]) -> None:
    """A current and a voltage column, neither named a command: the one that holds its value
    from sample to sample is the programmed command (a voltage step protocol, or a zero current
    in current clamp), the other the measured signal, e.g. `Voltage (V)` and `Current (pA/pF)`
    exported together (Clark et al. 2023's files). Marks it in ``roles``; no change otherwise.
    """
    signals = [j for j, role in enumerate(roles) if role == "signal"]
    units = [_split_header(table.header[j])[1] for j in signals]
    if len(signals) != 2 or None in units or not all(u in _UNIT_SPELLINGS for u in units):
        return
    kinds = {_kind(_UNIT_SPELLINGS[u][0]) for u in units}
    if "voltage" not in kinds or len(kinds) != 2:
        return
    held = [np.mean(np.diff(_numeric_column(path, table, j)) == 0) for j in signals]
    if min(held) < 0.5 <= max(held):  # exactly one column is piecewise constant
        roles[signals[int(np.argmax(held))]] = "command"


def _csv_time(
    path: Path,
    table: _Table,
    j: int | None,
    time_unit: str | None,
    sample_interval_ms: float | None,
    n_rows: int,
) -> tuple[np.ndarray, dict[str, Any]]:
    if j is None:
        if time_unit is not None:
            raise ValueError(f"{path}: time_unit= was given but the file has no time column")
        if sample_interval_ms is None:
            raise ValueError(
                f"{path}: no time column (columns found: {_columns_text(table)}); add one such "
                "as 'time_ms' or 'Time (s)', or pass sample_interval_ms="
            )
        interval = check_positive("sample_interval_ms", sample_interval_ms)
        return np.arange(n_rows) * interval, {}
    if sample_interval_ms is not None:
        raise ValueError(
            f"{path}: the file has a time column ({table.header[j]!r}); pass sample_interval_ms= "
            "only for files without one"
        )
    if time_unit is not None and _normalise_unit_text(time_unit) not in _MS_PER_TIME_UNIT:
        raise ValueError(
            f"time_unit must be one of {', '.join(_MS_PER_TIME_UNIT)}, got {time_unit!r}"
        )
    unit = time_unit if time_unit is not None else _split_header(table.header[j])[1]
    if unit is None or _normalise_unit_text(unit) not in _MS_PER_TIME_UNIT:
        stated = "states no unit" if unit is None else f"has the unit {unit!r}"
        raise ValueError(
            f"{path}: the time column {table.header[j]!r} {stated}; name it like 'time_ms' or "
            f"'Time (s)', or pass time_unit= ({', '.join(_MS_PER_TIME_UNIT)})"
        )
    time_ms = _numeric_column(path, table, j) * _MS_PER_TIME_UNIT[_normalise_unit_text(unit)]
    offset = float(time_ms[0])
    return time_ms - offset, ({"time_offset_ms": offset} if offset else {})


def _csv_signal_unit(
    path: Path, table: _Table, j: int, override: tuple[str, float] | None
) -> tuple[str, float]:
    if override is not None:
        return override
    stated = _split_header(table.header[j])[1]
    parsed = _parse_unit(stated)
    if parsed is None:
        problem = "states no unit" if stated is None else f"has the unknown unit {stated!r}"
        raise ValueError(
            f"{path}: the signal column {table.header[j]!r} {problem}; name it like 'I (pA)', "
            f"'I_pA' or 'Voltage (mV)' (units: {', '.join(SIGNAL_UNITS)}), or pass signal_unit="
        )
    return parsed


def _csv_command(path: Path, table: _Table, j: int | None, mode: str) -> np.ndarray | None:
    if j is None:
        return None
    wanted = "voltage" if mode == VOLTAGE_CLAMP else "current"
    stated = _split_header(table.header[j])[1]
    parsed = _parse_unit(stated)
    if wanted == "current" and parsed is not None and _kind(parsed[0]) == "density":
        values = _numeric_column(path, table, j)
        if not values.any():  # no current injected: zero in any unit
            return values
    if parsed is None or _kind(parsed[0]) != wanted:
        example = "'command_mV' or 'Command (mV)'" if wanted == "voltage" else "'I_stim (pA)'"
        raise ValueError(
            f"{path}: the command column {table.header[j]!r} must be in {wanted} units in a "
            f"{mode.replace('_', '-')} recording ({'mV' if wanted == 'voltage' else 'pA'}), got "
            f"{stated!r}; name it like {example}"
        )
    unit, factor = parsed
    return _numeric_column(path, table, j) * factor * _to_base(unit)


def _load_csv(
    path: Path,
    channel: int | str | None,
    override: tuple[str, float] | None,
    time_unit: str | None,
    sample_interval_ms: float | None,
    extra: dict[str, Any],
) -> Recording:
    table = _read_table(path, headerless=override is not None and sample_interval_ms is not None)
    roles = [_role(*_split_header(h)) for h in table.header]
    if channel is not None and not (is_integer(channel) or isinstance(channel, str)):
        raise ValueError(f"channel must be a column index or name, got {channel!r}")
    if channel is None:
        _spot_unnamed_command(path, table, roles)
    signal_j = _signal_column(path, table, roles, channel)
    time_j = _one_column(path, table, [j for j, r in enumerate(roles) if r == "time"], "time")
    command_j = _one_column(
        path, table, [j for j, r in enumerate(roles) if r == "command"], "command"
    )
    unit, factor = _csv_signal_unit(path, table, signal_j, override)
    values = _numeric_column(path, table, signal_j)
    if override is None:
        label = _split_header(table.header[signal_j])[1]
        what = f"{path}: column {table.header[signal_j]!r}"
        _check_unit_label(values, label, unit, factor, what)
    signal = values * factor
    mode = _mode_of(unit)
    time_ms, time_info = _csv_time(
        path, table, time_j, time_unit, sample_interval_ms, len(table.rows)
    )
    command = _csv_command(path, table, command_j, mode)
    metadata = {
        "source": str(path),
        "format": "CSV",
        "columns": list(table.header),
        "signal_column": table.header[signal_j],
        "time_column": None if time_j is None else table.header[time_j],
        "command_column": None if command_j is None else table.header[command_j],
        "separator": table.separator,
        "decimal": table.decimal,
        **time_info,
        **extra,
    }
    interval = time_ms[-1] / (time_ms.size - 1)
    if interval > 0:
        metadata["sample_rate_Hz"] = float(1e3 / interval)
    try:
        return Recording(time_ms, signal, unit, command, mode, metadata)
    except ValueError as error:
        raise ValueError(f"{path}: {error}") from None
