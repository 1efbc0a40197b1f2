"""The PINN model object, written once over a backend's ops namespace.

:class:`Model` satisfies :class:`backends.protocol.BackendModel` for every backend: it holds
one backend variable per canonical weight entry (kernels in the backend's native layout; the
probe as two float32 variables, real and imaginary; ``log_intensity_scale`` a scalar), checks
every argument at its edge (numpy in, numpy out), and composes :mod:`~backends.common.network`,
:mod:`~backends.common.physics` and :mod:`~backends.common.adam`. What differs between
frameworks lives in the ops namespace: how a function is compiled (``ops.compile``: a
``tf.function`` with a fixed signature, or the eager function), how gradients are taken
(``ops.value_and_grad``) and how a batch is split over threads (``ops.shards`` /
``ops.run_sharded``; one shard where the framework parallelises inside each op).

Losses are means; a batch split into shards computes each shard's share of the batch's
means (sums divided by the whole batch's counts) and adds them up, which is exact in real
arithmetic and equal to float32 rounding in practice (a run is deterministic for a given
thread count).

Across processes it is the same one level up. A model built with ``group=`` (a started
:class:`~backends.common.distributed.ProcessGroup`) is one rank of a data-parallel run:
:meth:`Model.losses`, :meth:`Model.gradients` and :meth:`Model.train_step` take this rank's
part of a global batch, sum the counts over the ranks first (the whole batch's
denominators), compute this rank's share of the terms and gradients, and sum those over the
ranks (one collective: the list packed into one buffer); every rank then applies the same
Adam update to the same weights. A rank whose part is empty (a last batch shorter than the
group) contributes zeros. Every rank must call these methods in the same order.
"""

from __future__ import annotations

from typing import Mapping, Optional, Sequence

import contextlib

import numpy as np

from backends.common import network, physics
from backends.common.adam import Adam
from backends.common.gradients import sharded_value_and_grad
from backends.common.refine import REGULARISATION, STEP, Refiner
from ptycho.batch import Batch
from ptycho.config.schema import ModelConfig, TrainingConfig
from ptycho.physics.losses import LossSettings
from ptycho.physics.patches import (central_mask, grid_layout, object_support,
                                    overlap_constraint_on_grid, probe_disk_mask)
from ptycho.weights import (network_weight_spec, select_names, trainable_names,
                            validate_weights)

#: Precisions :meth:`Model.predict` accepts: the dtype its conv stack runs in.
PRECISIONS = ("float32", "bfloat16")
LOSS_KEYS = ("nll", "mae", "realspace", "total")
#: How a batch's mask is passed to a compiled function: absent, shared (N, N), per pattern.
MASK_KINDS = ("none", "shared", "per_pattern")
#: Groups per call of :meth:`BackendModel.constrain`: its intermediates then stay in the
#: cache instead of being fresh buffers of tens of MB (256 groups of 4 at N=64 on 2 CPU
#: cores: torch 0.29 -> 0.10 s, 0.08 s with ops.py's whole-pixel shifts, TensorFlow 0.19 ->
#: 0.17 s; the same values).
CONSTRAIN_CHUNK_GROUPS = 32


def _mask_kind(mask: Optional[np.ndarray]) -> str:
    return "none" if mask is None else ("shared" if mask.ndim == 2 else "per_pattern")


