"""The TensorFlow backend: ``get_backend()`` returns the shared :class:`~backends.common.backend.Backend`
over this backend's ops namespace, :mod:`backends.tensorflow.ops`.

Imported only when this backend is selected (see :mod:`backends.registry`); with
``backends/tensorflow/ops.py`` it is the only code of the project that imports TensorFlow.
Importing it changes no process-wide setting (see :func:`backends.configure_process`).

>>> import numpy as np
>>> b = get_backend()
>>> b.name
'tensorflow'
>>> img = np.zeros((5, 5)); img[2, 2] = 1.0
>>> [int(i) for i in np.argwhere(b.translate(img, np.array([1.0, -2.0])) == 1.0)[0]]
[0, 3]
"""

from __future__ import annotations

from backends.common.backend import Backend
from backends.tensorflow import ops

__all__ = ["get_backend", "ops"]


def get_backend() -> Backend:
    """The TensorFlow backend object."""
    return Backend("tensorflow", ops)
