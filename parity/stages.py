"""The eight stages of the parity harness, each a function of a :class:`Context`.

Every stage draws its inputs in numpy from its own seeded generator, hands the same arrays to
both backends, and returns :class:`parity.report.Check` rows. A stage never mutates what
another stage uses: models are built fresh from the canonical weights where needed.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Optional

import numpy as np

import ptycho.physics as P
from ptycho.batch import Batch
from ptycho.config.schema import ModelConfig, TrainingConfig
from ptycho.data import GroupedData, initial_log_intensity_scale
from ptycho.physics.losses import LossSettings
from ptycho.training import epoch_batches, learning_rate_at
from ptycho.weights import init_weights, trainable_names, weight_spec

from parity import inputs, reference as R
from parity.compare import compare_tree
from parity.report import Check
from parity.tolerances import F32_EPS, tolerance


@dataclass
class Side:
    """One backend under test: label (A/B), display name, the backend object, its registry
    name (None for an object passed directly, e.g. a wrapped backend) and its version."""

    label: str
    name: str
    backend: Any
    registry_name: Optional[str]
    version: str


@dataclass
class Context:
    """What every stage shares: the config, the seed, the two sides, and cached inputs."""

    config: TrainingConfig
    seed: int
    a: Side
    b: Side
    steps: int = 3
    e2e_epochs: int = 2
    workdir: Optional[str] = None
    _cache: dict = field(default_factory=dict)

    @property
    def model(self) -> ModelConfig:
        return self.config.model

    @property
    def settings(self) -> LossSettings:
        return LossSettings.from_config(self.config)

    def rng(self, stage: int) -> np.random.Generator:
        """A generator per stage, so that a stage's inputs do not depend on which ran before."""
        return np.random.default_rng([self.seed, stage])

    @property
    def dataset(self) -> GroupedData:
        """A small simulated scan grouped for ``config`` (stages 3-7)."""
        if "dataset" not in self._cache:
            self._cache["dataset"] = inputs.small_dataset(self.config, self.seed)
        return self._cache["dataset"]

    @property
    def batch(self) -> Batch:
        """The first ``batch_size`` groups of :attr:`dataset`."""
        n = min(self.config.batch_size, len(self.dataset))
        return self.dataset.batch(np.arange(n))

    @property
    def weights(self) -> dict[str, np.ndarray]:
        """``init_weights(model, seed, probe, log(s_int))`` with seeded non-zero biases.

        init_weights zeroes the biases; drawn ones (uniform +-0.1) make a bias that a backend
        drops, misplaces or never loads show up in the network forward.
        """
        if "weights" not in self._cache:
            w = init_weights(self.model, self.seed, self.dataset.probe,
                             initial_log_intensity_scale(self.config.nphotons, self.model.N))
            rng = self.rng(100)
            for name in w:
                if name.endswith(".bias"):
                    w[name] = rng.uniform(-0.1, 0.1, size=w[name].shape).astype(np.float32)
            self._cache["weights"] = w
        return {k: v.copy() for k, v in self._cache["weights"].items()}

    def build(self, side: Side, weights: Optional[dict] = None):
        return side.backend.build_model(self.model, self.weights if weights is None else weights)

    def tmp(self) -> str:
        """A temporary folder for this run's files (bundles), under ``workdir`` if given."""
        if "tmp" not in self._cache:
            self._cache["tmp"] = tempfile.mkdtemp(prefix="ptycho-parity-", dir=self.workdir)
        return self._cache["tmp"]

    def cleanup(self) -> None:
        """Remove the temporary folder, if one was made."""
        tmp = self._cache.pop("tmp", None)
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)


def check(ctx: Context, stage: str, quantity: str, key: str, a: Any, b: Any, ref: Any = None, *,
          steps: int = 1, scale: Any = None, note: str = "", tol=None,
          nan: str = "fail", scale_ab: Any = None) -> Check:
    """A vs B (exact dtypes) and, with ``ref``, each vs the float64 reference (dtype kinds).

    ``scale_ab`` (default ``scale``) is the scale of the A vs B comparison when it must differ
    from the reference comparisons' (two sides each within a slack of the reference may be
    twice that slack apart).
    """
    tol = tol if tol is not None else tolerance(key, steps=steps)
    c = Check(stage=stage, quantity=quantity, tolerance_key=key, tolerance=tol, note=note)
    c.ab = compare_tree(a, b, tol, name=quantity, dtype="exact",
                        scale=scale if scale_ab is None else scale_ab, nan=nan)
    if ref is not None:
        c.a_ref = compare_tree(a, ref, tol, name=quantity, dtype="kind", reference=True,
                               scale=scale, nan=nan)
        c.b_ref = compare_tree(b, ref, tol, name=quantity, dtype="kind", reference=True,
                               scale=scale, nan=nan)
    return c


