"""The PyTorch backend: ``get_backend()`` returns the shared :class:`~backends.common.backend.Backend`
over this backend's ops namespace, :mod:`backends.torch.ops`.

Imported only when this backend is selected (see :mod:`backends.registry`); with
``backends/torch/ops.py`` it is the only code of the project that imports torch. Importing it
changes no process-wide setting (see :func:`backends.configure_process`).

>>> import numpy as np
>>> backend = get_backend()
>>> backend.name
'torch'
>>> backend.far_field_amplitude(np.ones((4, 4), np.complex64))[2, 2]
np.float32(4.0)
"""

from __future__ import annotations

from backends.common.backend import Backend
from backends.torch import ops

__all__ = ["get_backend", "ops"]


def get_backend() -> Backend:
    """The PyTorch backend object."""
    return Backend("torch", ops)
