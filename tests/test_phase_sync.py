"""Phase synchronisation of patches before stitching (ptycho.phase_sync, Stitcher.overlap_with,
and reconstruct's phase_sync)."""

from __future__ import annotations

import importlib

import numpy as np
import pytest

from ptycho.phase_sync import align_phase, phase_offsets, synchronize
from ptycho.stitching import Stitcher, make_window


def _object(shape=(96, 96), seed=0):
    rng = np.random.default_rng(seed)
    amp = 0.5 + 0.5 * rng.uniform(size=shape)
    return amp * np.exp(1j * rng.uniform(-1, 1, size=shape))


def _patches(obj, positions, n):
    return np.stack([obj[int(y) - n // 2:int(y) + n // 2, int(x) - n // 2:int(x) + n // 2]
                     for x, y in positions])


def _wrapped(a):
    return np.angle(np.exp(1j * a))


@pytest.mark.parametrize("scan", ["grid", "random"])
def test_offsets_are_recovered_up_to_one_global_phase(scan):
    n, rng = 16, np.random.default_rng(1)
    if scan == "grid":
        xs = np.arange(10, 86, 5.0)
        positions = np.stack(np.meshgrid(xs, xs), -1).reshape(-1, 2)
    else:
        positions = np.round(rng.uniform(10, 86, size=(150, 2)))
    obj = _object()
    truth = rng.uniform(-np.pi, np.pi, size=len(positions))    # many wrap around +-pi
    patches = _patches(obj, positions, n) * np.exp(1j * truth)[:, None, None]
    c = phase_offsets(patches, positions, make_window(n, "full"))
    err = _wrapped((c - truth) - (c - truth)[0])
    assert np.abs(err).max() < 1e-6
    fixed = synchronize(patches, positions, make_window(n, "full"))
    assert fixed.dtype == np.complex64
    common = fixed / _patches(obj, positions, n)
    assert np.abs(_wrapped(np.angle(common) - np.angle(common[0, 0, 0]))).max() < 1e-5


def test_a_patch_that_overlaps_nothing_keeps_its_phase():
    n = 8
    obj = _object()
    positions = np.array([[10.0, 10.0], [13.0, 10.0], [70.0, 70.0]])
    patches = _patches(obj, positions, n) * np.exp(1j * np.array([0.3, 1.2, 2.0]))[:, None, None]
    c = phase_offsets(patches, positions, np.ones((n, n)))
    assert c[2] == 0.0
    assert _wrapped(c[1] - c[0]) == pytest.approx(0.9, abs=1e-6)
    assert np.all(phase_offsets(patches[:1], positions[:1], np.ones((n, n))) == 0)


def test_overlap_with_reads_the_chunk_phase_against_the_object_so_far():
    n = 16
    obj = _object()
    window = make_window(n)
    first = np.array([[20.0, 20.0], [26.0, 20.0], [20.0, 26.0]])
    second = np.array([[30.0, 24.0], [34.0, 30.0]])
    s = Stitcher(obj.shape, n, window=window)
    assert s.overlap_with(_patches(obj, first, n), first) == 0j        # nothing stitched yet
    s.add(_patches(obj, first, n), first)
    rotated = _patches(obj, second, n) * np.exp(1.7j)
    z = s.overlap_with(rotated, second)
    assert np.angle(z) == pytest.approx(1.7, abs=1e-6)
    assert np.angle(align_phase(z) * np.exp(1.7j)) == pytest.approx(0.0, abs=1e-6)
    assert align_phase(0j) == 1.0 and align_phase(None) == 1.0


def test_reconstruct_synchronises_the_networks_free_phases(numpy_backend, monkeypatch):
    """A stand-in network that returns the true patches, each with a random constant phase
    (what a pattern cannot see): stitched without synchronisation the phase is scrambled,
    with it (the default) the object comes back."""
    from ptycho.config import ModelConfig, TrainingConfig
    from ptycho.simulate import simulate_dataset
    from ptycho.simulate.dataset import object_patches
    from ptycho.weights import init_weights
    from ptycho.workflows import reconstruct
    from ptycho.workflows.cdi import evaluate_against_truth
    from ptycho.workflows.model import PtychoModel
    from backends import get_backend

    n = 16
    raw, truth = simulate_dataset(144, n, object="grf", nphotons=1e6, seed=3)
    cfg = TrainingConfig(model=ModelConfig(N=n, base_filters=1, n_filters_scale=1,
                                           pad_object=False))
    backend_model = get_backend().build_model(cfg.model, init_weights(cfg.model, 0, raw.probe, 0.0))
    model = PtychoModel(backend_model, cfg)
    rng = np.random.default_rng(0)
    positions = np.stack([raw.xcoords, raw.ycoords], 1)
    lookup = {tuple(p): object_patches(truth, p[None], n)[0] for p in positions}

    W = importlib.import_module("ptycho.workflows.reconstruct")   # the package shadows the name

    def fake_chunk(model_, diffraction, pos, canvas, **kw):
        out = np.stack([[lookup[tuple(p)] for p in group] for group in pos])
        return (out * np.exp(1j * rng.uniform(-np.pi, np.pi, out.shape[:2]))[..., None, None]
                ).astype(np.complex64)

    monkeypatch.setattr(W, "predict_chunk", fake_chunk)
    plain = evaluate_against_truth(reconstruct(model, raw, phase_sync=False), truth)
    synced = evaluate_against_truth(reconstruct(model, raw, chunk_groups=50), truth)
    assert synced["phase"]["ssim"] > 0.95 and synced["amplitude"]["ssim"] > 0.95
    assert plain["phase"]["ssim"] < 0.5
