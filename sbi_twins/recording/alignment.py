"""Putting a recording onto a protocol's sample grid: command check, units, resampling.

An estimator reads a current density (pA/pF) sampled on ``protocol.times(sample_interval_ms)``.
A recording from the rig differs in ways that are easy to fix and easy to get silently wrong, so
:func:`onto_protocol` fixes what is safe and says what it did, and refuses the rest:

* **Mode**: only voltage-clamp recordings can be fitted to a voltage-clamp protocol.
* **Command**: the recorded command must be the protocol's. It is compared sample by sample,
  away from segment edges (the digitised command and the file's clock can differ by a sample
  there), within ``command_tolerance_mV``; a recording whose command is missing (played from
  a stimulus file the recording does not hold) cannot be checked, which is said.
* **Units**: pA, nA and A are divided by the membrane capacitance (from the argument or the
  recording's metadata); pA/pF is taken as it is.
* **Grid**: a recording at the estimator's interval and length is used as it is. Another
  interval is resampled by linear interpolation; a recording that ends less than one of its
  own sample intervals before the protocol does (a recording at 0.2 ms of a protocol whose
  duration is an odd multiple of 0.1 ms) holds its last value for that sliver; samples after
  the protocol's end are ignored. A recording that ends earlier is refused.
"""

from __future__ import annotations

import numpy as np

from .._util import check_number, check_positive
from ..protocol import Protocol
from .io import VOLTAGE_CLAMP, Recording

#: Default tolerance (mV) of the command check: far above the DAC's resolution, far below any
#: step of a protocol.
COMMAND_TOLERANCE_MV = 1.0


def command_differences(
    recording: Recording, protocol: Protocol, tolerance_mV: float = COMMAND_TOLERANCE_MV
) -> list[str]:
    """Where a recording's command differs from a protocol's, one line per segment.

    Samples within two sample intervals of a segment edge are not compared. Returns an empty
    list when the command matches (or when the recording has no command: check
    ``recording.command_mV is None`` to tell).
    """
    check_positive("tolerance_mV", tolerance_mV)
    command = recording.command_mV
    if command is None:
        return []
    t = recording.time_ms
    inside = t <= protocol.duration_ms
    edges = protocol.edges_ms
    guard = 2.0 * recording.sample_interval_ms
    near_edge = np.abs(t[:, None] - edges[None, :]).min(axis=1) <= guard
    compared = inside & ~near_edge
    difference = np.where(compared, np.abs(command - protocol.voltage(t)), 0.0)
    segment = protocol.segment_index(t)
    lines = []
    for k in np.unique(segment[difference > tolerance_mV]):
        in_segment = np.flatnonzero((segment == k) & compared)
        worst = in_segment[np.argmax(difference[in_segment])]
        lines.append(
            f"segment {k + 1} ({edges[k]:g}-{edges[k + 1]:g} ms, {protocol.segments[k].kind}): "
            f"recorded {command[worst]:.2f} mV where the protocol has "
            f"{protocol.voltage(t[worst]):.2f} mV at t = {t[worst]:g} ms"
        )
    return lines


def onto_protocol(
    recording: Recording,
    protocol: Protocol,
    sample_interval_ms: float,
    *,
    cm_pF: float | None = None,
    check_command: bool = True,
    command_tolerance_mV: float = COMMAND_TOLERANCE_MV,
) -> tuple[np.ndarray, list[str]]:
    """A voltage-clamp recording as a current density on ``protocol.times(sample_interval_ms)``.

    Parameters
    ----------
    recording : Recording
        A voltage-clamp recording that starts with the protocol.
    protocol : Protocol
        The protocol it was recorded with.
    sample_interval_ms : float
        The grid wanted (the estimator's).
    cm_pF : float, optional
        Membrane capacitance, for a signal in pA, nA or A (default: the recording's metadata).
    check_command : bool
        Compare the recorded command with the protocol (refuse a mismatch).
    command_tolerance_mV : float
        Largest difference tolerated by the command check.

    Returns
    -------
    trace : numpy.ndarray
        (T,) pA/pF on the protocol's grid.
    notes : list of str
        What was done (unit conversion, resampling, ...), for the user to read.

    Raises
    ------
    ValueError
        A current-clamp recording, a command that is not the protocol's, a missing
        capacitance, or a recording shorter than the protocol.
    """
    check_positive("sample_interval_ms", sample_interval_ms)
    check_number("command_tolerance_mV", command_tolerance_mV, minimum=0.0, inclusive=False)
    if recording.mode != VOLTAGE_CLAMP:
        raise ValueError(
            f"{recording!r} is a current-clamp recording; this estimator reads voltage-clamp "
            f"recordings made with protocol {protocol.name!r}"
        )
    notes = []
    if check_command:
        differences = command_differences(recording, protocol, command_tolerance_mV)
        if differences:
            raise ValueError(
                f"the recording's command is not protocol {protocol.name!r} (tolerance "
                f"{command_tolerance_mV:g} mV):\n  " + "\n  ".join(differences[:5])
                + ("\n  ..." if len(differences) > 5 else "")
                + "\nFit it with an estimator for its own protocol, or pass check_command=False "
                "if the protocol is right and the recorded command is not"
            )
        if recording.command_mV is None:
            notes.append(
                "the recording holds no command waveform, so it could not be checked against "
                f"protocol {protocol.name!r}: make sure it was recorded with it"
            )
        else:
            notes.append(f"command checked against protocol {protocol.name!r}")
    if recording.signal_unit != "pA/pF":
        recording = recording.to_unit("pA/pF", cm_pF=cm_pF)
        notes.append(
            f"divided the current by Cm = {recording.metadata['cm_pF']:g} pF to get pA/pF"
        )
    return _onto_grid(recording, protocol, sample_interval_ms, notes), notes


def _onto_grid(
    recording: Recording, protocol: Protocol, sample_interval_ms: float, notes: list[str]
) -> np.ndarray:
    grid = protocol.times(sample_interval_ms)
    t, own = recording.time_ms, recording.sample_interval_ms
    missing = grid[-1] - t[-1]
    if missing > own * (1 + 1e-6):
        raise ValueError(
            f"the recording covers {t[-1]:g} ms, protocol {protocol.name!r} lasts "
            f"{grid[-1]:g} ms: it ends {missing:g} ms early (is it cut short, or sampled at "
            "another interval than its file says?)"
        )
    if t.size == grid.size and np.allclose(t, grid, rtol=0, atol=1e-6 * own):
        return np.array(recording.signal)
    if t[-1] > grid[-1] + 1e-6 * own:
        notes.append(f"ignored the {t[-1] - grid[-1]:g} ms recorded after the protocol's end")
    if not np.isclose(own, sample_interval_ms):
        notes.append(
            f"resampled from {own:g} ms to {sample_interval_ms:g} ms by linear interpolation"
        )
    if missing > 1e-6 * own:
        notes.append(f"held the last sample over the final {missing:g} ms of the protocol")
    return np.interp(grid, t, recording.signal)  # holds the end value past the last sample
