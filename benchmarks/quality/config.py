"""Everything the quality benchmark varies, in one place: edit the numbers here.

Four sizes: :data:`FULL` (``make quality``), :data:`NATURAL` (``--natural``: the full suite's
natural-image rows at 1e9 photons only, the issue's headline figure), :data:`QUICK`
(``--quick``: the same rows on fewer objects, patterns and epochs) and :data:`SMOKE` (one tiny
row, for the test that keeps the harness from rotting). Scans are integer raster grids (``grid_side**2`` points, an integer
``step``), so the iterative reference models them exactly (see ``ptycho.iterative.pty_chi``).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Mapping, Optional

#: Object kinds of the suite: random lines, Gaussian random fields, natural images
#: (amplitude from one picture of scikit-image's bundled data, phase from another).
KINDS = ("lines", "grf", "natural")


@dataclass(frozen=True)
class ObjectSpec:
    """One object of the suite. ``natural``: ``amplitude_image`` / ``phase_image`` name
    functions of ``skimage.data``; ``lines`` / ``grf``: drawn from ``seed``."""

    name: str
    kind: str
    seed: int = 0
    amplitude_image: str = ""
    phase_image: str = ""

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"object {self.name!r}: kind must be one of {KINDS}, "
                             f"got {self.kind!r}")
        if (self.kind == "natural") != bool(self.amplitude_image and self.phase_image):
            raise ValueError(f"object {self.name!r}: a natural object needs amplitude_image and "
                             "phase_image, the others neither")


@dataclass(frozen=True)
class ReferenceEngine:
    """The pty-chi engine that is the ceiling at one dose, and its batch size (patterns)."""

    engine: str
    batch_size: int


#: Training objects: never reconstructed in a row (the network has to generalise).
TRAIN_OBJECTS = (
    ObjectSpec("lines-a", "lines", seed=11),
    ObjectSpec("grf-a", "grf", seed=12),
    ObjectSpec("camera/brick", "natural", amplitude_image="camera", phase_image="brick"),
    ObjectSpec("moon/grass", "natural", amplitude_image="moon", phase_image="grass"),
)
#: Four more natural-image training objects (the pictures not in the suite's rows), for
#: ``--set train_objects=eight``: at the same epochs (twice the steps) worth 0.004-0.03 SSIM
#: to the network alone at both gridsizes (benchmarks/README.md, "Eight training objects").
MORE_TRAIN_OBJECTS = (
    ObjectSpec("rocket/cell", "natural", amplitude_image="rocket", phase_image="cell"),
    ObjectSpec("chelsea/clock", "natural", amplitude_image="chelsea", phase_image="clock"),
    ObjectSpec("hubble/page", "natural", amplitude_image="hubble_deep_field",
               phase_image="page"),
    ObjectSpec("ihc/text", "natural", amplitude_image="immunohistochemistry",
               phase_image="text"),
)
#: Named training sets ``--set train_objects=NAME`` chooses from.
TRAIN_SETS = {"four": TRAIN_OBJECTS, "eight": TRAIN_OBJECTS + MORE_TRAIN_OBJECTS}
#: Held-out objects: one row each (per dose, gridsize and backend).
HELDOUT_OBJECTS = (
    ObjectSpec("lines-b", "lines", seed=21),
    ObjectSpec("grf-b", "grf", seed=22),
    ObjectSpec("astronaut/gravel", "natural", amplitude_image="astronaut", phase_image="gravel"),
    ObjectSpec("coffee/coins", "natural", amplitude_image="coffee", phase_image="coins"),
)

#: Reconstructions made from the trained network, one column each: name -> extra keyword
#: arguments of ``ptycho.workflows.reconstruct``: the network alone; the network alone on
#: every other and every third point of each row and column (``spacing`` 12 and 18 px on the
#: suites' 6 px raster: 81 and 36 of 256 patterns through the network, the scan's estimate
#: still from all of them, :func:`ptycho.stitching.sparse_scan`); and the network followed by
#: physics refinement (``refine`` passes over the scan, see backends/common/refine.py).
#: Each runs the network in the precision it was trained in unless it names its own
#: (:meth:`QualityConfig.variant_kwargs`).
VARIANTS: Mapping[str, Mapping] = {"network": {}, "spacing12": {"spacing": 12},
                                   "spacing18": {"spacing": 18}, "refined": {"refine": 30}}

#: The iterative reference per dose, chosen by measurement (benchmarks/README.md, "Iterative
#: reference"): rPIE reaches SSIM 0.99 at 1e9 photons where LSQML stays at 0.97-0.98; at 1e6
#: LSQML with its Poisson model keeps the amplitude (0.97 against rPIE's 0.92).
REFERENCE_BY_DOSE = {1e6: ReferenceEngine("lsqml", 32), 1e9: ReferenceEngine("rpie", 16)}


@dataclass(frozen=True)
class QualityConfig:
    """Sizes and counts of one benchmark run (see the module docstring)."""

    name: str
    N: int = 64                                   # noqa: N815 (the pattern side, as everywhere)
    probe: str = "defocus"
    step: int = 6                                 # pixels between grid neighbours
    grid_side: int = 16                           # every scan: grid_side**2 patterns
    amplitude_range: tuple[float, float] = (0.5, 1.0)
    phase_range: tuple[float, float] = (0.0, math.pi / 2)
    doses: tuple[float, ...] = (1e6, 1e9)         # photons per pattern
    gridsizes: tuple[int, ...] = (1, 2)
    backends: tuple[str, ...] = ("tensorflow", "torch")
    train_objects: tuple[ObjectSpec, ...] = TRAIN_OBJECTS
    heldout_objects: tuple[ObjectSpec, ...] = HELDOUT_OBJECTS
    # the network and its training (ptycho.config.TrainingConfig fields)
    nepochs: int = 16
    batch_size: int = 16
    learning_rate: float = 1e-3
    lr_schedule: str = "constant"                 # TrainingConfig.lr_schedule (to lr 0)
    average_epochs: int = 0                       # TrainingConfig.average_epochs
    base_filters: int = 16
    n_filters_scale: int = 2
    precision: str = "float32"                    # TrainingConfig.precision
    backprop_estimate: bool = False               # ModelConfig.backprop_estimate
    estimate_scope: str = "pattern"               # ModelConfig.estimate_scope
    estimate_amplitude: str = "input"             # ModelConfig.estimate_amplitude
    central_decoder: bool = False                 # ModelConfig.central_decoder
    skip_connections: bool = False                # ModelConfig.skip_connections
    realspace_weight: float = 0.0                 # TrainingConfig.realspace_weight
    variants: Mapping[str, Mapping] = field(default_factory=lambda: dict(VARIANTS))
    # refinement passes of the curve that times reaching the reference (rows.refine_curve),
    # the network run in refine_curve_precision on the points refine_curve_spacing apart
    # (reconstruct(spacing=...); None: every point): refinement from the sparse pass is within
    # 0.005 SSIM of refinement from the dense one after 3 passes, and the network's share of
    # the time is a third to a fifth (benchmarks/README.md, "Refinement from a sparse pass")
    refine_curve: tuple[int, ...] = (1, 2, 3, 4, 6, 8, 12, 16)
    refine_curve_precision: str = "bfloat16"
    refine_curve_spacing: Optional[float] = 18.0
    # the iterative reference (pty-chi)
    reference_epochs: int = 30
    reference_by_dose: Mapping[float, ReferenceEngine] = field(
        default_factory=lambda: dict(REFERENCE_BY_DOSE))
    reference_checkpoint_every: int = 2
    threads: int = 2                               # intra-op threads of every framework
    seed: int = 0                                  # every scan's noise and every training
    # the trainings' own seed (initial weights, batch order) where it should differ from
    # `seed`: the model drawn again on the same scans and against the same reference
    train_seed: Optional[int] = None
    # a canonical network entry (e.g. "enc0.conv1.kernel") whose first element starts one
    # float32 ulp higher, all else the same: how far apart two trainings land that differ
    # by rounding alone, as two backends' do (rows.nudged_weights)
    nudged_weight: Optional[str] = None

    @property
    def object_side(self) -> int:
        """Side of every object (pixels): the grid's extent plus one patch."""
        return (self.grid_side - 1) * self.step + self.N

    def reference_engine(self, dose: float) -> ReferenceEngine:
        for d, engine in self.reference_by_dose.items():
            if math.isclose(d, dose, rel_tol=1e-9):
                return engine
        return ReferenceEngine("lsqml", 32)

    def variant_kwargs(self, variant: str) -> dict:
        """``reconstruct``'s keyword arguments for a variant: the network in the training
        precision (a bfloat16-trained model runs inference in bfloat16, as its user would),
        unless the variant names a precision.

        >>> QualityConfig("q", precision="bfloat16").variant_kwargs("refined")
        {'precision': 'bfloat16', 'refine': 30}
        """
        return {"precision": self.precision, **self.variants[variant]}

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["reference_by_dose"] = {f"{k:g}": dataclasses.asdict(v)
                                  for k, v in self.reference_by_dose.items()}
        d["variants"] = {k: dict(v) for k, v in self.variants.items()}
        return d