def ref_only(stage: str, quantity: str, key: str, a: Any, ref: Any, *, side: str,
             scale: Any = None, note: str = "", tol=None) -> Check:
    """A check with one side against its own reference (e.g. an optimiser update)."""
    tol = tol if tol is not None else tolerance(key)
    c = Check(stage=stage, quantity=quantity, tolerance_key=key, tolerance=tol, note=note)
    diffs = compare_tree(a, ref, tol, name=quantity, dtype="kind", reference=True, scale=scale)
    if side == "A":
        c.a_ref = diffs
    else:
        c.b_ref = diffs
    return c


def _wide(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x)
    return x.astype(np.complex128 if np.iscomplexobj(x) else np.float64)


def _both(ctx: Context, fn: Callable[[Any], Any]) -> tuple[Any, Any]:
    return fn(ctx.a.backend), fn(ctx.b.backend)


# -- 1. physics forward -----------------------------------------------------------------------
def stage_physics(ctx: Context) -> list[Check]:
    """Illumination and far-field amplitude on random complex objects and the config's probe."""
    rng = ctx.rng(1)
    m = ctx.model
    shape = (min(ctx.config.batch_size, 4), m.n_channels, m.N, m.N)
    obj = inputs.random_complex(rng, shape)
    probe = inputs.make_probe(m.N, m.probe_scale, rng)
    out = [check(ctx, "physics", "illuminate", "physics.illuminate",
                 *_both(ctx, lambda b: b.illuminate(probe, obj)), P.illuminate(probe, obj))]
    psi = P.illuminate(probe, obj).astype(np.complex64)
    out.append(check(ctx, "physics", "far_field_amplitude", "physics.far_field",
                     *_both(ctx, lambda b: b.far_field_amplitude(psi)), P.far_field_amplitude(psi)))
    eff = P.effective_probe(probe, True).astype(np.complex64)
    psi_masked = (eff * obj).astype(np.complex64)
    out.append(check(ctx, "physics", "far_field_amplitude (masked probe)", "physics.far_field",
                     *_both(ctx, lambda b: b.far_field_amplitude(psi_masked)),
                     P.far_field_amplitude(psi_masked)))
    return out


# -- 2. translation, extraction, reassembly ---------------------------------------------------
def stage_translate(ctx: Context) -> list[Check]:
    """Translation (sub-pixel, integer, negative offsets), reassembly, extraction, overlap."""
    rng = ctx.rng(2)
    m = ctx.model
    n, c = m.N, m.n_channels
    nb = min(ctx.config.batch_size, 4)
    images = inputs.random_complex(rng, (nb, c, n, n))
    offsets = rng.uniform(-n / 4, n / 4, size=(nb, c, 2)).astype(np.float32)
    offsets[0] = np.round(offsets[0])                      # integer shifts: exact in every backend
    real_images = rng.uniform(0, 1, size=(nb, n, n)).astype(np.float32)
    real_offsets = rng.uniform(-3.5, 3.5, size=(nb, 2)).astype(np.float32)
    out = [
        check(ctx, "translate", "translate (complex)", "translate.translate",
              *_both(ctx, lambda b: b.translate(images, offsets)), P.translate(images, offsets)),
        check(ctx, "translate", "translate (real)", "translate.translate",
              *_both(ctx, lambda b: b.translate(real_images, real_offsets)),
              P.translate(real_images, real_offsets)),
    ]
    rel = inputs.group_offsets(rng, nb, m.gridsize, spacing=n / 4.0, jitter=1.5)
    size = P.canvas_size(n, rel)
    support = P.object_support(n, m.pad_object, m.probe_big).astype(np.float32)
    patches = inputs.random_complex(rng, (nb, c, n, n))
    out.append(check(ctx, "translate", "reassemble_patches", "translate.reassemble",
                     *_both(ctx, lambda b: b.reassemble_patches(patches, rel, size, support)),
                     P.reassemble_patches(patches, rel, size, support)))
    canvas = inputs.random_complex(rng, (nb, size, size))
    out.append(check(ctx, "translate", "extract_patches", "translate.extract",
                     *_both(ctx, lambda b: b.extract_patches(canvas, rel, n)),
                     P.extract_patches(canvas, rel, n)))
    out.append(check(ctx, "translate", "overlap (reassemble+extract)", "translate.overlap",
                     *_both(ctx, lambda b: b.extract_patches(
                         b.reassemble_patches(patches, rel, size, support), rel, n)),
                     P.overlap_constraint(patches, rel, size, support)))
    return out


