"""``parity.run``: one config through two backends, stage by stage, into a :class:`ParityReport`."""

from __future__ import annotations

import time
import traceback
from dataclasses import replace
from typing import Any, Callable, Iterable, Optional, Sequence, Union

from backends.registry import backend_names
from ptycho.config.io import config_to_dict
from ptycho.config.schema import ModelConfig, TrainingConfig

from parity import stages
from parity.e2e import stage_e2e
from parity.report import STAGE_NAMES, STAGES, Check, ParityReport, StageResult
from parity.stages import Context, Side

#: The pair compared by default: the first two backends of the registry.
DEFAULT_BACKENDS = backend_names()[:2]
#: The function of each stage (1-7 in :mod:`parity.stages`, 8 in :mod:`parity.e2e`).
STAGE_FUNCTIONS: dict[str, Callable[[Context], list[Check]]] = {
    "physics": stages.stage_physics, "translate": stages.stage_translate,
    "network": stages.stage_network, "loss": stages.stage_loss,
    "gradients": stages.stage_gradients, "optimizer": stages.stage_optimizer,
    "bundle": stages.stage_bundle, "e2e": stage_e2e,
}
#: Optimiser steps compared in stage 6.
DEFAULT_STEPS = 3
#: Training epochs of each backend in stage 8.
DEFAULT_E2E_EPOCHS = 2


def default_config() -> TrainingConfig:
    """The small config ``ptycho parity`` runs by default: every branch of the model on.

    N=32, gridsize 2 (overlap constraint on a per-group canvas), base_filters 4 and
    n_filters_scale 1 (widths 4/8/16), pad_object with probe_big (border heads), trainable
    probe and intensity scale, all three loss terms weighted, 1e6 photons per pattern.
    """
    model = ModelConfig(N=32, gridsize=2, n_filters_scale=1, base_filters=4,
                        amp_activation="sigmoid", object_big=True, probe_big=True,
                        pad_object=True, probe_mask=False, probe_trainable=True,
                        intensity_scale_trainable=True)
    return TrainingConfig(model=model, batch_size=4, nepochs=DEFAULT_E2E_EPOCHS,
                          learning_rate=1e-3, nll_weight=1.0, mae_weight=0.1,
                          realspace_weight=0.5, nphotons=1e6, neighbor_count=4, seed=0)


def as_training_config(config: Union[None, TrainingConfig, ModelConfig, Any]) -> TrainingConfig:
    """A TrainingConfig from None (the default), a ModelConfig (the default training around
    it, neighbor_count raised to gridsize**2 when needed), an InferenceConfig (its model), or
    a TrainingConfig (as is)."""
    if config is None:
        return default_config()
    if isinstance(config, TrainingConfig):
        return config
    model = config if isinstance(config, ModelConfig) else getattr(config, "model", None)
    if isinstance(model, ModelConfig):
        base = default_config()
        return replace(base, model=model,
                       neighbor_count=max(base.neighbor_count, model.n_channels))
    raise TypeError(f"parity.run needs a TrainingConfig or ModelConfig, got {type(config).__name__}")


def select_stages(stages: Union[None, str, int, Iterable[Union[str, int]]]) -> list[str]:
    """Stage names in design order from names, numbers, or a comma-separated string.

    >>> select_stages("bundle,1")
    ['physics', 'bundle']
    >>> select_stages(None) == list(STAGE_NAMES)
    True
    """
    if stages is None:
        return list(STAGE_NAMES)
    if isinstance(stages, (str, int)):
        stages = [stages]
    wanted = set()
    for item in stages:
        for part in str(item).split(","):
            part = part.strip().lower()
            if not part:
                continue
            if part.isdigit() and 1 <= int(part) <= len(STAGES):
                wanted.add(STAGES[int(part) - 1][1])
            elif part in STAGE_NAMES:
                wanted.add(part)
            else:
                raise ValueError(f"unknown parity stage {part!r}; valid: "
                                 + ", ".join(f"{n} ({name})" for n, name, _ in STAGES))
    if not wanted:
        raise ValueError("no parity stage selected")
    return [name for name in STAGE_NAMES if name in wanted]


def _side(label: str, spec: Any) -> Side:
    if isinstance(spec, str):
        from backends import canonical_name, configure_process

        name = canonical_name(spec)
        backend = configure_process(name)     # deterministic kernels, TF32 off
        return Side(label, name, backend, name, backend.version())
    name = getattr(spec, "name", None) or type(spec).__name__
    version = spec.version() if hasattr(spec, "version") else "?"
    return Side(label, str(name), spec, None, str(version))


def run(config: Union[None, TrainingConfig, ModelConfig] = None,
        stages: Union[None, str, int, Iterable[Union[str, int]]] = None, seed: int = 0,
        backends: Sequence[Any] = DEFAULT_BACKENDS, *, steps: int = DEFAULT_STEPS,
        e2e_epochs: int = DEFAULT_E2E_EPOCHS, workdir: Optional[str] = None,
        progress: Optional[Callable[[StageResult], None]] = None) -> ParityReport:
    """Run ``config`` through two backends stage by stage and report every comparison.

    ``backends``: two backend names (imported lazily through :func:`backends.get_backend`)
    or backend objects (e.g. a wrapped backend in a test). ``stages``: names or numbers
    (default: all eight). ``seed`` seeds every input and the initial weights. A stage that
    raises is recorded as an error (its traceback in the JSON) and the run goes on.

    >>> from parity.fake import NumpyBackend
    >>> r = run(stages="physics,translate", backends=(NumpyBackend("np-a"), NumpyBackend("np-b")))
    >>> r.passed, [s.name for s in r.stages]
    (True, ['physics', 'translate'])
    """
    start = time.perf_counter()
    if int(steps) < 1 or int(e2e_epochs) < 1:
        raise ValueError(f"steps and e2e_epochs must be >= 1, got {steps} and {e2e_epochs}")
    training = as_training_config(config)
    names = select_stages(stages)
    if len(backends) != 2:
        raise ValueError(f"parity.run compares exactly two backends, got {len(backends)}")
    a, b = _side("A", backends[0]), _side("B", backends[1])
    if a.name == b.name:
        a.name, b.name = f"{a.name}[A]", f"{b.name}[B]"
    ctx = Context(config=training, seed=int(seed), a=a, b=b, steps=int(steps),
                  e2e_epochs=int(e2e_epochs), workdir=workdir)
    report = ParityReport(backend_a=a.name, backend_b=b.name,
                          versions={a.name: a.version, b.name: b.version},
                          config=config_to_dict(training), seed=int(seed))
    try:
        for number, name, title in STAGES:
            if name not in names:
                continue
            result = StageResult(number, name, title)
            t0 = time.perf_counter()
            try:
                result.checks = STAGE_FUNCTIONS[name](ctx)
            except Exception:  # noqa: BLE001 - any failure of a stage is a finding to report
                result.error = traceback.format_exc()
            result.seconds = time.perf_counter() - t0
            report.stages.append(result)
            if progress is not None:
                progress(result)
    finally:
        ctx.cleanup()
    report.seconds = time.perf_counter() - start
    return report