class Model:
    """A built PINN in one backend, holding exactly the canonical weights.

    ``ops`` is the backend's ops namespace, ``backend_name`` its registry name, ``device``
    where tensors live (a backend that has one device ignores it).
    """

    def __init__(self, ops, backend_name: str, config: ModelConfig,
                 weights: Mapping[str, np.ndarray], device=None, group=None):
        if not isinstance(config, ModelConfig):
            raise TypeError(f"config must be a ModelConfig, got {type(config).__name__}")
        validate_weights(config, weights)
        if group is not None and group.ops is not ops:
            raise ValueError(f"the process group runs on {group.ops.FRAMEWORK}, the model on "
                             f"{ops.FRAMEWORK}: start the group with the model's backend")
        self.ops = ops
        self.backend_name = backend_name
        self.config = config
        #: the started process group this model is one rank of (None: a single process)
        self.process_group = group
        if group is not None and device is None:
            device = group.device
        self.device = ops.device(device)
        n = config.N
        self._trainable = trainable_names(config)
        self._params = {
            name: ops.variable(self._native(name, weights[name]), name in self._trainable,
                               self.device)
            for name in network_weight_spec(config)}
        probe = np.asarray(weights["probe"])
        probe_trainable = "probe" in self._trainable
        self._probe = [ops.variable(np.ascontiguousarray(part, np.float32), probe_trainable,
                                    self.device) for part in (probe.real, probe.imag)]
        self._log_scale = ops.variable(np.asarray(weights["log_intensity_scale"], np.float32),
                                       "log_intensity_scale" in self._trainable, self.device)
        self._central = ops.tensor(central_mask(n), "float32", self.device)
        support = object_support(n, config.pad_object, config.probe_big)
        self._support_array = support.astype(np.float32)
        # None = all ones: the overlap constraint then gets the coverage as an outer product
        self._support = None if np.all(support == 1) else ops.tensor(support, "float32",
                                                                      self.device)
        self._disk = (ops.tensor(probe_disk_mask(n), "float32", self.device)
                      if config.probe_mask else None)
        self._constrain = config.gridsize > 1 and config.object_big
        #: the estimate is an input (estimate_scope="scan", which needs backprop_estimate),
        #: packed beside the diffraction
        self._estimate_input = config.estimate_scope == "scan"
        self._optimizer: Optional[Adam] = None
        self._settings: Optional[LossSettings] = None
        self._train_dtype: Optional[str] = None       # the training step's compute dtype
        self._compiled: dict = {}
        self._last_refiner: Optional[tuple] = None    # (settings, Refiner): see refiner()

    # ------------------------------------------------------------------ weights
    def _native(self, name: str, array) -> np.ndarray:
        if name.endswith(".kernel"):
            return self.ops.kernel_to_native(np.asarray(array, np.float32))
        return np.array(array, dtype=np.float32, order="C", copy=True)

    def _variables_of(self, name: str) -> list:
        """The backend variables behind a canonical entry (the probe has two: real, imag)."""
        if name == "probe":
            return list(self._probe)
        if name == "log_intensity_scale":
            return [self._log_scale]
        return [self._params[name]]

    def _trainable_variables(self) -> list:
        return [v for name in self._trainable for v in self._variables_of(name)]

    def _canonical(self, name: str, arrays: list) -> np.ndarray:
        """Canonical layout of an entry from its variables' (or gradients') numpy arrays."""
        if name == "probe":
            out = np.empty(arrays[0].shape, np.complex64)
            out.real, out.imag = arrays
            return out
        if name.endswith(".kernel"):
            return self.ops.kernel_from_native(arrays[0])
        return np.array(arrays[0], dtype=np.float32, copy=True)

    def get_weights(self, names: Optional[Sequence[str]] = None) -> dict[str, np.ndarray]:
        """A copy of every canonical entry, in canonical order (bit-exact with what was set);
        ``names``: only those entries (:func:`ptycho.weights.select_names`). Reading the probe
        alone is 2 reads where every entry is ~230 (TensorFlow: ~7 ms)."""
        return {name: self._canonical(name, [self.ops.read(v) for v in self._variables_of(name)])
                for name in select_names(self._all_names(), names)}

    def _all_names(self) -> list[str]:
        return list(self._params) + ["probe", "log_intensity_scale"]

    def set_weights(self, weights: Mapping[str, np.ndarray]) -> None:
        """Load every canonical entry in place, all or nothing (the optimiser state stays).

        Missing, extra, misshapen, wrongly typed or non-finite entries raise
        :class:`ptycho.errors.WeightsError` naming them; nothing is loaded then.
        """
        validate_weights(self.config, weights)
        for name, var in self._params.items():
            self.ops.assign(var, self._native(name, weights[name]))
        probe = np.asarray(weights["probe"])
        for var, part in zip(self._probe, (probe.real, probe.imag)):
            self.ops.assign(var, np.ascontiguousarray(part, np.float32))
        self.ops.assign(self._log_scale, np.asarray(weights["log_intensity_scale"], np.float32))

    # ------------------------------------------------------------------ the composition
    def _split(self, inputs):
        """The model's input tensor -> (diffraction (B, C, N, N), the estimate's (real,
        imaginary) parts or None). With ``estimate_scope="scan"`` the inputs are
        (B, 3C, N, N): diffraction, then the estimate's real and imaginary parts, packed into
        one tensor so that every compiled signature keeps its layout."""
        if not self._estimate_input:
            return inputs, None
        c = self.config.n_channels
        return inputs[:, :c], (inputs[:, c:2 * c], inputs[:, 2 * c:])

    def _patches(self, diffraction, compute_dtype=None, estimate=None):
        """Diffraction (B, C, N, N) in photon units -> complex64 object patches. ``estimate``:
        the scan's estimate (real, imaginary) in the same units (``estimate_scope="scan"``)."""
        ops, config = self.ops, self.config
        scale = ops.exp(ops.value(self._log_scale))
        x = diffraction / scale
        probe = self._probe_eff()
        if estimate is not None:
            estimate = (estimate[0] / scale, estimate[1] / scale)
        elif config.backprop_estimate:
            estimate = network.backprop_estimate(ops, x, probe)
        heads = network.network(ops, network.network_input(ops, x, config, estimate),
                                self._params, config, compute_dtype)
        intensity = ops.square(ops.abs(probe)) if config.match_intensity else None
        return network.object_patches(ops, network.to_groups(ops, heads, config), config,
                                      self._central, x, intensity, estimate)

    def _patches_of(self, inputs, compute_dtype=None):
        """:meth:`_patches` of the model's input tensor (:meth:`_split`)."""
        diffraction, estimate = self._split(inputs)
        return self._patches(diffraction, compute_dtype, estimate)

    def _probe_eff(self):
        ops = self.ops
        return physics.effective_probe(
            ops, ops.complex(ops.value(self._probe[0]), ops.value(self._probe[1])), self._disk)

    def _forward(self, inputs, rel_offsets, canvas_size, mask=None, *, compute_dtype=None):
        """Network patches, their constrained version and the predicted amplitude. The
        network never sees a masked pixel's value: it reads zero there."""
        ops = self.ops
        diffraction, estimate = self._split(inputs)
        if mask is not None:
            diffraction = ops.where(mask > 0, diffraction, ops.zeros_like(diffraction))
        patches = self._patches(diffraction, compute_dtype, estimate)
        constrained, pred = physics.physics_forward(
            self.ops, patches, self._probe_eff(), self.ops.value(self._log_scale),
            self._constrain, rel_offsets, canvas_size, self._support)
        return patches, constrained, pred

    def _loss_terms(self, inputs, rel_offsets, canvas_size, pixel_count, element_count,
                    loss_weights, loss_epsilon, mask=None, *, compute_dtype=None):
        patches, constrained, pred = self._forward(inputs, rel_offsets, canvas_size, mask,
                                                   compute_dtype=compute_dtype)
        diffraction = self._split(inputs)[0]
        return physics.loss_terms(self.ops, pred, diffraction, patches, constrained,
                                  loss_weights, loss_epsilon, mask, pixel_count, element_count)

    def _local_loss_and_grads(self, *args, compute_dtype=None):
        """Loss terms and d total / d trainables, the batch split by ``ops.shards``."""
        per_pattern_mask = len(args) == 8 and len(args[7].shape) == 4

        def loss_terms(*a):
            return self._loss_terms(*a, compute_dtype=compute_dtype)

        return sharded_value_and_grad(self.ops, loss_terms, self._trainable_variables(),
                                      args, (0, 1, 7) if per_pattern_mask else (0, 1))

    # ------------------------------------------------------------------ across processes
    def _with_global_counts(self, args: tuple) -> tuple:
        """The loss arguments with the counts (positions 3, 4) summed over the ranks."""
        pixels, elements = self.process_group.all_reduce([args[3], args[4]])
        return tuple(args[:3]) + (pixels, elements) + tuple(args[5:])

    def _zero_terms(self) -> dict:
        return {k: self.ops.tensor(np.float32(0.0), "float32", self.device) for k in LOSS_KEYS}

    def _loss_and_grads(self, *args, compute_dtype=None):
        """This rank's share of the terms and gradients, summed over the ranks (in a group)."""
        if self.process_group is None:
            return self._local_loss_and_grads(*args, compute_dtype=compute_dtype)
        ops = self.ops
        args = self._with_global_counts(args)
        variables = self._trainable_variables()
        terms, grads = ops.cond(
            ops.shape(args[0])[0] > 0,
            lambda: self._local_loss_and_grads(*args, compute_dtype=compute_dtype),
            lambda: (self._zero_terms(), [ops.zeros_like(ops.value(v)) for v in variables]))
        summed = self.process_group.all_reduce([terms[k] for k in LOSS_KEYS] + list(grads))
        return dict(zip(LOSS_KEYS, summed[:len(LOSS_KEYS)])), summed[len(LOSS_KEYS):]

    def _group_loss_terms(self, *args):
        """The whole global batch's loss terms from this rank's part (in a group)."""
        args = self._with_global_counts(args)
        terms = self.ops.cond(self.ops.shape(args[0])[0] > 0,
                              lambda: self._loss_terms(*args), self._zero_terms)
        return dict(zip(LOSS_KEYS, self.process_group.all_reduce([terms[k] for k in LOSS_KEYS])))

    def _collective(self, what: str):
        """Where a collective may fail: a failure becomes a DistributedError naming ``what``."""
        if self.process_group is None:
            return contextlib.nullcontext()
        return self.process_group.guard(what)

    def _train_step(self, *args):
        terms, grads = self._loss_and_grads(*args, compute_dtype=self._train_dtype)
        self.ops.run_if(self.ops.all_finite([terms[k] for k in LOSS_KEYS]),
                        lambda: self._optimizer.apply(grads))
        return terms

    def _compiled_fn(self, what: str, kind: str = "none"):
        """The compiled function ``what`` for a mask kind, built on first use."""
        key = (what, kind)
        if key not in self._compiled:
            n, c = self.config.N, self.config.n_channels
            packed = 3 * c if self._estimate_input else c
            batch = [((None, packed, n, n), "float32"), ((None, c, 2), "float32"), ((), "int32")]
            loss = [((), "float32"), ((), "float32"), ((3,), "float32"), ((), "float32")]
            mask = {"none": [], "shared": [((n, n), "float32")],
                    "per_pattern": [((None, c, n, n), "float32")]}[kind]
            if what in PRECISIONS:
                dtype = None if what == "float32" else what
                self._compiled[key] = self.ops.compile(
                    lambda inputs: self._patches_of(inputs, dtype), batch[:1])
            else:
                losses = self._loss_terms if self.process_group is None else self._group_loss_terms
                fn = {"forward": self._forward, "losses": losses,
                      "grads": self._loss_and_grads, "train": self._train_step}[what]
                specs = batch + mask if what == "forward" else batch + loss + mask
                self._compiled[key] = self.ops.compile(fn, specs)
        return self._compiled[key]

    # ------------------------------------------------------------------ edge checks
    def _check_groups(self, diffraction: np.ndarray, what: str) -> None:
        c, n = self.config.n_channels, self.config.N
        if diffraction.ndim != 4 or tuple(diffraction.shape[1:]) != (c, n, n):
            raise ValueError(f"{what} must be (B, {c}, {n}, {n}) = (groups, gridsize**2, N, N) "
                             f"for this config (gridsize={self.config.gridsize}, N={n}), got "
                             f"shape {tuple(diffraction.shape)}")

    def _check_estimate(self, estimate: Optional[np.ndarray], shape: tuple, what: str) -> None:
        """An estimate is given exactly when the model takes one, shaped like the diffraction."""
        if self._estimate_input and estimate is None:
            raise ValueError(f"{what} is required: this model (estimate_scope='scan') starts "
                             "from the scan's stitched estimate (ptycho.scan_estimate)")
        if not self._estimate_input and estimate is not None:
            raise ValueError(f"{what} was given, but this model takes none (estimate_scope="
                             f"{self.config.estimate_scope!r}, backprop_estimate="
                             f"{self.config.backprop_estimate})")
        if estimate is not None and (np.shape(estimate) != shape
                                     or np.asarray(estimate).dtype.kind != "c"):
            raise ValueError(f"{what} must be complex {shape} like the diffraction, got "
                             f"{np.asarray(estimate).dtype} {np.shape(estimate)}")

    def _inputs(self, diffraction: np.ndarray, estimate: Optional[np.ndarray]) -> np.ndarray:
        """The model's input array (:meth:`_split`): the diffraction, with the estimate packed."""
        if estimate is None:
            return diffraction
        estimate = np.asarray(estimate)
        return np.concatenate([np.asarray(diffraction, np.float32), estimate.real.astype(
            np.float32), estimate.imag.astype(np.float32)], axis=1)

    def _batch_args(self, batch: Batch) -> list:
        """(inputs, rel_offsets, canvas_size) as backend tensors, checked."""
        self._check_groups(batch.diffraction, "Batch.diffraction")
        self._check_estimate(batch.estimate, batch.diffraction.shape, "Batch.estimate")
        if self._constrain:
            physics.canvas_pad(self.config.N, int(batch.canvas_size))   # M >= N, same parity
        ops = self.ops
        return [ops.tensor(self._inputs(batch.diffraction, batch.estimate), "float32", self.device),
                ops.tensor(batch.rel_offsets, "float32", self.device), int(batch.canvas_size)]

    def _loss_args(self, batch: Batch, settings: LossSettings) -> tuple[list, str]:
        """Every input of a loss function for ``batch`` and the batch's mask kind."""
        if not isinstance(settings, LossSettings):
            raise TypeError(f"settings must be LossSettings, got {type(settings).__name__}")
        ops = self.ops
        d = batch.diffraction
        elements = float(d.size)
        pixels = elements if batch.mask is None else float(
            np.count_nonzero(np.broadcast_to(batch.mask, d.shape)))
        if self.process_group is not None:     # summed over the ranks: tensors
            pixels, elements = (ops.tensor(np.float32(c), "float32", self.device)
                                for c in (pixels, elements))
        args = self._batch_args(batch) + [
            pixels, elements,
            ops.tensor(np.array([settings.nll_weight, settings.mae_weight,
                                 settings.realspace_weight], np.float32), "float32", self.device),
            ops.tensor(np.float32(settings.epsilon), "float32", self.device)]
        if batch.mask is not None:
            args.append(ops.tensor(batch.mask, "float32", self.device))
        return args, _mask_kind(batch.mask)

    # ------------------------------------------------------------------ public API
    def predict(self, diffraction: np.ndarray, batch_size: int = 64,
                precision: str = "float32", estimate: Optional[np.ndarray] = None
                ) -> np.ndarray:
        """Object patches (B, C, N, N) complex64 from diffraction (B, C, N, N) in photon units.

        The network's output before the overlap constraint, ``batch_size`` groups at a time.
        ``precision="bfloat16"`` runs the conv stack in bfloat16 (mixed precision: float32
        weights are cast, heads and everything after them are float32). ``estimate``
        (B, C, N, N) complex, in the diffraction's units: the scan's stitched estimate at each
        pattern, required with ``estimate_scope="scan"`` (:mod:`ptycho.scan_estimate`).
        """
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {list(PRECISIONS)}, got {precision!r}")
        if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) \
                or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        diffraction = np.asarray(diffraction)
        self._check_groups(diffraction, "diffraction")
        self._check_estimate(estimate, diffraction.shape, "estimate")
        ops = self.ops
        fn = self._compiled_fn(precision)
        out = np.empty(diffraction.shape, np.complex64)
        for start in range(0, diffraction.shape[0], int(batch_size)):
            part = slice(start, start + batch_size)
            chunk = ops.tensor(self._inputs(diffraction[part],
                                            None if estimate is None else estimate[part]),
                               "float32", self.device)

            def run(shard, chunk=chunk, start=start) -> None:
                with ops.no_grad():
                    patches = ops.read(fn(chunk[shard]))
                rows = range(chunk.shape[0])[shard]
                out[start + rows.start:start + rows.stop] = patches

            ops.run_sharded(run, ops.shards(chunk))
        return out

    def forward(self, batch: Batch) -> dict[str, np.ndarray]:
        """``object`` (network patches), ``object_constrained``, ``pred_amplitude`` (photon units)."""
        args = self._batch_args(batch)
        if batch.mask is not None:
            args.append(self.ops.tensor(batch.mask, "float32", self.device))
        with self.ops.no_grad():
            patches, constrained, pred = self._compiled_fn(
                "forward", _mask_kind(batch.mask))(*args)
            return {"object": self.ops.read(patches),
                    "object_constrained": self.ops.read(constrained),
                    "pred_amplitude": self.ops.read(pred)}

    def constrain(self, patches: np.ndarray, rel_offsets: np.ndarray,
                  canvas_size: int) -> np.ndarray:
        """The overlap constraint the loss applies (this model's support), numpy in and out.

        Patches (B, C, N, N) as :meth:`predict` returns them; the identity unless gridsize > 1
        with ``object_big``. Groups whose offsets differ by whole pixels (scan positions on
        whole pixels; :func:`ptycho.physics.patches.grid_layout`) take
        :func:`ptycho.physics.patches.overlap_constraint_on_grid` (numpy, complex64: the
        graph's values up to rounding, with slices instead of its interpolation
        operators); others the compiled graph of the loss.
        """
        patches = np.asarray(patches)
        self._check_groups(patches, "patches")
        if not self._constrain:
            return patches.astype(np.complex64)
        if np.shape(rel_offsets) != patches.shape[:2] + (2,):
            raise ValueError(f"rel_offsets must be {patches.shape[:2] + (2,)}, got "
                             f"{np.shape(rel_offsets)}")
        physics.canvas_pad(self.config.N, int(canvas_size))
        layout = grid_layout(rel_offsets, self.config.N, int(canvas_size))
        if layout is not None:
            # a scan on whole pixels: placements are slices and each group's one sub-pixel
            # part a single interpolation (its gain: benchmarks/README.md, change table)
            return overlap_constraint_on_grid(patches.astype(np.complex64, copy=False),
                                              *layout, int(canvas_size), self._support_array)
        ops = self.ops
        if ("constrain", "none") not in self._compiled:
            n, c = self.config.N, self.config.n_channels
            self._compiled["constrain", "none"] = ops.compile(
                lambda p, r, m: physics.overlap_constraint(ops, p, r, m, self._support),
                [((None, c, n, n), "complex64"), ((None, c, 2), "float32"), ((), "int32")])
        fn, out = self._compiled["constrain", "none"], np.empty(patches.shape, np.complex64)
        with ops.no_grad():
            for lo in range(0, len(patches), CONSTRAIN_CHUNK_GROUPS):
                part = slice(lo, lo + CONSTRAIN_CHUNK_GROUPS)
                out[part] = ops.read(fn(ops.tensor(patches[part], "complex64", self.device),
                                        ops.tensor(rel_offsets[part], "float32", self.device),
                                        int(canvas_size)))
        return out

    def refiner(self, obj: np.ndarray, *, refine_probe: bool = False, step: float = STEP,
                regularisation: float = REGULARISATION, epsilon: float = 1e-6) -> Refiner:
        """A physics refinement of ``obj`` (H, W) with this model's probe and intensity scale
        (see :mod:`backends.common.refine`; drive it with ``refine.run``).

        A call with the settings and object shape of the previous one restarts that refiner
        (:meth:`Refiner.restarted`: its compiled steps are kept, and it is retired)."""
        probe = self._canonical("probe", [self.ops.read(v) for v in self._probe])
        scale = float(self.ops.read(self._log_scale))
        key = (np.shape(obj), bool(refine_probe), float(step), float(regularisation),
               float(epsilon))
        last = self._last_refiner
        if last is not None and last[0] == key:
            refiner = last[1].restarted(obj, probe, scale)
        else:
            refiner = Refiner(self.ops, self.device, obj, probe, scale, self._disk,
                              refine_probe=refine_probe, step=step,
                              regularisation=regularisation, epsilon=epsilon)
        self._last_refiner = (key, refiner)
        return refiner

    def losses(self, batch: Batch, settings: LossSettings) -> dict[str, float]:
        """``nll``, ``mae``, ``realspace``, ``total`` for this batch (no update); in a group,
        of the global batch whose part on this rank ``batch`` is (every rank calls)."""
        args, kind = self._loss_args(batch, settings)
        with self.ops.no_grad(), self._collective("computing the losses"):
            terms = self._compiled_fn("losses", kind)(*args)
            return {k: float(self.ops.read(terms[k])) for k in LOSS_KEYS}

    def gradients(self, batch: Batch, settings: LossSettings) -> dict[str, np.ndarray]:
        """d total / d entry for every trainable entry; the probe's is ``d/d re + 1j d/d im``.
        In a group, of the global batch whose part on this rank ``batch`` is."""
        args, kind = self._loss_args(batch, settings)
        with self._collective("computing the gradients"):
            _, grads = self._compiled_fn("grads", kind)(*args)
            arrays = iter([self.ops.read(g) for g in grads])
        return {name: self._canonical(name, [next(arrays) for _ in self._variables_of(name)])
                for name in self._trainable}

    def configure_training(self, training: TrainingConfig) -> None:
        """A fresh Adam state (beta1, beta2, epsilon, initial learning rate from ``training``),
        the loss settings and the training step's precision (``training.precision``); the
        training step is compiled on its first call."""
        if not isinstance(training, TrainingConfig):
            raise TypeError(f"training must be a TrainingConfig, got {type(training).__name__}")
        self._settings = LossSettings.from_config(training)
        self._train_dtype = None if training.precision == "float32" else training.precision
        self._optimizer = Adam(self.ops, self._trainable_variables(), training.adam_beta1,
                               training.adam_beta2, training.adam_epsilon, training.learning_rate)
        for kind in MASK_KINDS:
            self._compiled.pop(("train", kind), None)

    def _require_training(self, what: str) -> Adam:
        if self._optimizer is None:
            raise RuntimeError(f"{what} needs configure_training(training_config) first")
        return self._optimizer

    def set_learning_rate(self, learning_rate: float) -> None:
        """Learning rate of the following steps (a variable: a compiled step is not retraced)."""
        self._require_training("set_learning_rate").set_learning_rate(learning_rate)

    @property
    def learning_rate(self) -> float:
        return self._require_training("learning_rate").learning_rate

    def train_step(self, batch: Batch) -> dict[str, float]:
        """One Adam step on one batch; returns the loss terms computed before the update.

        A non-finite loss skips the update (weights, moments and step counter unchanged) and
        is returned as is: the core's driver raises on it and restores the last good weights.
        In a group, ``batch`` is this rank's part of the global batch; the terms returned
        are the global batch's, the same on every rank (so is the decision to skip).
        """
        self._require_training("train_step")
        args, kind = self._loss_args(batch, self._settings)
        with self._collective("a training step"):
            terms = self._compiled_fn("train", kind)(*args)
            return {k: float(self.ops.read(terms[k])) for k in LOSS_KEYS}

    @property
    def train_step_traces(self) -> Optional[int]:
        """How often the compiled training step was traced (None: not compiled, eager)."""
        fn = self._compiled.get(("train", "none"))
        return None if fn is None else self.ops.trace_count(fn)
