"""Every docstring example in the library runs and holds (STYLE: examples kept true).

Core and parity modules run everywhere; a backend's modules run only when its framework is
installed (marked, so they skip with a reason otherwise).
"""

import doctest
import importlib
import pkgutil

import pytest

import backends
import parity
import ptycho


def _modules(package, exclude=()):
    names = [package.__name__]
    for info in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
        if not any(info.name.startswith(x) for x in exclude) and info.name != "ptycho.__main__":
            names.append(info.name)
    return sorted(names)


CORE = (_modules(ptycho) + _modules(parity)
        + _modules(backends, exclude=("backends.tensorflow", "backends.torch")))


def _run(name):
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0, f"{result.failed} docstring example(s) failed in {name}"
    return result.attempted


def test_core_modules_are_found():
    assert {"ptycho.physics.translate", "ptycho.weights", "backends.registry"} <= set(CORE)


@pytest.mark.parametrize("name", CORE)
def test_core_docstring_examples(name):
    _run(name)


@pytest.mark.tensorflow
@pytest.mark.parametrize("name", ["backends.tensorflow.physics", "backends.tensorflow.model",
                                  "backends.tensorflow.train", "backends.tensorflow"])
def test_tensorflow_docstring_examples(name):
    _run(name)


@pytest.mark.torch
@pytest.mark.parametrize("name", ["backends.torch.physics", "backends.torch.model",
                                  "backends.torch.train", "backends.torch"])
def test_torch_docstring_examples(name):
    _run(name)
