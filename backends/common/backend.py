"""The backend object, written once: a name, an ops namespace, and numpy-in/numpy-out physics.

:class:`Backend` satisfies :class:`backends.protocol.Backend` for every framework. Its physics
methods take numpy (any real or complex dtype), check shapes at the edge, compute in float32 /
complex64 with the framework through :mod:`backends.common.physics`, and return numpy (losses:
Python floats); they mirror :mod:`ptycho.physics` function for function.
"""

from __future__ import annotations

from typing import Mapping, Optional

import numpy as np

from backends.common import physics
from backends.common.distributed import ProcessGroup
from backends.common.model import Model
from ptycho.config.schema import ModelConfig
from ptycho.distributed import DEFAULT_TIMEOUT_S, World


def _real_or_complex(x) -> tuple[np.ndarray, str]:
    x = np.asarray(x)
    return (x, "complex64") if np.iscomplexobj(x) else (x, "float32")


class Backend:
    """A framework's implementation of the protocol: ``name`` plus its ``ops`` namespace."""

    def __init__(self, name: str, ops):
        self.name = name
        self.ops = ops

    def __repr__(self) -> str:
        return f"<Backend {self.name!r} ({self.ops.FRAMEWORK} {self.version()})>"

    def version(self) -> str:
        """The framework's version string."""
        return self.ops.framework_version()

    def configure_process(self, threads: Optional[int] = None) -> None:
        """Process-wide settings for reproducible float32 numerics: deterministic kernels, TF32
        off, and ``threads`` intra-op threads when given (see ``ops.configure_process``).

        Never applied implicitly: the CLI and the training workflow call it
        (:func:`backends.configure_process`); a library user calls it when wanted.
        """
        self.ops.configure_process(threads)

    def start_process_group(self, world: World,
                            timeout_s: float = DEFAULT_TIMEOUT_S) -> ProcessGroup:
        """Join the group of processes ``world`` describes (see :mod:`ptycho.distributed`)
        with the framework's engine (torch: ``torch.distributed``, gloo or NCCL; TensorFlow:
        ``MultiWorkerMirroredStrategy``). A process-wide act, done only when called: after
        :meth:`configure_process`, before any model is built. Collectives give up after
        ``timeout_s`` seconds. ``group.close()`` leaves the group.
        """
        return ProcessGroup(self.ops, world, timeout_s)

    def build_model(self, config: ModelConfig, weights: Mapping[str, np.ndarray],
                    device: Optional[str] = None, group: Optional[ProcessGroup] = None) -> Model:
        """A model holding exactly ``weights`` (canonical; validated strictly).

        ``device``: where the tensors live, for a framework with several (torch: a device
        string; default CUDA when available, else CPU; in a group, the group's device).
        ``group``: a started :class:`ProcessGroup`; the model's losses, gradients and
        training steps then take this rank's part of a global batch and return the whole
        batch's values, the same on every rank (see :class:`Model`).
        """
        return Model(self.ops, self.name, config, weights, device, group)

    # ------------------------------------------------------------ numpy in / numpy out
    def _t(self, x, dtype: Optional[str] = None):
        x, kind = _real_or_complex(x)
        return self.ops.tensor(x, dtype or kind)

    def _np(self, t) -> np.ndarray:
        return self.ops.read(t)

    @staticmethod
    def _check_groups(patches: np.ndarray, rel_offsets: np.ndarray) -> None:
        if np.ndim(patches) != 4 or np.shape(rel_offsets) != np.shape(patches)[:2] + (2,):
            raise ValueError(f"need patches (B, C, N, N) and rel_offsets (B, C, 2), got "
                             f"{np.shape(patches)} and {np.shape(rel_offsets)}")

    def illuminate(self, probe: np.ndarray, obj: np.ndarray) -> np.ndarray:
        return self._np(physics.illuminate(self.ops, self._t(probe, "complex64"),
                                           self._t(obj, "complex64")))

    def far_field_amplitude(self, psi: np.ndarray) -> np.ndarray:
        return self._np(physics.far_field_amplitude(self.ops, self._t(psi, "complex64")))

    def translate(self, images: np.ndarray, offsets: np.ndarray) -> np.ndarray:
        if np.shape(offsets)[-1:] != (2,):
            raise ValueError(f"offsets must end in an axis of length 2 (dx, dy), got shape "
                             f"{np.shape(offsets)}")
        return self._np(physics.translate(self.ops, self._t(images),
                                          self._t(offsets, "float32")))

    def reassemble_patches(self, patches: np.ndarray, rel_offsets: np.ndarray, canvas_size: int,
                           support: Optional[np.ndarray] = None) -> np.ndarray:
        self._check_groups(patches, rel_offsets)
        physics.canvas_pad(np.shape(patches)[-1], int(canvas_size))
        sup = None if support is None else self._t(support, "float32")
        return self._np(physics.reassemble_patches(self.ops, self._t(patches),
                                                   self._t(rel_offsets, "float32"),
                                                   int(canvas_size), sup))

    def extract_patches(self, canvas: np.ndarray, rel_offsets: np.ndarray, n: int) -> np.ndarray:
        if np.ndim(canvas) != 3 or np.ndim(rel_offsets) != 3 \
                or np.shape(rel_offsets)[0] != np.shape(canvas)[0] \
                or np.shape(rel_offsets)[-1] != 2:
            raise ValueError(f"need canvas (B, M, M) and rel_offsets (B, C, 2), got "
                             f"{np.shape(canvas)} and {np.shape(rel_offsets)}")
        physics.canvas_pad(int(n), np.shape(canvas)[-1])
        return self._np(physics.extract_patches(self.ops, self._t(canvas),
                                                self._t(rel_offsets, "float32"), int(n)))

    def overlap_constraint(self, patches: np.ndarray, rel_offsets: np.ndarray, canvas_size: int,
                           support: Optional[np.ndarray] = None) -> np.ndarray:
        self._check_groups(patches, rel_offsets)
        physics.canvas_pad(np.shape(patches)[-1], int(canvas_size))
        sup = None if support is None else self._t(support, "float32")
        return self._np(physics.overlap_constraint(self.ops, self._t(patches),
                                                   self._t(rel_offsets, "float32"),
                                                   int(canvas_size), sup))

    def poisson_nll(self, pred_amplitude: np.ndarray, observed_amplitude: np.ndarray,
                    eps: float, mask: Optional[np.ndarray] = None) -> float:
        m = None if mask is None else self._t(mask, "float32")
        return float(self._np(physics.poisson_nll(
            self.ops, self._t(pred_amplitude, "float32"), self._t(observed_amplitude, "float32"),
            float(eps), m)))

    def mae(self, pred_amplitude: np.ndarray, observed_amplitude: np.ndarray,
            mask: Optional[np.ndarray] = None) -> float:
        m = None if mask is None else self._t(mask, "float32")
        return float(self._np(physics.mae(self.ops, self._t(pred_amplitude, "float32"),
                                          self._t(observed_amplitude, "float32"), m)))

    def realspace_consistency(self, patches: np.ndarray, constrained: np.ndarray) -> float:
        return float(self._np(physics.realspace_consistency(
            self.ops, self._t(patches, "complex64"), self._t(constrained, "complex64"))))
