"""Locate bundled data files (protocols, simulators, priors).

Bundled files live in top-level repository folders (``protocols/``, ``simulators/``,
``priors/``) in a source checkout; a wheel build maps them to ``sbi_twins/_bundled/<kind>``.
"""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path

__all__ = ["available", "bundled_dir", "resolve"]


def bundled_dir(kind: str) -> Path:
    """Return the folder holding bundled files of one kind.

    Parameters
    ----------
    kind : str
        Folder name, e.g. ``"protocols"``, ``"simulators"`` or ``"priors"``.

    Returns
    -------
    pathlib.Path
        ``sbi_twins/_bundled/<kind>`` when installed from a wheel, otherwise
        ``<repo root>/<kind>`` (source checkout). The folder may not exist.
    """
    try:
        packaged = Path(os.fspath(resources.files("sbi_twins") / "_bundled" / kind))
    except (ModuleNotFoundError, TypeError):  # TypeError: a non-filesystem (zip) install
        packaged = None
    if packaged is not None and packaged.is_dir():
        return packaged
    return Path(__file__).resolve().parent.parent / kind


def available(kind: str, suffix: str) -> list[str]:
    """Return the sorted names (file stems) of bundled files of one kind.

    Parameters
    ----------
    kind : str
        Folder name, e.g. ``"protocols"``.
    suffix : str
        File suffix including the dot, e.g. ``".toml"``.

    Returns
    -------
    list of str
        Names usable with the matching loader; empty if the folder is missing.
    """
    folder = bundled_dir(kind)
    if not folder.is_dir():
        return []
    return sorted(p.stem for p in folder.iterdir() if p.is_file() and p.name.endswith(suffix))


def resolve(name_or_path: str | os.PathLike[str], kind: str, suffix: str) -> Path:
    """Turn a bundled name or a file path into the path of an existing file.

    Parameters
    ----------
    name_or_path : str or os.PathLike
        A bundled name (``"clark2022"``) or a path (``"my/proto.toml"``). It is taken as a
        path if it is a ``PathLike``, names an existing file, contains a path separator,
        or ends with `suffix`; otherwise as a bundled name.
    kind : str
        Folder name of the bundled files, plural (e.g. ``"protocols"``); used in messages.
    suffix : str
        File suffix including the dot, e.g. ``".toml"``.

    Returns
    -------
    pathlib.Path
        Path of an existing file.

    Raises
    ------
    FileNotFoundError
        If the path does not exist, or the name is not a bundled one (the message lists
        the bundled names).
    """
    text = os.fspath(name_or_path)
    path = Path(text).expanduser()
    separators = [s for s in (os.sep, os.altsep) if s]
    looks_like_path = (
        isinstance(name_or_path, os.PathLike)
        or path.is_file()
        or any(s in text for s in separators)
        or text.endswith(suffix)
    )
    singular = kind[:-1] if kind.endswith("s") else kind
    if looks_like_path:
        if not path.is_file():
            raise FileNotFoundError(f"{singular} file not found: {path}")
        return path
    candidate = bundled_dir(kind) / f"{text}{suffix}"
    if candidate.is_file():
        return candidate
    names = ", ".join(available(kind, suffix)) or "(none)"
    raise FileNotFoundError(
        f"unknown {singular} {text!r}; available: {names} (or pass a path to a {suffix} file)"
    )
