"""The train workflow: data in, a trained :class:`PtychoModel` out."""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field
from typing import Callable, Mapping, Optional, Union

import numpy as np

from backends import configure_process, resolve_backend_name
from ptycho.config.schema import TrainingConfig
from ptycho.data.contract import RawData
from ptycho.data.grouping import GroupedData, distinct_patterns, group_data_for_training
from ptycho.errors import ConfigError
from ptycho.limits import check_bytes
from ptycho.model_memory import check_model_memory
from ptycho.stitching import GROUP_CANVAS_BYTES_PER_PIXEL, check_group_canvas
from ptycho.tracking import NullTracker, make_tracker
from ptycho.training import EpochRecord, History, NonFiniteLossError, ProgressFn, fit
from ptycho.weights import init_weights, validate_weights
from ptycho.workflows.model import PtychoModel

#: File name of the bundle a run with ``output_dir`` writes (after every completed epoch).
BUNDLE_NAME = "model.zip"

DataLike = Union[RawData, GroupedData]


@dataclass
class TrainResult:
    """What :func:`train` returns: the model, its history, and where the time went (seconds)."""

    model: PtychoModel
    history: History
    timings: dict[str, float] = field(default_factory=dict)
    train_data: Optional[GroupedData] = None
    test_data: Optional[GroupedData] = None
    bundle_path: Optional[str] = None


def prepare(data: DataLike, config: TrainingConfig) -> GroupedData:
    """Group and scale ``data`` for ``config`` (a GroupedData passes through, checked).

    The grouped copy of a raw scan, (B, C, N, N) float32, is checked against the memory
    budget (:mod:`ptycho.limits`) before it is made.
    """
    if isinstance(data, GroupedData):
        if data.N != config.model.N or data.n_channels != config.model.n_channels:
            raise ConfigError(
                f"grouped data has N={data.N}, C={data.n_channels}; the config expects "
                f"N={config.model.N}, C={config.model.n_channels}")
        return data
    if isinstance(data, RawData):
        m = config.model
        groups = config.n_groups if config.n_groups is not None else data.n_patterns
        check_bytes(groups * m.n_channels * data.N * data.N * np.dtype(np.float32).itemsize,
                    f"the grouped training data ({groups} groups of {m.n_channels} patterns of "
                    f"{data.N} x {data.N})")
        return group_data_for_training(data, config)
    raise TypeError(f"expected RawData or GroupedData, got {type(data).__name__}")


#: Training keeps the overlap constraint's canvases and their gradients.
TRAINING_CANVAS_FACTOR = 2


def check_training_memory(config: TrainingConfig, grouped: GroupedData) -> None:
    """Check what one training step takes against the memory budget, before a model is built.

    The network in batches of ``config.batch_size`` groups
    (:func:`ptycho.model_memory.check_model_memory`, training) and, for gridsize > 1 with
    ``object_big``, the overlap constraint's canvases of one batch (their side comes from the
    spread of each group's positions: one position far from the others makes every canvas
    huge; the error names it, index and value).
    """
    check_model_memory(config.model, config.batch_size, training=True)
    m = config.model
    if m.gridsize > 1 and m.object_big:
        positions = grouped.global_offsets[:, None, :] + grouped.rel_offsets.astype(np.float64)
        check_group_canvas(grouped.canvas_size, min(config.batch_size, len(grouped)), positions,
                           m.N, indices=grouped.indices,
                           what="the overlap constraint of one training batch",
                           bytes_per_pixel=TRAINING_CANVAS_FACTOR * GROUP_CANVAS_BYTES_PER_PIXEL)


