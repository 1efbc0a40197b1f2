"""The PyTorch backend: ``get_backend()`` returns a :class:`TorchBackend`.

Modules (the TensorFlow backend has the same ones): :mod:`.physics` (the physics on tensors),
:mod:`.model` (the network and :class:`~backends.torch.model.TorchModel`), :mod:`.train`
(losses, gradients, the Keras-3-form Adam step).

Numerics are fixed once, when the backend is selected or a model built
(:func:`~backends.torch.model.configure_numerics`): float32 everywhere, TF32 off for
matmuls and convolutions, cuDNN autotuning off and deterministic algorithms on.

Design measurements (2-core CPU, torch 2.13, one train step at N=64, base_filters=16,
n_filters_scale=2, batch 16, gridsize 1, median after warm-up): ``channels_last`` 134 ms vs
NCHW 171 ms, so the convolution stack runs channels_last; ``torch.compile`` (inductor) took
40 s to compile and then 206 ms per step against 172 ms eager (inductor does not generate
code for the complex FFT/physics ops and falls back), so the steps run eagerly.

>>> backend = get_backend()
>>> backend.name
'torch'
>>> import numpy as np
>>> backend.far_field_amplitude(np.ones((4, 4), np.complex64))[2, 2]
np.float32(4.0)
"""

from __future__ import annotations

import os
from typing import Mapping, Optional

import numpy as np

os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")   # before CUDA initialises
#: CPU runtime settings, read by torch's libraries when they load (so only when this package
#: is imported before torch; a value the user set wins). Measured on the 2-core CPU this
#: library is benchmarked on (``make bench``, ``benchmarks/README.md``):
#:
#: * ``OMP_WAIT_POLICY=PASSIVE``: OpenMP threads that wait at the end of a parallel region
#:   sleep instead of spinning. When another process wants a core, a spinning thread burns
#:   the timeslice that the threads doing the work need: with one competing process our train
#:   step (N=64, batch 16, its batch shards on two threads, see ``model.run_sharded``) took
#:   190 ms with passive waiting and 330 ms with torch's default spin, and with every op
#:   split over two OpenMP threads (torch's default) 2-4 s instead of 0.3-0.4 s. On a quiet
#:   machine our step takes the same time either way (135-137 ms); torch code that splits
#:   each op over OpenMP threads, the bare conv stack of ``benchmarks/``, is then ~20 %
#:   slower with passive waiting (set ``OMP_WAIT_POLICY`` before importing to choose).
#: * ``THP_MEM_ALLOC_ENABLE=1``: buffers of 2 MB and more are backed by transparent huge
#:   pages; activations of a batch of 64 (33 MB each) otherwise come from fresh ``mmap`` s
#:   whose page faults cost ~40 % of an inference batch (583 ms -> 341 ms of CPU time).
CPU_RUNTIME_ENV = {"OMP_WAIT_POLICY": "PASSIVE", "THP_MEM_ALLOC_ENABLE": "1"}
for _key, _value in CPU_RUNTIME_ENV.items():
    os.environ.setdefault(_key, _value)

import torch  # noqa: E402

from ptycho.config.schema import ModelConfig  # noqa: E402

from backends.torch import physics  # noqa: E402
from backends.torch.model import TorchModel, configure_numerics  # noqa: E402

__all__ = ["TorchBackend", "TorchModel", "get_backend", "configure_numerics"]


def _real(x) -> torch.Tensor:
    return torch.as_tensor(np.ascontiguousarray(x, dtype=np.float32))


def _any(x) -> torch.Tensor:
    """float32 or complex64 tensor from numpy input (complex when the input is complex)."""
    x = np.asarray(x)
    dtype = np.complex64 if np.iscomplexobj(x) else np.float32
    return torch.as_tensor(np.ascontiguousarray(x, dtype=dtype))


def _numpy(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().numpy()


class TorchBackend:
    """Implements :class:`backends.protocol.Backend` on PyTorch.

    The physics ops take and return numpy and compute in float32 / complex64 on the CPU,
    mirroring :mod:`ptycho.physics` function for function.
    """

    name = "torch"

    def version(self) -> str:
        """The installed torch version string."""
        return str(torch.__version__)

    def build_model(self, config: ModelConfig, weights: Mapping[str, np.ndarray],
                    device: Optional[str] = None) -> TorchModel:
        """A :class:`TorchModel` holding exactly ``weights`` (canonical; validated strictly).

        ``device``: a torch device string; default CUDA when available, else CPU.
        """
        return TorchModel(config, weights, device=device)

    # -- physics ops, numpy in / numpy out ------------------------------------------------
    def illuminate(self, probe: np.ndarray, obj: np.ndarray) -> np.ndarray:
        return _numpy(physics.illuminate(_any(probe).to(torch.complex64),
                                         _any(obj).to(torch.complex64)))

    def far_field_amplitude(self, psi: np.ndarray) -> np.ndarray:
        return _numpy(physics.far_field_amplitude(_any(psi).to(torch.complex64)))

    def translate(self, images: np.ndarray, offsets: np.ndarray) -> np.ndarray:
        return _numpy(physics.translate(_any(images), _real(offsets)))

    def reassemble_patches(self, patches: np.ndarray, rel_offsets: np.ndarray, canvas_size: int,
                           support: Optional[np.ndarray] = None) -> np.ndarray:
        sup = None if support is None else _real(support)
        return _numpy(physics.reassemble_patches(_any(patches), _real(rel_offsets),
                                                 int(canvas_size), sup))

    def extract_patches(self, canvas: np.ndarray, rel_offsets: np.ndarray, n: int) -> np.ndarray:
        return _numpy(physics.extract_patches(_any(canvas), _real(rel_offsets), int(n)))

    def overlap_constraint(self, patches: np.ndarray, rel_offsets: np.ndarray, canvas_size: int,
                           support: Optional[np.ndarray] = None) -> np.ndarray:
        sup = None if support is None else _real(support)
        return _numpy(physics.overlap_constraint(_any(patches), _real(rel_offsets),
                                                 int(canvas_size), sup))

    def poisson_nll(self, pred_amplitude: np.ndarray, observed_amplitude: np.ndarray,
                    eps: float) -> float:
        return float(physics.poisson_nll(_real(pred_amplitude), _real(observed_amplitude),
                                         float(eps)))

    def mae(self, pred_amplitude: np.ndarray, observed_amplitude: np.ndarray) -> float:
        return float(physics.mae(_real(pred_amplitude), _real(observed_amplitude)))

    def realspace_consistency(self, patches: np.ndarray, constrained: np.ndarray) -> float:
        return float(physics.realspace_consistency(_any(patches), _any(constrained)))


_BACKEND: Optional[TorchBackend] = None


def get_backend() -> TorchBackend:
    """The PyTorch backend (configures torch's numerics on first use)."""
    global _BACKEND
    if _BACKEND is None:
        configure_numerics()
        _BACKEND = TorchBackend()
    return _BACKEND
