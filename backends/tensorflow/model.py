"""The PINN on TensorFlow: the network (plain ``tf.Variable`` + ``tf.nn`` ops) and the model object.

Why not Keras layers: the canonical weight layout of :mod:`ptycho.weights` (conv kernels
``(kh, kw, in, out)``, biases ``(out,)``) *is* ``tf.nn.conv2d``'s HWIO layout, so holding one
``tf.Variable`` per canonical entry makes import/export a plain assign/read with no name
mapping, no build step, no layer-default initialisers and no hidden state; every padding,
pooling and up-sampling choice is spelled out below. The network runs channels-last (NHWC),
TensorFlow's fast layout on CPU and GPU; the physics runs on ``(B, C, N, N)`` image stacks
(see :mod:`backends.tensorflow.physics`), with one transpose at each edge of the network.

Architecture (from the docstring of :mod:`ptycho.weights`): 3x3 convs with an explicit zero
padding of 1, relu, 2x2 max-pool (stride 2) in the encoder; nearest x2 up-sampling, two
convs + relu per decoder level; heads to C channels; the amplitude head's activation from
the config, the phase head ``pi * tanh``. ``pad_object`` zeroes the object outside the
central N/2 square; with ``probe_big`` the border heads' output replaces the main heads'
there instead.

>>> import numpy as np
>>> from ptycho.config import ModelConfig
>>> from ptycho.weights import init_weights
>>> cfg = ModelConfig(N=16, base_filters=2, n_filters_scale=1)
>>> model = TFModel(cfg, init_weights(cfg, 0, np.ones((16, 16), np.complex64), 1.0))
>>> model.predict(np.ones((3, 1, 16, 16), np.float32), batch_size=2).shape
(3, 1, 16, 16)
>>> list(model.get_weights())[:2]          # canonical order
['enc0.conv1.kernel', 'enc0.conv1.bias']
"""

from __future__ import annotations

import math
from typing import Callable, Mapping

import numpy as np
import tensorflow as tf

from backends.tensorflow import physics, train
from ptycho.batch import Batch
from ptycho.config.schema import N_LEVELS, ModelConfig, TrainingConfig
from ptycho.errors import WeightsError
from ptycho.physics.losses import LossSettings
from ptycho.physics.patches import central_mask, object_support, probe_disk_mask
from ptycho.weights import (decoder_widths, has_border_heads, network_weight_spec,
                            trainable_names, validate_weights, weight_spec)

BACKEND_NAME = "tensorflow"

#: Zero padding of a 3x3 stride-1 conv: ``"SAME"``, which for a 3x3 kernel at stride 1 is
#: exactly one zero row/column on each side (total padding 2, split evenly), the padding the
#: architecture specifies. Spelled ``"SAME"`` rather than the equivalent explicit
#: ``[[0, 0], [1, 1], [1, 1], [0, 0]]`` for speed: on the 2-core CPU this library is benchmarked
#: on (TF 2.21, oneDNN), explicit padding sends the convolution's gradient to a slow kernel,
#: and a train step at N=64, base_filters=16, n_filters_scale=2, batch 16 took 1.7x as long
#: (conv stack forward + backward, one thread: 420 ms vs 237 ms of CPU time).
CONV_PADDING = "SAME"

#: Precisions :meth:`TFModel.predict` accepts, and the dtype its conv stack runs in.
PREDICT_DTYPES = {"float32": tf.float32, "bfloat16": tf.bfloat16}

AMP_ACTIVATIONS: dict[str, Callable[[tf.Tensor], tf.Tensor]] = {
    "sigmoid": tf.math.sigmoid,
    "swish": lambda x: x * tf.math.sigmoid(x),
    "softplus": tf.math.softplus,
    "relu": tf.nn.relu,
}


# ---------------------------------------------------------------- network building blocks (NHWC)

def conv3x3(x: tf.Tensor, kernel: tf.Tensor, bias: tf.Tensor) -> tf.Tensor:
    """3x3 conv, stride 1, zero padding 1 on each side (``"SAME"``), plus bias; kernel (3, 3, in, out)."""
    y = tf.nn.conv2d(x, tf.cast(kernel, x.dtype), strides=[1, 1, 1, 1], padding=CONV_PADDING,
                     data_format="NHWC", dilations=[1, 1, 1, 1])
    return tf.nn.bias_add(y, tf.cast(bias, x.dtype), data_format="NHWC")