FULL = QualityConfig(name="full")
NATURAL = dataclasses.replace(
    FULL, name="natural", doses=(1e9,),
    heldout_objects=tuple(o for o in HELDOUT_OBJECTS if o.kind == "natural"))
QUICK = dataclasses.replace(
    FULL, name="quick", grid_side=12, nepochs=4, reference_epochs=10,
    train_objects=(TRAIN_OBJECTS[1], TRAIN_OBJECTS[2]), heldout_objects=(HELDOUT_OBJECTS[2],))
SMOKE = dataclasses.replace(
    FULL, name="smoke", N=16, step=4, grid_side=5, doses=(1e6,), gridsizes=(1,),
    backends=("torch",), nepochs=1, batch_size=8, base_filters=2, n_filters_scale=1,
    reference_epochs=2, reference_checkpoint_every=1, threads=1,
    train_objects=(TRAIN_OBJECTS[1],), heldout_objects=(HELDOUT_OBJECTS[2],),
    variants={"network": {}, "refined": {"refine": 2}}, refine_curve=(1,))
CONFIGS = {c.name: c for c in (FULL, NATURAL, QUICK, SMOKE)}

def _flag(text: str) -> bool:
    """A boolean field's text: true / false (or 1 / 0)."""
    value = {"true": True, "1": True, "false": False, "0": False}.get(text.lower())
    if value is None:
        raise ValueError(f"expected true or false, got {text!r}")
    return value


