"""A trained PINN in one backend, with the config it was trained under."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Optional, Sequence

import numpy as np

from backends.registry import framework_version
from ptycho.atomic import PathLike
from ptycho.bundle import save_bundle
from ptycho.config.schema import ModelConfig, TrainingConfig
from ptycho.hardware import warn_if_bfloat16_emulated
from ptycho.model_memory import estimate_model_memory
from ptycho.training import History


#: Pixels of the patterns in one prediction batch by default (64 patterns of 64 x 64): the
#: training batch (16) is chosen for the optimiser, not for throughput, and per call
#: overhead dominates small batches (256 patterns at N=64, gridsize 1, bfloat16, 2 CPU cores:
#: batches of 16 / 64 patterns, torch 0.39 / 0.34 s, TensorFlow 0.30 / 0.23 s).
INFERENCE_BATCH_PIXELS = 64 * 64 * 64
#: ... as long as the batch's estimated inference memory stays under this (a wide network
#: keeps a smaller batch; never smaller than the training batch).
INFERENCE_BATCH_BYTES = 512 << 20


def inference_batch_size(config: TrainingConfig) -> int:
    """Groups per prediction batch when none is given: the training batch, or more where a
    group is small (:data:`INFERENCE_BATCH_PIXELS`, within :data:`INFERENCE_BATCH_BYTES`).

    >>> from ptycho.config import ModelConfig, TrainingConfig
    >>> inference_batch_size(TrainingConfig(model=ModelConfig(N=64), batch_size=16))
    64
    >>> inference_batch_size(TrainingConfig(model=ModelConfig(N=64, gridsize=2), batch_size=16))
    16
    >>> inference_batch_size(TrainingConfig(model=ModelConfig(N=64, base_filters=256),
    ...                                     batch_size=16))
    16
    """
    group_pixels = config.model.n_channels * config.model.N ** 2
    per_group = estimate_model_memory(config.model).inference_bytes_per_group
    larger = min(INFERENCE_BATCH_PIXELS // group_pixels, INFERENCE_BATCH_BYTES // max(per_group, 1))
    return max(int(config.batch_size), larger)


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
        (``estimate``: the scan's stitched estimate, with ``estimate_scope="scan"``),
        ``batch_size`` groups at a time (default :func:`inference_batch_size`)."""
        # passed only when given: a backend model written before the scan's estimate (its
        # predict without the argument) still serves every other config
        extra = {} if estimate is None else {"estimate": estimate}
        warn_if_bfloat16_emulated(precision, "inference")
        return self.backend_model.predict(
            diffraction, batch_size=batch_size or inference_batch_size(self.config),
            precision=precision, **extra)

    def get_weights(self, names: Optional[Sequence[str]] = None) -> dict[str, np.ndarray]:
        """The canonical weights (copies); ``names``: only those entries."""
        if names is None:     # asked as before names existed: any backend model answers
            return self.backend_model.get_weights()
        return self.backend_model.get_weights(names=names)

    def probe(self) -> np.ndarray:
        """The model's (raw) probe, read alone."""
        return self.get_weights(names=["probe"])["probe"]

    def save(self, path: PathLike, extra: Optional[Mapping[str, Any]] = None) -> None:
        """Write a bundle atomically (see :mod:`ptycho.bundle`)."""
        save_bundle(path, self.get_weights(), self.config, backend_name=self.backend,
                    framework_version=framework_version(self.backend), history=self.history,
                    extra=extra)
