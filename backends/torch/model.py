"""The PINN in PyTorch: the network (:class:`PINN`) and the backend model (:class:`TorchModel`).

The architecture is the one of :mod:`ptycho.weights` (its docstring is the specification):
3x3 convolutions with explicit zero padding of 1 on each side (TensorFlow's ``same`` for a
3x3 stride-1 kernel), relu, 2x2 max-pooling, nearest x2 up-sampling, an amplitude head with
the configured activation and a phase head ``pi * tanh``. Everything after the network is
:func:`ptycho.physics.model.physics_forward`, implemented on tensors in
:mod:`backends.torch.physics`.

Layouts: tensors are indexed NCHW with ``C = gridsize**2`` channels, which is also the public
group layout (B, C, N, N), so no transposition happens at the edge; the convolution stack
stores activations and kernels in torch's ``channels_last`` memory format (faster here, see
:data:`DEFAULT_MEMORY_FORMAT`), the heads and the physics use plain contiguous tensors. Kernels are stored in torch's
``(out, in, kh, kw)`` and converted from/to the canonical ``(kh, kw, in, out)`` only in
:meth:`TorchModel.set_weights` / :meth:`TorchModel.get_weights`. Parameters are created
empty and filled from canonical weights (``ptycho.weights.init_weights``); torch's own
initialisers are never used (``nn.Conv2d`` is avoided for that reason).

>>> import numpy as np
>>> from ptycho.config import ModelConfig
>>> from ptycho.weights import init_weights
>>> cfg = ModelConfig(N=16, base_filters=2, n_filters_scale=1)
>>> w = init_weights(cfg, 0, np.ones((16, 16), np.complex64), 1.0)
>>> model = TorchModel(cfg, w)
>>> model.predict(np.ones((3, 1, 16, 16), np.float32), batch_size=2).dtype
dtype('complex64')
"""

from __future__ import annotations

import math
from typing import Mapping, Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ptycho.batch import Batch
from ptycho.config.schema import N_LEVELS, ModelConfig, TrainingConfig
from ptycho.errors import WeightsError
from ptycho.physics.losses import LossSettings
from ptycho.physics.patches import central_mask, object_support, probe_disk_mask
from ptycho.weights import (decoder_widths, has_border_heads, network_weight_spec,
                            trainable_names, validate_weights, weight_spec)

from backends.torch import physics

BRANCHES = ("amp", "phase")
PRECISIONS = {"float32": None, "bfloat16": torch.bfloat16}
#: Memory format of activations and kernels. Measured on the 2-core CPU this library is
#: developed on (torch 2.13, oneDNN, median train step after warm-up): channels_last is faster
#: at N=64, base_filters=16, n_filters_scale=2, batch 16 (134 ms vs 171 ms per step,
#: predict 38 ms vs 55 ms) and no slower on the small test networks.
DEFAULT_MEMORY_FORMAT = torch.channels_last
#: The first convolution's input channels are zero-padded to at least this many. With
#: gridsize 1 the input has one channel, a tensor that is NCHW and channels_last at once, and
#: oneDNN then runs ``enc0.conv1`` in NCHW: its output leaves channels_last (a layout copy
#: forward and backward, and relu's backward on mixed layouts, 20x slower) and its weight
#: gradient takes a slow kernel (8 ms for 40 MFLOP). With four channels (measured on the 2-core
#: CPU, batch 16, N=64) ``enc0`` forward + backward takes 22 ms instead of 38 ms.
MIN_INPUT_CHANNELS = 4


