"""The harness can fail: inject one discrepancy into one backend and check the report names the
stage where it first shows, the side that drifted, and passes every stage before it.

Faults are injected by wrapping a backend object (never by editing backend code). The same
faults run against the numpy stand-in backend (no framework needed, ``core`` env) and, marked
``parity``, against the real TensorFlow and PyTorch backends.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

import parity
from parity.fake import NumpyBackend
from ptycho.config import ModelConfig, TrainingConfig


# -- wrappers ---------------------------------------------------------------------------------
class ModelWrapper:
    """Delegates to a backend model; subclasses override one method to inject a fault."""

    def __init__(self, inner):
        self._inner = inner

    def __getattr__(self, item):
        return getattr(self._inner, item)


class BackendWrapper:
    """Delegates to a backend; ``model_wrapper`` wraps every model it builds."""

    model_wrapper = ModelWrapper

    def __init__(self, inner):
        self._inner = inner
        self.name = f"{inner.name}*"

    def __getattr__(self, item):
        return getattr(self._inner, item)

    def version(self):
        return self._inner.version()

    def weights_in(self, weights):
        return weights

    def build_model(self, config, weights):
        return self.model_wrapper(self._inner.build_model(config, self.weights_in(weights)))


class FlippedTranslation(BackendWrapper):
    """translate() with the sign of dx flipped (content moves left instead of right)."""

    def translate(self, images, offsets):
        return self._inner.translate(images, np.asarray(offsets) * np.float32([-1.0, 1.0]))


class _EpsModel(ModelWrapper):
    FACTOR = 1e3

    def losses(self, batch, settings):
        return self._inner.losses(batch, replace(settings, epsilon=settings.epsilon * self.FACTOR))

    def gradients(self, batch, settings):
        return self._inner.gradients(batch, replace(settings, epsilon=settings.epsilon * self.FACTOR))

    def configure_training(self, training):
        self._inner.configure_training(replace(training, loss_epsilon=training.loss_epsilon * self.FACTOR))


class ChangedLossEpsilon(BackendWrapper):
    """The Poisson NLL's epsilon multiplied by 1000, in the op and in the model."""

    model_wrapper = _EpsModel

    def poisson_nll(self, pred, obs, eps):
        return self._inner.poisson_nll(pred, obs, eps * _EpsModel.FACTOR)


def _transpose_kernels(weights):
    return {k: (np.ascontiguousarray(np.transpose(v, (1, 0, 2, 3))) if k.endswith(".kernel") else v)
            for k, v in weights.items()}


class _TransposedModel(ModelWrapper):
    def get_weights(self):
        return _transpose_kernels(self._inner.get_weights())

    def set_weights(self, weights):
        self._inner.set_weights(_transpose_kernels(weights))


class TransposedKernels(BackendWrapper):
    """Kernels loaded with kh and kw swapped, and swapped back on export: the exported weights
    look right, the network computes with transposed kernels."""

    model_wrapper = _TransposedModel

    def weights_in(self, weights):
        return _transpose_kernels(weights)


class DroppedWeight(BackendWrapper):
    """One entry silently not loaded: the model keeps a default (zero) instead."""

    ENTRY = "amp.head.bias"

    def weights_in(self, weights):
        w = dict(weights)
        w[self.ENTRY] = np.zeros_like(w[self.ENTRY])
        return w


class _ConjGradModel(ModelWrapper):
    def gradients(self, batch, settings):
        g = self._inner.gradients(batch, settings)
        g["probe"] = np.conj(g["probe"])
        return g


class ConjugatedProbeGradient(BackendWrapper):
    """Probe gradient reported as d/d real - 1j d/d imag (the wrong convention)."""

    model_wrapper = _ConjGradModel


class _LrModel(ModelWrapper):
    def set_learning_rate(self, lr):
        self._inner.set_learning_rate(lr * 1.01)


class LearningRateOff(BackendWrapper):
    """Every learning rate 1% high (a schedule applied in the wrong units, say)."""

    model_wrapper = _LrModel


class _ScheduleModel(ModelWrapper):
    calls = 0

    def set_learning_rate(self, lr):
        self.calls += 1
        self._inner.set_learning_rate(lr * (10.0 if self.calls > 1 else 1.0))


