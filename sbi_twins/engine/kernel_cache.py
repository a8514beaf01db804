"""On-disk cache of generated kernel modules.

Each generated module is written once, under a name derived from the hash of its source, to the
cache directory; Numba's own ``cache=True`` then stores the compiled machine code next to it. A
second process that loads the same model therefore finds both the source and the compiled code and
compiles nothing. Because the file name is the content hash, a changed model file or code
generator produces a new module and can never pick up stale machine code.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import sys
from pathlib import Path
from types import ModuleType

from .._util import atomic_write_text


def cache_dir() -> Path:
    """Directory holding generated kernels.

    ``$SBI_TWINS_CACHE`` if set, else ``$XDG_CACHE_HOME/sbi-twins`` (default ``~/.cache``).
    """
    env = os.environ.get("SBI_TWINS_CACHE")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "sbi-twins"


def load_module(source: str) -> ModuleType:
    """Import the module with this ``source`` from the cache, writing it there first if needed."""
    key = hashlib.sha256(source.encode()).hexdigest()[:20]
    name = f"sbi_twins_kernel_{key}"
    if name in sys.modules:
        return sys.modules[name]
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
