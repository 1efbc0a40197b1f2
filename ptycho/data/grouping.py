"""Grouping scan points into the (B, C) groups the model trains on, and the scaled dataset.

For ``gridsize`` g a group holds ``C = g**2`` patterns. With g = 1 each pattern is its own
group. With g > 1 a group is built around a seed point: C members are drawn, without
replacement, from the K = ``neighbor_count`` scan points nearest to the seed (the seed is
one of them, at distance 0). All draws come from ``numpy.random.default_rng(seed)``, so the
same arguments always give the same groups.

Positions are (x, y) = (column, row) in object pixels throughout.

>>> x = np.array([0.0, 1.0, 0.0, 1.0, 5.0]); y = np.array([0.0, 0.0, 1.0, 1.0, 5.0])
>>> group_scan(x, y, gridsize=1, neighbor_count=1).ravel().tolist()
[0, 1, 2, 3, 4]
>>> group_scan(x, y, gridsize=2, neighbor_count=4, n_groups=2).shape
(2, 4)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import numpy as np
from scipy.spatial import cKDTree

from ptycho.batch import Batch
from ptycho.config.schema import ModelConfig, TrainingConfig
from ptycho.data.contract import RawData
from ptycho.data.scaling import intensity_scale, normalisation_factor, normalise_probe
from ptycho.errors import ConfigError, DataError
from ptycho.physics.model import effective_probe
from ptycho.physics.patches import canvas_size as _canvas_size
from ptycho.physics.patches import group_centres
from ptycho.scan_estimate import ScanEstimate


def _check_int(name: str, value: Any, lo: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < lo:
        raise ConfigError(f"{name} must be an int >= {lo}, got {value!r}")
    return int(value)


def _positions(xcoords: Any, ycoords: Any) -> np.ndarray:
    x = np.asarray(xcoords)
    y = np.asarray(ycoords)
    for key, c in (("xcoords", x), ("ycoords", y)):
        if c.ndim != 1 or c.dtype.kind not in "fiu":
            raise DataError(f"{key!r}: expected a 1-D real array, got shape {tuple(c.shape)} "
                            f"dtype {c.dtype}")
    if x.shape != y.shape:
        raise DataError(f"'xcoords' and 'ycoords' must have the same length, got {x.shape[0]} "
                        f"and {y.shape[0]}")
    pos = np.stack([x, y], axis=1).astype(np.float64)
    if not np.all(np.isfinite(pos)):
        raise DataError("'xcoords'/'ycoords': positions must be finite, got NaN or Inf")
    return pos


def group_scan(xcoords: Any, ycoords: Any, gridsize: int, neighbor_count: int,
               n_groups: Optional[int] = None, seed: int = 0) -> np.ndarray:
    """Scan indices of each group: (B, C) int64, ``C = gridsize**2``.

    xcoords, ycoords: (M,) positions in object pixels (x = column, y = row).
    gridsize 1: every pattern alone (B = M, in scan order); with ``n_groups`` a seeded subset
    of that many patterns, without replacement, in scan order (``n_groups > M`` is an error).
    gridsize > 1: one group per seed point; the seeds are every point in scan order, or with
    ``n_groups`` a seeded draw (without replacement and sorted when ``n_groups <= M``, with
    replacement otherwise). Each group's C members are drawn without replacement from the
    K = ``neighbor_count`` nearest points to its seed (the seed included), in drawn order.

    Raises :class:`ConfigError` for bad parameters (``neighbor_count < gridsize**2`` ...) and
    :class:`DataError` when the scan has fewer than K points.

    >>> x = np.arange(6.0); y = np.zeros(6)
    >>> g = group_scan(x, y, gridsize=2, neighbor_count=4, seed=1)
    >>> g.shape, bool(np.all(np.abs(g - np.arange(6)[:, None]) <= 3))
    ((6, 4), True)
    """
    pos = _positions(xcoords, ycoords)
    m = pos.shape[0]
    g = _check_int("gridsize", gridsize, 1)
    k = _check_int("neighbor_count", neighbor_count, 1)
    seed = _check_int("seed", seed, 0)
    if n_groups is not None:
        n_groups = _check_int("n_groups", n_groups, 1)
    c = g * g
    if m == 0:
        raise DataError("cannot group an empty scan (M = 0 positions)")
    rng = np.random.default_rng(seed)
    if g == 1:
        if n_groups is None:
            return np.arange(m, dtype=np.int64)[:, None]
        if n_groups > m:
            raise DataError(f"n_groups = {n_groups} exceeds the {m} scan points available for "
                            "gridsize 1 (each group is one pattern); expected n_groups <= M")
        return np.sort(rng.choice(m, size=n_groups, replace=False)).astype(np.int64)[:, None]
    if k < c:
        raise ConfigError(f"neighbor_count must be >= gridsize**2 = {c}, got {k}")
    if m < k:
        raise DataError(f"too few scan points to group: gridsize {g} with neighbor_count "
                        f"K = {k} needs at least {k} points, got M = {m}")
    if n_groups is None:
        seeds = np.arange(m)
    elif n_groups <= m:
        seeds = np.sort(rng.choice(m, size=n_groups, replace=False))
    else:
        seeds = rng.integers(0, m, size=n_groups)
    _, nearest = cKDTree(pos).query(pos[seeds], k=k)
    nearest = np.asarray(nearest, dtype=np.int64).reshape(len(seeds), k)
    pick = np.argsort(rng.random((len(seeds), k)), axis=1)[:, :c]
    return np.take_along_axis(nearest, pick, axis=1).astype(np.int64)


def distinct_patterns(indices: Any) -> int:
    """How many different scan points the groups ``indices`` (B, C) hold.

    At gridsize > 1 every point is drawn into about C groups, so this, not ``B * C``, is
    the number of patterns a scan contributed.

    >>> distinct_patterns(np.array([[0, 1, 2, 3], [1, 2, 3, 4], [4, 0, 1, 2]]))
    5
    """
    return int(np.unique(np.asarray(indices)).size)


@dataclass(frozen=True, eq=False)
class GroupedData:
    """A scan grouped and scaled for the model.

    diffraction: (B, C, N, N) float32 amplitudes in photon units, sqrt(counts):
        ``raw * normalisation * intensity_scale``.
    global_offsets: (B, 2) float64 group centres (x, y) in object pixels: the members' mean, on
        their pixel grid where they differ by whole pixels (:func:`ptycho.physics.group_centres`).
    rel_offsets: (B, C, 2) float32 member position minus group centre, (x, y) object pixels.
    indices: (B, C) int64 scan indices of the members (into the RawData).
    probe: (N, N) complex64 normalised probe (:func:`ptycho.data.scaling.normalise_probe`).
    normalisation: dataset normalisation factor (dimensionless).
    intensity_scale: sqrt(counts) per normalised amplitude unit.
    canvas_size: side of each group's canvas in pixels (over all ``rel_offsets``).
    object_guess: optional (H, W) complex64 object from the raw data.
    mask: bad-pixel mask (True = measured): None, one (N, N) mask shared by every pattern, or
        (B, C, N, N) one per member pattern; bad pixels of ``diffraction`` hold 0.
    estimate: (B, C, N, N) complex64, the scan's stitched back-propagated estimate at each
        member (:mod:`ptycho.scan_estimate`), in the units of ``diffraction``; set for a
        model with ``estimate_scope="scan"``, else None.
    """

    diffraction: np.ndarray
    global_offsets: np.ndarray
    rel_offsets: np.ndarray
    indices: np.ndarray
    probe: np.ndarray
    normalisation: float
    intensity_scale: float
    canvas_size: int
    object_guess: Optional[np.ndarray] = None
    mask: Optional[np.ndarray] = None
    estimate: Optional[np.ndarray] = None

    def __post_init__(self) -> None:
        d = self.diffraction
        if d.ndim != 4 or d.shape[-1] != d.shape[-2]:
            raise DataError(f"GroupedData.diffraction: expected (B, C, N, N), got shape {d.shape}")
        b, c, n = d.shape[0], d.shape[1], d.shape[2]
        expected = {"global_offsets": (b, 2), "rel_offsets": (b, c, 2), "indices": (b, c),
                    "probe": (n, n)}
        for name, shape in expected.items():
            got = tuple(np.shape(getattr(self, name)))
            if got != shape:
                raise DataError(f"GroupedData.{name}: expected shape {shape}, got {got}")
        if self.canvas_size < n:
            raise DataError(f"GroupedData.canvas_size: expected >= N = {n}, got {self.canvas_size}")
        m = self.mask
        if m is not None and (m.dtype != np.bool_ or m.shape not in ((n, n), d.shape)):
            raise DataError(f"GroupedData.mask: expected bool ({n}, {n}) or {d.shape}, got "
                            f"{m.dtype} {m.shape}")
        e = self.estimate
        if e is not None and (e.dtype != np.complex64 or e.shape != d.shape):
            raise DataError(f"GroupedData.estimate: expected complex64 {d.shape}, got "
                            f"{e.dtype} {e.shape}")

    def __len__(self) -> int:
        return int(self.diffraction.shape[0])

    @property
    def N(self) -> int:  # noqa: N802
        """Pattern side in pixels."""
        return int(self.diffraction.shape[-1])

    @property
    def n_channels(self) -> int:
        """C, patterns per group."""
        return int(self.diffraction.shape[1])

    def batch(self, idx: Any) -> Batch:
        """The groups ``idx`` (int, slice, index array or mask) as a :class:`ptycho.batch.Batch`.

        An int gives a batch of one group; ``canvas_size`` is the dataset's; the mask (if any)
        goes with it, shared or sliced per pattern.

        >>> from ptycho.config import ModelConfig
        >>> raw = RawData(np.ones((5, 16, 16), np.float32), np.ones((16, 16)),
        ...               np.arange(5.0), np.zeros(5))
        >>> gd = group_data(raw, ModelConfig(N=16), nphotons=1e4)
        >>> gd.batch(slice(0, 3)).diffraction.shape, gd.batch(4).size
        ((3, 1, 16, 16), 1)
        """
        if isinstance(idx, (int, np.integer)) and not isinstance(idx, bool):
            idx = [int(idx)]
        mask = self.mask
        if mask is not None and mask.ndim == 4:
            mask = mask[idx]
        estimate = None if self.estimate is None else self.estimate[idx]
        return Batch(diffraction=self.diffraction[idx], rel_offsets=self.rel_offsets[idx],
                     canvas_size=self.canvas_size, mask=mask, estimate=estimate)


def group_data(raw: RawData, model_config: ModelConfig, nphotons: float,
               n_groups: Optional[int] = None, neighbor_count: int = 4,
               seed: int = 0) -> GroupedData:
    """Group ``raw`` (:func:`group_scan`) and scale it to photon units.

    The normalisation factor is computed over every pattern of the scan (over its measured
    pixels when ``raw.mask`` is set); the intensity scale from ``nphotons`` (mean total counts
    per pattern) and N; the probe is normalised with ``model_config.probe_scale``. ``raw.N``
    must equal ``model_config.N``. Bad pixels are set to 0 in the grouped diffraction (the
    network's input), so what they held never reaches the model, and the mask goes with every
    :meth:`GroupedData.batch` for the losses. With ``model_config.estimate_scope="scan"`` the
    scan's stitched estimate (:mod:`ptycho.scan_estimate`) goes with every batch too.

    >>> from ptycho.config import ModelConfig
    >>> raw = RawData(np.ones((4, 16, 16), np.float32), np.ones((16, 16)),
    ...               np.array([0.0, 2.0, 0.0, 2.0]), np.array([0.0, 0.0, 2.0, 2.0]))
    >>> gd = group_data(raw, ModelConfig(N=16, gridsize=2), nphotons=100.0, neighbor_count=4)
    >>> len(gd), gd.diffraction.shape, round(float(np.sum(gd.diffraction[0, 0] ** 2)), 3)
    (4, (4, 4, 16, 16), 100.0)
    """
    if not isinstance(raw, RawData):
        raise DataError(f"group_data: expected a RawData, got {type(raw).__name__}")
    if not isinstance(model_config, ModelConfig):
        raise ConfigError(f"group_data: expected a ModelConfig, got {type(model_config).__name__}")
    if raw.N != model_config.N:
        raise DataError(f"'diffraction': pattern size N = {raw.N} does not match "
                        f"ModelConfig.N = {model_config.N}")
    s_int = intensity_scale(nphotons, raw.N)
    idx = group_scan(raw.xcoords, raw.ycoords, model_config.gridsize, neighbor_count,
                     n_groups=n_groups, seed=seed)
    s_norm = normalisation_factor(raw.diffraction, raw.mask)
    diffraction = raw.diffraction[idx]  # a fresh (B, C, N, N) float32 copy
    diffraction *= np.float32(s_norm * s_int)
    mask = raw.mask
    if mask is not None:
        if mask.ndim == 3:
            mask = mask[idx]            # (B, C, N, N), one per member pattern
        diffraction *= mask
    xy = np.stack([raw.xcoords, raw.ycoords], axis=1)
    pos = xy[idx]  # (B, C, 2)
    centre = group_centres(pos)        # on the members' pixel grid: no blur in the constraint
    rel = (pos - centre[:, None, :]).astype(np.float32)
    probe = normalise_probe(raw.probe, model_config.probe_scale)
    estimate = None
    if model_config.estimate_scope == "scan":
        scan = ScanEstimate.from_patterns(
            raw.diffraction, xy, effective_probe(probe, model_config.probe_mask),
            mask=raw.mask, pad_object=model_config.pad_object)
        estimate = scan.patches(pos) * np.complex64(s_norm * s_int)    # linear: photon units
    return GroupedData(diffraction=diffraction, global_offsets=centre, rel_offsets=rel,
                       indices=idx, probe=probe,
                       normalisation=s_norm, intensity_scale=s_int,
                       canvas_size=_canvas_size(raw.N, rel), object_guess=raw.object_guess,
                       mask=mask, estimate=estimate)


def group_data_for_training(raw: RawData, training_config: TrainingConfig) -> GroupedData:
    """:func:`group_data` with the model, nphotons, n_groups, neighbor_count, seed of a config.

    >>> from ptycho.config import ModelConfig, TrainingConfig
    >>> raw = RawData(np.ones((3, 16, 16), np.float32), np.ones((16, 16)),
    ...               np.arange(3.0), np.zeros(3))
    >>> len(group_data_for_training(raw, TrainingConfig(model=ModelConfig(N=16), n_groups=2)))
    2
    """
    if not isinstance(training_config, TrainingConfig):
        raise ConfigError(f"group_data_for_training: expected a TrainingConfig, got "
                          f"{type(training_config).__name__}")
    t = training_config
    return group_data(raw, t.model, t.nphotons, n_groups=t.n_groups,
                      neighbor_count=t.neighbor_count, seed=t.seed)
