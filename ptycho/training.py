"""The backend-neutral training driver.

The core owns what must be identical across backends: the batch order (seeded, per epoch),
the learning-rate schedule, early stopping, the per-epoch history and the handling of
failures (non-finite loss, Ctrl-C). A backend only provides ``configure_training``,
``set_learning_rate`` and ``train_step`` (see :class:`backends.protocol.BackendModel`).

It also owns the batch order of a multi-process run: a model that is one rank of a process
group (``model.process_group``, see :mod:`ptycho.distributed`) trains on its contiguous part
of every global batch, so K processes with batch size B follow the path of one process with
batch size B.

>>> learning_rate_at(TrainingConfig(learning_rate=1e-3, lr_schedule="exponential",
...                                 lr_decay_rate=0.5), epoch=2)
0.00025
"""

from __future__ import annotations

import contextlib
import math
import signal
import threading
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Mapping, Optional, Protocol

import numpy as np

from ptycho.batch import Batch
from ptycho.config.schema import TrainingConfig
from ptycho.distributed import Communicator, shard
from ptycho.errors import TrainingError
from ptycho.hardware import warn_if_bfloat16_emulated
from ptycho.physics.losses import LossSettings

LOSS_KEYS = ("nll", "mae", "realspace", "total")


class GroupedLike(Protocol):
    """What the driver needs of a dataset (``ptycho.data.GroupedData`` provides it)."""

    def __len__(self) -> int: ...

    def batch(self, idx: np.ndarray) -> Batch: ...


class NonFiniteLossError(TrainingError):
    """The loss became NaN or Inf; the model holds the weights of the last completed epoch.

    ``epoch`` and ``step`` (0-based) say where; ``terms`` are the loss terms of that step;
    ``history`` (set by :func:`fit`) holds the completed epochs, and ``model`` (set by
    :func:`ptycho.workflows.train`) the model with the kept weights.
    """

    def __init__(self, epoch: int, step: int, terms: Mapping[str, float]):
        self.epoch, self.step, self.terms = epoch, step, dict(terms)
        self.history: Optional["History"] = None
        self.model: Any = None
        bad = {k: v for k, v in terms.items() if not math.isfinite(v)}
        super().__init__(
            f"non-finite loss at epoch {epoch}, step {step}: {bad}; training stopped and the "
            f"weights of the last completed epoch ({epoch - 1 if epoch else 'initial'}) were kept")


@dataclass
class EpochRecord:
    """One epoch: its learning rate, mean losses (train, and validation if given), wall time."""

    epoch: int
    learning_rate: float
    loss: dict[str, float]
    val_loss: Optional[dict[str, float]] = None
    seconds: float = 0.0


@dataclass
class History:
    """Per-epoch records plus how training ended."""

    epochs: list[EpochRecord] = field(default_factory=list)
    stopped_early: bool = False
    interrupted: bool = False
    best_epoch: Optional[int] = None
    #: epochs whose end-of-epoch weights were averaged into the final ones
    #: (``TrainingConfig.average_epochs``); 0: the final weights are the last epoch's
    averaged_epochs: int = 0

    def losses(self, key: str = "total", split: str = "train") -> list[float]:
        """One loss term per epoch, ``split`` ``train`` or ``val``."""
        if split == "train":
            return [r.loss[key] for r in self.epochs]
        return [r.val_loss[key] for r in self.epochs if r.val_loss is not None]

    def to_dict(self) -> dict[str, Any]:
        return {"epochs": [asdict(r) for r in self.epochs], "stopped_early": self.stopped_early,
                "interrupted": self.interrupted, "best_epoch": self.best_epoch,
                "averaged_epochs": self.averaged_epochs}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "History":
        return cls(epochs=[EpochRecord(**r) for r in d.get("epochs", [])],
                   stopped_early=bool(d.get("stopped_early", False)),
                   interrupted=bool(d.get("interrupted", False)),
                   best_epoch=d.get("best_epoch"),
                   averaged_epochs=int(d.get("averaged_epochs", 0)))


def learning_rate_at(config: TrainingConfig, epoch: int) -> float:
    """Learning rate of ``epoch`` (0-based) under ``config.lr_schedule``."""
    lr0 = config.learning_rate
    if config.lr_schedule == "constant":
        return lr0
    if config.lr_schedule == "exponential":
        return max(lr0 * config.lr_decay_rate ** epoch, config.lr_min)
    if config.lr_schedule == "cosine":
        # reaches lr_min at the end of the last epoch, so that every epoch still learns
        frac = epoch / config.nepochs
        return config.lr_min + 0.5 * (lr0 - config.lr_min) * (1.0 + math.cos(math.pi * frac))
    raise ValueError(f"unknown lr_schedule {config.lr_schedule!r}")


