"""A framework-free stand-in backend built on the numpy reference, for testing the harness itself.

:class:`NumpyBackend` satisfies :class:`backends.protocol.Backend`: its physics ops call
:mod:`ptycho.physics` and round the result to float32 / complex64, and its models run
:mod:`parity.reference` (float64) and keep their weights in float32, like a real backend. Two
of them agree with each other exactly and with the reference to float32 rounding, so a harness
run on a pair of them must pass; wrapping one of them with a fault (see ``tests/``) must make
the report name the stage of the fault. It lets the harness's own tests run in the ``core``
tox environment, where neither framework is installed.

>>> b = NumpyBackend()
>>> float(b.far_field_amplitude(np.ones((4, 4), np.complex64))[2, 2])
4.0
"""

from __future__ import annotations

from typing import Mapping, Optional

import numpy as np

import ptycho.physics as P
from ptycho.batch import Batch
from ptycho.config.schema import ModelConfig
from ptycho.physics.losses import LossSettings
from ptycho.weights import validate_weights

from parity import reference as R


def _f32(x) -> np.ndarray:
    x = np.asarray(x)
    return x.astype(np.complex64) if np.iscomplexobj(x) else x.astype(np.float32)


class NumpyModel(R.ReferenceModel):
    """A :class:`backends.protocol.BackendModel` computed by :mod:`parity.reference`, with
    float32 weights and float32 / complex64 outputs like a real backend."""

    def __init__(self, config: ModelConfig, weights: Mapping[str, np.ndarray], backend_name: str):
        super().__init__(config, weights, store_dtype="float32")
        self.backend_name = backend_name

    def set_weights(self, weights: Mapping[str, np.ndarray]) -> None:
        validate_weights(self.config, weights)          # strict: dtypes too, as a backend
        super().set_weights(weights)

    def predict(self, diffraction: np.ndarray, batch_size: int = 64,
                precision: str = "float32", estimate: Optional[np.ndarray] = None
                ) -> np.ndarray:
        return _f32(super().predict(np.asarray(diffraction, np.float32), batch_size, precision,
                                    estimate))

    def forward(self, batch: Batch) -> dict[str, np.ndarray]:
        return {k: _f32(v) for k, v in super().forward(batch).items()}

    def constrain(self, patches: np.ndarray, rel_offsets: np.ndarray,
                  canvas_size: int) -> np.ndarray:
        return _f32(super().constrain(patches, rel_offsets, canvas_size))

    def losses(self, batch: Batch, settings: LossSettings) -> dict[str, float]:
        return {k: float(np.float32(v)) for k, v in super().losses(batch, settings).items()}

    def gradients(self, batch: Batch, settings: LossSettings) -> dict[str, np.ndarray]:
        return {k: _f32(v) for k, v in super().gradients(batch, settings).items()}

    def train_step(self, batch: Batch) -> dict[str, float]:
        return {k: float(np.float32(v)) for k, v in super().train_step(batch).items()}


class NumpyBackend:
    """A :class:`backends.protocol.Backend` on numpy (float64 inside, float32 at the edge)."""

    def __init__(self, name: str = "numpy"):
        self.name = name

    def version(self) -> str:
        return f"numpy {np.__version__}"

    def configure_process(self, threads=None) -> None:
        """Nothing to configure: numpy has no process-wide numerics settings here."""

    def build_model(self, config: ModelConfig, weights: Mapping[str, np.ndarray]) -> NumpyModel:
        return NumpyModel(config, weights, self.name)

    def illuminate(self, probe, obj):
        return _f32(P.illuminate(probe, obj))

    def far_field_amplitude(self, psi):
        return _f32(P.far_field_amplitude(psi))

    def translate(self, images, offsets):
        return _f32(P.translate(images, offsets))

    def reassemble_patches(self, patches, rel_offsets, canvas_size, support=None):
        return _f32(P.reassemble_patches(patches, rel_offsets, canvas_size, support))

    def extract_patches(self, canvas, rel_offsets, n):
        return _f32(P.extract_patches(canvas, rel_offsets, n))

    def overlap_constraint(self, patches, rel_offsets, canvas_size, support=None):
        return _f32(P.overlap_constraint(patches, rel_offsets, canvas_size, support))

    def poisson_nll(self, pred_amplitude, observed_amplitude, eps, mask=None):
        return float(np.float32(P.poisson_nll(pred_amplitude, observed_amplitude, eps, mask)))

    def mae(self, pred_amplitude, observed_amplitude, mask=None):
        return float(np.float32(P.mae(pred_amplitude, observed_amplitude, mask)))

    def realspace_consistency(self, patches, constrained):
        return float(np.float32(P.realspace_consistency(patches, constrained)))


def get_backend() -> NumpyBackend:
    """The stand-in as a registrable backend module (``BackendInfo("parity.fake", ...)``)."""
    return NumpyBackend("numpy")
