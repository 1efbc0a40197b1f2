"""Shared set-up of the backend tests: the suite is written once and runs on every backend.

``backend`` is parametrised over the registry (``backends.registry.REGISTRY``), plus a
stand-in backend that a fixture adds through the registry alone (``standin_backend.py``:
the shared composition over the torch ops, under its own name), so the suite also shows that
a backend is one registry entry and one ops namespace. ``framework_backend`` is the registry
alone (for the slow learning tests). Each parameter carries its framework's marker, so a
missing framework turns its tests into skips with a reason (``tests/conftest.py``).
"""

from __future__ import annotations

import pytest

from backends.registry import REGISTRY, BackendInfo

#: The stand-in: registered under this name, implemented by ``standin_backend.py`` here.
STANDIN = "standin"
STANDIN_INFO = BackendInfo("standin_backend", "torch", "torch", "torch", aliases=("stand-in",))


def _param(name: str, framework_marker: str):
    return pytest.param(name, marks=getattr(pytest.mark, framework_marker), id=name)


REGISTERED = [_param(name, name) for name in REGISTRY]
WITH_STANDIN = REGISTERED + [_param(STANDIN, STANDIN_INFO.framework)]


def _one_torch_thread():
    """One intra-op thread for torch: the suite runs one xdist worker per core, and on a
    shared CPU an OpenMP pool with more threads than free cores makes a step up to ~100x
    slower."""
    import torch
    torch.set_num_threads(1)


def _get(name: str, monkeypatch):
    import backends
    if name == STANDIN:
        monkeypatch.setitem(REGISTRY, STANDIN, STANDIN_INFO)
    impl = backends.configure_process(name)
    if impl.ops.FRAMEWORK == "torch":
        _one_torch_thread()
    return impl


@pytest.fixture(params=WITH_STANDIN)
def backend(request, monkeypatch):
    """Each registered backend and the stand-in, with its process settings applied."""
    return _get(request.param, monkeypatch)


@pytest.fixture(params=REGISTERED)
def framework_backend(request, monkeypatch):
    """Each registered backend (no stand-in)."""
    return _get(request.param, monkeypatch)
