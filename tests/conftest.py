"""Shared test set-up: hypothesis profiles and framework-dependent skips.

A test marked ``tensorflow`` / ``torch`` / ``parity`` is skipped, with a reason naming the
missing package, when its framework is not installed; it never errors or xfails.
Select the hypothesis profile with ``HYPOTHESIS_PROFILE`` (``ci`` by default, ``dev`` for
thorough local runs).
"""

from __future__ import annotations

import importlib.util
import os
import pickle

import pytest
from hypothesis import HealthCheck, settings

settings.register_profile(
    "ci", derandomize=True, deadline=None, max_examples=25, print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.register_profile(
    "dev", deadline=None, max_examples=300, print_blob=True,
    suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
if os.environ.get("PYTEST_XDIST_WORKER"):
    # xdist already runs one worker per core: a framework thread pool per worker on top of
    # that oversubscribes the CPU (a torch step measured 70x slower). Set before any import.
    for var in ("OMP_NUM_THREADS", "TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS"):
        os.environ.setdefault(var, "1")

_FRAMEWORKS = {"tensorflow": "tensorflow", "torch": "torch"}


def _installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def pytest_collection_modifyitems(config, items):
    for item in items:
        needed = [fw for marker, fw in _FRAMEWORKS.items() if item.get_closest_marker(marker)]
        if item.get_closest_marker("parity"):
            needed = list(_FRAMEWORKS.values())
        missing = [fw for fw in needed if not _installed(fw)]
        if missing:
            item.add_marker(pytest.mark.skip(
                reason=f"{', '.join(missing)} not installed (pip install 'ptycho-pinn[{missing[0]}]')"))


@pytest.fixture
def no_unpickling(monkeypatch):
    """Any call into pickle's loaders fails the test, whoever makes it (untrusted-file tests)."""
    def refuse(*a, **k):
        raise AssertionError("something tried to unpickle")
    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(pickle, "Unpickler", refuse)