# -- batch shards on threads ------------------------------------------------------------------
# A batch is split into as many contiguous shards as torch has intra-op threads, and each
# shard runs forward (and backward) in its own Python thread with ONE intra-op thread (torch
# releases the GIL inside its ops; autograd runs concurrent backward calls concurrently on
# the CPU). The alternative, every op split across OpenMP threads, synchronises the threads
# at the end of each of the ~400 ops of a train step: measured on the 2-core CPU (quiet
# machine, N=64, batch 16) a train step of the bare conv stack took 162 ms that way and 137 ms
# sharded, with less CPU time (259 ms against 324 ms), and a thread that another process
# holds up delays only its own shard. With one intra-op thread (torch.set_num_threads(1),
# what the tests use) nothing is sharded: one call, as before. Losses are means, so the
# batch's loss and gradients are the shard-size-weighted sums of the shards' (the same sums
# in another order: they agree to float32 rounding; a run is deterministic for a given
# thread count).

def batch_shards(n: int, workers: Optional[int] = None) -> list[slice]:
    """Contiguous slices of ``range(n)``, one per worker (``torch.get_num_threads()``), sizes
    differing by at most one; a single slice for one worker or one item.

    >>> [(s.start, s.stop) for s in batch_shards(5, 2)], len(batch_shards(1, 4))
    ([(0, 3), (3, 5)], 1)
    """
    k = max(1, min(int(workers or torch.get_num_threads()), int(n)))
    bounds = [0] + [int(math.ceil(i * n / k)) for i in range(1, k)] + [int(n)]
    return [slice(a, b) for a, b in zip(bounds[:-1], bounds[1:])]


_POOL = None


def run_sharded(fn, shards: list[slice]) -> list:
    """``[fn(s) for s in shards]``, the shards in parallel threads with one intra-op thread each
    (torch's thread setting is restored afterwards); one shard runs directly in this thread."""
    global _POOL
    if len(shards) == 1:
        return [fn(shards[0])]
    if _POOL is None or _POOL._max_workers < len(shards):
        from concurrent.futures import ThreadPoolExecutor
        _POOL = ThreadPoolExecutor(max_workers=len(shards), thread_name_prefix="ptycho-shard")
    before = torch.get_num_threads()

    def task(shard: slice):
        torch.set_num_threads(1)        # this thread's OpenMP team: itself
        return fn(shard)

    try:
        return list(_POOL.map(task, shards))
    finally:
        torch.set_num_threads(before)


def _key(name: str) -> str:
    """Canonical name -> torch parameter name (torch forbids dots in parameter names)."""
    return name.replace(".", "__")


def kernel_to_torch(kernel: np.ndarray) -> np.ndarray:
    """Canonical ``(kh, kw, in, out)`` -> torch ``(out, in, kh, kw)`` (a C-ordered copy)."""
    return np.array(np.transpose(kernel, (3, 2, 0, 1)), dtype=np.float32, order="C", copy=True)


def kernel_from_torch(weight: np.ndarray) -> np.ndarray:
    """Torch ``(out, in, kh, kw)`` -> canonical ``(kh, kw, in, out)`` (a C-ordered copy, never a
    view of a parameter's memory)."""
    return np.array(np.transpose(weight, (2, 3, 1, 0)), dtype=np.float32, order="C", copy=True)


def _amp_activation(name: str):
    if name == "sigmoid":
        return torch.sigmoid
    if name == "swish":
        return lambda x: x * torch.sigmoid(x)
    if name == "softplus":
        return lambda x: F.softplus(x, beta=1.0, threshold=20.0)
    if name == "relu":
        return F.relu
    raise ValueError(f"unknown amp_activation {name!r}")


