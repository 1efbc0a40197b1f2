"""Each backend and its model satisfy the protocols of backends/protocol.py, and the two
subpackages keep the same module names (so one reads against the other)."""

import os

import numpy as np
import pytest

from backends import Backend, BackendModel, get_backend
from ptycho.config import ModelConfig
from ptycho.weights import init_weights

BACKENDS = [pytest.param("tensorflow", marks=pytest.mark.tensorflow),
            pytest.param("torch", marks=pytest.mark.torch)]


@pytest.mark.parametrize("name", BACKENDS)
def test_backend_and_model_satisfy_the_protocols(name):
    impl = get_backend(name)
    assert isinstance(impl, Backend) and impl.name == name and impl.version()
    cfg = ModelConfig(N=16, base_filters=1, n_filters_scale=1)
    model = impl.build_model(cfg, init_weights(cfg, 0, np.ones((16, 16), np.complex64), 0.0))
    assert isinstance(model, BackendModel) and model.backend_name == name


def test_backend_subpackages_mirror_each_other():
    root = os.path.join(os.path.dirname(__file__), "..", "..", "backends")
    modules = {d: sorted(f for f in os.listdir(os.path.join(root, d)) if f.endswith(".py"))
               for d in ("tensorflow", "torch")}
    assert modules["tensorflow"] == modules["torch"]
    assert {"physics.py", "model.py", "train.py", "__init__.py"} <= set(modules["torch"])