def maxpool2(x: tf.Tensor) -> tf.Tensor:
    """2x2 max-pool with stride 2 (H and W are even: N is a multiple of 8)."""
    return tf.nn.max_pool2d(x, ksize=[1, 2, 2, 1], strides=[1, 2, 2, 1], padding="VALID",
                            data_format="NHWC")


def upsample2(x: tf.Tensor) -> tf.Tensor:
    """Nearest-neighbour x2 up-sampling: ``out[2i + a, 2j + b] = x[i, j]``."""
    s = tf.shape(x)
    b, h, w, c = s[0], s[1], s[2], s[3]
    y = tf.broadcast_to(x[:, :, None, :, None, :], tf.stack([b, h, 2, w, 2, c]))
    return tf.reshape(y, tf.stack([b, 2 * h, 2 * w, c]))


def _conv_block(x: tf.Tensor, params: Mapping[str, tf.Tensor], prefix: str) -> tf.Tensor:
    x = tf.nn.relu(conv3x3(x, params[f"{prefix}.conv1.kernel"], params[f"{prefix}.conv1.bias"]))
    return tf.nn.relu(conv3x3(x, params[f"{prefix}.conv2.kernel"], params[f"{prefix}.conv2.bias"]))


def network(x: tf.Tensor, params: Mapping[str, tf.Tensor], config: ModelConfig,
            compute_dtype: tf.DType = tf.float32) -> dict[str, tf.Tensor]:
    """The CNN: normalised amplitudes NHWC (B, N, N, C) -> pre-activation heads, float32 NHWC.

    Keys ``amp``, ``phase`` and, with border heads, ``amp_border``, ``phase_border``. The conv
    stack runs in ``compute_dtype`` (float32, or bfloat16 for mixed-precision inference);
    the heads are cast back to float32 before any activation.
    """
    h = tf.cast(x, compute_dtype)
    for i in range(N_LEVELS):
        h = maxpool2(_conv_block(h, params, f"enc{i}"))
    heads: dict[str, tf.Tensor] = {}
    for branch in ("amp", "phase"):
        y = h
        for j in range(len(decoder_widths(config))):
            y = _conv_block(upsample2(y), params, f"{branch}.dec{j}")
        heads.update(_heads(y, params, config, branch))
    return heads


def _heads(y: tf.Tensor, params: Mapping[str, tf.Tensor], config: ModelConfig,
           branch: str) -> dict[str, tf.Tensor]:
    """The branch's head and, with border heads, its border head, in one convolution (float32).

    Their kernels are stacked along the output channels: both heads see the same features,
    and a 3x3 convolution to 2C channels costs about what one to C channels does (C = 1 or
    4), so one call instead of two. Each output channel is the same sum of products as in
    its own convolution. (The torch backend does the same.)
    """
    names = [f"{branch}.head"] + ([f"{branch}.border_head"] if has_border_heads(config) else [])
    kernel = tf.concat([params[f"{n}.kernel"] for n in names], axis=3)
    bias = tf.concat([params[f"{n}.bias"] for n in names], axis=0)
    out = tf.cast(conv3x3(y, kernel, bias), tf.float32)
    if len(names) == 1:
        return {branch: out}
    c = config.n_channels
    return {branch: out[..., :c], f"{branch}_border": out[..., c:]}


def object_patches(heads: Mapping[str, tf.Tensor], config: ModelConfig,
                   central: tf.Tensor) -> tf.Tensor:
    """Heads NHWC -> complex64 object patches (B, C, N, N) with the support options applied.

    ``central`` is :func:`ptycho.physics.central_mask` (N, N) float32.
    """
    act = AMP_ACTIVATIONS[config.amp_activation]
    amp = act(heads["amp"])
    phase = math.pi * tf.tanh(heads["phase"])
    if config.pad_object:
        m = central[:, :, None]
        if has_border_heads(config):
            amp = m * amp + (1.0 - m) * act(heads["amp_border"])
            phase = m * phase + (1.0 - m) * (math.pi * tf.tanh(heads["phase_border"]))
        else:
            amp = m * amp
    amp = tf.transpose(amp, [0, 3, 1, 2])
    phase = tf.transpose(phase, [0, 3, 1, 2])
    return tf.complex(amp * tf.cos(phase), amp * tf.sin(phase))


