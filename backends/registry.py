"""The backend registry and the one place where a backend is chosen.

Precedence: the explicit ``name`` argument (the CLI's ``--backend`` passes it here) > the
``PTYCHO_BACKEND`` environment variable > :data:`DEFAULT_BACKEND`. Backends import lazily
(importlib): adding a third one is one subpackage and one line in :data:`REGISTRY`.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import os
from dataclasses import dataclass
from typing import Optional

ENV_VAR = "PTYCHO_BACKEND"
DEFAULT_BACKEND = "tensorflow"


@dataclass(frozen=True)
class BackendInfo:
    """Where a backend lives and what it needs."""

    module: str        # module exposing ``get_backend()``
    framework: str     # import name of the framework
    distribution: str  # the pip distribution that provides it
    extra: str         # this project's extra that installs it


REGISTRY: dict[str, BackendInfo] = {
    "tensorflow": BackendInfo("backends.tensorflow", "tensorflow", "tensorflow-cpu", "tensorflow"),
    "torch": BackendInfo("backends.torch", "torch", "torch", "torch"),
}

ALIASES = {"tensorflow": "tensorflow", "tf": "tensorflow", "torch": "torch", "pytorch": "torch"}


def canonical_name(name: str) -> str:
    """``tf`` -> ``tensorflow``, ``pytorch`` -> ``torch``; unknown names raise ValueError."""
    key = str(name).strip().lower()
    if key not in ALIASES:
        raise ValueError(f"unknown backend {name!r}; valid names: {sorted(ALIASES)}")
    return ALIASES[key]


def resolve_backend_name(name: Optional[str] = None) -> tuple[str, str]:
    """The selected backend's canonical name and why it was chosen."""
    if name:
        return canonical_name(name), "argument"
    env = os.environ.get(ENV_VAR, "").strip()
    if env:
        try:
            return canonical_name(env), f"environment variable {ENV_VAR}"
        except ValueError as err:
            raise ValueError(f"{ENV_VAR}={env!r}: {err}") from None
    return DEFAULT_BACKEND, "default"


def is_installed(name: str) -> bool:
    """Whether the framework of backend ``name`` can be imported (without importing it)."""
    return importlib.util.find_spec(REGISTRY[canonical_name(name)].framework) is not None


def framework_version(name: str) -> Optional[str]:
    """The installed framework's version from package metadata (no import), or None."""
    info = REGISTRY[canonical_name(name)]
    for dist in (info.distribution, info.framework):
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    return None


def install_hint(name: str) -> str:
    info = REGISTRY[canonical_name(name)]
    return f"pip install 'ptycho-pinn[{info.extra}]'"


def get_backend(name: Optional[str] = None):
    """The selected backend object (see :class:`backends.protocol.Backend`).

    >>> get_backend("no-such-framework")
    Traceback (most recent call last):
    ...
    ValueError: unknown backend 'no-such-framework'; valid names: ['pytorch', 'tensorflow', 'tf', 'torch']
    """
    canonical, _ = resolve_backend_name(name)
    info = REGISTRY[canonical]
    if not is_installed(canonical):
        raise ImportError(
            f"backend {canonical!r} needs the {info.distribution!r} package, which is not "
            f"installed; install it with: {install_hint(canonical)}")
    module = importlib.import_module(info.module)
    return module.get_backend()


def available_backends() -> list[str]:
    """Canonical names of the backends whose framework is installed."""
    return [n for n in REGISTRY if is_installed(n)]