# -- 3. network forward -----------------------------------------------------------------------
def stage_network(ctx: Context) -> list[Check]:
    """Identical canonical weights in both: exported weights, predict, forward outputs."""
    w = ctx.weights
    batch = ctx.batch
    ma, mb = ctx.build(ctx.a), ctx.build(ctx.b)
    out = [check(ctx, "network", "weights exported after import", "network.weights",
                 ma.get_weights(), mb.get_weights(), w)]
    ref = R.forward(ctx.model, w, batch)
    # the table's rtol, relative to the reference's scales (R.forward_scales: the largest
    # magnitude, and with the free amplitude head each pattern's estimate's conditioning)
    scales = dict(zip(("object", "object_constrained"), R.forward_scales(ctx.model, w, batch, ref)))
    given = replace(tolerance("network.forward"), scale="given")
    out.append(check(ctx, "network", "predict (object patches)", "network.forward",
                     ma.predict(batch.diffraction, batch_size=2, estimate=batch.estimate),
                     mb.predict(batch.diffraction, batch_size=2, estimate=batch.estimate),
                     ref["object"], scale=scales["object"], tol=given,
                     note="predict in batches of 2 (exercises the batching)"))
    fa, fb = ma.forward(batch), mb.forward(batch)
    for key, tol_key in (("object", "network.forward"), ("object_constrained", "network.forward"),
                         ("pred_amplitude", "network.amplitude")):
        out.append(check(ctx, "network", f"forward: {key}", tol_key, fa.get(key), fb.get(key),
                         ref[key], scale=scales.get(key),
                         tol=given if key in scales else None))
    return out


# -- 4. losses ----------------------------------------------------------------------------------
def stage_loss(ctx: Context) -> list[Check]:
    """The backends' loss ops on Poisson counts in three regimes, and the model's loss terms.

    The NLL op is checked per count regime (mean counts 1e-2..1, 1..1e3, 1e3..1e6), each
    against its own scale: in one mixed array the large counts would set the scale and hide
    an error confined to the low-count pixels (where the epsilon matters).
    """
    rng = ctx.rng(4)
    n = ctx.model.N
    eps = ctx.settings.epsilon
    out = []
    for lo, hi in ((-2, 0), (0, 3), (3, 6)):
        lam = 10.0 ** rng.uniform(lo, hi, size=(4, n, n))
        obs = np.sqrt(rng.poisson(lam)).astype(np.float32)
        pred = (np.sqrt(lam) * np.exp(rng.normal(0, 0.2, size=lam.shape))).astype(np.float32)
        p64, o64 = pred.astype(np.float64), obs.astype(np.float64)
        out.append(check(ctx, "loss", f"op: poisson_nll (counts 1e{lo}..1e{hi})", "loss.ops",
                         *_both(ctx, lambda b: np.float64(b.poisson_nll(pred, obs, eps))),
                         np.float64(P.poisson_nll(pred, obs, eps)),
                         scale=float(np.mean(p64 ** 2 + o64 ** 2))))
        out.append(check(ctx, "loss", f"op: mae (counts 1e{lo}..1e{hi})", "loss.ops",
                         *_both(ctx, lambda b: np.float64(b.mae(pred, obs))),
                         np.float64(P.mae(pred, obs)), scale=float(np.mean(p64 + o64))))
    w, batch, settings = ctx.weights, ctx.batch, ctx.settings
    ma, mb = ctx.build(ctx.a), ctx.build(ctx.b)
    ref = R.losses(ctx.model, w, batch, settings)
    scales = R.loss_scales(ctx.model, w, batch, settings)
    la = {k: np.float64(v) for k, v in ma.losses(batch, settings).items()}
    lb = {k: np.float64(v) for k, v in mb.losses(batch, settings).items()}
    ref = {k: np.float64(v) for k, v in ref.items()}
    out.append(check(ctx, "loss", "model losses", "loss.terms", la, lb, ref,
                     scale=lambda name: scales[name.rsplit(".", 1)[-1]]))
    return out


