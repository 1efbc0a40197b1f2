"""The TensorFlow backend: ``get_backend()`` returns the :class:`TFBackend` object.

Imported only when this backend is selected (see :mod:`backends.registry`); it is the only
package of the project that imports TensorFlow. Modules mirror ``backends/torch/``:

* :mod:`~backends.tensorflow.physics` - the physics ops on TF tensors (float32 / complex64);
* :mod:`~backends.tensorflow.model` - the network and the model object (weights, forward,
  predict, losses, gradients);
* :mod:`~backends.tensorflow.train` - explicit Adam and the compiled training step.

Selecting the backend sets TensorFlow's process-wide numerics once: deterministic ops
(``tf.config.experimental.enable_op_determinism``) and TF32 off, as the design requires.

>>> import numpy as np
>>> b = get_backend()
>>> b.name
'tensorflow'
>>> img = np.zeros((5, 5)); img[2, 2] = 1.0
>>> [int(i) for i in np.argwhere(b.translate(img, np.array([1.0, -2.0])) == 1.0)[0]]
[0, 3]
"""

from __future__ import annotations

from typing import Mapping

import numpy as np
import tensorflow as tf

from backends.tensorflow import physics
from backends.tensorflow.model import BACKEND_NAME, TFModel
from ptycho.config.schema import ModelConfig

__all__ = ["TFBackend", "TFModel", "get_backend"]


def _configure_numerics() -> None:
    """Deterministic kernels and no TF32 (idempotent; TensorFlow keeps these per process)."""
    tf.config.experimental.enable_op_determinism()
    tf.config.experimental.enable_tensor_float_32_execution(False)


class TFBackend:
    """The TensorFlow implementation of :class:`backends.protocol.Backend`.

    The physics methods take numpy (any real/complex dtype), compute in float32 / complex64
    with TensorFlow, and return numpy float32 / complex64 (losses: Python floats). They mirror
    :mod:`ptycho.physics` function for function.
    """

    name = BACKEND_NAME

    def version(self) -> str:
        return tf.__version__

    def build_model(self, config: ModelConfig, weights: Mapping[str, np.ndarray]) -> TFModel:
        """A model holding exactly ``weights`` (validated strictly: WeightsError on mismatch)."""
        return TFModel(config, weights)

    # ---- physics, numpy in / numpy out
    def illuminate(self, probe: np.ndarray, obj: np.ndarray) -> np.ndarray:
        return physics.illuminate(np.asarray(probe, np.complex64),
                                  np.asarray(obj, np.complex64)).numpy()

    def far_field_amplitude(self, psi: np.ndarray) -> np.ndarray:
        return physics.far_field_amplitude(np.asarray(psi, np.complex64)).numpy()

    def translate(self, images: np.ndarray, offsets: np.ndarray) -> np.ndarray:
        offsets = np.asarray(offsets, dtype=np.float32)
        if offsets.shape[-1:] != (2,):
            raise ValueError(f"offsets must end in an axis of length 2 (dx, dy), "
                             f"got shape {offsets.shape}")
        return physics.translate(physics.as_complex64_or_float32(images), offsets).numpy()

    @staticmethod
    def _check_groups(patches: np.ndarray, rel_offsets: np.ndarray) -> None:
        if patches.ndim != 4 or rel_offsets.shape != patches.shape[:2] + (2,):
            raise ValueError(f"need patches (B, C, N, N) and rel_offsets (B, C, 2), got "
                             f"{patches.shape} and {rel_offsets.shape}")

    def reassemble_patches(self, patches: np.ndarray, rel_offsets: np.ndarray, canvas_size: int,
                           support: np.ndarray | None = None) -> np.ndarray:
        patches = physics.as_complex64_or_float32(patches)
        rel = physics.as_float32(rel_offsets)
        self._check_groups(patches, rel)
        physics.canvas_pad(patches.shape[-1], int(canvas_size))
        sup = None if support is None else physics.as_float32(support)
        return physics.reassemble_patches(patches, rel, int(canvas_size), sup).numpy()

    def extract_patches(self, canvas: np.ndarray, rel_offsets: np.ndarray, n: int) -> np.ndarray:
        canvas = physics.as_complex64_or_float32(canvas)
        rel = physics.as_float32(rel_offsets)
        if canvas.ndim != 3 or rel.ndim != 3 or rel.shape[0] != canvas.shape[0] \
                or rel.shape[-1] != 2:
            raise ValueError(f"need canvas (B, M, M) and rel_offsets (B, C, 2), got "
                             f"{canvas.shape} and {rel.shape}")
        physics.canvas_pad(int(n), canvas.shape[-1])
        return physics.extract_patches(canvas, rel, int(n)).numpy()

    def overlap_constraint(self, patches: np.ndarray, rel_offsets: np.ndarray, canvas_size: int,
                           support: np.ndarray | None = None) -> np.ndarray:
        """Compiled (``tf.function``, traced once per dtype, N, and support or not):
        the reconstruct workflow calls it for every chunk at gridsize > 1, and eagerly it
        took twice as long (14 ms against 8 ms for 16 groups of four 64 x 64 patches)."""
        patches = physics.as_complex64_or_float32(patches)
        rel = physics.as_float32(rel_offsets)
        self._check_groups(patches, rel)
        physics.canvas_pad(patches.shape[-1], int(canvas_size))
        sup = None if support is None else physics.as_float32(support)
        fn = _compiled_overlap_constraint(tf.as_dtype(patches.dtype), patches.shape[-1],
                                          sup is not None)
        args = (patches, rel, tf.constant(int(canvas_size), tf.int32))
        return fn(*args, *(() if sup is None else (sup,))).numpy()

    def poisson_nll(self, pred_amplitude: np.ndarray, observed_amplitude: np.ndarray,
                    eps: float) -> float:
        return float(physics.poisson_nll(physics.as_float32(pred_amplitude),
                                         physics.as_float32(observed_amplitude), float(eps)))

    def mae(self, pred_amplitude: np.ndarray, observed_amplitude: np.ndarray) -> float:
        return float(physics.mae(physics.as_float32(pred_amplitude),
                                 physics.as_float32(observed_amplitude)))

    def realspace_consistency(self, patches: np.ndarray, constrained: np.ndarray) -> float:
        return float(physics.realspace_consistency(np.asarray(patches, np.complex64),
                                                   np.asarray(constrained, np.complex64)))


_OVERLAP_FNS: dict = {}


def _compiled_overlap_constraint(dtype: tf.DType, n: int, with_support: bool):
    """:func:`physics.overlap_constraint` as a ``tf.function`` for one patch dtype, side N and
    support/no support, with any number of groups and channels and any canvas side (cached)."""
    key = (dtype, int(n), bool(with_support))
    if key not in _OVERLAP_FNS:
        sig = [tf.TensorSpec([None, None, n, n], dtype), tf.TensorSpec([None, None, 2], tf.float32),
               tf.TensorSpec([], tf.int32)]
        if with_support:
            sig.append(tf.TensorSpec([n, n], tf.float32))
        _OVERLAP_FNS[key] = tf.function(physics.overlap_constraint, input_signature=sig)
    return _OVERLAP_FNS[key]


def get_backend() -> TFBackend:
    """The TensorFlow backend object (sets deterministic ops and TF32 off on first use)."""
    _configure_numerics()
    return TFBackend()
