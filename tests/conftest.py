"""Shared fixtures: the kernel cache directory and session-wide loaded models.

Generated kernels are cached on disk (``$SBI_TWINS_CACHE``). If the variable is not set, the test
session uses a fresh temporary directory, shared by every test (and by the subprocesses tests
start, which inherit the environment) and removed at the end, so a test run never writes to the
user's cache and compiles each model at most once.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path

import pytest

DATA = Path(__file__).parent / "data"

# The benchmarks' comparator (the reference study's MLP, benchmarks/baseline.py) is tested too;
# the benchmark scripts import it from their own folder, as the tests do here.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))

_CREATED_CACHE: str | None = None


def pytest_configure(config: pytest.Config) -> None:
    global _CREATED_CACHE
    if not os.environ.get("SBI_TWINS_CACHE"):
        _CREATED_CACHE = tempfile.mkdtemp(prefix="sbi-twins-test-cache-")
        os.environ["SBI_TWINS_CACHE"] = _CREATED_CACHE


def pytest_unconfigure(config: pytest.Config) -> None:
    if _CREATED_CACHE is not None:
        shutil.rmtree(_CREATED_CACHE, ignore_errors=True)


@pytest.fixture(scope="session")
def kernik():
    """The bundled Kernik 2019 model."""
    from sbi_twins import load_model

    return load_model("kernik2019")


@pytest.fixture(scope="session")
def hh():
    """The bundled Hodgkin-Huxley 1952 model (small: quick to compile)."""
    from sbi_twins import load_model

    return load_model("hh1952")
