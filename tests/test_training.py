"""The core's training driver, exercised with a tiny numpy model (no framework needed)."""

import math

import numpy as np
import pytest

from ptycho.batch import Batch
from ptycho.config import ModelConfig, TrainingConfig
from ptycho.training import (History, NonFiniteLossError, epoch_batches, fit, learning_rate_at)


class Data:
    """n groups of one 8x8 pattern; the 'loss' of a batch is the model's parameter squared."""

    def __init__(self, n):
        self.n = n

    def __len__(self):
        return self.n

    def batch(self, idx):
        return Batch(np.full((len(idx), 1, 16, 16), float(idx[0]), np.float32),
                     np.zeros((len(idx), 1, 2), np.float32), 16)


class FakeModel:
    """Gradient descent on w -> w^2, recording what the driver hands it."""

    def __init__(self, nan_at=None, interrupt_at=None):
        self.w = 4.0
        self.lrs, self.seen, self.steps = [], [], 0
        self.nan_at, self.interrupt_at = nan_at, interrupt_at
        self.configured = None

    def configure_training(self, cfg):
        self.configured = cfg

    def set_learning_rate(self, lr):
        self.lr = lr
        self.lrs.append(lr)

    def get_weights(self):
        return {"w": np.float32(self.w)}

    def set_weights(self, weights):
        self.w = float(weights["w"])

    def losses(self, batch, settings):
        v = self.w ** 2
        return {"nll": v, "mae": 0.0, "realspace": 0.0, "total": v}

    def train_step(self, batch):
        self.steps += 1
        if self.interrupt_at == self.steps:
            raise KeyboardInterrupt
        terms = self.losses(batch, None)
        self.seen.append(batch.diffraction[:, 0, 0, 0].astype(int).tolist())
        self.w -= self.lr * 2 * self.w
        if self.nan_at is not None and self.steps >= self.nan_at:
            self.w = math.nan
            terms = {k: math.nan for k in terms}
        return terms


def cfg(**kw):
    base = dict(model=ModelConfig(N=16), batch_size=4, nepochs=5, learning_rate=0.1)
    base.update(kw)
    return TrainingConfig(**base)


def test_schedules():
    c = cfg(lr_schedule="cosine", nepochs=4, learning_rate=1.0, lr_min=0.0)
    assert learning_rate_at(c, 0) == pytest.approx(1.0)
    assert learning_rate_at(c, 2) == pytest.approx(0.5)
    # lr_min is where the schedule ends, after the last epoch: every epoch learns
    assert learning_rate_at(c, 3) == pytest.approx(0.5 * (1 + math.cos(0.75 * math.pi)))
    assert learning_rate_at(c, 3) > 0
    e = cfg(lr_schedule="exponential", lr_decay_rate=0.5, lr_min=0.2, learning_rate=1.0)
    assert [learning_rate_at(e, k) for k in range(4)] == [1.0, 0.5, 0.25, 0.2]


def test_batches_cover_every_group_once_and_depend_on_seed_and_epoch():
    b = epoch_batches(10, 4, seed=3, epoch=0)
    assert [len(x) for x in b] == [4, 4, 2]
    assert sorted(np.concatenate(b).tolist()) == list(range(10))
    assert np.array_equal(np.concatenate(b), np.concatenate(epoch_batches(10, 4, 3, 0)))
    assert not np.array_equal(np.concatenate(b), np.concatenate(epoch_batches(10, 4, 3, 1)))
    assert not np.array_equal(np.concatenate(b), np.concatenate(epoch_batches(10, 4, 4, 0)))


def test_fit_records_history_and_lowers_loss():
    m = FakeModel()
    h = fit(m, Data(10), cfg())
    assert m.configured is not None and len(h.epochs) == 5 and m.steps == 15
    totals = h.losses()
    assert all(b < a for a, b in zip(totals, totals[1:]))
    assert h.best_epoch == 4 and not h.stopped_early
    assert History.from_dict(h.to_dict()) == h


def test_two_runs_see_the_same_batches():
    a, b = FakeModel(), FakeModel()
    fit(a, Data(10), cfg(seed=7))
    fit(b, Data(10), cfg(seed=7))
    assert a.seen == b.seen


