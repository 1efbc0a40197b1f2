"""A trained PINN in one backend, with the config it was trained under."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Optional

import numpy as np

from backends.registry import framework_version
from ptycho.atomic import PathLike
from ptycho.bundle import save_bundle
from ptycho.config.schema import ModelConfig, TrainingConfig
from ptycho.training import History


@dataclass
class PtychoModel:
    """A backend model plus its training config and history.

    ``backend_model`` satisfies :class:`backends.protocol.BackendModel`; this wrapper adds
    what the workflows need to scale new data (``config.nphotons``) and to save bundles.
    """

    backend_model: Any
    config: TrainingConfig
    history: Optional[History] = None

    @property
    def backend(self) -> str:
        """Canonical name of the backend holding the model."""
        return self.backend_model.backend_name

    @property
    def model_config(self) -> ModelConfig:
        return self.config.model

    def predict(self, diffraction: np.ndarray, batch_size: Optional[int] = None,
                precision: str = "float32", estimate: Optional[np.ndarray] = None
                ) -> np.ndarray:
        """Object patches (B, C, N, N) complex64 from diffraction (B, C, N, N) in photon units
        (``estimate``: the scan's stitched estimate, with ``estimate_scope="scan"``)."""
        # passed only when given: a backend model written before the scan's estimate (its
        # predict without the argument) still serves every other config
        extra = {} if estimate is None else {"estimate": estimate}
        return self.backend_model.predict(diffraction, batch_size=batch_size or self.config.batch_size,
                                          precision=precision, **extra)

    def get_weights(self) -> dict[str, np.ndarray]:
        """The canonical weights (copies)."""
        return self.backend_model.get_weights()

    def save(self, path: PathLike, extra: Optional[Mapping[str, Any]] = None) -> None:
        """Write a bundle atomically (see :mod:`ptycho.bundle`)."""
        save_bundle(path, self.get_weights(), self.config, backend_name=self.backend,
                    framework_version=framework_version(self.backend), history=self.history,
                    extra=extra)
