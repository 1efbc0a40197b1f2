"""Every docstring example in the library runs and holds (STYLE: examples kept true).

Core and parity modules run everywhere; a backend's modules run only when its framework is
installed (marked, so they skip with a reason otherwise).
"""

import doctest
import importlib
import importlib.util
import re
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


#: Modules whose examples build tensors in a framework: module -> the backend they use.
NEEDS_FRAMEWORK = {"backends.common.adam": "tensorflow"}
#: Modules that import an optional package at the top (the library reaches them only through
#: a lazy import once the package is there): module -> (package, the extra that installs it).
NEEDS_PACKAGE = {"ptycho.integrations._ptychodus_classes": ("ptychodus", "ptychodus")}
CORE = [name for name in (_modules(ptycho) + _modules(parity) + _modules(
    backends, exclude=tuple(info.module for info in backends.REGISTRY.values())))
    if name not in NEEDS_FRAMEWORK and name not in NEEDS_PACKAGE]
FRAMEWORK = [pytest.param(name, marks=getattr(pytest.mark, backend))
             for backend, info in backends.REGISTRY.items()
             for name in (info.module, info.module + ".ops")]
FRAMEWORK += [pytest.param(name, marks=getattr(pytest.mark, backend))
              for name, backend in NEEDS_FRAMEWORK.items()]


def _run(name):
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0, f"{result.failed} docstring example(s) failed in {name}"
    return result.attempted


def test_core_modules_are_found():
    assert {"ptycho.physics.translate", "ptycho.weights", "backends.registry",
            "backends.common.physics"} <= set(CORE)


@pytest.mark.parametrize("name", CORE)
def test_core_docstring_examples(name):
    _run(name)


@pytest.mark.parametrize("name", FRAMEWORK)
def test_framework_docstring_examples(name):
    assert _run(name) > 0


@pytest.mark.parametrize("name", sorted(NEEDS_PACKAGE))
def test_optional_package_docstring_examples(name):
    package, extra = NEEDS_PACKAGE[name]
    pytest.importorskip(package, reason=f"{package} not installed (pip install 'ptycho-pinn[{extra}]')")
    _run(name)


def test_only_listed_modules_need_an_optional_package():
    """A new module that imports an optional package at the top must be listed above (or import
    it lazily): otherwise the core suite fails to import it where the package is missing."""
    optional = ("ptychodus", "ptychi", "skimage", "h5py", "mlflow")
    pattern = re.compile(rf"^(?:import|from) ({'|'.join(optional)})\b", re.MULTILINE)
    found = set()
    for name in CORE + list(NEEDS_PACKAGE):
        spec = importlib.util.find_spec(name)
        if spec.origin and spec.origin.endswith(".py") and pattern.search(open(spec.origin).read()):
            found.add(name)
    assert found == set(NEEDS_PACKAGE)
