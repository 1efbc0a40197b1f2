"""Shared test set-up: hypothesis profiles, one marker per backend, framework-dependent skips.

Each backend of the registry (``backends.registry.REGISTRY``) gets a marker of its name; a
test marked with it (``tensorflow``, ``torch``, ...) or ``parity`` is skipped, with a reason
naming the missing package and its install command, when that framework is not installed;
it never errors or xfails.
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



def pytest_configure(config):
    from backends.registry import REGISTRY
    for name, info in REGISTRY.items():
        config.addinivalue_line(
            "markers", f"{name}: needs {info.framework} (skipped with a reason when it is not "
                       f"installed)")


def pytest_collection_modifyitems(config, items):
    from backends.registry import REGISTRY, install_hint
    for item in items:
        needed = [name for name in REGISTRY if item.get_closest_marker(name)]
        if item.get_closest_marker("parity"):
            needed = list(REGISTRY)
        missing = [name for name in needed
                   if importlib.util.find_spec(REGISTRY[name].framework) is None]
        if missing:
            item.add_marker(pytest.mark.skip(reason="; ".join(
                f"{REGISTRY[n].framework} not installed ({install_hint(n)})" for n in missing)))


@pytest.fixture
def numpy_backend(monkeypatch):
    """The numpy stand-in backend (``parity.fake``) registered as ``numpy`` through the
    registry alone and selected by ``PTYCHO_BACKEND``: the workflows run on it with neither
    framework installed."""
    from backends.registry import REGISTRY, BackendInfo
    monkeypatch.setitem(REGISTRY, "numpy", BackendInfo("parity.fake", "numpy", "numpy", "test"))
    monkeypatch.setenv("PTYCHO_BACKEND", "numpy")
    return "numpy"


@pytest.fixture
def no_unpickling(monkeypatch):
    """Any call into pickle's loaders fails the test, whoever makes it (untrusted-file tests)."""
    def refuse(*a, **k):
        raise AssertionError("something tried to unpickle")
    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(pickle, "Unpickler", refuse)
