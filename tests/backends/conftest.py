"""Shared set-up of the backend tests."""

import pytest


@pytest.fixture(autouse=True, scope="module")
def _torch_one_thread(request):
    """One intra-op thread for modules marked ``torch``: the suite runs one xdist worker per
    core, and on a shared CPU an OpenMP pool with more threads than free cores makes a step
    up to ~100x slower. Other modules are left alone (and never import torch here)."""
    if request.node.get_closest_marker("torch") is None:
        yield
        return
    import torch
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
