"""The backend registry: the one list of backends, and the one place where a backend is chosen.

Precedence: the explicit ``name`` argument (the CLI's ``--backend``, or a config's
``backend``, passes it here) > the ``PTYCHO_BACKEND`` environment variable >
:data:`DEFAULT_BACKEND`. Backends import lazily (importlib). Adding a backend is one
subpackage (an ``ops`` module and ``get_backend()``) and one entry in :data:`REGISTRY`: the
names, aliases, config checks, CLI help, test parametrisation and parity defaults all derive
from it.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import os
import sys
from dataclasses import dataclass
from typing import Optional

ENV_VAR = "PTYCHO_BACKEND"
DEFAULT_BACKEND = "tensorflow"


@dataclass(frozen=True)
class BackendInfo:
    """Where a backend lives and what it needs.

    ``process_env``: environment settings the framework reads when it loads, applied by
    :func:`configure_process` (only then, and only if the framework is not loaded yet; a
    value the user set wins). Their measured effect is in ``benchmarks/README.md``.
    """

    module: str        # module exposing ``get_backend()``
    framework: str     # import name of the framework
    distribution: str  # the pip distribution that provides it
    extra: str         # this project's extra that installs it
    aliases: tuple[str, ...] = ()
    process_env: tuple[tuple[str, str], ...] = ()


REGISTRY: dict[str, BackendInfo] = {
    "tensorflow": BackendInfo("backends.tensorflow", "tensorflow", "tensorflow-cpu", "tensorflow",
                              aliases=("tf",)),
    "torch": BackendInfo("backends.torch", "torch", "torch", "torch", aliases=("pytorch",),
                         process_env=(("OMP_WAIT_POLICY", "PASSIVE"),
                                      ("THP_MEM_ALLOC_ENABLE", "1"))),
}


def backend_names() -> tuple[str, ...]:
    """The canonical names of the registered backends, in registry order."""
    return tuple(REGISTRY)


def aliases() -> dict[str, str]:
    """Every accepted name (canonical names and aliases) -> its canonical name."""
    out = {name: name for name in REGISTRY}
    for name, info in REGISTRY.items():
        out.update({alias: name for alias in info.aliases})
    return out


def canonical_name(name: str) -> str:
    """``tf`` -> ``tensorflow``, ``pytorch`` -> ``torch``; unknown names raise ValueError."""
    key = str(name).strip().lower()
    names = aliases()
    if key not in names:
        raise ValueError(f"unknown backend {name!r}; valid names: {sorted(names)}")
    return names[key]


def resolve_backend_name(name: Optional[str] = None, source: str = "argument") -> tuple[str, str]:
    """The selected backend's canonical name and why it was chosen.

    ``source`` says where an explicit ``name`` came from (``argument``, ``--backend``, a config
    file); it is the reason reported when ``name`` is given.
    """
    if name:
        try:
            return canonical_name(name), source
        except ValueError as err:
            if source == "argument":
                raise
            raise ValueError(f"{source}: {err}") from None
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

    Importing a backend changes no process-wide setting; :func:`configure_process` does.

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
    return importlib.import_module(info.module).get_backend()


def configure_process(name: Optional[str] = None, *, threads: Optional[int] = None):
    """Apply the selected backend's process-wide settings and return the backend.

    Before the framework loads: its ``process_env`` (values the user set win). Then the
    backend's ``configure_process``: deterministic kernels, TF32 off, and ``threads``
    intra-op threads when given. The ``ptycho`` CLI and the training workflow call this; a
    library user who builds models directly calls it when these settings are wanted (nothing
    is changed behind their back by importing or building).
    """
    canonical, _ = resolve_backend_name(name)
    info = REGISTRY[canonical]
    if info.framework not in sys.modules:
        for key, value in info.process_env:
            os.environ.setdefault(key, value)
    backend = get_backend(canonical)
    backend.configure_process(threads)
    return backend


def available_backends() -> list[str]:
    """Canonical names of the backends whose framework is installed."""
    return [n for n in REGISTRY if is_installed(n)]
