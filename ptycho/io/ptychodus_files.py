"""ptychodus's HDF5 files, read and written with h5py (the ``hdf5`` extra; imported lazily).

Two file types of ptychodus (1.7.0, ``ptychodus.api.io``), with the same dataset and
attribute names, so that ptychodus's own ``load_product`` / ``load_diffraction_data`` open
what :func:`write_product` / :func:`write_diffraction` write, and the reverse:

* **product** (``product.h5``): root attributes ``detector_object_distance_m``,
  ``photon_energy_eV`` (required) and the other metadata (``name``, ``comments``,
  ``probe_photon_count``, ...); datasets ``probe_position_indexes``, ``probe_position_x_m``,
  ``probe_position_y_m`` (metres), ``probe`` (complex, (OPR modes, incoherent modes, Ny, Nx);
  attributes ``pixel_width_m``/``pixel_height_m``), ``object`` (complex, (layers, H, W);
  attributes ``pixel_width_m``, ``pixel_height_m``, ``center_x_m``, ``center_y_m``),
  ``object_layer_spacing_m``, ``loss_epochs``, ``loss_values``, optional ``opr_weights`` and
  ``probe_photon_counts``.
* **diffraction** (``diffraction.h5``): ``patterns`` (M, H, W) photon counts (attributes
  ``detector_pixel_width_m``/``detector_pixel_height_m``), ``indexes`` (M,), ``bad_pixels``
  (H, W) bool with **True = bad** (the complement of our mask), optional
  ``probe_photon_counts``.

Coordinates and units (:class:`ObjectFrame`):

* ptychodus puts an object array's pixel column ``c`` at ``x = center_x_m + pixel_width_m *
  (c - (W - 1) / 2)`` metres (row ``r`` likewise in y with ``H`` and ``pixel_height_m``), and a
  probe position ``(x_m, y_m)`` at the probe array's centre ``(N - 1) / 2``.
* We put the probe's pixel ``N // 2`` at the position ``(x, y)`` in object pixels (x = column,
  y = row; :mod:`ptycho.stitching`). The same pairing of probe and object pixels therefore
  needs ``x = (x_m - center_x_m) / pixel_width_m + (W - 1) / 2 + (N // 2 - (N - 1) / 2)``: half
  a pixel more than ptychodus's own object-pixel coordinate for even N, nothing for odd N.
* The probe and the object must share one pixel size (the model has no resampling); a product
  whose probe and object pixels differ is refused. Diffraction counts become amplitudes
  ``sqrt(counts)`` (float32); negative counts are refused (or clipped on request).

Writes are atomic (the file is built in memory, then written with :mod:`ptycho.atomic`).
HDF5 links (soft or external) where a dataset is expected are refused, so a file cannot make
the reader open another file.

>>> frame = ObjectFrame(width_px=64, height_px=48, pixel_width_m=1e-8, pixel_height_m=1e-8,
...                     center_x_m=0.0, center_y_m=0.0)
>>> x, y = frame.to_pixels(np.array([0.0]), np.array([1e-8]), n=16)
>>> float(x[0]), float(y[0])          # (W-1)/2 + 0.5 and (H-1)/2 + 1 + 0.5
(32.0, 25.0)
>>> [float(v[0]) for v in frame.to_metres(x, y, n=16)]
[0.0, 1e-08]
"""

from __future__ import annotations

import io
import math
import os
import warnings
from dataclasses import dataclass, field, replace
from typing import Any, Mapping, Optional, Sequence

import numpy as np

from ptycho.atomic import PathLike, atomic_write
from ptycho.data.contract import RawData
from ptycho.errors import DataError, DataWarning

#: Relative tolerance within which the probe and object pixel sizes count as equal.
PIXEL_SIZE_RTOL = 1e-6

# dataset and attribute names (ptychodus.api.io.ProductFileKeys / DiffractionFileKeys, 1.7.0)
DETECTOR_DISTANCE = "detector_object_distance_m"
PHOTON_ENERGY = "photon_energy_eV"
LEGACY_PHOTON_ENERGY = "probe_energy_eV"
PROBE = "probe"
OPR_WEIGHTS = "opr_weights"
PIXEL_WIDTH = "pixel_width_m"
PIXEL_HEIGHT = "pixel_height_m"
POSITION_INDEXES = "probe_position_indexes"
POSITION_X = "probe_position_x_m"
POSITION_Y = "probe_position_y_m"
PROBE_PHOTON_COUNTS = "probe_photon_counts"
OBJECT = "object"
CENTER_X = "center_x_m"
CENTER_Y = "center_y_m"
LAYER_SPACING = "object_layer_spacing_m"
LOSS_EPOCHS = "loss_epochs"
LOSS_VALUES = "loss_values"
PATTERNS = "patterns"
INDEXES = "indexes"
BAD_PIXELS = "bad_pixels"
DETECTOR_PIXEL_WIDTH = "detector_pixel_width_m"
DETECTOR_PIXEL_HEIGHT = "detector_pixel_height_m"