# ---------------------------------------------------------------- the model object

class TFModel:
    """A built PINN holding exactly the canonical weights, as TensorFlow variables.

    Satisfies :class:`backends.protocol.BackendModel`. One ``tf.Variable`` per canonical
    network entry (same name, same layout); the probe as two float32 variables
    ``probe.real`` / ``probe.imag``; ``log_intensity_scale`` a float32 scalar. Whether each
    is trainable follows :func:`ptycho.weights.trainable_names`.
    """

    backend_name = BACKEND_NAME

    def __init__(self, config: ModelConfig, weights: Mapping[str, np.ndarray]):
        if not isinstance(config, ModelConfig):
            raise TypeError(f"config must be a ModelConfig, got {type(config).__name__}")
        validate_weights(config, weights)
        self.config = config
        n, c = config.N, config.n_channels
        self._trainable = trainable_names(config)
        self._vars: dict[str, tf.Variable] = {}
        for name in network_weight_spec(config):
            self._vars[name] = tf.Variable(np.asarray(weights[name]), dtype=tf.float32, name=name,
                                           trainable=name in self._trainable)
        probe = np.asarray(weights["probe"])
        ptrain = "probe" in self._trainable
        self._probe_real = tf.Variable(np.ascontiguousarray(probe.real), dtype=tf.float32,
                                       name="probe.real", trainable=ptrain)
        self._probe_imag = tf.Variable(np.ascontiguousarray(probe.imag), dtype=tf.float32,
                                       name="probe.imag", trainable=ptrain)
        self._log_scale = tf.Variable(np.asarray(weights["log_intensity_scale"]), dtype=tf.float32,
                                      name="log_intensity_scale",
                                      trainable="log_intensity_scale" in self._trainable)
        self._central = tf.constant(central_mask(n), tf.float32)
        support = object_support(n, config.pad_object, config.probe_big)
        # None = all ones: the overlap constraint then gets the coverage as an outer product
        self._support = None if np.all(support == 1) else tf.constant(support, tf.float32)
        self._disk = tf.constant(probe_disk_mask(n), tf.float32) if config.probe_mask else None
        self._constrain = config.gridsize > 1 and config.object_big
        self._optimizer: train.Adam | None = None
        self._loss_settings: LossSettings | None = None
        batch_sig = (tf.TensorSpec([None, c, n, n], tf.float32, name="diffraction"),
                     tf.TensorSpec([None, c, 2], tf.float32, name="rel_offsets"),
                     tf.TensorSpec([], tf.int32, name="canvas_size"))
        settings_sig = (tf.TensorSpec([3], tf.float32, name="loss_weights"),
                        tf.TensorSpec([], tf.float32, name="loss_epsilon"))
        self._predict_fns = {
            p: tf.function(self._make_predict(dt), input_signature=batch_sig[:1],
                           reduce_retracing=False)
            for p, dt in PREDICT_DTYPES.items()}
        self._forward_fn = tf.function(self._forward, input_signature=batch_sig)
        self._losses_fn = tf.function(self._loss_terms, input_signature=batch_sig + settings_sig)
        self._grads_fn = tf.function(self._loss_and_grads, input_signature=batch_sig + settings_sig)
        self._train_fn = None

    # ------------------------------------------------------------ weights
    def get_weights(self) -> dict[str, np.ndarray]:
        """A copy of every canonical entry, in canonical order (bit-exact with what was set)."""
        out: dict[str, np.ndarray] = {}
        for name in network_weight_spec(self.config):
            out[name] = np.array(self._vars[name].numpy(), dtype=np.float32, copy=True)
        probe = np.empty((self.config.N, self.config.N), dtype=np.complex64)
        probe.real = self._probe_real.numpy()
        probe.imag = self._probe_imag.numpy()
        out["probe"] = probe
        out["log_intensity_scale"] = np.array(self._log_scale.numpy(), dtype=np.float32,
                                              copy=True).reshape(())
        return out

    def set_weights(self, weights: Mapping[str, np.ndarray]) -> None:
        """Load every canonical entry (all or nothing); mismatches raise WeightsError."""
        validate_weights(self.config, weights)
        for name, var in self._vars.items():
            var.assign(np.asarray(weights[name]))
        probe = np.asarray(weights["probe"])
        self._probe_real.assign(np.ascontiguousarray(probe.real))
        self._probe_imag.assign(np.ascontiguousarray(probe.imag))
        self._log_scale.assign(np.asarray(weights["log_intensity_scale"]))

    def trainable_variables(self) -> dict[str, list[tf.Variable]]:
        """Trainable canonical name -> its variables (the probe has two: real, imag)."""
        out = {}
        for name in self._trainable:
            if name == "probe":
                out[name] = [self._probe_real, self._probe_imag]
            elif name == "log_intensity_scale":
                out[name] = [self._log_scale]
            else:
                out[name] = [self._vars[name]]
        return out

    # ------------------------------------------------------------ graph pieces
    def _patches(self, diffraction: tf.Tensor, compute_dtype: tf.DType = tf.float32) -> tf.Tensor:
        x = diffraction / tf.exp(self._log_scale)
        heads = network(tf.transpose(x, [0, 2, 3, 1]), self._vars, self.config, compute_dtype)
        return object_patches(heads, self.config, self._central)

    def _make_predict(self, dtype: tf.DType):
        def predict_fn(diffraction):
            return self._patches(diffraction, dtype)
        return predict_fn

    def _forward(self, diffraction, rel_offsets, canvas_size):
        patches = self._patches(diffraction)
        probe_eff = physics.effective_probe(tf.complex(self._probe_real, self._probe_imag),
                                            self._disk)
        constrained, pred = physics.physics_forward(
            patches, probe_eff, self._log_scale, self._constrain, rel_offsets, canvas_size,
            self._support)
        return patches, constrained, pred

    def _loss_terms(self, diffraction, rel_offsets, canvas_size, loss_weights, loss_epsilon):
        patches, constrained, pred = self._forward(diffraction, rel_offsets, canvas_size)
        return physics.total_loss(pred, diffraction, patches, constrained, loss_weights,
                                  loss_epsilon)

    def _loss_and_grads(self, diffraction, rel_offsets, canvas_size, loss_weights, loss_epsilon):
        variables = [v for vs in self.trainable_variables().values() for v in vs]
        with tf.GradientTape(watch_accessed_variables=False) as tape:
            tape.watch(variables)
            terms = self._loss_terms(diffraction, rel_offsets, canvas_size, loss_weights,
                                     loss_epsilon)
        grads = tape.gradient(terms["total"], variables,
                              unconnected_gradients=tf.UnconnectedGradients.ZERO)
        return terms, grads

    # ------------------------------------------------------------ public API
    def _batch_tensors(self, batch: Batch):
        n, c = self.config.N, self.config.n_channels
        if tuple(batch.diffraction.shape[1:]) != (c, n, n):
            raise ValueError(f"batch.diffraction must be (B, {c}, {n}, {n}) for this config "
                             f"(gridsize={self.config.gridsize}, N={n}), got "
                             f"{tuple(batch.diffraction.shape)}")
        if self._constrain:
            physics.canvas_pad(n, int(batch.canvas_size))
        return (tf.constant(np.asarray(batch.diffraction, np.float32)),
                tf.constant(np.asarray(batch.rel_offsets, np.float32)),
                tf.constant(int(batch.canvas_size), tf.int32))

    @staticmethod
    def _settings_tensors(settings: LossSettings):
        return (tf.constant([settings.nll_weight, settings.mae_weight, settings.realspace_weight],
                            tf.float32),
                tf.constant(settings.epsilon, tf.float32))

    def predict(self, diffraction: np.ndarray, batch_size: int = 64,
                precision: str = "float32") -> np.ndarray:
        """Object patches (B, C, N, N) complex64 from diffraction (B, C, N, N) in photon units.

        The network's output before the overlap constraint, computed ``batch_size`` groups at
        a time. ``precision="bfloat16"`` runs the conv stack in bfloat16 (mixed precision:
        float32 weights are cast, heads and everything after them are float32).
        """
        if precision not in self._predict_fns:
            raise ValueError(f"precision must be one of {sorted(self._predict_fns)}, "
                             f"got {precision!r}")
        if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) \
                or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        d = np.asarray(diffraction, dtype=np.float32)
        n, c = self.config.N, self.config.n_channels
        if d.ndim != 4 or tuple(d.shape[1:]) != (c, n, n):
            raise ValueError(f"diffraction must be (B, {c}, {n}, {n}) for this config, "
                             f"got {d.shape}")
        fn = self._predict_fns[precision]
        out = np.empty(d.shape, dtype=np.complex64)
        for s in range(0, d.shape[0], int(batch_size)):
            out[s:s + batch_size] = fn(tf.constant(d[s:s + batch_size])).numpy()
        return out

    def forward(self, batch: Batch) -> dict[str, np.ndarray]:
        """``object`` (network patches), ``object_constrained``, ``pred_amplitude`` (photon units)."""
        patches, constrained, pred = self._forward_fn(*self._batch_tensors(batch))
        return {"object": patches.numpy(), "object_constrained": constrained.numpy(),
                "pred_amplitude": pred.numpy()}

    def losses(self, batch: Batch, settings: LossSettings) -> dict[str, float]:
        """``nll``, ``mae``, ``realspace``, ``total`` for this batch (no update)."""
        terms = self._losses_fn(*self._batch_tensors(batch), *self._settings_tensors(settings))
        return {k: float(v.numpy()) for k, v in terms.items()}

    def gradients(self, batch: Batch, settings: LossSettings) -> dict[str, np.ndarray]:
        """d total / d entry for every trainable entry; the probe's is ``d/d re + 1j d/d im``."""
        _, grads = self._grads_fn(*self._batch_tensors(batch), *self._settings_tensors(settings))
        out: dict[str, np.ndarray] = {}
        it = iter(grads)
        for name, vs in self.trainable_variables().items():
            if name == "probe":
                g = np.empty(vs[0].shape, dtype=np.complex64)
                g.real = next(it).numpy()
                g.imag = next(it).numpy()
                out[name] = g
            else:
                out[name] = np.asarray(next(it).numpy(), dtype=np.float32)
        return out

    def configure_training(self, training: TrainingConfig) -> None:
        """Create the Adam optimiser (beta1, beta2, epsilon, initial learning rate from
        ``training``) and the loss settings, and compile the training step."""
        if not isinstance(training, TrainingConfig):
            raise TypeError(f"training must be a TrainingConfig, got {type(training).__name__}")
        self._loss_settings = LossSettings.from_config(training)
        variables = [v for vs in self.trainable_variables().values() for v in vs]
        self._optimizer = train.Adam(variables, beta1=training.adam_beta1,
                                     beta2=training.adam_beta2, epsilon=training.adam_epsilon,
                                     learning_rate=training.learning_rate)
        self._train_fn = train.compile_train_step(self._loss_and_grads, self._optimizer,
                                                  self.config)

    def _require_training(self, what: str) -> train.Adam:
        if self._optimizer is None:
            raise RuntimeError(f"{what} needs configure_training(training_config) first")
        return self._optimizer

    def set_learning_rate(self, learning_rate: float) -> None:
        """Learning rate for the following steps (a variable: the compiled step is not retraced)."""
        self._require_training("set_learning_rate").set_learning_rate(learning_rate)

    @property
    def learning_rate(self) -> float:
        return self._require_training("learning_rate").learning_rate

    def train_step(self, batch: Batch) -> dict[str, float]:
        """One Adam step on one batch; returns the loss terms computed before the update."""
        self._require_training("train_step")
        terms = self._train_fn(*self._batch_tensors(batch),
                               *self._settings_tensors(self._loss_settings))
        return {k: float(v.numpy()) for k, v in terms.items()}

    @property
    def train_step_traces(self) -> int:
        """How many times the compiled training step has been traced (1 after the first step)."""
        return 0 if self._train_fn is None else self._train_fn.experimental_get_tracing_count()