def epoch_batches(n: int, batch_size: int, seed: int, epoch: int) -> list[np.ndarray]:
    """The batches of one epoch: a seeded permutation of ``range(n)`` cut into batch_size pieces.

    Seeded by ``(seed, epoch)`` so that every backend, and a resumed run, sees the same
    batches; the last batch may be smaller.

    >>> [b.tolist() for b in epoch_batches(5, 2, seed=0, epoch=0)] == \\
    ...     [b.tolist() for b in epoch_batches(5, 2, seed=0, epoch=0)]
    True
    """
    order = np.random.default_rng([seed, epoch]).permutation(n)
    return [order[i:i + batch_size] for i in range(0, n, batch_size)]


def _group_of(model) -> Optional[Communicator]:
    """The process group ``model`` is one rank of, or None (a single process)."""
    return getattr(model, "process_group", None)


def local_part(idx: np.ndarray, group: Optional[Communicator]) -> np.ndarray:
    """This rank's contiguous part of the global batch ``idx`` (all of it without a group)."""
    return idx if group is None else idx[shard(len(idx), group.rank, group.size)]


def evaluate(model, data: GroupedLike, settings: LossSettings, batch_size: int) -> dict[str, float]:
    """Mean loss terms over ``data`` (weighted by batch size), without updating the model.
    In a process group every rank calls it and computes its part of each batch."""
    sums = dict.fromkeys(LOSS_KEYS, 0.0)
    n = len(data)
    group = _group_of(model)
    for start in range(0, n, batch_size):
        idx = np.arange(start, min(start + batch_size, n))
        terms = model.losses(data.batch(local_part(idx, group)), settings)
        for k in LOSS_KEYS:
            sums[k] += float(terms[k]) * len(idx)
    return {k: v / n for k, v in sums.items()}


ProgressFn = Callable[[int, int, int, Mapping[str, float]], None]
EpochEndFn = Callable[[EpochRecord, Any], None]


def fit(model, data: GroupedLike, config: TrainingConfig, validation: Optional[GroupedLike] = None,
        progress: Optional[ProgressFn] = None, on_epoch_end: Optional[EpochEndFn] = None) -> History:
    """Train ``model`` on ``data`` for ``config.nepochs`` epochs (or until early stopping).

    ``progress(epoch, step, n_steps, terms)`` is called after every step and
    ``on_epoch_end(record, model)`` after every completed epoch (e.g. to save a bundle).
    With ``config.average_epochs`` the model ends with the mean of the end-of-epoch weights
    from epoch ``nepochs - average_epochs`` on (:class:`_WeightMean`; ``history.
    averaged_epochs`` says how many), also when training stops early or is interrupted.
    A non-finite loss raises :class:`NonFiniteLossError` after restoring the weights of the
    last completed epoch (not averaged; the error carries the history so far). Ctrl-C
    (KeyboardInterrupt) likewise restores them and returns the history with
    ``interrupted=True``. A Ctrl-C that arrives while ``on_epoch_end`` runs (in the main
    thread) is held until it returns, so the epoch just completed is saved whole; training
    then stops as interrupted. A second Ctrl-C during that time interrupts at once.

    In a process group (``model.process_group``; every rank calls ``fit`` with the same data
    and config), each rank trains on its contiguous part of every global batch and gets the
    whole batch's loss terms back, so every rank keeps the same history and takes the same
    decisions (non-finite loss, early stopping). Ctrl-C or SIGTERM (what launchers send) on
    any rank is held and announced to the others before the next step, and every rank stops
    at that step as interrupted, with the weights of the last completed epoch; a second
    signal interrupts that rank at once. A rank that dies makes the others raise
    :class:`ptycho.errors.DistributedError` at their next collective.
    """
    if len(data) == 0:
        raise TrainingError("cannot train on an empty dataset (0 groups)")
    settings = LossSettings.from_config(config)
    warn_if_bfloat16_emulated(config.precision, "training")
    model.configure_training(config)
    history = History()
    best = math.inf
    waited = 0
    monitor = "val" if validation is not None else "train"
    group = _group_of(model)
    # ``good_weights``: the weights of the last completed epoch while an epoch is running
    # (None when the model holds them already); restored on Ctrl-C or a non-finite loss,
    # wherever in the loop the interrupt lands.
    good_weights = None
    mean = _WeightMean(config)
    try:
        with _stop_requests(group) as stop:
            for epoch in range(config.nepochs):
                good_weights = model.get_weights()
                try:
                    record = _run_epoch(model, data, config, epoch, progress, stop)
                    if validation is not None:
                        record.val_loss = evaluate(model, validation, settings,
                                                   config.batch_size)
                except NonFiniteLossError as err:
                    model.set_weights(good_weights)
                    err.history = history
                    raise
                with _interrupt_deferred() as pending:
                    history.epochs.append(record)
                    good_weights = None
                    mean.add(epoch, model)
                    if on_epoch_end is not None:
                        on_epoch_end(record, model)
                if pending:
                    history.interrupted = True
                    break
                current = (record.val_loss if monitor == "val" else record.loss)["total"]
                if current < best - config.early_stopping_min_delta:
                    best, waited, history.best_epoch = current, 0, epoch
                else:
                    waited += 1
                    if (config.early_stopping_patience is not None
                            and waited >= config.early_stopping_patience):
                        history.stopped_early = True
                        break
    except (KeyboardInterrupt, _StopRequested):
        if good_weights is not None:
            model.set_weights(good_weights)
        history.interrupted = True
    mean.apply(model, history)
    return history


