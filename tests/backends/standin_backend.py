"""A stand-in backend for the tests: the shared composition over the torch ops namespace,
registered under its own name by ``conftest.py`` (one ``REGISTRY`` entry, no other change),
so that the parametrised suite shows what adding a backend takes."""

from backends.common.backend import Backend
from backends.torch import ops


def get_backend() -> Backend:
    return Backend("standin", ops)
