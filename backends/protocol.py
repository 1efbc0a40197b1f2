"""What a backend must provide. Checked structurally (``typing.Protocol``); never imports a framework.

Arrays cross this boundary as numpy in the public layout (see ``ptycho/batch.py`` and the
design): groups (B, C, N, N), complex64 object patches, canonical weights from
:mod:`ptycho.weights`. Inside, a backend uses its framework's fast layout.

Both protocols are implemented once, in :mod:`backends.common` (``Backend`` and ``Model``),
over each framework's ops namespace; a stand-in (``parity.NumpyBackend``) implements them
directly.
"""

from __future__ import annotations

from typing import Mapping, Optional, Protocol, Sequence, runtime_checkable

import numpy as np

from ptycho.batch import Batch
from ptycho.config.schema import ModelConfig, TrainingConfig
from ptycho.physics.losses import LossSettings


@runtime_checkable
class BackendModel(Protocol):
    """A built PINN in one framework, holding its weights (and, once configured, an optimiser)."""

    config: ModelConfig
    backend_name: str

    def get_weights(self, names: Optional[Sequence[str]] = None) -> dict[str, np.ndarray]:
        """A copy of every canonical entry (network, probe, log_intensity_scale); ``names``:
        only those (an unknown one is a WeightsError)."""

    def set_weights(self, weights: Mapping[str, np.ndarray]) -> None:
        """Load every canonical entry; missing, extra or misshapen entries raise WeightsError."""

    def predict(self, diffraction: np.ndarray, batch_size: int = 64,
                precision: str = "float32", estimate: Optional[np.ndarray] = None
                ) -> np.ndarray:
        """Object patches (B, C, N, N) complex64 from diffraction (B, C, N, N) in photon units.

        The network output before the overlap constraint, computed in batches. ``estimate``
        (B, C, N, N) complex: the scan's stitched estimate, exactly when the config's
        ``estimate_scope`` is ``"scan"``.
        """

    def forward(self, batch: Batch) -> dict[str, np.ndarray]:
        """``object`` (network patches), ``object_constrained`` and ``pred_amplitude``."""

    def constrain(self, patches: np.ndarray, rel_offsets: np.ndarray,
                  canvas_size: int) -> np.ndarray:
        """The overlap constraint the loss applies (identity unless gridsize > 1 with object_big)."""

    def losses(self, batch: Batch, settings: LossSettings) -> dict[str, float]:
        """``nll``, ``mae``, ``realspace`` and ``total`` for this batch (no update)."""

    def gradients(self, batch: Batch, settings: LossSettings) -> dict[str, np.ndarray]:
        """d total / d entry for every trainable canonical entry (:func:`ptycho.weights.trainable_names`).

        The probe's gradient is ``d/d real + 1j * d/d imag``.
        """

    def configure_training(self, training: TrainingConfig) -> None:
        """Create the Adam optimiser (betas, epsilon from ``training``) and the loss settings."""

    def set_learning_rate(self, learning_rate: float) -> None:
        """Learning rate for the following steps (the core's schedule calls this each epoch)."""

    def train_step(self, batch: Batch) -> dict[str, float]:
        """One Adam step on one batch; returns the loss terms computed before the update."""


@runtime_checkable
class Backend(Protocol):
    """A framework implementation: builds models and exposes the physics ops for parity checks.

    The physics ops take and return numpy (float32 / complex64 computation inside the
    framework) and mirror :mod:`ptycho.physics` function for function.
    """

    name: str

    def version(self) -> str:
        """The framework's version string."""

    def configure_process(self, threads: int | None = None) -> None:
        """Process-wide settings (deterministic kernels, TF32 off, threads); only when called."""

    def build_model(self, config: ModelConfig, weights: Mapping[str, np.ndarray]) -> BackendModel:
        """A model holding exactly ``weights`` (canonical; validated strictly)."""

    def illuminate(self, probe: np.ndarray, obj: np.ndarray) -> np.ndarray: ...

    def far_field_amplitude(self, psi: np.ndarray) -> np.ndarray: ...

    def translate(self, images: np.ndarray, offsets: np.ndarray) -> np.ndarray: ...

    def reassemble_patches(self, patches: np.ndarray, rel_offsets: np.ndarray, canvas_size: int,
                           support: np.ndarray | None = None) -> np.ndarray: ...

    def extract_patches(self, canvas: np.ndarray, rel_offsets: np.ndarray, n: int) -> np.ndarray: ...

    def overlap_constraint(self, patches: np.ndarray, rel_offsets: np.ndarray, canvas_size: int,
                           support: np.ndarray | None = None) -> np.ndarray: ...

    def poisson_nll(self, pred_amplitude: np.ndarray, observed_amplitude: np.ndarray,
                    eps: float, mask: np.ndarray | None = None) -> float: ...

    def mae(self, pred_amplitude: np.ndarray, observed_amplitude: np.ndarray,
            mask: np.ndarray | None = None) -> float: ...

    def realspace_consistency(self, patches: np.ndarray, constrained: np.ndarray) -> float: ...
