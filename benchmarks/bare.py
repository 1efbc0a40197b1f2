"""The bare-framework yardsticks: the PINN's convolution stack and nothing else.

Each yardstick is the architecture of :mod:`ptycho.weights` (3x3 convs with one zero row and
column of padding, relu, 2x2 max-pool, nearest x2 up-sampling, an amplitude and a phase
decoder, main and border heads, the central decoder's zero padding) written the plain way in
one framework, with none of the library around it: no physics, no loss beyond a mean square
of the heads, no data pipeline, no numpy at the edges (inputs are framework tensors made
once), the framework's own Adam.
Our throughput divided by the yardstick's is the overhead the library adds.

* PyTorch: ``torch.nn.Conv2d`` layers, ``channels_last`` activations and weights (the
  layout torch's oneDNN convolutions are fastest in on CPU), ``torch.optim.Adam(foreach=True)``,
  forward in ``torch.inference_mode``.
* TensorFlow: ``tf.nn.conv2d`` with ``padding="SAME"`` (NHWC) on ``tf.Variable`` weights,
  compiled with ``tf.function``, ``keras.optimizers.Adam``; this was the fastest plain form
  measured (Keras 3 ``Conv2D`` layers compile to the same kernels and were no faster).

The yardsticks run in the same process as the backend they are compared with, so they share
its thread and allocator settings (the same machine conditions for both).
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from ptycho.config.schema import N_LEVELS, ModelConfig
from ptycho.weights import conv_layers, decoder_widths, has_border_heads, has_central_decoder


def _layers(config: ModelConfig) -> list[tuple[str, int, int]]:
    """(name, in, out) of every conv, in the order of the canonical spec."""
    return [(layer.name, layer.cin, layer.cout) for layer in conv_layers(config)]


def _input(config: ModelConfig, batch: int, seed: int = 0) -> np.ndarray:
    """The network's input for ``batch`` groups: C images of one pattern each with
    ``per_pattern_network``, else one image of C channels per group (three times the
    channels with ``backprop_estimate``)."""
    rng = np.random.default_rng(seed)
    return rng.random((batch * config.network_passes, config.input_channels, config.N,
                       config.N), dtype=np.float32)


# ------------------------------------------------------------------------------------ torch

def torch_yardstick(config: ModelConfig, batch: int) -> tuple[Callable[[], None],
                                                               Callable[[], None]]:
    """(train_step, forward) closures of the bare PyTorch conv stack on a fixed batch."""
    import torch
    import torch.nn.functional as F
    from torch import nn

    cl = torch.channels_last
    central, pad = has_central_decoder(config), config.N // 4

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.convs = nn.ModuleDict({
                name.replace(".", "_"): nn.Conv2d(cin, cout, 3, padding=1)
                for name, cin, cout in _layers(config)})

        def block(self, x, prefix):
            x = F.relu(self.convs[f"{prefix}_conv1"](x))
            return F.relu(self.convs[f"{prefix}_conv2"](x))

        def forward(self, x):
            h = x
            for i in range(N_LEVELS):
                h = F.max_pool2d(self.block(h, f"enc{i}"), 2)
            heads = []
            for branch in ("amp", "phase"):
                g = h
                for j in range(len(decoder_widths(config))):
                    g = self.block(F.interpolate(g, scale_factor=2.0, mode="nearest"),
                                   f"{branch}_dec{j}")
                head = self.convs[f"{branch}_head"](g)
                if central:
                    head = F.pad(head, (pad,) * 4)
                    g = F.interpolate(g, scale_factor=2.0, mode="nearest")
                heads.append(head)
                if has_border_heads(config):
                    heads.append(self.convs[f"{branch}_border_head"](g))
            return heads

    return torch_closures(Net().to(memory_format=cl),
                          torch.from_numpy(_input(config, batch)).contiguous(memory_format=cl))


def torch_closures(net, x) -> tuple[Callable[[], None], Callable[[], None]]:
    """(train_step, forward) of a torch module whose outputs are a list of tensors, on the
    fixed batch ``x``: Adam (foreach) on the mean square of the outputs, and inference mode.
    The yardsticks here and in :mod:`benchmarks.peer` are timed through these."""
    import torch

    opt = torch.optim.Adam(net.parameters(), lr=1e-4, foreach=True)

    def train_step() -> None:
        opt.zero_grad(set_to_none=True)
        loss = sum(torch.mean(h * h) for h in net(x))
        loss.backward()
        opt.step()
        float(loss.detach())

    def forward() -> None:
        with torch.inference_mode():
            for h in net(x):
                h.numpy()

    return train_step, forward


# ------------------------------------------------------------------------------- tensorflow

def tensorflow_yardstick(config: ModelConfig, batch: int) -> tuple[Callable[[], None],
                                                                    Callable[[], None]]:
    """(train_step, forward) closures of the bare TensorFlow conv stack on a fixed batch."""
    import keras
    import tensorflow as tf

    rng = np.random.default_rng(1)
    params = {}
    for name, cin, cout in _layers(config):
        lim = np.sqrt(6.0 / (9 * (cin + cout)))
        params[name] = (tf.Variable(rng.uniform(-lim, lim, (3, 3, cin, cout)).astype(np.float32)),
                        tf.Variable(np.zeros(cout, np.float32)))
    variables = [v for kb in params.values() for v in kb]
    opt = keras.optimizers.Adam(learning_rate=1e-4)
    opt.build(variables)

    def conv(x, name):
        k, b = params[name]
        return tf.nn.bias_add(tf.nn.conv2d(x, k, 1, "SAME"), b)

    def block(x, prefix):
        return tf.nn.relu(conv(tf.nn.relu(conv(x, f"{prefix}.conv1")), f"{prefix}.conv2"))

    def up(x):
        return tf.repeat(tf.repeat(x, 2, axis=1), 2, axis=2)

    def net(x):
        h = x
        for i in range(N_LEVELS):
            h = tf.nn.max_pool2d(block(h, f"enc{i}"), 2, 2, "VALID")
        heads = []
        for branch in ("amp", "phase"):
            g = h
            for j in range(len(decoder_widths(config))):
                g = block(up(g), f"{branch}.dec{j}")
            head = conv(g, f"{branch}.head")
            if has_central_decoder(config):
                pad = config.N // 4
                head = tf.pad(head, [[0, 0], [pad, pad], [pad, pad], [0, 0]])
                g = up(g)
            heads.append(head)
            if has_border_heads(config):
                heads.append(conv(g, f"{branch}.border_head"))
        return heads

    return tensorflow_closures(lambda x, training: net(x), variables, opt,
                               tf.constant(np.transpose(_input(config, batch), (0, 2, 3, 1))))


def tensorflow_closures(outputs, variables, opt, x) -> tuple[Callable[[], None],
                                                          Callable[[], None]]:
    """(train_step, forward) of ``outputs(x, training) -> list of tensors`` on the fixed
    NHWC batch ``x``: ``opt`` on the mean square of the outputs over ``variables``, each step a
    ``tf.function``. The yardsticks here and in :mod:`benchmarks.peer` are timed through these."""
    import tensorflow as tf

    @tf.function
    def _train(x):
        with tf.GradientTape() as tape:
            loss = tf.add_n([tf.reduce_mean(h * h) for h in outputs(x, True)])
        opt.apply_gradients(zip(tape.gradient(loss, variables), variables))
        return loss

    @tf.function
    def _forward(x):
        return outputs(x, False)

    def train_step() -> None:
        _train(x).numpy()

    def forward() -> None:
        for h in _forward(x):
            h.numpy()

    return train_step, forward


YARDSTICKS = {"tensorflow": tensorflow_yardstick, "torch": torch_yardstick}
