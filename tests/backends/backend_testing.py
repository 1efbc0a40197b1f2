"""Test data and comparisons shared by the backend tests (importable: tests/backends is on
pytest's ``pythonpath``)."""

from __future__ import annotations

import numpy as np

import ptycho.physics as ref
from parity.tolerances import tolerance
from ptycho.batch import Batch
from ptycho.weights import init_weights


def probe(n: int, seed: int = 0) -> np.ndarray:
    """A Gaussian probe with a random phase, normalised to sum |P|^2 = (N/2)^2."""
    rng = np.random.default_rng(seed)
    r2 = (np.arange(n)[:, None] - n // 2) ** 2 + (np.arange(n)[None, :] - n // 2) ** 2
    p = np.exp(-r2 / (2 * (n / 6) ** 2)) * np.exp(1j * rng.uniform(-0.5, 0.5, (n, n)))
    return (p * (n / 2) / np.sqrt(np.sum(np.abs(p) ** 2))).astype(np.complex64)


def weights(cfg, seed: int = 0, log_scale: float = 2.0, random_biases: bool = False) -> dict:
    w = init_weights(cfg, seed, probe(cfg.N, seed), log_scale)
    if random_biases:
        # Non-zero biases exercise the bias path and keep relu inputs off their kink at 0
        # (a dead region feeds exact zeros to the next relu: slope 1/2 to a finite
        # difference, 0 to backprop by convention).
        for name in w:
            if name.endswith(".bias"):
                w[name] = np.random.default_rng(len(name)).uniform(
                    -0.3, 0.3, w[name].shape).astype(np.float32)
    return w


def batch(cfg, b: int = 3, seed: int = 0, log_scale: float = 2.0, spread: float = 3.0,
          mask=None) -> Batch:
    """Poisson counts of a random object's far field, in photon units, with group offsets
    (and, for a model with ``estimate_scope="scan"``, a random estimate of their level)."""
    rng = np.random.default_rng(seed)
    c, n = cfg.n_channels, cfg.N
    rel = (rng.uniform(-spread, spread, (b, c, 2)) if c > 1 else np.zeros((b, c, 2))
           ).astype(np.float32)
    amp = 0.5 + 0.5 * rng.uniform(size=(b, c, n, n))
    obj = amp * np.exp(1j * rng.uniform(-1, 1, size=(b, c, n, n)))
    a = ref.far_field_amplitude(ref.illuminate(probe(n, seed), obj)) * np.exp(log_scale)
    d = np.sqrt(rng.poisson(a ** 2)).astype(np.float32)
    estimate = None
    if cfg.estimate_scope == "scan":
        estimate = (obj * np.exp(log_scale)).astype(np.complex64)
    return Batch(d, rel, ref.canvas_size(n, rel) if c > 1 else n, mask, estimate)


def images(seed: int, shape, complex_: bool) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=shape)
    if complex_:
        return (x + 1j * rng.normal(size=shape)).astype(np.complex64)
    return x.astype(np.float32)


def assert_close(actual, expected, key: str, scale=None, steps: int = 1) -> None:
    """``|actual - expected| <= atol + rtol * scale`` with the tolerance table's entry ``key``.

    ``scale``: given; else per element ``|expected|`` for an "elementwise" entry, else the
    largest ``|expected|``.
    """
    tol = tolerance(key, steps=steps)
    actual, expected = np.asarray(actual), np.asarray(expected)
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    if scale is None:
        scale = np.abs(expected) if tol.scale == "elementwise" else np.max(np.abs(expected))
    err = np.abs(actual.astype(np.complex128) - expected)
    bound = tol.atol + tol.rtol * np.asarray(scale, np.float64)
    assert np.all(err <= bound), \
        f"{key}: max abs error {err.max():.3g}, worst excess {np.max(err - bound):.3g} " \
        f"(rtol {tol.rtol:g}, atol {tol.atol:g})"