#: The product's other metadata (root attributes) and their types; each is optional.
METADATA_ATTRIBUTES: dict[str, type] = {
    "name": str, "comments": str, "probe_photon_count": float, "exposure_time_s": float,
    "mass_attenuation_m2_per_kg": float, "tomography_angle_deg": float,
    "focus_object_distance_m": float, "tilt_angle_deg": float, "far_field": bool,
    "polarization": str,
}

NEGATIVE_COUNTS = ("error", "clip")


def _h5py():
    try:
        import h5py
    except ImportError:
        raise ImportError("reading and writing ptychodus files needs h5py, which is not "
                          "installed; install it with: pip install 'ptycho-pinn[hdf5]'") from None
    return h5py


def half_pixel(n: int) -> float:
    """``N // 2 - (N - 1) / 2``: where our patch centre sits from ptychodus's (0.5 or 0).

    >>> half_pixel(16), half_pixel(15)
    (0.5, 0.0)
    """
    return n // 2 - (n - 1) / 2.0


@dataclass(frozen=True)
class ObjectFrame:
    """Where an object array's pixels sit in metres: ptychodus's ``ObjectGeometry``.

    ``width_px`` x ``height_px`` pixels of ``pixel_width_m`` x ``pixel_height_m``, the array's
    geometric centre (pixel ``((W-1)/2, (H-1)/2)``) at ``(center_x_m, center_y_m)``.
    """

    width_px: int
    height_px: int
    pixel_width_m: float
    pixel_height_m: float
    center_x_m: float
    center_y_m: float

    def __post_init__(self) -> None:
        for name in ("width_px", "height_px"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
                raise DataError(f"ObjectFrame.{name}: expected a positive int, got {v!r}")
        for name in ("pixel_width_m", "pixel_height_m"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float, np.floating)) and math.isfinite(v) and v > 0):
                raise DataError(f"ObjectFrame.{name}: expected a finite size > 0 (metres), "
                                f"got {v!r}")
        for name in ("center_x_m", "center_y_m"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float, np.floating)) and math.isfinite(v)):
                raise DataError(f"ObjectFrame.{name}: expected a finite position (metres), "
                                f"got {v!r}")

    def to_pixels(self, x_m: np.ndarray, y_m: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
        """Probe positions in metres -> our positions (x = column, y = row), object pixels."""
        x = (np.asarray(x_m, np.float64) - self.center_x_m) / self.pixel_width_m
        y = (np.asarray(y_m, np.float64) - self.center_y_m) / self.pixel_height_m
        return (x + (self.width_px - 1) / 2.0 + half_pixel(n),
                y + (self.height_px - 1) / 2.0 + half_pixel(n))

    def to_metres(self, x: np.ndarray, y: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
        """The inverse of :meth:`to_pixels`."""
        x = np.asarray(x, np.float64) - (self.width_px - 1) / 2.0 - half_pixel(n)
        y = np.asarray(y, np.float64) - (self.height_px - 1) / 2.0 - half_pixel(n)
        return x * self.pixel_width_m + self.center_x_m, y * self.pixel_height_m + self.center_y_m

    def resized(self, height_px: int, width_px: int) -> "ObjectFrame":
        """The frame of an array of another size on the same pixel grid, pixel (0, 0) fixed.

        >>> f = ObjectFrame(10, 10, 1.0, 1.0, 0.0, 0.0).resized(12, 20)
        >>> f.center_x_m, f.center_y_m
        (5.0, 1.0)
        """
        left = self.center_x_m - (self.width_px - 1) / 2.0 * self.pixel_width_m
        top = self.center_y_m - (self.height_px - 1) / 2.0 * self.pixel_height_m
        return ObjectFrame(int(width_px), int(height_px), self.pixel_width_m, self.pixel_height_m,
                           left + (width_px - 1) / 2.0 * self.pixel_width_m,
                           top + (height_px - 1) / 2.0 * self.pixel_height_m)


def _float_pair(name: str, value: Any) -> tuple[float, float]:
    try:
        a, b = (float(v) for v in value)
    except (TypeError, ValueError):
        raise DataError(f"{name}: expected a pair of numbers, got {value!r}") from None
    return a, b


def _vector(name: str, value: Any, dtype, m: Optional[int] = None) -> np.ndarray:
    arr = np.asarray(value)
    if arr.dtype.kind not in "biuf" or arr.ndim != 1 or (m is not None and arr.shape[0] != m):
        want = f"({m},)" if m is not None else "1-D"
        raise DataError(f"{name!r}: expected a real {want} array, got shape {arr.shape} dtype "
                        f"{arr.dtype}")
    arr = arr.astype(dtype, copy=False)
    if arr.dtype.kind == "f" and not np.all(np.isfinite(arr)):
        raise DataError(f"{name!r}: holds NaN or Inf values")
    return arr


def _complex_stack(name: str, value: Any, ndim: int) -> np.ndarray:
    arr = np.asarray(value)
    if arr.dtype.kind != "c":
        raise DataError(f"{name!r}: expected a complex array, got dtype {arr.dtype}")
    if not 2 <= arr.ndim <= ndim or 0 in arr.shape:
        raise DataError(f"{name!r}: expected a non-empty 2- to {ndim}-D array, got shape "
                        f"{arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise DataError(f"{name!r}: holds NaN or Inf values")
    return arr.reshape((1,) * (ndim - arr.ndim) + arr.shape)


@dataclass(frozen=True, eq=False)
class PtychodusProduct:
    """What a ptychodus product file holds, as numpy arrays in SI units.

    positions_x_m, positions_y_m: (M,) float64 probe positions in metres;
    position_indexes: (M,) int64 scan index of each position (what patterns pair with);
    probe: (K, L, Ny, Nx) complex: K OPR modes x L incoherent modes (2- or 3-D is expanded);
    probe_pixel_size_m: (width, height) of a probe pixel, metres;
    object: (layers, H, W) complex (2-D is expanded); object_pixel_size_m: (width, height);
    object_center_m: (x, y) of the object array's centre, metres;
    detector_distance_m, photon_energy_eV: the two required scalars of a product file;
    layer_spacing_m: (layers - 1,); opr_weights: optional (M, K); probe_photon_counts:
    optional (M,); loss_epochs (E,) int64 and loss_values (E,) float64; metadata: the other
    scalar attributes of :data:`METADATA_ATTRIBUTES` that are set.
    """

    positions_x_m: np.ndarray
    positions_y_m: np.ndarray
    position_indexes: np.ndarray
    probe: np.ndarray
    probe_pixel_size_m: tuple[float, float]
    object: np.ndarray
    object_pixel_size_m: tuple[float, float]
    object_center_m: tuple[float, float]
    detector_distance_m: float
    photon_energy_eV: float  # noqa: N815 (ptychodus's name)
    layer_spacing_m: np.ndarray = field(default_factory=lambda: np.zeros(0))
    opr_weights: Optional[np.ndarray] = None
    probe_photon_counts: Optional[np.ndarray] = None
    loss_epochs: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    loss_values: np.ndarray = field(default_factory=lambda: np.zeros(0))
    metadata: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        x = _vector(POSITION_X, self.positions_x_m, np.float64)
        m = x.shape[0]
        if m == 0:
            raise DataError(f"{POSITION_X!r}: the product has no probe positions")
        set_ = lambda k, v: object.__setattr__(self, k, v)  # noqa: E731
        set_("positions_x_m", x)
        set_("positions_y_m", _vector(POSITION_Y, self.positions_y_m, np.float64, m))
        set_("position_indexes", _vector(POSITION_INDEXES, self.position_indexes, np.int64, m))
        set_("probe", _complex_stack(PROBE, self.probe, 4))
        set_("object", _complex_stack(OBJECT, self.object, 3))
        for name in ("probe_pixel_size_m", "object_pixel_size_m"):
            w, h = _float_pair(name, getattr(self, name))
            if not (w > 0 and h > 0 and math.isfinite(w) and math.isfinite(h)):
                raise DataError(f"{name}: expected finite sizes > 0, got {(w, h)}")
            set_(name, (w, h))
        set_("object_center_m", _float_pair("object_center_m", self.object_center_m))
        for name in ("detector_distance_m", "photon_energy_eV"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float, np.number)) \
                    or not math.isfinite(float(v)):
                raise DataError(f"{name}: expected a finite number, got {v!r}")
            set_(name, float(v))
        layers = self.object.shape[0]
        set_("layer_spacing_m", _vector(LAYER_SPACING, self.layer_spacing_m, np.float64,
                                        layers - 1))
        if self.opr_weights is not None:
            w = np.asarray(self.opr_weights)
            if w.dtype.kind != "f" or w.shape != (m, self.probe.shape[0]):
                raise DataError(f"{OPR_WEIGHTS!r}: expected float ({m}, {self.probe.shape[0]}), "
                                f"got shape {w.shape} dtype {w.dtype}")
        if self.probe_photon_counts is not None:
            set_("probe_photon_counts", _vector(PROBE_PHOTON_COUNTS, self.probe_photon_counts,
                                                np.float64, m))
        epochs = _vector(LOSS_EPOCHS, self.loss_epochs, np.int64)
        set_("loss_epochs", epochs)
        set_("loss_values", _vector(LOSS_VALUES, self.loss_values, np.float64, epochs.shape[0]))
        unknown = sorted(set(self.metadata) - set(METADATA_ATTRIBUTES))
        if unknown:
            raise DataError(f"metadata: unknown keys {unknown}; known: "
                            f"{sorted(METADATA_ATTRIBUTES)}")
        set_("metadata", {k: METADATA_ATTRIBUTES[k](v) for k, v in self.metadata.items()})

    @property
    def n_positions(self) -> int:
        return int(self.positions_x_m.shape[0])

    @property
    def frame(self) -> ObjectFrame:
        """Where the object array's pixels sit (see :class:`ObjectFrame`)."""
        return ObjectFrame(int(self.object.shape[-1]), int(self.object.shape[-2]),
                           *self.object_pixel_size_m, *self.object_center_m)

    def with_object(self, obj: np.ndarray, *, losses: Optional[Sequence[float]] = None,
                    frame: Optional[ObjectFrame] = None) -> "PtychodusProduct":
        """This product with a new (H, W) object (one layer) and, if given, per-epoch losses.

        ``frame`` (default: this product's, resized to ``obj`` with pixel (0, 0) fixed) gives
        the object's centre; its pixel size must be this product's.
        """
        obj = np.asarray(obj)
        if obj.ndim != 2:
            raise DataError(f"with_object: expected an (H, W) object, got shape {obj.shape}")
        frame = frame or self.frame.resized(*obj.shape)
        changes: dict[str, Any] = dict(
            object=obj, object_center_m=(frame.center_x_m, frame.center_y_m),
            object_pixel_size_m=(frame.pixel_width_m, frame.pixel_height_m),
            layer_spacing_m=np.zeros(0))
        if losses is not None:
            values = np.asarray(losses, np.float64)
            changes.update(loss_epochs=np.arange(values.shape[0], dtype=np.int64),
                           loss_values=values)
        return replace(self, **changes)


@dataclass(frozen=True, eq=False)
class PtychodusDiffraction:
    """What a ptychodus diffraction file holds.

    patterns: (M, H, W) photon counts (integer or float); indexes: (M,) int64 scan index of
    each pattern; bad_pixels: (H, W) bool, **True = bad** (ptychodus's convention);
    detector_pixel_size_m: (width, height); probe_photon_counts: optional (M,).
    """

    patterns: np.ndarray
    indexes: np.ndarray
    bad_pixels: np.ndarray
    detector_pixel_size_m: tuple[float, float]
    probe_photon_counts: Optional[np.ndarray] = None

    def __post_init__(self) -> None:
        p = np.asarray(self.patterns)
        if p.dtype.kind not in "iuf" or p.ndim != 3 or 0 in p.shape:
            raise DataError(f"{PATTERNS!r}: expected non-empty real (M, H, W) counts, got shape "
                            f"{p.shape} dtype {p.dtype}")
        object.__setattr__(self, "patterns", p)
        m = p.shape[0]
        object.__setattr__(self, "indexes", _vector(INDEXES, self.indexes, np.int64, m))
        bad = np.asarray(self.bad_pixels)
        if bad.dtype.kind not in "biu" or bad.shape != p.shape[1:]:
            raise DataError(f"{BAD_PIXELS!r}: expected a bool {p.shape[1:]} array, got shape "
                            f"{bad.shape} dtype {bad.dtype}")
        object.__setattr__(self, "bad_pixels", bad.astype(bool, copy=False))
        w, h = _float_pair("detector_pixel_size_m", self.detector_pixel_size_m)
        object.__setattr__(self, "detector_pixel_size_m", (w, h))
        if self.probe_photon_counts is not None:
            object.__setattr__(self, "probe_photon_counts",
                               _vector(PROBE_PHOTON_COUNTS, self.probe_photon_counts,
                                       np.float64, m))


# --------------------------------------------------------------------------------------------
# HDF5


def _dataset(h5: Any, key: str, path: str):
    """The dataset ``key`` at the file's root: a hard link to a dataset, else DataError."""
    h5py = _h5py()
    link = h5.get(key, getlink=True)
    if link is None:
        raise DataError(f"{path!r}: missing dataset {key!r} (not a ptychodus file?)")
    if not isinstance(link, h5py.HardLink):
        raise DataError(f"{path!r}: {key!r} is a {type(link).__name__}, not a dataset; links "
                        "are not followed")
    item = h5[key]
    if not isinstance(item, h5py.Dataset):
        raise DataError(f"{path!r}: {key!r} is not a dataset")
    return item


def _optional(h5: Any, key: str, path: str) -> Optional[np.ndarray]:
    return _dataset(h5, key, path)[()] if key in h5 else None


def _attr(attrs: Any, key: str, path: str, where: str) -> float:
    if key not in attrs:
        raise DataError(f"{path!r}: missing attribute {key!r} of {where}")
    try:
        return float(attrs[key])
    except (TypeError, ValueError):
        raise DataError(f"{path!r}: attribute {key!r} of {where} is not a number") from None


def _open(path: PathLike):
    h5py = _h5py()
    name = os.fspath(path)
    if not os.path.isfile(name):
        raise DataError(f"{name!r}: expected an HDF5 file, but the path is "
                        f"{'a directory' if os.path.isdir(name) else 'missing'}")
    try:
        return h5py.File(name, "r")
    except OSError as exc:
        raise DataError(f"{name!r}: not an HDF5 file h5py can read ({exc})") from None


def read_product(path: PathLike) -> PtychodusProduct:
    """Read a ptychodus product file (``product.h5``) into a :class:`PtychodusProduct`.

    Raises :class:`DataError` naming the file and the missing or malformed dataset or
    attribute; ``ImportError`` (with the install command) without h5py.
    """
    name = os.fspath(path)
    with _open(name) as h5:
        attrs = h5.attrs
        energy_key = PHOTON_ENERGY if PHOTON_ENERGY in attrs else LEGACY_PHOTON_ENERGY
        metadata = {}
        for key, kind in METADATA_ATTRIBUTES.items():
            if key in attrs:
                value = attrs[key]
                if isinstance(value, bytes):
                    value = value.decode("utf-8", errors="replace")
                metadata[key] = kind(value)
        obj = _dataset(h5, OBJECT, name)
        probe = _dataset(h5, PROBE, name)
        obj_px = (_attr(obj.attrs, PIXEL_WIDTH, name, "'object'"),
                  _attr(obj.attrs, PIXEL_HEIGHT, name, "'object'"))
        probe_px = tuple(_attr(probe.attrs, k, name, "'probe'") if k in probe.attrs else v
                         for k, v in zip((PIXEL_WIDTH, PIXEL_HEIGHT), obj_px))
        losses_present = LOSS_EPOCHS in h5 and LOSS_VALUES in h5
        try:
            return PtychodusProduct(
                positions_x_m=_dataset(h5, POSITION_X, name)[()],
                positions_y_m=_dataset(h5, POSITION_Y, name)[()],
                position_indexes=_dataset(h5, POSITION_INDEXES, name)[()],
                probe=probe[()], probe_pixel_size_m=probe_px,
                object=obj[()], object_pixel_size_m=obj_px,
                object_center_m=(_attr(obj.attrs, CENTER_X, name, "'object'"),
                                 _attr(obj.attrs, CENTER_Y, name, "'object'")),
                detector_distance_m=_attr(attrs, DETECTOR_DISTANCE, name, "the file"),
                photon_energy_eV=_attr(attrs, energy_key, name, "the file"),
                layer_spacing_m=(_optional(h5, LAYER_SPACING, name) if LAYER_SPACING in h5
                                 else np.zeros(obj.shape[0] - 1 if obj.ndim == 3 else 0)),
                opr_weights=_optional(h5, OPR_WEIGHTS, name),
                probe_photon_counts=_optional(h5, PROBE_PHOTON_COUNTS, name),
                loss_epochs=(_dataset(h5, LOSS_EPOCHS, name)[()] if losses_present
                             else np.zeros(0, np.int64)),
                loss_values=(_dataset(h5, LOSS_VALUES, name)[()] if losses_present
                             else np.zeros(0)),
                metadata=metadata)
        except DataError as exc:
            raise DataError(f"{name!r}: {exc}") from None


def _write_h5(path: PathLike, fill) -> None:
    """Build the HDF5 file in memory with ``fill(h5file)``, then write it atomically."""
    h5py = _h5py()
    buf = io.BytesIO()
    with h5py.File(buf, "w") as h5:
        fill(h5)
    with atomic_write(path, "wb") as f:
        f.write(buf.getbuffer())


def write_product(path: PathLike, product: PtychodusProduct) -> None:
    """Write ``product`` as a ptychodus product file that ``ptychodus.api.io.load_product`` reads.

    Atomic: a failed write leaves no partial file and an existing one untouched.
    """
    if not isinstance(product, PtychodusProduct):
        raise DataError(f"write_product: expected a PtychodusProduct, got "
                        f"{type(product).__name__}")
    p = product

    def fill(h5) -> None:
        h5.attrs[DETECTOR_DISTANCE] = p.detector_distance_m
        h5.attrs[PHOTON_ENERGY] = p.photon_energy_eV
        for key, value in p.metadata.items():
            h5.attrs[key] = value
        h5.create_dataset(POSITION_INDEXES, data=p.position_indexes)
        h5.create_dataset(POSITION_X, data=p.positions_x_m)
        h5.create_dataset(POSITION_Y, data=p.positions_y_m)
        if p.probe_photon_counts is not None:
            h5.create_dataset(PROBE_PHOTON_COUNTS, data=p.probe_photon_counts)
        probe = h5.create_dataset(PROBE, data=p.probe)
        probe.attrs[PIXEL_WIDTH], probe.attrs[PIXEL_HEIGHT] = p.probe_pixel_size_m
        if p.opr_weights is not None:
            h5.create_dataset(OPR_WEIGHTS, data=p.opr_weights)
        obj = h5.create_dataset(OBJECT, data=p.object)
        obj.attrs[CENTER_X], obj.attrs[CENTER_Y] = p.object_center_m
        obj.attrs[PIXEL_WIDTH], obj.attrs[PIXEL_HEIGHT] = p.object_pixel_size_m
        h5.create_dataset(LAYER_SPACING, data=p.layer_spacing_m)
        h5.create_dataset(LOSS_EPOCHS, data=p.loss_epochs)
        h5.create_dataset(LOSS_VALUES, data=p.loss_values)

    _write_h5(path, fill)


def read_diffraction(path: PathLike) -> PtychodusDiffraction:
    """Read a ptychodus diffraction file (``diffraction.h5``)."""
    name = os.fspath(path)
    with _open(name) as h5:
        patterns = _dataset(h5, PATTERNS, name)
        try:
            return PtychodusDiffraction(
                patterns=patterns[()], indexes=_dataset(h5, INDEXES, name)[()],
                bad_pixels=_dataset(h5, BAD_PIXELS, name)[()],
                detector_pixel_size_m=(
                    _attr(patterns.attrs, DETECTOR_PIXEL_WIDTH, name, "'patterns'"),
                    _attr(patterns.attrs, DETECTOR_PIXEL_HEIGHT, name, "'patterns'")),
                probe_photon_counts=_optional(h5, PROBE_PHOTON_COUNTS, name))
        except DataError as exc:
            raise DataError(f"{name!r}: {exc}") from None


def write_diffraction(path: PathLike, diffraction: PtychodusDiffraction) -> None:
    """Write a ptychodus diffraction file that ``ptychodus.api.io.load_diffraction_data`` reads
    (built in memory, then written atomically)."""
    if not isinstance(diffraction, PtychodusDiffraction):
        raise DataError(f"write_diffraction: expected a PtychodusDiffraction, got "
                        f"{type(diffraction).__name__}")
    d = diffraction

    def fill(h5) -> None:
        h5.create_dataset(INDEXES, data=d.indexes)
        patterns = h5.create_dataset(PATTERNS, data=d.patterns)
        patterns.attrs[DETECTOR_PIXEL_WIDTH], patterns.attrs[DETECTOR_PIXEL_HEIGHT] = \
            d.detector_pixel_size_m
        h5.create_dataset(BAD_PIXELS, data=d.bad_pixels)
        if d.probe_photon_counts is not None:
            h5.create_dataset(PROBE_PHOTON_COUNTS, data=d.probe_photon_counts)

    _write_h5(path, fill)


# --------------------------------------------------------------------------------------------
# to and from the data contract


#: h * c in J m and the electron-volt in J (CODATA 2018, exact), for :func:`sample_pixel_size_m`.
_HC_J_M = 6.62607015e-34 * 299792458.0
_EV_J = 1.602176634e-19


def sample_pixel_size_m(photon_energy_eV: float, detector_distance_m: float,  # noqa: N803
                        detector_pixel_size_m: float, n: int) -> float:
    """Object-plane pixel size of far-field data: ``wavelength * distance / (N * detector pixel)``.

    The Fraunhofer relation ptychodus uses to sample the object (``ProbeGeometry.from_far_field``);
    a product whose object pixels differ from it is reported by ptychodus as sampled at the
    wrong scale.

    >>> round(sample_pixel_size_m(8000.0, 2.0, 75e-6, 16) * 1e9, 1)   # nm
    258.3
    """
    for name, v in (("photon_energy_eV", photon_energy_eV),
                    ("detector_distance_m", detector_distance_m),
                    ("detector_pixel_size_m", detector_pixel_size_m)):
        if not (isinstance(v, (int, float, np.floating)) and math.isfinite(v) and v > 0):
            raise DataError(f"sample_pixel_size_m: {name} must be a finite number > 0, got {v!r}")
    wavelength_m = _HC_J_M / (photon_energy_eV * _EV_J)
    return wavelength_m * detector_distance_m / (int(n) * detector_pixel_size_m)


def amplitudes_from_counts(counts: np.ndarray, negative: str = "error") -> np.ndarray:
    """``sqrt(counts)`` as float32 (the contract's amplitudes).

    ``negative``: ``"error"`` (a :class:`DataError` counting them) or ``"clip"`` (to 0, e.g.
    after a dark-frame subtraction).

    >>> amplitudes_from_counts(np.array([[[4, 9]]])).tolist()
    [[[2.0, 3.0]]]
    """
    if negative not in NEGATIVE_COUNTS:
        raise DataError(f"negative must be one of {list(NEGATIVE_COUNTS)}, got {negative!r}")
    c = np.asarray(counts)
    if c.dtype.kind not in "iuf":
        raise DataError(f"patterns: expected real photon counts, got dtype {c.dtype}")
    c = c.astype(np.float32)
    n_neg = int(np.count_nonzero(c < 0))
    if n_neg:
        if negative == "error":
            raise DataError(f"patterns: {n_neg} counts are negative (min {float(c.min()):g}); "
                            "expected photon counts >= 0 (pass negative='clip' to set them to 0)")
        np.maximum(c, 0, out=c)
    return np.sqrt(c)


def probe_mode(probe: np.ndarray, what: str = "the product") -> np.ndarray:
    """The (N, N) probe the model uses: the first incoherent mode of the first OPR mode.

    Other modes are dropped with a :class:`DataWarning` (the model has a single coherent probe).
    """
    p = _complex_stack(PROBE, probe, 4)
    if p.shape[0] * p.shape[1] > 1:
        warnings.warn(f"{what} holds {p.shape[0]} OPR x {p.shape[1]} incoherent probe modes; "
                      "using the first one (the model has one coherent probe)", DataWarning,
                      stacklevel=3)
    return p[0, 0]


def check_same_pixels(probe_px: Sequence[float], object_px: Sequence[float]) -> None:
    """Refuse probe and object pixels of different sizes (the model cannot resample)."""
    if not all(math.isclose(a, b, rel_tol=PIXEL_SIZE_RTOL) for a, b in zip(probe_px, object_px)):
        raise DataError(f"the probe pixels ({probe_px[0]:g} x {probe_px[1]:g} m) and the object "
                        f"pixels ({object_px[0]:g} x {object_px[1]:g} m) differ; the model needs "
                        "one pixel size (resample the object in ptychodus first)")


def scan_from_arrays(counts: np.ndarray, bad_pixels: Optional[np.ndarray],
                     positions_x_m: np.ndarray, positions_y_m: np.ndarray, probe: np.ndarray,
                     probe_pixel_size_m: Sequence[float], obj: np.ndarray, frame: ObjectFrame,
                     *, negative: str = "error") -> RawData:
    """Our scan from ptychodus's arrays, paired row by row (pattern k at position k).

    ``counts`` (M, N, N) photon counts -> amplitudes; ``bad_pixels`` (N, N), True = bad ->
    ``mask = ~bad_pixels`` (None when no pixel is bad); positions (metres) -> object pixels in
    ``frame``; ``probe`` -> :func:`probe_mode`; ``obj`` (layers, H, W) or (H, W) -> its first
    layer as the object guess.
    """
    amp = amplitudes_from_counts(counts, negative)
    if amp.ndim != 3 or amp.shape[1] != amp.shape[2]:
        raise DataError(f"patterns: expected square (M, N, N) patterns, got shape {amp.shape}")
    n = amp.shape[-1]
    check_same_pixels(probe_pixel_size_m, (frame.pixel_width_m, frame.pixel_height_m))
    x, y = frame.to_pixels(positions_x_m, positions_y_m, n)
    mask = None
    if bad_pixels is not None:
        bad = np.asarray(bad_pixels, dtype=bool)
        mask = ~bad if bad.any() else None
    layers = _complex_stack(OBJECT, obj, 3)
    if layers.shape[0] > 1:
        warnings.warn(f"the object has {layers.shape[0]} layers; using the first as the object "
                      "guess (the model is single-slice)", DataWarning, stacklevel=2)
    return RawData(diffraction=amp, probe=probe_mode(probe), xcoords=x, ycoords=y,
                   object_guess=layers[0], mask=mask)


def raw_from_ptychodus(product: PtychodusProduct, diffraction: PtychodusDiffraction, *,
                       negative: str = "error") -> RawData:
    """Our scan from a product file and a diffraction file, patterns paired to positions by
    scan index.

    A pattern whose index has no position is dropped (a :class:`DataWarning` counts them); a
    position index that appears twice is refused (ptychodus averages them when it prepares a
    reconstruction: do that there). See :func:`scan_from_arrays` for the conversions.
    """
    idx = product.position_indexes
    unique, counts_per = np.unique(idx, return_counts=True)
    if np.any(counts_per > 1):
        raise DataError(f"{POSITION_INDEXES!r}: indexes {unique[counts_per > 1][:5].tolist()} "
                        "appear more than once; expected one position per scan index")
    order = np.argsort(idx)
    where = np.searchsorted(idx[order], diffraction.indexes)
    where = np.minimum(where, len(idx) - 1)
    matched = idx[order][where] == diffraction.indexes
    if not matched.any():
        raise DataError(f"no pattern index matches a position index (patterns "
                        f"{diffraction.indexes.min()}..{diffraction.indexes.max()}, positions "
                        f"{idx.min()}..{idx.max()})")
    if not matched.all():
        warnings.warn(f"{int((~matched).sum())} of {matched.size} patterns have no probe "
                      "position with their index; they are left out", DataWarning, stacklevel=2)
    rows = order[where[matched]]
    return scan_from_arrays(diffraction.patterns[matched], diffraction.bad_pixels,
                            product.positions_x_m[rows], product.positions_y_m[rows],
                            product.probe, product.probe_pixel_size_m, product.object,
                            product.frame, negative=negative)


def product_from_scan(raw: RawData, obj: np.ndarray, *, pixel_size_m: float,
                      photon_energy_eV: float, detector_distance_m: float,  # noqa: N803
                      losses: Sequence[float] = (), probe: Optional[np.ndarray] = None,
                      name: str = "ptycho-pinn", center_m: Sequence[float] = (0.0, 0.0),
                      position_indexes: Optional[np.ndarray] = None) -> PtychodusProduct:
    """A product for a reconstruction of ``raw``: ``obj`` (H, W) on ``raw``'s pixel grid.

    Our positions (object pixels of ``obj``) become metres in a frame of square pixels of
    ``pixel_size_m`` whose centre sits at ``center_m``; the probe is ``probe`` (default
    ``raw.probe``) with the same pixel size; ``losses`` one value per epoch; scan indexes
    ``0..M-1`` unless given.
    """
    obj = np.asarray(obj)
    if obj.ndim != 2:
        raise DataError(f"product_from_scan: expected an (H, W) object, got shape {obj.shape}")
    frame = ObjectFrame(int(obj.shape[1]), int(obj.shape[0]), float(pixel_size_m),
                        float(pixel_size_m), *(float(c) for c in center_m))
    x_m, y_m = frame.to_metres(raw.xcoords, raw.ycoords, raw.N)
    values = np.asarray(losses, np.float64)
    return PtychodusProduct(
        positions_x_m=x_m, positions_y_m=y_m,
        position_indexes=(np.arange(raw.n_patterns) if position_indexes is None
                          else position_indexes),
        probe=raw.probe if probe is None else probe,
        probe_pixel_size_m=(frame.pixel_width_m, frame.pixel_height_m), object=obj,
        object_pixel_size_m=(frame.pixel_width_m, frame.pixel_height_m),
        object_center_m=(frame.center_x_m, frame.center_y_m),
        detector_distance_m=detector_distance_m, photon_energy_eV=photon_energy_eV,
        loss_epochs=np.arange(values.shape[0], dtype=np.int64), loss_values=values,
        metadata={"name": name})