def _or_none(read):
    """How an optional field's text is read: ``none`` for None, else ``read(text)``."""
    return lambda text: None if text.lower() == "none" else read(text)


def _train_set(text: str) -> tuple[ObjectSpec, ...]:
    """A training set's name (:data:`TRAIN_SETS`)."""
    if text not in TRAIN_SETS:
        raise ValueError(f"train_objects must be one of {sorted(TRAIN_SETS)}, got {text!r}")
    return TRAIN_SETS[text]


#: Fields ``--set`` may change, with how their text is read (``gridsizes``: "1,2").
SETTABLE = {"nepochs": int, "batch_size": int, "learning_rate": float, "lr_schedule": str,
            "average_epochs": int,
            "base_filters": int,
            "n_filters_scale": int, "precision": str, "grid_side": int,
            "gridsizes": lambda text: tuple(int(g) for g in text.split(",")),
            "backprop_estimate": _flag, "estimate_scope": str, "estimate_amplitude": str,
            "central_decoder": _flag, "skip_connections": _flag,
            "realspace_weight": float,
            "refine_curve_spacing": _or_none(float),
            "refine_curve_precision": str,
            "probe": str, "seed": int,
            "train_seed": _or_none(int),
            "nudged_weight": _or_none(str),
            "train_objects": _train_set}


def with_settings(config: QualityConfig, assignments) -> QualityConfig:
    """``config`` with ``KEY=VALUE`` texts applied (keys from :data:`SETTABLE`), renamed so
    that its results say they differ from the named size."""
    from ptycho.config.schema import (ESTIMATE_AMPLITUDES, ESTIMATE_SCOPES, LR_SCHEDULES,
                                      PRECISIONS)
    from ptycho.simulate.probes import PROBE_KINDS

    # keys whose text must be one of a few names (imported here: no work at import time)
    choices = {"precision": PRECISIONS, "refine_curve_precision": PRECISIONS,
               "estimate_scope": ESTIMATE_SCOPES,
               "estimate_amplitude": ESTIMATE_AMPLITUDES, "lr_schedule": LR_SCHEDULES,
               "probe": PROBE_KINDS}
    changes, texts = {}, {}
    for text in assignments:
        key, sep, value = text.partition("=")
        if not sep or key not in SETTABLE:
            raise ValueError(f"--set {text!r}: expected KEY=VALUE with KEY one of "
                             f"{sorted(SETTABLE)}")
        try:
            changes[key] = SETTABLE[key](value)
        except ValueError as err:
            raise ValueError(f"--set {text!r}: {err}") from err
        if key in choices and value not in choices[key]:
            raise ValueError(f"--set {text!r}: {key} must be one of {list(choices[key])}")
        if key == "refine_curve_spacing" and changes[key] is not None \
                and not (math.isfinite(changes[key]) and changes[key] > 0):
            raise ValueError(f"--set {text!r}: refine_curve_spacing must be a positive number "
                             "of pixels or none")
        texts[key] = value
    if not changes:
        return config
    name = config.name + "".join(f",{k}={v}" for k, v in sorted(texts.items()))
    changed = dataclasses.replace(config, name=name, **changes)
    if changed.nudged_weight is not None:
        from benchmarks.quality.rows import training_config
        from ptycho.weights import network_weight_spec

        for gridsize in changed.gridsizes:
            names = network_weight_spec(training_config(changed, gridsize, 1e9).model)
            if changed.nudged_weight not in names:
                raise ValueError(f"--set nudged_weight={changed.nudged_weight}: not a network "
                                 f"entry of this model; one of {sorted(names)}")
    return changed
