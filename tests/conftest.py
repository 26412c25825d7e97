"""Shared test set-up: skip markers defined once, and the long-sweep switch.

Use in a test module::

    from conftest import LONG, requires_gpu, requires_sm90, requires_sm100

    @requires_sm90
    def test_kernel(): ...

Tests marked with the pytest markers ``gpu`` / ``sm90`` / ``sm100`` / ``slow`` (declared in
pyproject.toml) are skipped the same way, so either spelling works.  ``GNA_CUTE_LONG=1`` turns on
the long random sweeps (``LONG`` is True and ``slow`` tests run).  CPU torch runs on one thread
in tests (tiny tensors, shared machine).
"""

from __future__ import annotations

import os
import sys

import pytest
import torch

# tests/ on sys.path whatever the import mode, so ``from brute_force import ...`` works everywhere.
_TESTS_DIR = os.path.dirname(os.path.abspath(__file__))
if _TESTS_DIR not in sys.path:
    sys.path.insert(0, _TESTS_DIR)

LONG: bool = os.environ.get("GNA_CUTE_LONG", "") not in ("", "0")

# Test tensors are tiny and the CPU is shared: intra-op threads only spin and contend.
torch.set_num_threads(1)


def _cuda_major() -> int | None:
    """Compute-capability major of GPU 0, or None without a usable CUDA GPU."""
    if not torch.cuda.is_available():
        return None
    return torch.cuda.get_device_capability(0)[0]


_MAJOR = _cuda_major()
_NO_GPU = "needs a CUDA GPU"
_NO_SM90 = f"needs an SM 9.x GPU (found {'none' if _MAJOR is None else f'SM {_MAJOR}.x'})"
_NO_SM100 = f"needs an SM 10.x GPU (found {'none' if _MAJOR is None else f'SM {_MAJOR}.x'})"
_NO_LONG = "long sweep: set GNA_CUTE_LONG=1"

requires_gpu = pytest.mark.skipif(_MAJOR is None, reason=_NO_GPU)
requires_sm90 = pytest.mark.skipif(_MAJOR != 9, reason=_NO_SM90)
requires_sm100 = pytest.mark.skipif(_MAJOR != 10, reason=_NO_SM100)
requires_long = pytest.mark.skipif(not LONG, reason=_NO_LONG)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Apply the same skips to tests that use the plain pyproject markers."""
    rules = (
        ("gpu", _MAJOR is None, _NO_GPU),
        ("sm90", _MAJOR != 9, _NO_SM90),
        ("sm100", _MAJOR != 10, _NO_SM100),
        ("slow", not LONG, _NO_LONG),
    )
    for item in items:
        for marker, skip, reason in rules:
            if skip and item.get_closest_marker(marker) is not None:
                item.add_marker(pytest.mark.skip(reason=reason))


@pytest.fixture(autouse=True)
def _empty_call_cache():
    """Every test starts with no remembered call signatures (``gna_cute.call_cache``): several tests
    patch the backends' internals, which an entry from an earlier test would bypass."""
    from gna_cute import call_cache

    call_cache.clear()
    yield
