"""The rows of the quality benchmark: train, reconstruct, score; the reference and the baselines.

A row is one held-out object at one dose, gridsize and backend. Every reconstruction of a row
(each entry of ``config.variants``, the pty-chi reference, and the two baselines that need no
training: the back-propagated estimate and the constant-image floor) is scored
over the same region: :func:`ptycho.metrics.metric_region` of the scan's coverage
(:func:`ptycho.stitching.scan_coverage`), which depends only on the probe and the positions.

The functions here run inside one worker process each (``benchmarks.quality.worker``); they
write the reconstructed objects as ``.npy`` files for the figures and return JSON records.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Callable, Optional

import numpy as np

from benchmarks.quality.config import ObjectSpec, QualityConfig
from benchmarks.quality.objects import build_object, scan_object, training_scan
from ptycho.metrics import compare_objects, metric_region
from ptycho.stitching import scan_coverage

Log = Callable[[str], None]


def scored_region(raw, shape) -> tuple[int, int, int, int]:
    """The region every reconstruction of this scan is scored over."""
    xy = np.stack([raw.xcoords, raw.ycoords], axis=1)
    region = metric_region(scan_coverage(raw.probe, xy, shape))
    if region is None:
        raise ValueError("the scan covers less than the SSIM window: no region to score")
    return region


def score(obj: np.ndarray, truth: np.ndarray, region) -> dict[str, Any]:
    """SSIM, PSNR (dB) and FRC 0.5 resolution (px; inf = not resolved) of amplitude and phase,
    after the alignment :func:`ptycho.metrics.compare_objects` does (kept for the figures)."""
    m = compare_objects(obj, truth, region=region)
    out: dict[str, Any] = {part: {k: m[part][k] for k in ("ssim", "psnr", "frc50_px")}
                           for part in ("amplitude", "phase")}
    out["amplitude_scale"], out["phase_offset"] = m["amplitude_scale"], m["phase_offset"]
    return out


def floor_scores(truth: np.ndarray, region) -> dict[str, Any]:
    """The constant-image floor: an object of ones (any constant scores the same after the
    amplitude scale and phase offset are fitted)."""
    return score(np.ones_like(truth), truth, region)


def estimate_object(raw, shape) -> np.ndarray:
    """The back-propagated estimate of every pattern (:func:`ptycho.physics.model.
    backprop_estimate`, no network), each patch's level set as the intensity match sets the
    network's (``sum |P E|^2`` = the pattern's total), stitched like the network's patches
    (:mod:`ptycho.scan_estimate`, what ``estimate_scope="scan"`` starts from): what the
    patterns give with no learning, the baseline a network alone has to beat."""
    from ptycho.scan_estimate import ScanEstimate

    positions = np.stack([raw.xcoords, raw.ycoords], axis=1)
    return ScanEstimate.from_patterns(raw.diffraction, positions, raw.probe,
                                      shape=shape).canvas


def object_file(out_dir: str, *parts: Any) -> str:
    """Where a reconstructed object is saved: ``objects/<parts joined by __>.npy``."""
    name = "__".join(str(p).replace("/", "-") for p in parts)
    return os.path.join(out_dir, "objects", name + ".npy")


def save_object(path: str, obj: np.ndarray) -> None:
    from ptycho.atomic import atomic_write

    os.makedirs(os.path.dirname(path), exist_ok=True)
    with atomic_write(path, "wb") as f:
        np.save(f, np.asarray(obj, np.complex64), allow_pickle=False)


def training_config(config: QualityConfig, gridsize: int, dose: float):
    """The TrainingConfig of one trained model (everything else at the library defaults)."""
    from ptycho.config import ModelConfig, TrainingConfig

    model = ModelConfig(N=config.N, gridsize=gridsize, base_filters=config.base_filters,
                        n_filters_scale=config.n_filters_scale,
                        backprop_estimate=config.backprop_estimate,
                        estimate_scope=config.estimate_scope,
                        estimate_amplitude=config.estimate_amplitude,
                        central_decoder=config.central_decoder,
                        skip_connections=config.skip_connections)
    return TrainingConfig(model=model, nepochs=config.nepochs, batch_size=config.batch_size,
                          learning_rate=config.learning_rate, lr_schedule=config.lr_schedule,
                          average_epochs=config.average_epochs,
                          nphotons=dose,
                          seed=config.seed if config.train_seed is None else config.train_seed,
                          precision=config.precision,
                          realspace_weight=config.realspace_weight)


def nudged_weights(tc, name: str) -> dict[str, np.ndarray]:
    """Entry ``name`` of the seeded initial weights of ``tc`` with its first element one
    float32 ulp higher (``train(initial_weights=...)``; every other entry stays seeded): a
    training that differs from the plain one by rounding alone."""
    from ptycho.weights import init_weights

    n = tc.model.N
    entry = init_weights(tc.model, tc.seed, np.ones((n, n), np.complex64), 0.0)[name].copy()
    entry.flat[0] = np.nextafter(entry.flat[0], np.float32(np.inf))
    return {name: entry}


#: Least patterns of the untimed call that warms each variant up (see :func:`warm_up`).
WARM_UP_PATTERNS = 16
#: Calls of ``reconstruct`` behind each timed figure (a column, a point of the refinement
#: curve): the fastest is kept, as the other benchmarks keep the fastest round, so that a
#: call held up by another process does not set it (one call of the network alone, 0.3-0.5
#: s, varied by 50 % between rows of one run). The scores are the first call's: the same
#: model and data give the same object.
TIMED_CALLS = 3


def timed_reconstruct(model, raw, **kwargs):
    """``reconstruct(model, raw, keep_patches=False, **kwargs)`` :data:`TIMED_CALLS` times:
    the first call's :class:`Reconstruction` with the fastest call's ``seconds``."""
    from ptycho.workflows import reconstruct

    first = reconstruct(model, raw, keep_patches=False, **kwargs)
    fastest = min([first.seconds] + [reconstruct(model, raw, keep_patches=False, **kwargs).seconds
                                     for _ in range(TIMED_CALLS - 1)])
    return dataclasses.replace(first, seconds=fastest)


def warm_up_patterns(config) -> int:
    """Patterns the warm-up reconstructs for a model trained with ``config``: at least one
    full prediction batch (``inference_batch_size`` groups of ``n_channels`` patterns), so
    that the timed calls' batch shapes have run once: oneDNN builds its kernels per shape
    (torch's first 256-pattern reconstruction after a 16-pattern warm-up took 0.63 s, the
    next ones 0.30-0.45 s)."""
    from ptycho.workflows.model import inference_batch_size

    return max(WARM_UP_PATTERNS, inference_batch_size(config) * config.model.n_channels)


def warm_up(model, raw, variants, reconstruct, patterns: int = WARM_UP_PATTERNS) -> None:
    """Reconstruct the first ``patterns`` patterns of ``raw`` (all, if it has fewer) once per
    variant, untimed: the first call of a fresh model traces its graph (TensorFlow) and
    allocates and builds its kernels for each batch shape (both), which is not the
    reconstruction's cost; the reference's timing likewise leaves out pty-chi's one-off
    imports."""
    from ptycho.data.contract import RawData

    k = min(int(patterns), raw.n_patterns)
    head = RawData(diffraction=raw.diffraction[:k], probe=raw.probe, xcoords=raw.xcoords[:k],
                   ycoords=raw.ycoords[:k])
    for kwargs in variants.values():
        reconstruct(model, head, keep_patches=False, **kwargs)


def network_rows(config: QualityConfig, backend: str, out_dir: str, log: Log) -> list[dict]:
    """Train one model per (dose, gridsize) on the training objects; reconstruct and score
    every held-out object with each variant of ``config.variants``."""
    from ptycho.workflows import reconstruct, train

    rows = []
    for dose in config.doses:
        train_raw = training_scan(config, dose)
        heldout = [(spec, *scan_object(spec, dose, config)) for spec in config.heldout_objects]
        for gridsize in config.gridsizes:
            tc = training_config(config, gridsize, dose)
            log(f"{backend}: training, dose {dose:g}, gridsize {gridsize}, "
                f"{train_raw.n_patterns} patterns x {config.nepochs} epochs")
            start = ({} if config.nudged_weight is None else
                     {"initial_weights": nudged_weights(tc, config.nudged_weight)})
            result = train(tc, train_raw, backend=backend, **start)
            history = result.history
            variants = {v: config.variant_kwargs(v) for v in config.variants}
            warm_up(result.model, heldout[0][1],
                    {**variants, "curve": _curve_kwargs(config, 1)}, reconstruct,
                    warm_up_patterns(tc))
            for spec, raw, truth in heldout:
                region = scored_region(raw, truth.shape)
                row = {"object": spec.name, "kind": spec.kind, "dose": dose,
                       "gridsize": gridsize, "backend": backend, "region": list(region),
                       "train_s": result.timings["train_s"],
                       "train_patterns": train_raw.n_patterns, "epochs": len(history.epochs),
                       "final_loss": history.epochs[-1].loss["total"] if history.epochs else None}
                for variant, kwargs in variants.items():
                    # the row runner's one call per column: a new column is one more entry
                    # of config.variants (e.g. {"refine": K}), nothing here changes
                    recon = timed_reconstruct(result.model, raw, **kwargs)
                    row[variant] = {**score(recon.obj, truth, region),
                                    "seconds": recon.seconds, "kwargs": dict(kwargs)}
                    save_object(object_file(out_dir, spec.name, f"{dose:g}", f"g{gridsize}",
                                            backend, variant), recon.obj)
                if config.refine_curve:
                    row["refine_curve"] = refine_curve(result.model, raw, truth, region, config)
                rows.append(row)
                log(f"{backend}: {spec.name} dose {dose:g} g{gridsize}: " + ", ".join(
                    f"{v} SSIM {row[v]['amplitude']['ssim']:.3f}/{row[v]['phase']['ssim']:.3f}"
                    for v in config.variants))
    return rows


def _curve_kwargs(config: QualityConfig, passes: int) -> dict:
    kwargs = {"refine": int(passes), "precision": config.refine_curve_precision}
    if config.refine_curve_spacing is not None:
        kwargs["spacing"] = config.refine_curve_spacing
    return kwargs


def refine_curve(model, raw, truth: np.ndarray, region, config: QualityConfig) -> list[dict]:
    """``reconstruct(refine=k)`` end to end (scan estimate, network on the points
    ``config.refine_curve_spacing`` apart, stitching, k passes) for each ``k`` of
    ``config.refine_curve``: its seconds and SSIMs, from which the report reads
    how long refinement takes to come within reach of the reference (:func:`report.merge`)."""
    curve = []
    for k in config.refine_curve:
        recon = timed_reconstruct(model, raw, **_curve_kwargs(config, k))
        scores = score(recon.obj, truth, region)
        curve.append({"passes": int(k), "seconds": recon.seconds,
                      **{f"{p}_ssim": scores[p]["ssim"] for p in ("amplitude", "phase")}})
    return curve


def reference_rows(config: QualityConfig, out_dir: str, log: Log) -> list[dict]:
    """pty-chi on every held-out scan (one per object and dose: it does not depend on the
    network's backend or gridsize), scored like the network. Without pty-chi: one record
    saying why."""
    try:
        from ptycho.iterative import pty_chi
        warm_s = pty_chi.warm_up()
    except ImportError as exc:
        log(f"reference: skipped ({exc})")
        return [{"available": False, "reason": str(exc)}]
    log(f"reference: pty-chi warmed up in {warm_s:.1f} s (imports, not counted)")
    rows = []
    for dose in config.doses:
        ref = config.reference_engine(dose)
        for spec in config.heldout_objects:
            raw, truth = scan_object(spec, dose, config)
            region = scored_region(raw, truth.shape)
            result = pty_chi.reconstruct_ptychi(
                raw, engine=ref.engine, epochs=config.reference_epochs,
                batch_size=ref.batch_size, truth=truth, region=region,
                checkpoint_every=config.reference_checkpoint_every, seed=config.seed)
            save_object(object_file(out_dir, spec.name, f"{dose:g}", "reference"), result.obj)
            rows.append({"available": True, "object": spec.name, "dose": dose,
                         "region": list(region), **score(result.obj, truth, region),
                         **result.to_dict()})
            log(f"reference: {spec.name} dose {dose:g} {ref.engine}: SSIM "
                f"{rows[-1]['amplitude']['ssim']:.3f}/{rows[-1]['phase']['ssim']:.3f} in "
                f"{result.seconds:.1f} s (within 0.01 of it after {result.seconds_to_final} s)")
    return rows


def baseline_rows(config: QualityConfig, out_dir: Optional[str] = None) -> list[dict]:
    """The baselines of every held-out scan (numpy only): ``floor`` (a constant image) and
    ``estimate`` (:func:`estimate_object`), saved under ``out_dir`` for the figures."""
    rows = []
    for dose in config.doses:
        for spec in config.heldout_objects:
            raw, truth = scan_object(spec, dose, config)
            region = scored_region(raw, truth.shape)
            estimate = estimate_object(raw, truth.shape)
            if out_dir is not None:
                save_object(object_file(out_dir, spec.name, f"{dose:g}", "estimate"), estimate)
            rows.append({"object": spec.name, "dose": dose, "region": list(region),
                         "floor": floor_scores(truth, region),
                         "estimate": score(estimate, truth, region)})
    return rows


def heldout_truths(config: QualityConfig) -> dict[str, np.ndarray]:
    """The ground truth of every held-out object, by name (it does not depend on the dose)."""
    return {spec.name: build_object(spec, config) for spec in config.heldout_objects}


def describe(spec: ObjectSpec) -> str:
    if spec.kind == "natural":
        return f"{spec.name} (amplitude: {spec.amplitude_image}, phase: {spec.phase_image})"
    return f"{spec.name} ({spec.kind}, seed {spec.seed})"