# -- 5. gradients -------------------------------------------------------------------------------
def stage_gradients(ctx: Context) -> list[Check]:
    """d total / d entry for every trainable entry, against the float64 reference's exact ones.

    Each element is compared relative to :func:`gradient_scales`: the larger of the entry's
    largest reference gradient and that element's term magnitude
    (:func:`parity.reference.gradients` with ``magnitudes=True``), plus a floor set by the
    model's largest gradient.
    """
    w, batch, settings = ctx.weights, ctx.batch, ctx.settings
    ma, mb = ctx.build(ctx.a), ctx.build(ctx.b)
    _, ref, mags = R.gradients(ctx.model, w, batch, settings, magnitudes=True)
    ga, gb = ma.gradients(batch, settings), mb.gradients(batch, settings)
    names = trainable_names(ctx.model)
    qty = f"gradients ({len(names)} entries)"
    scales = gradient_scales(ref, mags, tolerance("gradients.entry").rtol)
    return [check(ctx, "gradients", qty, "gradients.entry", ga, gb, ref,
                  scale={f"{qty}.{n}": v for n, v in scales.items()})] + _refine_gradient_check(ctx)


class RefineInputs:
    """The refinement problem of stages 5 and 6: the batch's patterns one by one (positions,
    photon-unit amplitudes, the batch's mask), a smooth random starting object over their
    extent, and the weights' probe and intensity scale."""

    def __init__(self, ctx: Context):
        data, batch = ctx.dataset, ctx.batch
        n, c = ctx.model.N, ctx.model.n_channels
        idx = np.arange(batch.size)
        pos = (data.global_offsets[idx, None, :] + data.rel_offsets[idx].astype(np.float64))
        self.positions = pos.reshape(-1, 2)
        self.diffraction = batch.diffraction.reshape(-1, n, n)
        self.mask = None if batch.mask is None or batch.mask.ndim == 2 else \
            batch.mask.reshape(-1, n, n)
        if batch.mask is not None and batch.mask.ndim == 2:
            self.mask = batch.mask
        self.positions = self.positions - self.positions.min(axis=0) + n // 2 + 1
        h, w = (int(np.ceil(v)) + n // 2 + 2 for v in self.positions.max(axis=0)[::-1])
        rng = ctx.rng(55)
        self.obj = (0.25 * np.exp(0.5j * rng.normal(size=(h, w)))
                    * (1 + 0.1 * rng.normal(size=(h, w)))).astype(np.complex64)
        w0 = ctx.weights
        self.probe, self.log_scale = w0["probe"], float(w0["log_intensity_scale"])
        self.batches = [slice(i, i + max(1, len(self.positions) // 2))
                        for i in range(0, len(self.positions), max(1, len(self.positions) // 2))]
        del c

    def rows(self, j: int) -> tuple:
        sl = self.batches[j % len(self.batches)]
        mask = self.mask if self.mask is None or self.mask.ndim == 2 else self.mask[sl]
        return self.positions[sl], self.diffraction[sl], mask


def _refine_gradient_check(ctx: Context) -> list[Check]:
    """Refinement's loss and gradients (object and probe) in A and B vs the float64 reference
    (:func:`parity.reference.refine_gradients`), each relative to its largest gradient."""
    inp = RefineInputs(ctx)
    ref = R.refine_gradients(inp.obj, inp.probe, inp.log_scale, inp.positions, inp.diffraction,
                             ctx.settings.epsilon, inp.mask, ctx.model.probe_mask)
    eps = ctx.settings.epsilon
    got = [ctx.build(side).refiner(inp.obj, refine_probe=True, epsilon=eps).gradients(
        inp.positions, inp.diffraction, inp.mask) for side in (ctx.a, ctx.b)]
    qty = "refinement gradients (object, probe)"
    grads = [{k: g[k] for k in ("object", "probe")} for g in got]
    top = max(float(np.max(np.abs(ref[k]))) for k in ("object", "probe"))
    rtol = tolerance("gradients.entry").rtol
    scale = {f"{qty}.{k}": np.max(np.abs(ref[k])) + F32_EPS * top / rtol
             for k in ("object", "probe")}
    pred_scale = np.mean(2 * inp.diffraction.astype(np.float64) ** 2)
    return [check(ctx, "gradients", "refinement NLL", "loss.terms", np.float64(got[0]["nll"]),
                  np.float64(got[1]["nll"]), np.float64(ref["nll"]), scale=pred_scale),
            check(ctx, "gradients", qty, "gradients.entry", grads[0], grads[1],
                  {k: ref[k] for k in ("object", "probe")}, scale=scale)]


def _refine_step_checks(ctx: Context) -> list[Check]:
    """k refinement steps (object and probe) from the same object in A, B and float64: the
    NLL before each step, and the object and probe after the k steps, relative to their
    largest magnitude (the step is a preconditioned gradient step: its float32 error is the
    gradient's, relative, growing with the steps)."""
    from backends.common import refine as shared

    k, inp = ctx.steps, RefineInputs(ctx)
    sides = {s.label: ctx.build(s).refiner(inp.obj, refine_probe=True, epsilon=ctx.settings.epsilon)
             for s in (ctx.a, ctx.b)}
    reference = R.ReferenceRefiner(
        inp.obj, inp.probe, inp.log_scale, ctx.model.probe_mask, refine_probe=True,
        step=shared.STEP, regularisation=shared.REGULARISATION, epsilon=ctx.settings.epsilon)
    nll = {"A": {}, "B": {}, "ref": {}}
    for j in range(k):
        args = inp.rows(j)
        nll["ref"][f"step{j}"] = np.float64(reference.step(*args))
        for label, refiner in sides.items():
            nll[label][f"step{j}"] = np.float64(refiner.step(*args))
    out = [check(ctx, "optimizer", f"refinement NLL before each of {k} steps",
                 "optimizer.losses", nll["A"], nll["B"], nll["ref"], steps=k)]
    results = {label: dict(zip(("object", "probe"), r.result())) for label, r in sides.items()}
    want = dict(zip(("object", "probe"), reference.result()))
    qty = f"refined object and probe after {k} steps"
    out.append(check(ctx, "optimizer", qty, "optimizer.weights", results["A"], results["B"],
                     want, steps=k, scale={f"{qty}.{n}": np.max(np.abs(want[n])) for n in want}))
    return out


def gradient_scales(grads: dict, mags: dict, rtol: float) -> dict[str, np.ndarray]:
    """Per gradient element, the scale its float32 round-off is relative to.

    The larger of: the magnitudes of the terms its final sum adds up (``mags``, which cancel
    e.g. for a bias), and the entry's largest gradient; plus a floor of ``F32_EPS`` times
    the largest gradient of the whole model (expressed in units of ``rtol``), because every
    backpropagated signal carries the round-off of the large signals it shares a path with:
    components below it (e.g. in a branch whose ReLUs are all but dead) are float32 noise.
    """
    top = max((float(np.max(np.abs(g))) for g in grads.values() if np.size(g)), default=0.0)
    floor = F32_EPS * top / rtol
    return {n: np.maximum(mags[n], np.max(np.abs(grads[n]))) + floor for n in grads}


# -- 6. k optimizer steps ---------------------------------------------------------------------
def _step_batches(ctx: Context, k: int) -> list[np.ndarray]:
    out: list[np.ndarray] = []
    epoch = 0
    while len(out) < k:
        out += epoch_batches(len(ctx.dataset), ctx.config.batch_size, ctx.config.seed, epoch)
        epoch += 1
    return out[:k]


def stage_optimizer(ctx: Context) -> list[Check]:
    """k Adam steps from identical weights on identical batches, and a float64 reference run.

    Per backend, every step is also checked against float64 Adam applied to that backend's
    own weights and gradients at that step: this isolates the optimiser from the gradients.
    That comparison's scale is the learning rate plus the float32 rounding of the weight
    itself (2 ulp of |w|, expressed in units of the tolerance's rtol).
    """
    k = ctx.steps
    cfg, settings = ctx.config, ctx.settings
    lr = learning_rate_at(cfg, 0)
    w0 = ctx.weights
    train = trainable_names(ctx.model)
    frozen = [n for n in weight_spec(ctx.model) if n not in train]
    upd_tol = tolerance("optimizer.update")
    models, states, losses, updates = {}, {}, {}, {}
    for side in (ctx.a, ctx.b):
        mdl = ctx.build(side, w0)
        mdl.configure_training(cfg)
        mdl.set_learning_rate(lr)
        models[side.label] = mdl
        states[side.label] = R.AdamState.from_config(cfg)
        losses[side.label] = {}
        updates[side.label] = {}
    ref_w = {k_: np.asarray(v) for k_, v in w0.items()}
    ref_state = R.AdamState.from_config(cfg)
    ref_losses = {}
    grad_rtol = tolerance("gradients.entry").rtol
    ref_grads, grad_noise = [], []
    for j, idx in enumerate(_step_batches(ctx, k)):
        batch = ctx.dataset.batch(idx)
        terms, g, mags = R.gradients(ctx.model, ref_w, batch, settings, magnitudes=True)
        ref_grads.append(g)
        grad_noise.append({n: grad_rtol * v for n, v in gradient_scales(g, mags, grad_rtol).items()})
        ref_losses[f"step{j}"] = {key: np.float64(v) for key, v in terms.items()}
        ref_w = R.adam_step(ref_state, ref_w, g, lr)
        for side in (ctx.a, ctx.b):
            mdl = models[side.label]
            before = mdl.get_weights()
            grads = mdl.gradients(batch, settings)
            t = mdl.train_step(batch)
            losses[side.label][f"step{j}"] = {key: np.float64(v) for key, v in t.items()}
            after = mdl.get_weights()
            expected = R.adam_step(states[side.label], before, grads, lr)
            updates[side.label][f"step{j}"] = (
                {n: _wide(after[n]) - before[n] for n in train},
                {n: expected[n] - before[n] for n in train},
                {n: after[n] for n in frozen}, {n: before[n] for n in frozen},
                {n: lr + np.abs(_wide(before[n])) * (2 * F32_EPS / upd_tol.rtol) for n in train})
    out = [check(ctx, "optimizer", f"losses before each of {k} steps", "optimizer.losses",
                 losses["A"], losses["B"], ref_losses, steps=k)]
    wa, wb = models["A"].get_weights(), models["B"].get_weights()
    # Adam normalises each gradient element by its running RMS: where a gradient is within its
    # tolerance of zero, or its first moment cancels across steps, a gradient difference the
    # gradients stage accepts moves the weight by up to ~lr per step. That part is the
    # gradient tolerance propagated through the k Adam steps (worst case over signs), and
    # twice it is allowed on top of rtol x max|w| (scale = max|w| + 2 slack / rtol) against the
    # reference, four times between the backends (each may sit 2 slack from the reference).
    w_tol = tolerance("optimizer.weights", steps=k)
    qty = f"weights after {k} steps"
    slack = R.adam_sensitivity(ref_grads, grad_noise, cfg, lr)
    # ... and its knock-on effect: a weight moved by that slack changes the later gradients of
    # all the others. Two float64 runs whose gradients are perturbed by +-the gradient
    # tolerance (random signs, gradients recomputed at the perturbed weights) measure it.
    batches = _step_batches(ctx, k)
    for member in range(2):
        rng = np.random.default_rng([ctx.seed, 6, member])
        w_m = {k_: np.asarray(v) for k_, v in w0.items()}
        state_m = R.AdamState.from_config(cfg)
        for j, idx in enumerate(batches):
            batch = ctx.dataset.batch(idx)
            _, g, mags = R.gradients(ctx.model, w_m, batch, settings, magnitudes=True)
            scales = gradient_scales(g, mags, grad_rtol)
            g = {n: g[n] + grad_rtol * scales[n] * rng.choice((-1.0, 1.0), size=np.shape(g[n]))
                 for n in g}
            w_m = R.adam_step(state_m, w_m, g, lr)
        for n in train:
            slack[n] = np.maximum(slack[n], np.abs(w_m[n] - ref_w[n]))
    w_scales = {f"{qty}.{n}": np.max(np.abs(ref_w[n])) + 2 * slack[n] / w_tol.rtol for n in train}
    ab_scales = {f"{qty}.{n}": np.max(np.abs(ref_w[n])) + 4 * slack[n] / w_tol.rtol for n in train}
    loose = sum(int(np.count_nonzero(2 * slack[n] > w_tol.rtol * np.max(np.abs(ref_w[n]))))
                for n in train)
    out.append(check(ctx, "optimizer", qty, "optimizer.weights",
                     {n: wa[n] for n in train}, {n: wb[n] for n in train},
                     {n: ref_w[n] for n in train}, tol=w_tol, scale=w_scales, scale_ab=ab_scales,
                     note=f"{loose} elements are Adam-sensitive (the gradient tolerance, propagated "
                          "through the steps, exceeds the weight tolerance) and get that slack"))
    for side in (ctx.a, ctx.b):
        qty = f"Adam update vs float64 Adam ({side.name})"
        got = {s: u[0] for s, u in updates[side.label].items()}
        want = {s: u[1] for s, u in updates[side.label].items()}
        scales = {f"{qty}.{s}.{n}": v for s, u in updates[side.label].items()
                  for n, v in u[4].items()}
        out.append(ref_only("optimizer", qty, "optimizer.update", got, want,
                            side=side.label, scale=scales))
        still = {s: u[2] for s, u in updates[side.label].items()}
        was = {s: u[3] for s, u in updates[side.label].items()}
        if frozen:
            out.append(ref_only("optimizer", f"frozen entries unchanged ({side.name})",
                                "optimizer.frozen", still, was, side=side.label))
    return out + _refine_step_checks(ctx)


# -- 7. bundles ---------------------------------------------------------------------------------
def _trained_like(ctx: Context) -> dict[str, np.ndarray]:
    """Weights with every entry non-trivial (as after training): w0 plus seeded noise."""
    rng = ctx.rng(7)
    w = ctx.weights
    for name, v in w.items():
        noise = rng.normal(0, 0.02, size=v.shape)
        if np.iscomplexobj(v):
            noise = noise + 1j * rng.normal(0, 0.02, size=v.shape)
        w[name] = (v + noise * (np.abs(v).max() if name == "probe" else 1.0)).astype(v.dtype)
    return w


def _load(side: Side, path: str):
    """A bundle loaded into a side's backend: verified and read, then built there."""
    from ptycho.bundle import read_bundle

    contents = read_bundle(path)
    return side.backend.build_model(contents.model_config, contents.weights)


def stage_bundle(ctx: Context) -> list[Check]:
    """Save in A and load in B, save in B and load in A, and round trips in A and in B."""
    from ptycho.bundle import read_bundle, save_bundle

    w = _trained_like(ctx)
    x, e = ctx.batch.diffraction, ctx.batch.estimate
    ref_patches = R.predict(ctx.model, w, x, e)
    out: list[Check] = []
    writers = {}
    for side in (ctx.a, ctx.b):
        mdl = ctx.build(side, w)
        path = os.path.join(ctx.tmp(), f"bundle-{side.label}-{side.name}.zip")
        save_bundle(path, mdl.get_weights(), ctx.config, backend_name=side.registry_name or side.name,
                    framework_version=side.version)
        contents = read_bundle(path)
        if contents.backend != (side.registry_name or side.name) or contents.config != ctx.config:
            raise AssertionError(f"bundle written by {side.name} records backend "
                                 f"{contents.backend!r} / a different config")
        writers[side.label] = (side, mdl, path, mdl.predict(x, estimate=e))
    for writer, reader in ((ctx.a, ctx.b), (ctx.b, ctx.a)):
        _, mdl_w, path, pred_w = writers[writer.label]
        loaded = _load(reader, path)
        pair = f"{writer.name} -> {reader.name}"
        # A vs B here is "writer's export" vs "reader's export": both must equal w exactly.
        out.append(check(ctx, "bundle", f"weights {pair}", "bundle.weights",
                         loaded.get_weights(), mdl_w.get_weights(), w))
        out.append(check(ctx, "bundle", f"predict {pair}", "bundle.predict",
                         loaded.predict(x, estimate=e), pred_w, ref_patches))
    for side in (ctx.a, ctx.b):
        _, mdl_w, path, pred_w = writers[side.label]
        again = _load(side, path)
        out.append(check(ctx, "bundle", f"round trip in {side.name}: weights", "bundle.roundtrip",
                         again.get_weights(), w))
        out.append(check(ctx, "bundle", f"round trip in {side.name}: predict", "bundle.roundtrip",
                         again.predict(x, estimate=e), pred_w,
                         note="same backend, same weights, same input: bit-identical"))
    return out
