"""Policies shared by every layer: argument checks, atomic writes, hashing, the package version.

This module sits at the bottom of the package (it imports nothing from it), so that each policy
has one implementation with one tolerance and one wording of its error messages.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Callable
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import numpy as np

#: Prefix of recording-model (amplifier) parameters in parameter tables, e.g.
#: ``recording.rs_MOhm`` (:mod:`sbi_twins.recording`). They describe the recording, not the cell:
#: the cell simulations of the engine ignore such columns, so that a prior's or a posterior's
#: draws can be passed to them whole.
RECORDING_PREFIX = "recording."

#: Relative tolerance of "is a whole multiple of" checks (durations, intervals, windows in ms).
MULTIPLE_RTOL = 1e-9


def package_version() -> str:
    """The installed sbi-twins version (``"0+unknown"`` in an uninstalled source checkout)."""
    try:
        return version("sbi-twins")
    except PackageNotFoundError:
        return "0+unknown"


def is_integer(value: object) -> bool:
    """True for Python and NumPy integers (not for bools)."""
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def is_number(value: object) -> bool:
    """True for Python and NumPy integers and floats (not for bools)."""
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)


def check_number(
    name: str, value: object, *, minimum: float | None = None, inclusive: bool = True
) -> float:
    """Return ``value`` as a float if it is a finite number (at or above ``minimum``).

    Parameters
    ----------
    name : str
        The argument's name, for the message.
    value : object
        What was given.
    minimum : float, optional
        The lowest allowed value.
    inclusive : bool
        Whether ``minimum`` itself is allowed (False: the value must exceed it).

    Raises
    ------
    ValueError
        ``"<name> must be a finite number > 0, got ..."`` and the like.
    """
    bound = "" if minimum is None else f" {'>=' if inclusive else '>'} {minimum:g}"
    if not is_number(value) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number{bound}, got {value!r}")
    if minimum is not None and (value < minimum or (not inclusive and value == minimum)):
        raise ValueError(f"{name} must be a finite number{bound}, got {value!r}")
    return float(value)


def check_positive(name: str, value: object) -> float:
    """Return ``value`` as a float if it is a finite number > 0; else raise ValueError."""
    return check_number(name, value, minimum=0.0, inclusive=False)


def check_integer(name: str, value: object, *, minimum: int = 0, what: str = "") -> int:
    """Return ``value`` as an int if it is an integer >= ``minimum``; else raise ValueError.

    ``what`` says what the number counts, e.g. ``"cells"``, for the message.
    """
    if not is_integer(value) or value < minimum:
        counts = f" ({what})" if what else ""
        raise ValueError(f"{name} must be an integer >= {minimum}{counts}, got {value!r}")
    return int(value)


def check_choice(name: str, value: object, choices: tuple[str, ...]) -> str:
    """Return ``value`` if it is one of ``choices``; else raise ValueError listing them."""
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, choices))}, got {value!r}")
    return str(value)


def whole_multiple(
    value: float, step: float, *, name: str, step_name: str, hint: str = ""
) -> int:
    """The number of ``step`` in ``value``, which must be a whole multiple of it.

    Both are in the same unit (ms throughout the package); the tolerance is
    :data:`MULTIPLE_RTOL` relative to the count.

    Raises
    ------
    ValueError
        ``"<name> (v) must be a whole multiple of <step_name> (s)"``, then ``hint``.
    """
    ratio = value / step
    count = round(ratio)
    if abs(ratio - count) > MULTIPLE_RTOL * max(1.0, abs(ratio)):
        tail = f"; {hint}" if hint else ""
        raise ValueError(
            f"{name} ({value:g}) must be a whole multiple of {step_name} ({step:g}){tail}"
        )
    return int(count)


def atomic_write(path: str | os.PathLike, write: Callable[[Path], Any]) -> None:
    """Write a file so that readers see either its old or its whole new content.

    ``write(tmp)`` writes the content to a temporary path next to ``path`` (unique per process),
    which is then renamed over ``path`` (an atomic step on POSIX file systems). A failed write
    leaves ``path`` untouched and removes the temporary file.
    """
    path = Path(path)
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` atomically (see :func:`atomic_write`)."""
    atomic_write(path, lambda tmp: tmp.write_text(text))


def atomic_write_json(path: str | os.PathLike, data: Any) -> None:
    """Write ``data`` as indented, key-sorted JSON to ``path`` atomically."""
    atomic_write_text(path, json.dumps(data, indent=1, sort_keys=True))


def file_sha256(path: str | os.PathLike) -> str:
    """The sha256 hex digest of a file's content (read in blocks, never whole into memory)."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def physical_memory_bytes() -> int | None:
    """Total physical memory of this machine in bytes, or None where the OS does not say."""
    try:
        return int(os.sysconf("SC_PAGE_SIZE")) * int(os.sysconf("SC_PHYS_PAGES"))
    except (AttributeError, ValueError, OSError):
        return None


def format_bytes(count: float) -> str:
    """A byte count for messages: ``"512 B"``, ``"3.4 MB"``, ``"1.2 GB"``, ``"180 TB"``."""
    for unit, size in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if count >= size:
            return f"{count / size:.3g} {unit}"
    return f"{count:.0f} B"


def refuse_directory(name_or_path: str | os.PathLike, what: str) -> None:
    """Raise IsADirectoryError if ``name_or_path`` is an existing directory.

    For loaders whose "file not found" would mislead when the user pointed at a folder;
    ``what`` names the file expected, e.g. ``"a .mmt model file"``.
    """
    path = Path(os.fspath(name_or_path)).expanduser()
    if path.is_dir():
        raise IsADirectoryError(f"{path} is a directory, not {what}; pass the file's path")