def test_early_stopping():
    class Flat(FakeModel):
        def train_step(self, batch):
            return {"nll": 1.0, "mae": 0.0, "realspace": 0.0, "total": 1.0}

    h = fit(Flat(), Data(8), cfg(nepochs=50, early_stopping_patience=3))
    assert h.stopped_early and len(h.epochs) == 4 and h.best_epoch == 0


def test_nan_stops_with_epoch_and_step_and_keeps_last_good_weights():
    m = FakeModel(nan_at=7)    # 3 steps per epoch: step 7 is epoch 2, step 0
    with pytest.raises(NonFiniteLossError, match=r"epoch 2, step 0") as info:
        fit(m, Data(10), cfg())
    assert (info.value.epoch, info.value.step) == (2, 0)
    assert math.isfinite(m.w) and m.w == pytest.approx(4.0 * 0.8 ** 6)


def test_keyboard_interrupt_returns_last_completed_epoch():
    m = FakeModel(interrupt_at=5)   # during epoch 1
    h = fit(m, Data(10), cfg())
    assert h.interrupted and len(h.epochs) == 1
    assert m.w == pytest.approx(4.0 * 0.8 ** 3)


# 3 steps per epoch (Data(10), batch 4), each w *= 0.8: epoch e ends at 4 * 0.8 ** (3 (e + 1))
def _end_of_epoch(e):
    return 4.0 * 0.8 ** (3 * (e + 1))


def test_average_epochs_ends_with_the_mean_of_the_last_epochs():
    m = FakeModel()
    h = fit(m, Data(10), cfg(average_epochs=3))           # epochs 2, 3, 4 of 5
    assert h.averaged_epochs == 3 and len(h.epochs) == 5
    assert m.w == pytest.approx(np.mean([_end_of_epoch(e) for e in (2, 3, 4)]), rel=1e-6)
    assert History.from_dict(h.to_dict()) == h
    plain = FakeModel()
    h0 = fit(plain, Data(10), cfg())
    assert h0.averaged_epochs == 0 and plain.w == pytest.approx(_end_of_epoch(4), rel=1e-6)
    # the average is of end-of-epoch weights only: training itself follows the same path
    assert m.seen == plain.seen and m.steps == plain.steps


def test_average_epochs_of_a_run_that_ends_early():
    interrupted = FakeModel(interrupt_at=14)          # step 14 is in epoch 4: 0-3 completed
    h = fit(interrupted, Data(10), cfg(average_epochs=3))
    assert h.interrupted and h.averaged_epochs == 2
    assert interrupted.w == pytest.approx((_end_of_epoch(2) + _end_of_epoch(3)) / 2, rel=1e-6)

    class Flat(FakeModel):
        def train_step(self, batch):
            return {"nll": 1.0, "mae": 0.0, "realspace": 0.0, "total": 1.0}

    # early stopping after epoch 3: a window from epoch 2 averages 2, one from epoch 40 none
    assert fit(Flat(), Data(8), cfg(nepochs=6, average_epochs=4,
                                    early_stopping_patience=3)).averaged_epochs == 2
    assert fit(Flat(), Data(8), cfg(nepochs=50, average_epochs=10,
                                    early_stopping_patience=3)).averaged_epochs == 0


def test_a_non_finite_loss_keeps_the_last_epoch_not_the_average():
    m = FakeModel(nan_at=13)                          # epoch 4, step 0
    with pytest.raises(NonFiniteLossError):
        fit(m, Data(10), cfg(average_epochs=3))
    assert m.w == pytest.approx(_end_of_epoch(3), rel=1e-6)


def test_average_epochs_is_checked_and_older_histories_read_as_none():
    from ptycho.errors import ConfigError

    for bad in (6, -1):
        with pytest.raises(ConfigError, match=rf"average_epochs must be in \[0, 5\], got {bad}"):
            cfg(average_epochs=bad)
    with pytest.raises(ConfigError, match="average_epochs must be an int"):
        cfg(average_epochs=2.0)
    old = History(best_epoch=1).to_dict()
    del old["averaged_epochs"]                        # a bundle written before the field
    assert History.from_dict(old).averaged_epochs == 0