class ScheduleAfterFirstEpoch(BackendWrapper):
    """From the second set_learning_rate call on (epoch 1 of fit), the rate is 10x: only a
    multi-epoch training run (stage 8) can see it."""

    model_wrapper = _ScheduleModel


#: fault -> (first stage where it must show, what must fail there)
FAULTS = {
    FlippedTranslation: ("translate", "translate (complex)"),
    ChangedLossEpsilon: ("loss", "op: poisson_nll (counts 1e-2..1e0)"),
    TransposedKernels: ("network", "predict (object patches)"),
    DroppedWeight: ("network", "weights exported after import"),
    ConjugatedProbeGradient: ("gradients", "gradients (46 entries)"),
    LearningRateOff: ("optimizer", "Adam update vs float64 Adam"),
    ScheduleAfterFirstEpoch: ("e2e", "reconstructed patches"),
}


def small_config() -> TrainingConfig:
    """Every branch the faults need (gridsize 2, border heads, trainable probe), small."""
    return replace(parity.default_config(),
                   model=ModelConfig(N=16, gridsize=2, n_filters_scale=1, base_filters=2,
                                     pad_object=True, probe_big=True, probe_trainable=True))


def assert_first_failure(report, stage, quantity, drifted_name):
    text = report.to_text()
    ff = report.first_failure
    assert ff is not None, f"the fault went unnoticed:\n{text}"
    assert ff.name == stage, f"expected the first failure at {stage!r}, got {ff.name!r}:\n{text}"
    for s in report.stages[:report.stages.index(ff)]:
        assert s.ok, f"stage {s.name} should pass before the fault shows:\n{text}"
    failing = [c for c in ff.failing if c.quantity.startswith(quantity.split(" (")[0])]
    assert failing, f"{quantity!r} should fail in {stage}; failing: {[c.quantity for c in ff.failing]}"
    drift = {c.drifted(report.backend_a, report.backend_b) for c in ff.failing if c.has_reference}
    assert drift <= {drifted_name, f"{drifted_name}?"}, (drift, text)
    assert f"first failing stage: {ff.number} {stage}" in text


def stages_up_to(stage):
    names = list(parity.STAGE_NAMES)
    return names[:names.index(stage) + 1]


# -- on the numpy stand-in (no framework) ------------------------------------------------------
@pytest.mark.parametrize("fault", list(FAULTS), ids=lambda f: f.__name__)
@pytest.mark.parametrize("side", ["A", "B"])
def test_fault_in_stand_in_backend_is_located(fault, side):
    stage, quantity = FAULTS[fault]
    bad = fault(NumpyBackend("np"))
    good = NumpyBackend("ok")
    pair = (bad, good) if side == "A" else (good, bad)
    report = parity.run(small_config(), stages=stages_up_to(stage), backends=pair, steps=2)
    assert_first_failure(report, stage, quantity, bad.name)
    assert not report.passed


def test_the_unwrapped_pair_passes_the_same_stages():
    report = parity.run(small_config(), backends=(NumpyBackend("a"), NumpyBackend("b")), steps=2)
    assert report.passed, report.to_text()


# -- on the real backends ----------------------------------------------------------------------
REAL_CASES = [pytest.param(f, id=f.__name__, marks=[pytest.mark.slow] if FAULTS[f][0] == "e2e" else [])
              for f in FAULTS]


@pytest.mark.parity
@pytest.mark.parametrize("fault", REAL_CASES)
def test_fault_in_real_backend_is_located(fault):
    from backends import get_backend

    stage, quantity = FAULTS[fault]
    # alternate the faulty side so that both frameworks get wrapped
    wrap_torch = list(FAULTS).index(fault) % 2 == 0
    tf_b, torch_b = get_backend("tensorflow"), get_backend("torch")
    pair = (tf_b, fault(torch_b)) if wrap_torch else (fault(tf_b), torch_b)
    report = parity.run(small_config(), stages=stages_up_to(stage), backends=pair, steps=2)
    assert_first_failure(report, stage, quantity, pair[1].name if wrap_torch else pair[0].name)
