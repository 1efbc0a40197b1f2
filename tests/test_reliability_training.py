"""Training that goes wrong: a non-finite loss, Ctrl-C, and reproducibility from one seed.

Real backends, tiny networks (N=16, base_filters 2, n_filters_scale 1). What is checked is
what a scientist is left with: the error (which epoch and step), the weights the model holds,
and the bundle on disk (``DIR/model.zip``), which must load.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from ptycho import bundle as B
from ptycho.workflows.inference import load_inference_bundle
from ptycho.batch import Batch
from ptycho.config import ModelConfig, TrainingConfig
from ptycho.data.grouping import GroupedData, group_data_for_training, group_scan
from ptycho.simulate.dataset import simulate_dataset
from ptycho.training import NonFiniteLossError, epoch_batches, fit
from ptycho.weights import init_weights

REPO = Path(__file__).resolve().parents[1]

BACKENDS = [pytest.param("tensorflow", marks=pytest.mark.tensorflow, id="tensorflow"),
            pytest.param("torch", marks=pytest.mark.torch, id="torch")]

TINY = ModelConfig(N=16, base_filters=2, n_filters_scale=1)


def _cfg(**kw) -> TrainingConfig:
    base = dict(model=TINY, nepochs=3, batch_size=4, seed=11, nphotons=1e4)
    base.update(kw)
    return TrainingConfig(**base)


def _raw(n=16, seed=3):
    raw, _ = simulate_dataset(n, 16, nphotons=1e4, seed=seed)
    return raw


def _same_weights(a: dict, b: dict) -> bool:
    return list(a) == list(b) and all(np.array_equal(a[k], b[k]) for k in a)


def _child_env() -> dict:
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""),
               TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="", OMP_NUM_THREADS="1",
               PYTHONUNBUFFERED="1")
    env.pop("PTYCHO_BACKEND", None)
    return env


# --------------------------------------------------------------------------------------------
# a non-finite loss


class PoisonedGroups(GroupedData):
    """The training groups, with one Inf planted in the ``poison_call``-th batch handed out."""

    @classmethod
    def of(cls, grouped: GroupedData, poison_call: int) -> "PoisonedGroups":
        out = cls(**{f.name: getattr(grouped, f.name) for f in dataclasses.fields(GroupedData)})
        object.__setattr__(out, "poison_call", poison_call)     # a frozen dataclass
        object.__setattr__(out, "calls", [0])
        return out

    def batch(self, idx):
        self.calls[0] += 1
        b = super().batch(idx)
        if self.calls[0] != self.poison_call:
            return b
        d = b.diffraction.copy()
        d[0, 0, 5, 7] = np.inf
        return Batch(d, b.rel_offsets, b.canvas_size)


@pytest.mark.parametrize("backend", BACKENDS)
def test_nan_loss_stops_with_epoch_and_step_keeps_weights_and_the_last_bundle(tmp_path, backend):
    from ptycho.workflows.train import BUNDLE_NAME, train
    cfg = _cfg(nepochs=4, output_dir=str(tmp_path / "run"))
    grouped = group_data_for_training(_raw(), cfg)
    steps = len(epoch_batches(len(grouped), cfg.batch_size, cfg.seed, 0))     # 4 per epoch
    poisoned = PoisonedGroups.of(grouped, poison_call=steps + 2)         # epoch 1, step 1
    with pytest.raises(NonFiniteLossError, match=r"non-finite loss at epoch 1, step 1") as info:
        train(cfg, poisoned, backend=backend)
    err = info.value
    assert (err.epoch, err.step) == (1, 1)
    assert not all(np.isfinite(v) for v in err.terms.values())
    # the model kept the weights of the last completed epoch (epoch 0): finite, and exactly
    # those of the bundle written at the end of epoch 0
    kept = err.model.get_weights()
    assert all(np.all(np.isfinite(v)) for v in kept.values())
    assert [r.epoch for r in err.history.epochs] == [0]
    path = tmp_path / "run" / BUNDLE_NAME
    on_disk = B.read_bundle(path)
    assert _same_weights(on_disk.weights, kept)
    assert [r.epoch for r in on_disk.history.epochs] == [0]
    assert sorted(os.listdir(tmp_path / "run")) == [BUNDLE_NAME]      # no partial files
    # and it builds a working model
    loaded, _ = load_inference_bundle(path, backend=backend)
    assert _same_weights(loaded.get_weights(), kept)
    patches = loaded.predict(grouped.diffraction[:2], batch_size=2)
    assert patches.shape == (2, 1, 16, 16) and np.all(np.isfinite(patches))


class _Model:
    """Gradient descent on w -> w^2 (no framework); w becomes NaN at step ``nan_at``."""

    def __init__(self, nan_at=None, on_step=None):
        self.w, self.steps, self.nan_at, self.on_step = 4.0, 0, nan_at, on_step

    def configure_training(self, cfg):
        pass

    def set_learning_rate(self, lr):
        self.lr = lr

    def get_weights(self):
        return {"w": np.float32(self.w)}

    def set_weights(self, w):
        self.w = float(w["w"])

    def losses(self, batch, settings):
        return {"nll": self.w ** 2, "mae": 0.0, "realspace": 0.0, "total": self.w ** 2}

    def train_step(self, batch):
        self.steps += 1
        if self.on_step:
            self.on_step(self.steps)
        terms = self.losses(batch, None)
        self.w -= self.lr * 2 * self.w
        if self.nan_at is not None and self.steps >= self.nan_at:
            self.w = float("inf")
            terms = {k: float("inf") for k in terms}
        return terms


class _Data:
    def __len__(self):
        return 8

    def batch(self, idx):
        return Batch(np.zeros((len(idx), 1, 16, 16), np.float32), np.zeros((len(idx), 1, 2),
                                                                        np.float32), 16)


def test_inf_in_the_first_epoch_keeps_the_initial_weights():
    m = _Model(nan_at=1)
    with pytest.raises(NonFiniteLossError, match=r"epoch 0, step 0.*\(initial\) were kept"):
        fit(m, _Data(), _cfg(nepochs=3, batch_size=4, learning_rate=0.1))
    assert m.w == 4.0


# --------------------------------------------------------------------------------------------
# Ctrl-C


def test_ctrl_c_during_the_per_epoch_save_is_held_until_the_save_is_complete():
    """A SIGINT that arrives while on_epoch_end writes the bundle must not cut the write:
    the epoch is kept, the callback finishes, and training ends as interrupted."""
    finished = []

    def on_epoch_end(record, model):
        if record.epoch == 1:
            os.kill(os.getpid(), signal.SIGINT)       # delivered now, in the main thread
            time.sleep(0.05)
        finished.append(record.epoch)

    h = fit(_Model(), _Data(), _cfg(nepochs=5, learning_rate=0.1), on_epoch_end=on_epoch_end)
    assert finished == [0, 1] and h.interrupted
    assert [r.epoch for r in h.epochs] == [0, 1]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_ctrl_c_during_a_step_restores_the_last_epoch():
    m = _Model(on_step=lambda s: os.kill(os.getpid(), signal.SIGINT) if s == 6 else None)
    h = fit(m, _Data(), _cfg(nepochs=5, learning_rate=0.1))
    assert h.interrupted and [r.epoch for r in h.epochs] == [0, 1]
    # two epochs of two steps: w = 4 * (1 - 2 * 0.1) ** 4
    assert m.w == pytest.approx(4 * 0.8 ** 4)


@pytest.mark.parametrize("where", ["get_weights", "progress"])
def test_ctrl_c_anywhere_in_the_loop_ends_cleanly(where):
    """Between steps too (copying the weights at an epoch start, a progress callback), Ctrl-C
    ends training as interrupted with the weights of the last completed epoch."""
    calls = [0]

    class M(_Model):
        def get_weights(self):
            calls[0] += 1
            if where == "get_weights" and calls[0] == 3:     # the start of epoch 2
                os.kill(os.getpid(), signal.SIGINT)
            return super().get_weights()

    def progress(epoch, step, n, terms):
        if where == "progress" and (epoch, step) == (2, 1):
            os.kill(os.getpid(), signal.SIGINT)

    m = M()
    h = fit(m, _Data(), _cfg(nepochs=5, learning_rate=0.1), progress=progress)
    assert h.interrupted and [r.epoch for r in h.epochs] == [0, 1]
    assert m.w == pytest.approx(4 * 0.8 ** 4)


_TRAIN_UNTIL_INTERRUPTED = textwrap.dedent("""
    import json, sys
    from ptycho.config import ModelConfig, TrainingConfig
    from ptycho.simulate.dataset import simulate_dataset
    from ptycho.workflows.train import train
    backend, out = sys.argv[1], sys.argv[2]
    raw, _ = simulate_dataset(32, 16, nphotons=1e4, seed=3)
    cfg = TrainingConfig(model=ModelConfig(N=16, base_filters=2, n_filters_scale=1),
                         nepochs=100000, batch_size=4, seed=5, nphotons=1e4, output_dir=out)
    result = train(cfg, raw, backend=backend)
    print(json.dumps({"interrupted": result.history.interrupted,
                      "epochs": [r.epoch for r in result.history.epochs]}), flush=True)
    sys.exit(130 if result.history.interrupted else 0)
