"""On-disk cache of generated kernel modules.

Each generated module is written once, under a name derived from the hash of its source, to the
cache directory; Numba's own ``cache=True`` then stores the compiled machine code next to it. A
second process that loads the same model therefore finds both the source and the compiled code and
compiles nothing. Because the file name is the content hash, a changed model file or code
generator produces a new module and can never pick up stale machine code.

**Damage heals.** A cached source that differs from what it should be (truncated, edited), a
module that fails to import, or compiled files Numba cannot read (detected by
:func:`is_cache_failure` when a kernel is called) make the model's cached files be deleted and
the module be written and compiled afresh, once, with a :class:`KernelCacheWarning` naming the
cache directory. If that does not cure it, :class:`KernelCacheError` says to delete the cache.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import sys
import warnings
from pathlib import Path
from types import ModuleType

from .._util import atomic_write_text

#: Where Numba raises the errors of reading its cache files (unpickling, decoding...).
_NUMBA_CACHING_FILE = os.path.join("numba", "core", "caching.py")


class KernelCacheWarning(RuntimeWarning):
    """A model's cached kernel files were damaged; they were deleted and made again."""


class KernelCacheError(OSError):
    """The kernel cache stays unusable after its damaged files were made again."""


def cache_dir() -> Path:
    """Directory holding generated kernels.

    ``$SBI_TWINS_CACHE`` if set, else ``$XDG_CACHE_HOME/sbi-twins`` (default ``~/.cache``).
    """
    env = os.environ.get("SBI_TWINS_CACHE")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "sbi-twins"


def _module_name(source: str) -> str:
    return f"sbi_twins_kernel_{hashlib.sha256(source.encode()).hexdigest()[:20]}"


def _cache_location() -> str:
    """How to name the cache in messages: its path and the variable that moves it."""
    return f"{cache_dir()} (set by $SBI_TWINS_CACHE, default ~/.cache/sbi-twins)"


def load_module(source: str) -> ModuleType:
    """Import the module with this ``source`` from the cache, writing it there first if needed.

    A cached file whose text is not ``source`` or that fails to import is healed: see the module
    docstring.
    """
    name = _module_name(source)
    if name in sys.modules:
        return sys.modules[name]
    path = cache_dir() / "kernels" / f"{name}.py"
    if path.exists() and not _holds(path, source):
        return reload_module(source, f"{path.name} is not the source it should be (truncated?)")
    try:
        return _import(name, source)
    except Exception as error:  # noqa: BLE001 - any import failure of a cached file is damage
        sys.modules.pop(name, None)
        return reload_module(source, f"importing {path.name} failed ({type(error).__name__})")


def reload_module(source: str, reason: str) -> ModuleType:
    """Delete the cached files of this ``source``'s module, warn, and write and import it anew.

    Parameters
    ----------
    source : str
        The module's source (as given to :func:`load_module`).
    reason : str
        What was found damaged, for the warning.

    Raises
    ------
    KernelCacheError
        The module cannot be imported even from a freshly written file.
    """
    name = _module_name(source)
    sys.modules.pop(name, None)
    removed = purge(name)
    warnings.warn(
        f"the kernel cache in {cache_dir()} was damaged ({reason}); deleted {removed} cached "
        f"file(s) of {name} and made them again (this compiles the model once more)",
        KernelCacheWarning,
        stacklevel=3,
    )
    try:
        return _import(name, source)
    except Exception as error:  # noqa: BLE001 - reported as a cache problem with its cure
        sys.modules.pop(name, None)
        raise damaged_cache_error(error) from None


def damaged_cache_error(error: BaseException) -> KernelCacheError:
    """The error to raise when healing did not help: it says to delete the cache directory."""
    return KernelCacheError(
        f"the kernel cache {_cache_location()} is still unusable after its damaged files were "
        f"made again ({type(error).__name__}: {error}); delete that directory and retry "
        "(kernels are compiled again on first use)"
    )


def purge(name: str) -> int:
    """Delete a module's cached files (its source, bytecode and Numba code); their number."""
    folder = cache_dir() / "kernels"
    files = [folder / f"{name}.py", *(folder / "__pycache__").glob(f"{name}.*")]
    removed = 0
    for file in files:
        try:
            file.unlink()
            removed += 1
        except FileNotFoundError:
            pass  # another process cleaned it up first
    return removed


def is_cache_failure(error: BaseException) -> bool:
    """True if ``error`` (or an error it arose from) was raised while Numba read its cache files.

    Damaged ``.nbi``/``.nbc`` files surface as whatever unpickling random bytes raises
    (UnpicklingError, UnicodeDecodeError, EOFError...), always from Numba's caching module.
    """
    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        traceback = error.__traceback__
        while traceback is not None:
            if traceback.tb_frame.f_code.co_filename.endswith(_NUMBA_CACHING_FILE):
                return True
            traceback = traceback.tb_next
        error = error.__cause__ or error.__context__
    return False


def _holds(path: Path, source: str) -> bool:
    try:
        return path.read_text() == source
    except (OSError, UnicodeDecodeError):
        return False


def _import(name: str, source: str) -> ModuleType:
    folder = cache_dir() / "kernels"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.py"
    if not path.exists():
        # Write-then-rename so a concurrent process never imports a half-written file.
        atomic_write_text(path, source)
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # Numba's cache locator looks the module up by name.
    spec.loader.exec_module(module)
    return module
