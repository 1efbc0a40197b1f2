"""Backend selection: precedence, aliases, unknown names, missing frameworks."""

import importlib.util

import pytest

import backends
from backends import registry


@pytest.mark.parametrize("alias, canonical", [("tf", "tensorflow"), ("TensorFlow", "tensorflow"),
                                              ("pytorch", "torch"), ("torch", "torch")])
def test_aliases(alias, canonical):
    assert registry.canonical_name(alias) == canonical


def test_unknown_name_lists_valid_names():
    with pytest.raises(ValueError, match=r"unknown backend 'jax'.*pytorch.*tensorflow.*tf.*torch"):
        backends.get_backend("jax")


def test_precedence_argument_over_env_over_default(monkeypatch):
    monkeypatch.delenv(registry.ENV_VAR, raising=False)
    assert registry.resolve_backend_name() == (registry.DEFAULT_BACKEND, "default")
    monkeypatch.setenv(registry.ENV_VAR, "pytorch")
    assert registry.resolve_backend_name() == ("torch", f"environment variable {registry.ENV_VAR}")
    assert registry.resolve_backend_name("tf") == ("tensorflow", "argument")


def test_bad_env_value_names_the_variable(monkeypatch):
    monkeypatch.setenv(registry.ENV_VAR, "mxnet")
    with pytest.raises(ValueError, match="PTYCHO_BACKEND='mxnet'"):
        backends.get_backend()


def test_missing_framework_gives_install_hint(monkeypatch):
    real_find_spec = importlib.util.find_spec

    def find_spec(name, *args, **kwargs):
        return None if name == "torch" else real_find_spec(name, *args, **kwargs)

    monkeypatch.setattr(registry.importlib.util, "find_spec", find_spec)
    with pytest.raises(ImportError, match=r"'torch' package.*pip install 'ptycho-pinn\[torch\]'"):
        backends.get_backend("torch")
    assert "torch" not in registry.available_backends()


def test_registry_entries_are_complete():
    for name, info in registry.REGISTRY.items():
        assert info.module == f"backends.{name}"
        assert registry.canonical_name(name) == name