""")


def _interrupt_when_bundle_appears(cmd, bundle: Path, timeout=240.0):
    child = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             env=_child_env(), cwd=str(REPO))
    try:
        deadline = time.monotonic() + timeout
        while not bundle.exists():
            if child.poll() is not None:
                out, err = child.communicate()
                pytest.fail(f"training ended before its first epoch was saved: rc "
                            f"{child.returncode}\n{out}\n{err[-3000:]}")
            if time.monotonic() > deadline:
                pytest.fail("no bundle appeared in time")
            time.sleep(0.02)
        time.sleep(0.1)
        child.send_signal(signal.SIGINT)
        out, err = child.communicate(timeout=120)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    return child.returncode, out, err


def _cli_ready() -> bool:
    import importlib.util
    return importlib.util.find_spec("ptycho.cli.train") is not None


@pytest.mark.slow
@pytest.mark.parametrize("backend,surface", [
    pytest.param("tensorflow", "workflow", marks=pytest.mark.tensorflow, id="tensorflow-train()"),
    pytest.param("torch", "cli", marks=pytest.mark.torch, id="torch-ptycho-train")])
def test_sigint_during_training_exits_cleanly_with_the_last_epoch_saved(tmp_path, backend,
                                                                        surface):
    """A real training in a subprocess, SIGINT once its first epoch's bundle is on disk.

    One backend through the workflow API (``train()``; the script exits 130 when the history
    says interrupted), the other through ``ptycho train`` (which must exit 130 by itself);
    where the command is not there yet, the workflow API is used for both.
    """
    out_dir = tmp_path / "run"
    bundle = out_dir / "model.zip"
    if surface == "cli" and _cli_ready():
        from ptycho.data import save_npz
        data = tmp_path / "scan.npz"
        save_npz(_raw(32), data)
        cmd = [sys.executable, "-m", "ptycho", "train", "--train-data", str(data),
               "--output-dir", str(out_dir), "--backend", backend, "--nepochs", "100000",
               "--batch-size", "4", "--base-filters", "2", "--n-filters-scale", "1",
               "--nphotons", "1e4", "--seed", "5"]
    else:
        cmd = [sys.executable, "-c", _TRAIN_UNTIL_INTERRUPTED, backend, str(out_dir)]
    rc, out, err = _interrupt_when_bundle_appears(cmd, bundle)
    assert rc == 130, f"rc {rc}\n{out}\n{err[-3000:]}"
    assert "Traceback" not in err, err[-3000:]
    contents = B.read_bundle(bundle)             # loads, checksums verified
    assert contents.history.interrupted
    epochs = [r.epoch for r in contents.history.epochs]
    assert len(epochs) >= 1 and epochs == list(range(len(epochs)))
    if cmd[1] == "-c":
        report = json.loads(out.strip().splitlines()[-1])
        assert report["interrupted"] and report["epochs"] == epochs
    assert contents.backend == backend
    assert not [n for n in os.listdir(out_dir) if n.startswith(".tmp-")]   # no partial files
    loaded, _ = load_inference_bundle(bundle, backend=backend)
    assert _same_weights(loaded.get_weights(), contents.weights)


# --------------------------------------------------------------------------------------------
# determinism: one seed, the same numbers


def test_simulation_grouping_batches_and_initial_weights_are_reproducible():
    a, obj_a = simulate_dataset(24, 16, nphotons=1e4, seed=9, scan="jitter", object="grf")
    b, obj_b = simulate_dataset(24, 16, nphotons=1e4, seed=9, scan="jitter", object="grf",
                                workers=1)
    for name in ("diffraction", "probe", "xcoords", "ycoords"):
        assert np.array_equal(getattr(a, name), getattr(b, name)), name
    assert np.array_equal(obj_a, obj_b)
    c, _ = simulate_dataset(24, 16, nphotons=1e4, seed=10, scan="jitter", object="grf")
    assert not np.array_equal(a.diffraction, c.diffraction)

    g1 = group_scan(a.xcoords, a.ycoords, gridsize=2, neighbor_count=6, n_groups=30, seed=4)
    g2 = group_scan(a.xcoords, a.ycoords, gridsize=2, neighbor_count=6, n_groups=30, seed=4)
    assert np.array_equal(g1, g2)
    assert not np.array_equal(g1, group_scan(a.xcoords, a.ycoords, 2, 6, n_groups=30, seed=5))

    assert all(np.array_equal(x, y) for x, y in zip(epoch_batches(30, 4, 7, 3),
                                                    epoch_batches(30, 4, 7, 3)))
    w1 = init_weights(TINY, 7, a.probe, 1.0)
    w2 = init_weights(TINY, 7, a.probe, 1.0)
    assert _same_weights(w1, w2)
    assert not np.array_equal(w1["enc0.conv1.kernel"], init_weights(TINY, 8, a.probe, 1.0)[
        "enc0.conv1.kernel"])


@pytest.mark.parametrize("backend", BACKENDS)
def test_two_trainings_with_one_seed_agree_bit_for_bit(backend):
    from ptycho.workflows.train import train
    raw = _raw(16)
    cfg = _cfg(nepochs=2, model=dataclasses.replace(TINY, gridsize=2), neighbor_count=4)
    runs = [train(cfg, raw, backend=backend) for _ in range(2)]
    h0, h1 = (r.history for r in runs)
    for key in ("total", "nll", "mae", "realspace"):
        assert h0.losses(key) == h1.losses(key), key           # exact, not approx
    w0, w1 = (r.model.get_weights() for r in runs)
    assert _same_weights(w0, w1)
    init = init_weights(cfg.model, cfg.seed, runs[0].train_data.probe,
                        float(np.log(runs[0].train_data.intensity_scale)))
    assert not _same_weights(w0, init)                          # it did train
    other = train(dataclasses.replace(cfg, seed=cfg.seed + 1), raw, backend=backend)
    assert other.history.losses() != h0.losses()