class PINN(nn.Module):
    """Network, probe and log intensity scale as torch parameters (float32).

    ``forward(diffraction, rel_offsets, canvas_size)`` returns ``(patches, constrained,
    pred_amplitude)``: the network's complex patches, their overlap-constrained version (the
    same tensor unless gridsize > 1 and object_big) and the predicted far-field amplitude in
    photon units. Parameters are uninitialised until :meth:`TorchModel.set_weights`.
    """

    def __init__(self, config: ModelConfig, device: torch.device,
                 memory_format: torch.memory_format = DEFAULT_MEMORY_FORMAT):
        super().__init__()
        self.config = config
        self.memory_format = memory_format
        self.net = nn.ParameterDict()
        for name, entry in network_weight_spec(config).items():
            shape = entry.shape
            if name.endswith(".kernel"):
                kh, kw, cin, cout = shape
                shape = (cout, cin, kh, kw)
            t = torch.empty(shape, dtype=torch.float32, device=device)
            if len(shape) == 4:
                t = t.contiguous(memory_format=memory_format)
            self.net[_key(name)] = nn.Parameter(t, requires_grad=True)
        n = config.N
        self.probe_real = nn.Parameter(torch.empty((n, n), dtype=torch.float32, device=device),
                                       requires_grad=config.probe_trainable)
        self.probe_imag = nn.Parameter(torch.empty((n, n), dtype=torch.float32, device=device),
                                       requires_grad=config.probe_trainable)
        self.log_intensity_scale = nn.Parameter(
            torch.empty((), dtype=torch.float32, device=device),
            requires_grad=config.intensity_scale_trainable)
        f32 = dict(dtype=torch.float32, device=device)
        self.register_buffer("support", torch.as_tensor(
            object_support(n, config.pad_object, config.probe_big), **f32), persistent=False)
        self.register_buffer("central", torch.as_tensor(central_mask(n) > 0, device=device),
                             persistent=False)
        self.register_buffer("probe_disk", torch.as_tensor(probe_disk_mask(n), **f32),
                             persistent=False)
        # what the overlap constraint weights coverage by; None = all ones (the coverage is
        # then an outer product of the shifts' row sums, no shift of a block of ones)
        self._constraint_support = None if bool(torch.all(self.support == 1)) else self.support
        self._activation = _amp_activation(config.amp_activation)
        self._border = has_border_heads(config)

    # -- the network ------------------------------------------------------------------------
    def _conv(self, x: torch.Tensor, name: str) -> torch.Tensor:
        return F.conv2d(x, self.net[_key(name + ".kernel")], self.net[_key(name + ".bias")],
                        stride=1, padding=1, dilation=1, groups=1)

    def _block(self, x: torch.Tensor, name: str) -> torch.Tensor:
        x = F.relu(self._conv(x, name + ".conv1"), inplace=True)
        return F.relu(self._conv(x, name + ".conv2"), inplace=True)

    def _first_conv(self, x: torch.Tensor) -> torch.Tensor:
        """``enc0.conv1`` on the network input, its C channels zero-padded to at least
        :data:`MIN_INPUT_CHANNELS` (and the kernel's input axis likewise): the added products
        are exact zeros, so every output is the same sum of the same products."""
        name = "enc0.conv1"
        kernel, bias = self.net[_key(name + ".kernel")], self.net[_key(name + ".bias")]
        pad = MIN_INPUT_CHANNELS - x.shape[1]
        if pad > 0:
            x = F.pad(x, (0, 0, 0, 0, 0, pad))
            kernel = F.pad(kernel, (0, 0, 0, 0, 0, pad))
        return F.conv2d(x.contiguous(memory_format=self.memory_format),
                        kernel.contiguous(memory_format=self.memory_format), bias,
                        stride=1, padding=1, dilation=1, groups=1)

    def features(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Pre-activation head outputs (B, C, N, N): ``amp.head``, ``phase.head`` (and border heads)."""
        h = F.relu(self._first_conv(x), inplace=True)
        h = F.relu(self._conv(h, "enc0.conv2"), inplace=True)
        h = F.max_pool2d(h, kernel_size=2, stride=2, padding=0)
        for i in range(1, N_LEVELS):
            h = F.max_pool2d(self._block(h, f"enc{i}"), kernel_size=2, stride=2, padding=0)
        out = {}
        for branch in BRANCHES:
            g = h
            for j in range(len(decoder_widths(self.config))):
                g = F.interpolate(g, scale_factor=2.0, mode="nearest")
                g = self._block(g, f"{branch}.dec{j}")
            out.update(self._heads(g, branch))
        return out

    def _heads(self, g: torch.Tensor, branch: str) -> dict[str, torch.Tensor]:
        """The branch's head and, with border heads, its border head, in one convolution.

        Their kernels are stacked along the output channels: the two heads see the same
        features, and a 3x3 convolution to 2C channels costs what one to C channels does
        (oneDNN, C = 1 or 4; 6.4 ms against 6.2 ms forward + backward at batch 16, N=64), so
        one call instead of two saves ~4 % of a train step. Each output channel is the same
        sum of products as in its own convolution.
        """
        names = [f"{branch}.head"] + ([f"{branch}.border_head"] if self._border else [])
        if len(names) == 1:
            return {names[0]: self._conv(g, names[0])}
        kernel = torch.cat([self.net[_key(n + ".kernel")] for n in names], dim=0)
        bias = torch.cat([self.net[_key(n + ".bias")] for n in names], dim=0)
        y = F.conv2d(g, kernel.contiguous(memory_format=self.memory_format), bias,
                     stride=1, padding=1, dilation=1, groups=1)
        c = self.config.n_channels
        return {names[0]: y[:, :c], names[1]: y[:, c:]}

    def network(self, x: torch.Tensor, autocast_dtype: Optional[torch.dtype] = None) -> torch.Tensor:
        """Normalised amplitudes (B, C, N, N) -> complex64 object patches (B, C, N, N).

        With ``autocast_dtype`` (bfloat16) the convolution stack runs under autocast; the
        heads' activations and the complex patches are float32 / complex64.
        """
        if autocast_dtype is not None:
            with torch.autocast(device_type=x.device.type, dtype=autocast_dtype):
                feats = self.features(x)
        else:
            feats = self.features(x)
        feats = {k: v.float().contiguous() for k, v in feats.items()}
        amp = self._activation(feats["amp.head"])
        phase = math.pi * torch.tanh(feats["phase.head"])
        if self._border:
            amp = torch.where(self.central, amp, self._activation(feats["amp.border_head"]))
            phase = torch.where(self.central, phase,
                                math.pi * torch.tanh(feats["phase.border_head"]))
        elif self.config.pad_object:
            amp = amp * self.support
        return torch.complex(amp * torch.cos(phase), amp * torch.sin(phase))

    # -- the physics after the network ------------------------------------------------------
    def probe(self) -> torch.Tensor:
        """The effective probe (N, N) complex64 (disk-masked when ``probe_mask``)."""
        return physics.effective_probe(torch.complex(self.probe_real, self.probe_imag),
                                       self.probe_disk if self.config.probe_mask else None)

    def forward(self, diffraction: torch.Tensor, rel_offsets: Optional[torch.Tensor] = None,
                canvas_size: Optional[int] = None):
        patches = self.network(diffraction / torch.exp(self.log_intensity_scale))
        constrain = self.config.gridsize > 1 and self.config.object_big
        constrained, pred = physics.physics_forward(
            patches, self.probe(), self.log_intensity_scale, constrain, rel_offsets, canvas_size,
            self._constraint_support)
        return patches, constrained, pred


def configure_numerics() -> None:
    """Full float32 precision and deterministic algorithms (process-wide torch settings).

    TF32 off for matmuls and convolutions, cuDNN autotuning off, deterministic algorithms on
    (``warn_only`` so that a CUDA op without a deterministic kernel warns rather than fails).
    Called when the backend is selected and when a model is built.
    """
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.deterministic = True
    torch.set_float32_matmul_precision("highest")
    torch.use_deterministic_algorithms(True, warn_only=True)
    # Deterministic algorithms stay on. What is turned off is only their side effect of
    # filling every freshly allocated buffer with NaN (a debugging aid for ops that read
    # uninitialised memory; no op of this library does, and every result is unchanged): it
    # is a full extra write of each activation, 1-4 % of a train step (batch 16-64, N=64).
    torch.utils.deterministic.fill_uninitialized_memory = False


def default_device() -> torch.device:
    """CUDA when available, else CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


class TorchModel:
    """A built PINN holding its weights and, once configured, its Adam state.

    Implements :class:`backends.protocol.BackendModel`. Arrays in and out are numpy in the
    public layout; canonical weights in and out (validated strictly, copied bit for bit).
    """

    backend_name = "torch"

    def __init__(self, config: ModelConfig, weights: Mapping[str, np.ndarray],
                 device: Optional[str] = None,
                 memory_format: torch.memory_format = DEFAULT_MEMORY_FORMAT):
        if not isinstance(config, ModelConfig):
            raise TypeError(f"config must be a ModelConfig, got {type(config).__name__}")
        configure_numerics()
        self.config = config
        self.device = torch.device(device) if device is not None else default_device()
        self.module = PINN(config, self.device, memory_format)
        self.set_weights(weights)
        self._trainer = None
        self._learning_rate: Optional[float] = None

    # -- weights ----------------------------------------------------------------------------
    def _tensors_of(self, name: str) -> list[torch.Tensor]:
        """The torch parameters behind a canonical entry (the probe has two: real, imag)."""
        if name == "probe":
            return [self.module.probe_real, self.module.probe_imag]
        if name == "log_intensity_scale":
            return [self.module.log_intensity_scale]
        return [self.module.net[_key(name)]]

    def trainable_parameters(self) -> list[tuple[str, list[torch.Tensor]]]:
        """(canonical name, its torch tensors) for every trainable entry, in canonical order."""
        return [(name, self._tensors_of(name)) for name in trainable_names(self.config)]

    def set_weights(self, weights: Mapping[str, np.ndarray]) -> None:
        """Load every canonical entry in place (the optimiser state stays attached).

        Missing, extra, misshapen, wrongly typed or non-finite entries raise
        :class:`ptycho.errors.WeightsError` naming them; nothing is loaded then.
        """
        validate_weights(self.config, weights)
        with torch.no_grad():
            for name in weight_spec(self.config):
                arr = np.asarray(weights[name])
                if name == "probe":
                    parts = [np.ascontiguousarray(arr.real, np.float32),
                             np.ascontiguousarray(arr.imag, np.float32)]
                elif name.endswith(".kernel"):
                    parts = [kernel_to_torch(arr)]
                else:
                    parts = [np.array(arr, dtype=np.float32, order="C", copy=True)]
                for tensor, part in zip(self._tensors_of(name), parts):
                    if tuple(tensor.shape) != part.shape:   # guarded by validate_weights
                        raise WeightsError(f"{name!r}: cannot load shape {part.shape} into "
                                           f"{tuple(tensor.shape)}")
                    tensor.copy_(torch.from_numpy(part))

    def get_weights(self) -> dict[str, np.ndarray]:
        """A copy of every canonical entry, in canonical order and layout."""
        out: dict[str, np.ndarray] = {}
        for name in weight_spec(self.config):
            tensors = [t.detach().cpu().contiguous().numpy() for t in self._tensors_of(name)]
            if name == "probe":
                probe = np.empty(tensors[0].shape, np.complex64)
                probe.real = tensors[0]
                probe.imag = tensors[1]
                out[name] = probe
            elif name.endswith(".kernel"):
                out[name] = kernel_from_torch(tensors[0])
            else:
                out[name] = np.array(tensors[0], dtype=np.float32, copy=True)
        return out

    # -- tensors at the edge ----------------------------------------------------------------
    def _check_groups(self, diffraction: np.ndarray, what: str) -> None:
        c, n = self.config.n_channels, self.config.N
        if diffraction.ndim != 4 or diffraction.shape[1:] != (c, n, n):
            raise ValueError(f"{what} must be (B, {c}, {n}, {n}) = (groups, gridsize**2, N, N), "
                             f"got shape {diffraction.shape}")

    def batch_tensors(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor, int]:
        """(diffraction float32, rel_offsets float32, canvas_size) on the model's device."""
        self._check_groups(batch.diffraction, "Batch.diffraction")
        if self.config.gridsize > 1 and self.config.object_big:
            physics.canvas_pad(self.config.N, int(batch.canvas_size))   # M >= N, same parity
        d = torch.as_tensor(np.ascontiguousarray(batch.diffraction, np.float32), device=self.device)
        r = torch.as_tensor(np.ascontiguousarray(batch.rel_offsets, np.float32), device=self.device)
        return d, r, int(batch.canvas_size)

    # -- inference --------------------------------------------------------------------------
    def predict(self, diffraction: np.ndarray, batch_size: int = 64,
                precision: str = "float32") -> np.ndarray:
        """Object patches (B, C, N, N) complex64 from diffraction (B, C, N, N) in photon units.

        The network output before the overlap constraint, in batches of ``batch_size`` under
        ``torch.inference_mode`` (each batch in shards on threads, see :func:`run_sharded`). ``precision="bfloat16"`` runs the convolutions under
        bfloat16 autocast (the heads, the complex patches and the result stay float32 /
        complex64).
        """
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {sorted(PRECISIONS)}, got {precision!r}")
        if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) \
                or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        diffraction = np.asarray(diffraction)
        self._check_groups(diffraction, "diffraction")
        out = np.empty(diffraction.shape, np.complex64)
        with torch.inference_mode():
            scale = torch.exp(self.module.log_intensity_scale)
        for start in range(0, diffraction.shape[0], int(batch_size)):
            chunk = np.ascontiguousarray(diffraction[start:start + batch_size], np.float32)

            def run(shard: slice, chunk=chunk, start=start) -> None:
                with torch.inference_mode():
                    x = torch.as_tensor(chunk[shard], device=self.device) / scale
                    patches = self.module.network(x, autocast_dtype=PRECISIONS[precision])
                    out[start + shard.start:start + shard.stop] = patches.cpu().numpy()

            run_sharded(run, batch_shards(len(chunk)))
        return out

    def forward(self, batch: Batch) -> dict[str, np.ndarray]:
        """``object`` (network patches), ``object_constrained`` and ``pred_amplitude`` as numpy."""
        d, r, m = self.batch_tensors(batch)
        with torch.inference_mode():
            patches, constrained, pred = self.module(d, r, m)
        return {"object": patches.cpu().numpy(), "object_constrained": constrained.cpu().numpy(),
                "pred_amplitude": pred.cpu().numpy()}

    # -- training (backends/torch/train.py) -------------------------------------------------
    def losses(self, batch: Batch, settings: LossSettings) -> dict[str, float]:
        """``nll``, ``mae``, ``realspace`` and ``total`` for this batch (no update)."""
        from backends.torch import train
        return train.evaluate_losses(self, batch, settings)

    def gradients(self, batch: Batch, settings: LossSettings) -> dict[str, np.ndarray]:
        """d total / d entry for every trainable canonical entry, canonical layout.

        The probe's gradient is ``d/d real + 1j * d/d imag`` (complex64).
        """
        from backends.torch import train
        return train.compute_gradients(self, batch, settings)

    def configure_training(self, training: TrainingConfig) -> None:
        """Create a fresh Adam state (Keras-3 form) and the loss settings from ``training``."""
        from backends.torch import train
        self._trainer = train.Trainer(self, training)

    def set_learning_rate(self, learning_rate: float) -> None:
        """Learning rate of the following steps."""
        lr = float(learning_rate)
        if not (math.isfinite(lr) and lr > 0):
            raise ValueError(f"learning rate must be a finite positive number, got {learning_rate!r}")
        if self._trainer is None:
            raise RuntimeError("set_learning_rate before configure_training: call "
                               "configure_training(training_config) first")
        self._trainer.learning_rate = lr

    def train_step(self, batch: Batch) -> dict[str, float]:
        """One Adam step on ``batch``; returns the loss terms computed before the update."""
        if self._trainer is None:
            raise RuntimeError("train_step before configure_training: call "
                               "configure_training(training_config) first")
        return self._trainer.step(batch)
