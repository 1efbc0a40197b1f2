"""The train workflow: data in, a trained :class:`PtychoModel` out."""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field
from typing import Optional, Union

from backends import get_backend
from ptycho.config.schema import TrainingConfig
from ptycho.data.contract import RawData
from ptycho.data.grouping import GroupedData, distinct_patterns, group_data_for_training
from ptycho.errors import ConfigError
from ptycho.tracking import make_tracker
from ptycho.training import EpochRecord, History, NonFiniteLossError, ProgressFn, fit
from ptycho.weights import init_weights
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
    """Group and scale ``data`` for ``config`` (a GroupedData passes through, checked)."""
    if isinstance(data, GroupedData):
        if data.N != config.model.N or data.n_channels != config.model.n_channels:
            raise ConfigError(
                f"grouped data has N={data.N}, C={data.n_channels}; the config expects "
                f"N={config.model.N}, C={config.model.n_channels}")
        return data
    if isinstance(data, RawData):
        return group_data_for_training(data, config)
    raise TypeError(f"expected RawData or GroupedData, got {type(data).__name__}")


def train(config: TrainingConfig, train_data: DataLike, test_data: Optional[DataLike] = None,
          backend: Optional[str] = None, progress: Optional[ProgressFn] = None) -> TrainResult:
    """Train a PINN on ``train_data``; validate on ``test_data`` each epoch when given.

    The backend is ``backend`` if given, else ``config.backend``, else ``PTYCHO_BACKEND``, else
    the default. Initial weights come from ``config.seed`` (same in every backend). With
    ``config.output_dir`` the bundle ``model.zip`` is rewritten after every completed epoch,
    so a failed or interrupted run leaves the last good model on disk. A non-finite loss
    raises :class:`ptycho.training.NonFiniteLossError` (epoch, step; ``err.model`` holds the
    weights of the last completed epoch, ``err.history`` the completed epochs); Ctrl-C ends
    the run with ``history.interrupted`` set and the last completed epoch saved.

    Example (needs a backend)::

        result = train(TrainingConfig(nepochs=5), raw_train, backend="torch")
        result.history.losses()      # total loss per epoch
        result.model.save("model.zip")
    """
    t0 = time.perf_counter()
    impl = get_backend(backend or config.backend)
    grouped = prepare(train_data, config)
    grouped_test = prepare(test_data, config) if test_data is not None else None
    t_prepare = time.perf_counter()
    weights = init_weights(config.model, config.seed, grouped.probe, math.log(grouped.intensity_scale))
    model = PtychoModel(impl.build_model(config.model, weights), config)
    t_build = time.perf_counter()

    bundle_path = None
    if config.output_dir:
        os.makedirs(config.output_dir, exist_ok=True)
        bundle_path = os.path.join(config.output_dir, BUNDLE_NAME)
    tracker = make_tracker(config)
    history_so_far = History()

    def on_epoch_end(record: EpochRecord, _backend_model) -> None:
        history_so_far.epochs.append(record)
        metrics = {f"train_{k}": v for k, v in record.loss.items()}
        if record.val_loss:
            metrics.update({f"val_{k}": v for k, v in record.val_loss.items()})
        metrics["learning_rate"] = record.learning_rate
        tracker.log_epoch(record.epoch, metrics)
        if bundle_path:
            model.history = history_so_far
            model.save(bundle_path)

    try:
        history = fit(model.backend_model, grouped, config, validation=grouped_test,
                      progress=progress, on_epoch_end=on_epoch_end)
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