def train(config: TrainingConfig, train_data: DataLike, test_data: Optional[DataLike] = None,
          backend: Optional[str] = None, progress: Optional[ProgressFn] = None,
          on_epoch_end: Optional[Callable[[EpochRecord], None]] = None,
          group=None, initial_weights: Optional[Mapping[str, np.ndarray]] = None) -> TrainResult:
    """Train a PINN on ``train_data``; validate on ``test_data`` each epoch when given.

    The backend is ``backend`` if given, else ``config.backend``, else ``PTYCHO_BACKEND``, else
    the default; its process-wide settings are applied first (:func:`backends.configure_process`:
    deterministic kernels, TF32 off). Initial weights come from ``config.seed`` (same in every backend). With
    ``config.output_dir`` the bundle ``model.zip`` is rewritten after every completed epoch,
    so a failed or interrupted run leaves the last good model on disk (that epoch's weights;
    with ``config.average_epochs`` the final bundle holds the averaged ones). A non-finite loss
    raises :class:`ptycho.training.NonFiniteLossError` (epoch, step; ``err.model`` holds the
    weights of the last completed epoch, ``err.history`` the completed epochs); Ctrl-C ends
    the run with ``history.interrupted`` set and the last completed epoch saved.
    ``progress(epoch, step, n_steps, terms)`` is called after every step and
    ``on_epoch_end(record)`` after every completed epoch (after its bundle is written).

    ``initial_weights``: canonical entries to start from in place of the seeded ones (any
    of them, e.g. a bundle's network weights to train further; the rest are seeded as usual),
    checked against the config's spec (:func:`ptycho.weights.validate_weights`) before any
    backend builds a model.

    ``group``: a started process group of ``backend`` (:func:`ptycho.workflows.distributed.
    process_group`); every rank then calls ``train`` with the same config and data, trains
    on its part of every global batch (``config.batch_size`` groups per step over all
    ranks) and ends with the same weights and history; only rank 0 writes the bundle and
    tracks the run (``bundle_path`` is None on the other ranks).

    Example (needs a backend)::

        result = train(TrainingConfig(nepochs=5), raw_train, backend="torch")
        result.history.losses()      # total loss per epoch
        result.model.save("model.zip")
    """
    t0 = time.perf_counter()
    name, _ = (resolve_backend_name(backend) if backend
               else resolve_backend_name(config.backend, source="TrainingConfig.backend"))
    check_model_memory(config.model, config.batch_size, training=True)   # before any framework
    impl = configure_process(name)     # deterministic kernels, TF32 off (see backends.registry)
    grouped = prepare(train_data, config)
    grouped_test = prepare(test_data, config) if test_data is not None else None
    check_training_memory(config, grouped)
    t_prepare = time.perf_counter()
    weights = init_weights(config.model, config.seed, grouped.probe, math.log(grouped.intensity_scale))
    if initial_weights is not None:
        weights.update(initial_weights)
        validate_weights(config.model, weights)
    built = (impl.build_model(config.model, weights) if group is None
             else impl.build_model(config.model, weights, group=group))
    model = PtychoModel(built, config)
    t_build = time.perf_counter()

    lead = group is None or group.rank == 0       # the one rank that writes
    bundle_path = None
    if config.output_dir and lead:
        os.makedirs(config.output_dir, exist_ok=True)
        bundle_path = os.path.join(config.output_dir, BUNDLE_NAME)
    tracker = make_tracker(config) if lead else NullTracker()
    history_so_far = History()

    def epoch_done(record: EpochRecord, _backend_model) -> None:
        history_so_far.epochs.append(record)
        metrics = {f"train_{k}": v for k, v in record.loss.items()}
        if record.val_loss:
            metrics.update({f"val_{k}": v for k, v in record.val_loss.items()})
        metrics["learning_rate"] = record.learning_rate
        tracker.log_epoch(record.epoch, metrics)
        if bundle_path:
            model.history = history_so_far
            model.save(bundle_path)
        if on_epoch_end is not None:
            on_epoch_end(record)

    try:
        history = fit(model.backend_model, grouped, config, validation=grouped_test,
                      progress=progress, on_epoch_end=epoch_done)
        model.history = history
        t_train = time.perf_counter()
        if bundle_path:
            model.save(bundle_path)     # the final history (early stopping, best epoch)
            tracker.log_artifact(bundle_path)
    except NonFiniteLossError as err:
        err.model = model              # holds the weights of the last completed epoch
        tracker.close("FAILED")
        raise
    except BaseException:
        tracker.close("FAILED")
        raise
    tracker.close("KILLED" if history.interrupted else "FINISHED")
    # patterns: distinct scan points per epoch; patches: groups x C the network processed
    # (at gridsize > 1 each pattern sits in about C groups)
    train_s = max(t_train - t_build, 1e-9)
    n_epochs = len(history.epochs)
    timings = {"prepare_s": t_prepare - t0, "build_s": t_build - t_prepare,
               "train_s": t_train - t_build, "total_s": time.perf_counter() - t0,
               "patterns_per_s": n_epochs * distinct_patterns(grouped.indices) / train_s,
               "patches_per_s": n_epochs * len(grouped) * grouped.n_channels / train_s}
    return TrainResult(model=model, history=history, timings=timings, train_data=grouped,
                       test_data=grouped_test, bundle_path=bundle_path)
