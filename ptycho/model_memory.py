"""What the network of a :class:`ptycho.config.ModelConfig` costs in memory, from the config alone.

Estimated before any backend builds the model (a bundle's config or a training config may ask
for a network that no machine holds), from the canonical weight specification and the layer
shapes of the architecture described in :mod:`ptycho.weights`:

* parameters: every canonical entry (:func:`ptycho.weights.weight_spec`), at its dtype's size;
* activations of one group (float32), times ``network_passes`` for the network's part: the
  input (C, N, N); per encoder level the two conv
  outputs and their ReLUs at that level's resolution, and the pooled output; per decoder
  branch and level the up-sampled input, the two conv outputs and their ReLUs; the heads
  (border heads too; with a central decoder also the main heads' zero padding to N and the
  border heads' up-sampled input); and the physics of the group: complex object patches, illuminated
  patches and their far fields (C, N, N) complex, the predicted amplitude (C, N, N). (The
  overlap constraint's canvas depends on the scan positions; the data side checks it.)

Training keeps every activation for the backward pass and their gradients (x2) and holds the
parameters, their gradients and Adam's two moments (x4). Inference holds the parameters and,
per group, only what is alive at once: the largest layer's input and output (x2 for the
framework's temporaries) and what outlives its layer. Against the resident memory one
prediction pass adds (default widths 32/64/128, CPU; measured in a fresh process):

==========================  =======  ===========  ========
N, gridsize, groups         torch    TensorFlow   estimate
==========================  =======  ===========  ========
64, 1, 256                  439 MiB  545 MiB      558 MiB
64, 2, 64 (one C network)   178 MiB  158 MiB      168 MiB
128, 1, 64                  454 MiB  550 MiB      558 MiB
==========================  =======  ===========  ========

The central decoder (``central_decoder=True``) leaves these estimates as they are (the widest
layer is the encoder's first). The gridsize-2 row was
measured with ``per_pattern_network=False`` (one network of C channels
per group). With ``per_pattern_network`` (the default) a group of C patterns runs the network
C times, so 64 groups of 4 cost what 256 groups of 1 do: the first row (estimate 558 MiB).

The frameworks' own overhead (a few hundred MiB) is not counted.

>>> import os
>>> from ptycho.config import ModelConfig
>>> small = estimate_model_memory(ModelConfig(N=32, base_filters=2, n_filters_scale=1))
>>> small.parameter_bytes, small.activation_bytes_per_group, small.inference_bytes_per_group
(18172, 245248, 70144)
>>> os.environ["PTYCHO_MAX_BYTES"] = "8GiB"
>>> check_model_memory(ModelConfig(N=512, gridsize=4, base_filters=256), batch_size=16)
Traceback (most recent call last):
...
ptycho.errors.ResourceLimitError: the network (N=512, gridsize 4, widths (512, 1024, 2048)): inference in batches of 16 groups (parameters 587 MiB, activations 32.6 GiB per group) needs 523 GiB, more than the memory budget of 8 GiB (PTYCHO_MAX_BYTES=8GiB); set PTYCHO_MAX_BYTES to change it
>>> del os.environ["PTYCHO_MAX_BYTES"]
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ptycho.config.schema import N_LEVELS, ModelConfig
from ptycho.errors import ResourceLimitError
from ptycho.limits import check_bytes, format_bytes
from ptycho.weights import (conv_layers, has_central_decoder, skip_level, skip_widths,
                            weight_spec)

#: Bytes per activation value (float32).
ACTIVATION_BYTES = 4
#: Training holds each activation and its gradient.
TRAINING_ACTIVATION_FACTOR = 2
#: Training holds the parameters, their gradients and Adam's first and second moments.
TRAINING_PARAMETER_FACTOR = 4


@dataclass(frozen=True)
class ModelMemory:
    """Estimated bytes of a network: its parameters, every activation of one group (what
    training keeps for the backward pass), and the activations alive at once when one group
    is predicted (inference frees each layer's input once its output exists)."""

    parameter_bytes: int
    activation_bytes_per_group: int
    inference_bytes_per_group: int

    def inference_bytes(self, batch_size: int) -> int:
        """Parameters plus the activations alive at once for ``batch_size`` groups."""
        return self.parameter_bytes + batch_size * self.inference_bytes_per_group

    def training_bytes(self, batch_size: int) -> int:
        """Parameters, gradients and Adam moments, plus activations and their gradients."""
        return (TRAINING_PARAMETER_FACTOR * self.parameter_bytes
                + TRAINING_ACTIVATION_FACTOR * batch_size * self.activation_bytes_per_group)


#: A layer's input and output may be doubled by the framework's temporaries (padding,
#: workspaces, a ReLU out of place) while it runs.
INFERENCE_LAYER_FACTOR = 2


def _layers(config: ModelConfig) -> list[tuple[str, int, int]]:
    """(kind, input values, output values) per group of every layer, in order (float32);
    with ``per_pattern_network`` a group's C passes run together, so each layer holds C
    images.

    From :func:`ptycho.weights.conv_layers`: each ``conv``; after the encoder's second conv
    of a level its ``pool``; before a decoder level's first conv, and before a border head
    that runs on up-sampled features (central decoder), an ``upsample``, and with skip
    connections the ``concat`` of the encoder's features after it; after a main head
    that runs at N/2 (central decoder), its zero ``pad`` to N."""
    n, passes, central = config.N, config.network_passes, has_central_decoder(config)
    # each decoder level's first conv: the encoder channels it takes beside the up-sampled ones
    skips = {f"{branch}.dec{j}.conv1": w for branch in ("amp", "phase")
             for j, w in enumerate(skip_widths(config))}
    layers = []
    for conv in conv_layers(config):
        side, cin, cout = conv.side, conv.cin, conv.cout
        skip = skips.get(conv.name, 0)
        if conv.name in skips or (central and conv.name.endswith("border_head")):
            up = cin - skip
            layers.append(("upsample", up * (side // 2) ** 2, up * side * side))
        if skip:
            layers.append(("concat", (cin - skip) * side * side, cin * side * side))
        layers.append(("conv", cin * side * side, cout * side * side))
        if conv.name.startswith("enc") and conv.name.endswith("conv2"):
            layers.append(("pool", cout * side * side, cout * (side // 2) ** 2))
        if central and conv.name.endswith(".head"):
            layers.append(("pad", cout * side * side, cout * n * n))
    return [(kind, passes * a, passes * b) for kind, a, b in layers]


def activation_values_per_group(config: ModelConfig) -> int:
    """Number of float32 activation values one group of ``config``'s network produces
    (every layer's output, convs counted twice for their ReLUs or the heads' activations,
    the input and the physics)."""
    n, c = config.N, config.n_channels
    network = sum((2 if kind == "conv" else 1) * out for kind, _, out in _layers(config))
    return c * n * n + network + _physics_values(config)


def _physics_values(config: ModelConfig) -> int:
    """Complex object, illuminated patches and far field (2 values each), predicted amplitude."""
    n, c = config.N, config.n_channels
    return 2 * 3 * c * n * n + c * n * n


def inference_values_per_group(config: ModelConfig) -> int:
    """Activation values alive at once when one group is predicted: the largest layer's input
    and output (x :data:`INFERENCE_LAYER_FACTOR`), plus what outlives its layer (the encoder's
    output, kept for the second branch, and with skip connections those of the levels the
    decoders take; the first branch's heads; the physics)."""
    n, c = config.N, config.n_channels
    widest = max(a + b for _, a, b in _layers(config))
    encoder_out = config.widths[-1] * (n >> N_LEVELS) ** 2
    # with skip connections the encoder outputs the decoders take live until the last one's
    skipped = sum(w * (n >> skip_level(j)) ** 2 for j, w in enumerate(skip_widths(config)))
    kept = config.network_passes * (encoder_out + skipped) + 2 * c * n * n
    return INFERENCE_LAYER_FACTOR * widest + kept + _physics_values(config)


def estimate_model_memory(config: ModelConfig) -> ModelMemory:
    """Parameter bytes and activation bytes per group of ``config``'s network (no framework)."""
    params = sum(math.prod(e.shape) * np.dtype(e.dtype).itemsize
                 for e in weight_spec(config).values())
    return ModelMemory(int(params), ACTIVATION_BYTES * activation_values_per_group(config),
                       ACTIVATION_BYTES * inference_values_per_group(config))


def check_model_memory(config: ModelConfig, batch_size: int, *, training: bool = False,
                       error: type = ResourceLimitError, where: str = "") -> ModelMemory:
    """Raise ``error`` unless the network of ``config`` fits the memory budget.

    ``batch_size``: groups per batch (of prediction, or of training with ``training``).
    ``where`` prefixes the message (e.g. the bundle's path). Returns the estimate.
    """
    mem = estimate_model_memory(config)
    batch = max(int(batch_size), 1)
    need = mem.training_bytes(batch) if training else mem.inference_bytes(batch)
    per_group = mem.activation_bytes_per_group if training else mem.inference_bytes_per_group
    what = (f"{where}the network (N={config.N}, gridsize {config.gridsize}, widths "
            f"{config.widths}): {'training' if training else 'inference'} in batches of {batch} "
            f"group{'s' if batch != 1 else ''} (parameters {format_bytes(mem.parameter_bytes)}, "
            f"activations {format_bytes(per_group)} per group)")
    check_bytes(need, what, error)
    return mem
