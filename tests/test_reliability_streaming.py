"""Resource limits: reconstructing a scan streams it from a memory-mapped NPZ.

``load_npz(path, mmap_mode="r")`` on an uncompressed NPZ (what :func:`ptycho.data.save_npz`
writes) maps the diffraction instead of reading it, and :func:`reconstruct` reads, scales,
predicts and stitches one chunk of patterns at a time. The proof measures the peak of the
process's heap allocations (numpy registers every array with :mod:`tracemalloc`; pages of a
memory-mapped file are not heap): it stays far below the size of the diffraction, while the
same measurement of a plain (non-mapped) load sees the whole array. A scan larger than RAM
therefore reconstructs with memory bounded by the object canvas and one chunk.
"""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

from ptycho.config import ModelConfig, TrainingConfig
from ptycho.data import RawData, load_npz, save_npz
from ptycho.workflows.model import PtychoModel
from ptycho.workflows.reconstruct import reconstruct

N = 16
#: 65536 patterns of 16 x 16 (64 MiB of diffraction) at overlapping sub-pixel positions, so
#: that the object canvas (which the stitcher must hold) is small beside the data.
ROWS, COLS, STEP = 256, 256, 0.25


class _NumpyModel:
    """Stands in for a backend: a deterministic function of the input, all in numpy (so every
    allocation it makes is seen by tracemalloc)."""

    backend_name = "numpy"

    def __init__(self):
        self.largest_chunk = 0

    def get_weights(self, names=None):   # its one entry, whatever is asked
        r = np.arange(N) - N // 2
        return {"probe": np.exp(-(r[:, None] ** 2 + r[None, :] ** 2) / 18.0).astype(np.complex64)}

    def predict(self, diffraction, batch_size=64, precision="float32"):
        self.largest_chunk = max(self.largest_chunk, diffraction.shape[0])
        amp = np.sqrt(diffraction.mean(axis=(-1, -2), keepdims=True)) + 0 * diffraction
        return (amp * np.exp(0.25j)).astype(np.complex64)


def _scan(path):
    yy, xx = np.meshgrid(np.arange(ROWS) * STEP + N, np.arange(COLS) * STEP + N, indexing="ij")
    rng = np.random.default_rng(0)
    diff = rng.random((ROWS * COLS, N, N), dtype=np.float32)
    save_npz(RawData(diff, np.ones((N, N), np.complex64), xx.ravel(), yy.ravel()), path)
    return diff.nbytes


def _peak(fn):
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        base = tracemalloc.get_traced_memory()[0]
        result = fn()
        return result, tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()


@pytest.mark.slow
def test_reconstruct_streams_a_memory_mapped_scan(tmp_path):
    path = tmp_path / "big.npz"
    nbytes = _scan(path)
    cfg = TrainingConfig(model=ModelConfig(N=N), nphotons=1e4, batch_size=256)

    def mapped():
        model = PtychoModel(_NumpyModel(), cfg)
        raw = load_npz(path, mmap_mode="r")
        assert isinstance(raw.diffraction.base, np.memmap)
        return model, reconstruct(model, raw, keep_patches=False, chunk_groups=512)

    (model, recon), peak = _peak(mapped)
    print(f"diffraction {nbytes / 2**20:.0f} MiB; peak heap while loading + reconstructing from "
          f"the memory map {peak / 2**20:.1f} MiB; object {recon.obj.shape}")
    assert model.backend_model.largest_chunk <= 512
    # what remains is one chunk, the scan's positions and group indices (40 bytes a pattern
    # against 1 KiB of diffraction here, 16 KiB at N = 64) and the object canvas
    assert peak < nbytes / 6, f"peak {peak} bytes for {nbytes} bytes of diffraction"

    # the control: the same measurement sees a plain load of the whole array
    _, peak_plain = _peak(lambda: load_npz(path))
    assert peak_plain >= nbytes

    # and streaming changes nothing in the result
    raw = load_npz(path)
    whole = reconstruct(PtychoModel(_NumpyModel(), cfg), raw, keep_patches=False,
                        chunk_groups=len(raw.xcoords))
    assert np.array_equal(whole.obj, recon.obj)
    assert np.array_equal(whole.coverage, recon.coverage)


def _tiny_model(backend):
    from backends import get_backend
    from ptycho.weights import init_weights
    cfg = TrainingConfig(model=ModelConfig(N=N, base_filters=2, n_filters_scale=1),
                         batch_size=64, nphotons=1e4)
    r = np.arange(N) - N // 2
    probe = np.exp(-(r[:, None] ** 2 + r[None, :] ** 2) / 18.0).astype(np.complex64)
    weights = init_weights(cfg.model, 3, probe, 2.0)
    return PtychoModel(get_backend(backend).build_model(cfg.model, weights), cfg)


@pytest.mark.torch
def test_a_real_backend_reconstructs_the_mapped_scan_like_the_loaded_one(tmp_path):
    """With torch: the chunked, memory-mapped path gives the same object as the plain one."""
    model = _tiny_model("torch")
    rows, cols = 24, 32
    yy, xx = np.meshgrid(np.arange(rows) * 3.0 + N, np.arange(cols) * 3.0 + N, indexing="ij")
    diff = np.random.default_rng(2).random((rows * cols, N, N), dtype=np.float32)
    path = tmp_path / "scan.npz"
    save_npz(RawData(diff, np.ones((N, N), np.complex64), xx.ravel(), yy.ravel()), path)
    mapped = reconstruct(model, load_npz(path, mmap_mode="r"), keep_patches=False,
                         chunk_groups=100)
    plain = reconstruct(model, load_npz(path), keep_patches=False)
    np.testing.assert_allclose(mapped.obj, plain.obj, rtol=1e-5, atol=1e-6)
