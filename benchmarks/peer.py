"""The peer's network as a yardstick: PtychoPINN's CNN, reproduced in each framework.

PtychoPINN (the tool our users come from) is not installable from the package index, so its
network is rebuilt here from its shape at N=64 (issue 16), and its training step is timed in
the same run as ours:

* encoder: 3 blocks of two 3x3 convs + relu, then a 2x2 max-pool; widths 64 / 128 / 256;
* two decoders (amplitude: sigmoid head; phase: pi * tanh head) of 3x3 conv blocks with
  128 / 64 filters and x2 nearest up-sampling, up to N/2, then zero-padded to N;
* a border branch (swish) for the probe region: one 3x3 conv to the patch's C channels on the
  last decoder level's features, up-sampled to N (the region outside the central N/2);
* Keras ``Conv2D`` layers, padding "same", float32 (TensorFlow); ``nn.Conv2d`` channels_last
  (PyTorch); the framework's Adam; the loss a mean square of the outputs (no physics).

About 2.3 M parameters (:func:`parameters`) and, counted as 2 FLOPs per multiply-add,
:func:`peer_flops` per pattern forward. :func:`ours_flops` counts our network the same way,
from the canonical weight spec, so the two are compared by one rule.
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np

from benchmarks.bare import tensorflow_closures, torch_closures
from ptycho.config.schema import ModelConfig
from ptycho.weights import conv_layers

ENCODER = (64, 128, 256)
DECODER = (128, 64)


def _peer_convs(n: int, c: int) -> list[tuple[int, int, int]]:
    """(side, in, out) of every 3x3 conv of the peer's network at pattern side ``n``."""
    out, cin, side = [], c, n
    for w in ENCODER:
        out += [(side, cin, w), (side, w, w)]
        cin, side = w, side // 2
    for _branch in ("amp", "phase"):
        d_in, d_side = ENCODER[-1], n // 2 ** len(ENCODER)
        for w in DECODER:
            d_side *= 2
            out += [(d_side, d_in, w), (d_side, w, w)]
            d_in = w
        out.append((d_side, d_in, c))              # the head, at N/2
    out.append((n // 2, DECODER[-1], c))           # the border branch
    return out


def peer_flops(n: int = 64, c: int = 1) -> float:
    """Forward FLOPs per pattern group of the peer's network (2 per multiply-add)."""
    return float(sum(2 * 9 * side * side * cin * cout for side, cin, cout in _peer_convs(n, c)))


def parameters(n: int = 64, c: int = 1) -> int:
    return sum(9 * cin * cout + cout for _, cin, cout in _peer_convs(n, c))


def ours_flops(config: ModelConfig) -> float:
    """Forward FLOPs per pattern group of our network (2 per multiply-add), from the
    architecture of :mod:`ptycho.weights` (C passes with ``per_pattern_network``)."""
    return 2.0 * sum(layer.macs for layer in conv_layers(config)) * config.network_passes


def _input(n: int, c: int, batch: int) -> np.ndarray:
    return np.random.default_rng(0).random((batch, c, n, n), dtype=np.float32)


def torch_peer(n: int, c: int, batch: int) -> tuple[Callable[[], None], Callable[[], None]]:
    """(train_step, forward) of the peer's network in PyTorch on a fixed batch."""
    import torch
    import torch.nn.functional as F
    from torch import nn

    cl = torch.channels_last
    pad = n // 4

    class Peer(nn.Module):
        def __init__(self):
            super().__init__()
            convs, cin = [], c
            for w in ENCODER:
                convs += [nn.Conv2d(cin, w, 3, padding=1), nn.Conv2d(w, w, 3, padding=1)]
                cin = w
            self.enc = nn.ModuleList(convs)
            self.dec = nn.ModuleDict()
            for branch in ("amp", "phase"):
                layers, d_in = [], ENCODER[-1]
                for w in DECODER:
                    layers += [nn.Conv2d(d_in, w, 3, padding=1), nn.Conv2d(w, w, 3, padding=1)]
                    d_in = w
                layers.append(nn.Conv2d(d_in, c, 3, padding=1))
                self.dec[branch] = nn.ModuleList(layers)
            self.border = nn.Conv2d(DECODER[-1], c, 3, padding=1)

        def forward(self, x):
            h = x
            for i in range(len(ENCODER)):
                h = F.relu(self.enc[2 * i + 1](F.relu(self.enc[2 * i](h))))
                h = F.max_pool2d(h, 2)
            out = []
            for branch, act in (("amp", torch.sigmoid), ("phase", lambda t: math.pi * torch.tanh(t))):
                g, layers = h, self.dec[branch]
                for j in range(len(DECODER)):
                    g = F.interpolate(g, scale_factor=2.0, mode="nearest")
                    g = F.relu(layers[2 * j + 1](F.relu(layers[2 * j](g))))
                out.append(F.pad(act(layers[-1](g)), (pad, pad, pad, pad)))
                if branch == "phase":
                    border = F.silu(self.border(g))
                    out.append(F.interpolate(border, scale_factor=2.0, mode="nearest"))
            return out

    return torch_closures(Peer().to(memory_format=cl),
                          torch.from_numpy(_input(n, c, batch)).contiguous(memory_format=cl))


def tensorflow_peer(n: int, c: int, batch: int) -> tuple[Callable[[], None], Callable[[], None]]:
    """(train_step, forward) of the peer's network with Keras layers on a fixed batch."""
    import keras
    import tensorflow as tf

    def conv(w, act=None):
        return keras.layers.Conv2D(w, 3, padding="same", activation=act, dtype="float32")

    inp = keras.Input((n, n, c))
    h = inp
    for w in ENCODER:
        h = conv(w, "relu")(conv(w, "relu")(h))
        h = keras.layers.MaxPooling2D(2)(h)
    outputs = []
    for branch, act in (("amp", "sigmoid"), ("phase", None)):
        g = h
        for w in DECODER:
            g = keras.layers.UpSampling2D(2)(g)
            g = conv(w, "relu")(conv(w, "relu")(g))
        head = conv(c, act)(g)
        if branch == "phase":
            head = keras.layers.Lambda(lambda t: math.pi * tf.tanh(t))(head)
            border = keras.layers.UpSampling2D(2)(conv(c, "swish")(g))
            outputs.append(border)
        outputs.append(keras.layers.ZeroPadding2D(n // 4)(head))
    model = keras.Model(inp, outputs)
    return tensorflow_closures(lambda x, training: model(x, training=training),
                               model.trainable_variables, keras.optimizers.Adam(learning_rate=1e-4),
                               tf.constant(np.transpose(_input(n, c, batch), (0, 2, 3, 1))))


PEERS = {"tensorflow": tensorflow_peer, "torch": torch_peer}
