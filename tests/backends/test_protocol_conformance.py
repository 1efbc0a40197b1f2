"""Every backend and its model satisfy the protocols of backends/protocol.py; the framework
subpackages mirror each other (same modules, same ops), and a backend is one registry entry."""

from __future__ import annotations

import importlib
import inspect
import os

import numpy as np
import pytest

from backends import Backend, BackendModel, REGISTRY, aliases, backend_names, get_backend
from backends.common.overrides import OVERRIDABLE, overrides_of
from ptycho.config import ModelConfig
from ptycho.weights import init_weights


def test_backend_and_model_satisfy_the_protocols(backend):
    assert isinstance(backend, Backend) and backend.version()
    cfg = ModelConfig(N=16, base_filters=1, n_filters_scale=1)
    model = backend.build_model(cfg, init_weights(cfg, 0, np.ones((16, 16), np.complex64), 0.0))
    assert isinstance(model, BackendModel) and model.backend_name == backend.name
    assert get_backend(backend.name).name == backend.name


def test_framework_subpackages_mirror_each_other():
    root = os.path.join(os.path.dirname(__file__), "..", "..", "backends")
    modules = {name: sorted(f for f in os.listdir(os.path.join(root, name)) if f.endswith(".py"))
               for name in REGISTRY}
    assert all(files == ["__init__.py", "ops.py"] for files in modules.values()), modules


def _primitives(module) -> set[str]:
    """The public functions of an ops namespace, less the composites it overrides."""
    return {n for n, v in vars(module).items() if not n.startswith("_") and callable(v)
            and not inspect.isclass(v) and not inspect.ismodule(v)
            and getattr(v, "__module__", "") != "typing"} - set(OVERRIDABLE)


@pytest.mark.tensorflow
@pytest.mark.torch
def test_ops_namespaces_define_the_same_primitives():
    """Each ops namespace has the same primitives (what the shared composition may call);
    beyond them a namespace may only override composites listed in OVERRIDABLE."""
    namespaces = {name: importlib.import_module(f"{info.module}.ops")
                  for name, info in REGISTRY.items()}
    primitives = {name: _primitives(m) for name, m in namespaces.items()}
    first = primitives[backend_names()[0]]
    for name, names in primitives.items():
        assert names == first, (name, sorted(names ^ first))
        assert set(overrides_of(namespaces[name])) <= set(OVERRIDABLE)


def test_names_and_aliases_derive_from_the_registry():
    assert backend_names() == tuple(REGISTRY)
    assert {a for info in REGISTRY.values() for a in info.aliases} | set(REGISTRY) == set(aliases())
    from parity import DEFAULT_BACKENDS
    assert DEFAULT_BACKENDS == backend_names()[:2]
    import argparse

    from ptycho.cli import train
    text = train.add_parser(argparse.ArgumentParser().add_subparsers()).format_help()
    for name, info in REGISTRY.items():
        assert name in text and all(a in text for a in info.aliases)


@pytest.mark.torch
def test_importing_a_backend_changes_no_process_setting():
    """Selecting or importing a backend leaves os.environ and the framework's global
    numerics alone; backends.configure_process is the explicit call that sets them."""
    import subprocess
    import sys
    code = (
        "import os, json\n"
        "before = dict(os.environ)\n"
        "from backends import get_backend\n"
        "for name in %r:\n"
        "    get_backend(name)\n"
        "changed = sorted(k for k in set(before) | set(os.environ) if before.get(k) != os.environ.get(k))\n"
        "import torch\n"
        "print(json.dumps({'env': changed, 'det': torch.are_deterministic_algorithms_enabled()}))\n"
    ) % ([n for n in REGISTRY if importlib.util.find_spec(REGISTRY[n].framework)],)
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "THP_MEM_ALLOC_ENABLE")}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                         check=True).stdout.strip().splitlines()[-1]
    import json
    result = json.loads(out)
    assert result == {"env": [], "det": False}, result
