"""Backends: the protocol, the registry and run-time selection. Imports no framework."""

from backends.protocol import Backend, BackendModel
from backends.registry import (DEFAULT_BACKEND, ENV_VAR, REGISTRY, aliases, available_backends,
                               backend_names, canonical_name, configure_process,
                               framework_version, get_backend, install_hint, is_installed,
                               resolve_backend_name)

__all__ = [
    "Backend", "BackendModel", "DEFAULT_BACKEND", "ENV_VAR", "REGISTRY", "aliases",
    "available_backends", "backend_names", "canonical_name", "configure_process",
    "framework_version", "get_backend", "install_hint", "is_installed", "resolve_backend_name",
]