class _WeightMean:
    """The mean of the end-of-epoch weights from epoch ``nepochs - average_epochs`` on
    (``TrainingConfig.average_epochs``; none with 0), summed in float64 (complex128 for
    the probe) and given back in each entry's own dtype."""

    def __init__(self, config: TrainingConfig):
        self.start = config.nepochs - config.average_epochs if config.average_epochs else None
        self.sums: dict[str, np.ndarray] = {}
        self.dtypes: dict[str, np.dtype] = {}
        self.count = 0

    def add(self, epoch: int, model) -> None:
        if self.start is None or epoch < self.start:
            return
        for name, value in model.get_weights().items():
            value = np.asarray(value)
            if name not in self.sums:
                self.dtypes[name] = value.dtype
                self.sums[name] = np.zeros(value.shape, np.result_type(value.dtype, np.float64))
            self.sums[name] += value
        self.count += 1

    def apply(self, model, history: History) -> None:
        """Give ``model`` the mean (when any epoch was added) and record how many."""
        if self.count:
            model.set_weights({name: (total / self.count).astype(self.dtypes[name])
                               for name, total in self.sums.items()})
        history.averaged_epochs = self.count


class _StopRequested(Exception):
    """Every rank of a group agreed to stop (a rank was sent SIGINT or SIGTERM)."""


class _StopSignals:
    """The stop requests of a multi-process run: SIGINT and SIGTERM are held (a rank must not
    leave in the middle of a collective, where the others would wait for it) and announced
    to the other ranks before each step (:meth:`check`); a second signal raises
    KeyboardInterrupt at once."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, group: Optional[Communicator]):
        self.group = group
        self.received: list[int] = []

    def hold(self, signum, frame) -> None:
        if self.received:
            raise KeyboardInterrupt
        self.received.append(signum)

    def check(self) -> None:
        """Raise _StopRequested on every rank when any rank was asked to stop (a collective:
        every rank calls it at the same point)."""
        if self.group is not None and self.group.any(bool(self.received)):
            raise _StopRequested


@contextlib.contextmanager
def _stop_requests(group: Optional[Communicator]):
    """:class:`_StopSignals` for ``group``, holding SIGINT and SIGTERM while the block runs
    (a single process, or a thread other than the main one, keeps Python's handlers)."""
    stop = _StopSignals(group)
    if group is None or threading.current_thread() is not threading.main_thread():
        yield stop
        return
    before = {sig: signal.getsignal(sig) for sig in stop.SIGNALS}
    for sig in stop.SIGNALS:
        signal.signal(sig, stop.hold)
    try:
        yield stop
    finally:
        for sig, handler in before.items():
            signal.signal(sig, handler)


@contextlib.contextmanager
def _interrupt_deferred():
    """Hold a Ctrl-C (SIGINT) until the block ends; yields a list that is non-empty if one came.

    Only in the main thread and only when SIGINT has Python's default handler (elsewhere the
    block runs unchanged). A second SIGINT inside the block raises KeyboardInterrupt at once.
    """
    pending: list[int] = []
    if (threading.current_thread() is not threading.main_thread()
            or signal.getsignal(signal.SIGINT) is not signal.default_int_handler):
        yield pending
        return

    def hold(signum, frame):
        if pending:
            raise KeyboardInterrupt
        pending.append(signum)

    signal.signal(signal.SIGINT, hold)
    try:
        yield pending
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)


def _run_epoch(model, data: GroupedLike, config: TrainingConfig, epoch: int,
               progress: Optional[ProgressFn], stop: _StopSignals) -> EpochRecord:
    start = time.perf_counter()
    lr = learning_rate_at(config, epoch)
    model.set_learning_rate(lr)
    batches = epoch_batches(len(data), config.batch_size, config.seed, epoch)
    sums = dict.fromkeys(LOSS_KEYS, 0.0)
    for step, idx in enumerate(batches):
        stop.check()
        terms = model.train_step(data.batch(local_part(idx, stop.group)))
        if not all(math.isfinite(float(terms[k])) for k in LOSS_KEYS):
            raise NonFiniteLossError(epoch, step, {k: float(terms[k]) for k in LOSS_KEYS})
        for k in LOSS_KEYS:
            sums[k] += float(terms[k]) * len(idx)
        if progress is not None:
            progress(epoch, step, len(batches), terms)
    n = len(data)
    return EpochRecord(epoch=epoch, learning_rate=lr, loss={k: v / n for k, v in sums.items()},
                       seconds=time.perf_counter() - start)
