"""The NPZ data contract: what a raw ptychography scan looks like, checked at the boundary.

A scan is held in :class:`RawData`, built from a mapping of arrays (an NPZ file's members) by
:func:`validate_raw`, which raises :class:`ptycho.errors.DataError` naming the key, the
expected and the actual shape / dtype / value for every violation.

NPZ keys (the file format; the ``RawData`` field in brackets):

==================  =========================  ===========================================
key                 shape, dtype               meaning
==================  =========================  ===========================================
``diffraction``     (M, N, N) float32          amplitudes = sqrt(photon counts) [diffraction];
                                               ``diff3d`` is accepted as an alias
``probeGuess``      (N, N) complex64           the probe [probe]; a real probe is cast
``xcoords``         (M,) float64               x = column of each pattern's centre, object
                                               pixels [xcoords]
``ycoords``         (M,) float64               y = row, object pixels [ycoords]
``objectGuess``     (H, W) complex64, optional an object estimate [object_guess]
``scan_index``      (M,) int64, optional       scan (sub-scan) index of each pattern
                                               [scan_index]
``mask``            (N, N) or (M, N, N) bool,  which detector pixels were measured: True
                    optional                   (1) = measured, False (0) = bad pixel; one
                                               mask shared by every pattern, or one per
                                               pattern [mask]
``bad_pixels``      (N, N) or (M, N, N) bool,  the complement of ``mask`` (True = bad), the
                    optional                   key ptychodus writes; read as ``~bad_pixels``
==================  =========================  ===========================================

Bad pixels take no part in the dataset normalisation
(:func:`ptycho.data.scaling.normalisation_factor`) nor in the losses; grouping sets them to
zero in the network input (:func:`ptycho.data.grouping.group_data`), so what a bad pixel holds
never matters. A pattern with no measured pixel is refused (drop it with :meth:`RawData.subset`).

The older (N, N, M) layout of ``diffraction`` is accepted (and transposed) only when it is
unambiguous: the first two axes equal each other and the probe size, and the last differs
from N and equals ``len(xcoords)``. When M == N the shape cannot tell the layouts apart and
the documented (M, N, N) layout is assumed. Other keys in a file are ignored (a pickled one
is skipped with a :class:`ptycho.errors.DataWarning`, never unpickled).

Files in PtychoPINN's layout (``diff3d``, ``xcoords_start``/``ycoords_start``, a ``_metadata``
member, normalised amplitudes) load too; see :mod:`ptycho.data.peer` and :func:`load_npz`.

>>> import numpy as np
>>> raw = validate_raw({"diffraction": np.ones((3, 16, 16), np.float32),
...                     "probeGuess": np.ones((16, 16)), "xcoords": [0.0, 1.0, 2.0],
...                     "ycoords": [5.0, 5.0, 5.0]})
>>> raw.n_patterns, raw.N, raw.probe.dtype
(3, 16, dtype('complex64'))
"""

from __future__ import annotations

import dataclasses
import math
import os
import struct
import tokenize
import warnings
import zipfile
import zlib
from dataclasses import dataclass
from typing import Any, Mapping, Optional, Union

import numpy as np

from ptycho.atomic import atomic_save_npz
from ptycho.data import peer
from ptycho.errors import DataError, DataLimitError, DataWarning
from ptycho.limits import check_bytes
from ptycho.untrusted import (check_zip_directory, check_zip_member, open_regular,
                              read_npy_header)

PathLike = Union[str, "os.PathLike[str]"]

#: Keys every scan file must hold (the diffraction under one of DIFFRACTION_KEYS).
REQUIRED_KEYS = ("probeGuess", "xcoords", "ycoords")
#: Accepted names of the diffraction array, preferred first.
DIFFRACTION_KEYS = ("diffraction", "diff3d")
#: Optional keys.
OPTIONAL_KEYS = ("objectGuess", "scan_index", "mask", "bad_pixels")


def _describe(arr: np.ndarray) -> str:
    return f"shape {tuple(arr.shape)} dtype {arr.dtype}"


def _as_array(key: str, value: Any) -> np.ndarray:
    try:
        arr = np.asarray(value)
    except Exception as exc:  # ragged lists and the like
        raise DataError(f"{key!r}: cannot be converted to an array ({exc})") from None
    if arr.dtype.hasobject:
        raise DataError(f"{key!r}: expected a numeric array, got dtype object "
                        "(Python objects are not supported)")
    if arr.dtype.kind in "USV":
        raise DataError(f"{key!r}: expected a numeric array, got {arr.dtype.kind!r}-kind "
                        f"dtype {arr.dtype}")
    if arr.dtype.kind == "b":
        raise DataError(f"{key!r}: expected a numeric array, got bool dtype")
    if arr.dtype.kind in "mM":
        raise DataError(f"{key!r}: expected a numeric array, got dtype {arr.dtype}")
    return arr


#: Patterns per chunk when scanning a (possibly memory-mapped) array for bad values, so the
#: boolean temporaries stay small.
_CHUNK = 1024


def _chunks(arr: np.ndarray):
    if arr.ndim == 0:
        yield arr
        return
    for i in range(0, arr.shape[0], _CHUNK):
        yield arr[i:i + _CHUNK]


def _check_finite(key: str, arr: np.ndarray) -> None:
    bad = sum(int(c.size - np.count_nonzero(np.isfinite(c))) for c in _chunks(arr))
    if bad:
        raise DataError(f"{key!r}: {bad} of {arr.size} values are not finite (NaN or Inf); "
                        "expected finite values")


def _real(key: str, value: Any, dtype: type, what: str) -> np.ndarray:
    arr = _as_array(key, value)
    if arr.dtype.kind == "c":
        raise DataError(f"{key!r}: expected real {what}, got complex dtype {arr.dtype}")
    return arr.astype(dtype, copy=False)


def _complex(key: str, value: Any) -> np.ndarray:
    return _as_array(key, value).astype(np.complex64, copy=False)


def _check_diffraction(value: Any) -> np.ndarray:
    key = "diffraction"
    arr = _as_array(key, value)
    if arr.dtype.kind in "iu":
        raise DataError(
            f"{key!r}: got integer dtype {arr.dtype}, which looks like integer photon counts; "
            "pass amplitudes = sqrt(counts) as float32 (e.g. np.sqrt(counts).astype(np.float32))")
    if arr.dtype.kind == "c":
        raise DataError(f"{key!r}: expected real float32 amplitudes, got complex dtype "
                        f"{arr.dtype} (pass |field|, the far-field amplitude)")
    if arr.ndim != 3:
        raise DataError(f"{key!r}: expected rank 3 (M, N, N), got rank {arr.ndim} "
                        f"{_describe(arr)}")
    if arr.shape[0] == 0:
        raise DataError(f"{key!r}: the scan is empty (M = 0 patterns), {_describe(arr)}")
    if arr.shape[1] != arr.shape[2]:
        raise DataError(f"{key!r}: patterns must be square (M, N, N), got {arr.shape[1]} x "
                        f"{arr.shape[2]} in {_describe(arr)}")
    arr = arr.astype(np.float32, copy=False)
    _check_finite(key, arr)
    neg = sum(int(np.count_nonzero(c < 0)) for c in _chunks(arr))
    if neg:
        raise DataError(f"{key!r}: {neg} amplitudes are negative (min {float(arr.min()):g}); "
                        "expected amplitudes >= 0 (sqrt of counts)")
    return arr


def _check_mask(key: str, value: Any, m: int, n: int) -> np.ndarray:
    """A bad-pixel mask as bool, (N, N) shared or (M, N, N) per pattern; True = measured."""
    try:
        arr = np.asarray(value)
    except Exception as exc:  # ragged lists and the like
        raise DataError(f"{key!r}: cannot be converted to an array ({exc})") from None
    if arr.dtype.kind not in "biuf":
        raise DataError(f"{key!r}: expected a bool (or 0/1) mask, got dtype {arr.dtype}")
    if arr.shape not in ((n, n), (m, n, n)):
        raise DataError(f"{key!r}: expected shape ({n}, {n}) (one mask shared by every pattern) "
                        f"or ({m}, {n}, {n}) (one per pattern), got {_describe(arr)}")
    if arr.dtype.kind != "b":
        bad = sum(int(np.count_nonzero((c != 0) & (c != 1))) for c in _chunks(arr))
        if bad:
            raise DataError(f"{key!r}: {bad} values are neither 0 nor 1; expected a bool mask "
                            "(True = measured pixel)")
        arr = arr != 0
    return arr


def _mask_from(key: str, value: Any, m: int, n: int) -> np.ndarray:
    """The contract's mask (True = measured) from ``mask`` or from ``bad_pixels`` (True = bad)."""
    arr = _check_mask(key, value, m, n)
    return ~arr if key == "bad_pixels" else arr


def _check_measured(mask: np.ndarray) -> None:
    if mask.ndim == 2:
        if not mask.any():
            raise DataError("'mask': every pixel is masked (no measured pixel); expected at least "
                            "one True (measured) pixel")
        return
    empty = np.flatnonzero(~mask.reshape(mask.shape[0], -1).any(axis=1))
    if empty.size:
        raise DataError(f"'mask': {empty.size} patterns have no measured pixel (first: "
                        f"{empty[:5].tolist()}); drop them, e.g. raw.subset(mask.any(axis=(1, 2)))")


@dataclass(frozen=True, eq=False)
class RawData:
    """One scan in the public layout, validated and cast on construction.

    diffraction: (M, N, N) float32 measured far-field amplitudes, sqrt(photon counts).
    probe: (N, N) complex64 probe (a real array is cast).
    xcoords, ycoords: (M,) float64 centre of each pattern in object pixels,
        x = column, y = row.
    object_guess: optional (H, W) complex64 object estimate.
    scan_index: optional (M,) int64 index of the (sub-)scan each pattern belongs to.
    mask: optional bool bad-pixel mask, True = measured, False = bad: (N, N) shared by every
        pattern or (M, N, N) one per pattern (0/1 integers are accepted and cast). Every
        pattern must keep at least one measured pixel.

    Construction raises :class:`DataError` for any violation; arrays are cast to the dtypes
    above (no copy when they already have them). Use :func:`validate_raw` to build one from
    an NPZ-style mapping (key aliases, legacy layout).

    >>> raw = RawData(np.zeros((2, 16, 16), np.float32), np.ones((16, 16)),
    ...               np.array([0.0, 4.0]), np.array([0.0, 0.0]))
    >>> raw.N, raw.n_patterns, raw.xcoords.dtype
    (16, 2, dtype('float64'))
    """

    diffraction: np.ndarray
    probe: np.ndarray
    xcoords: np.ndarray
    ycoords: np.ndarray
    object_guess: Optional[np.ndarray] = None
    scan_index: Optional[np.ndarray] = None
    mask: Optional[np.ndarray] = None

    def __post_init__(self) -> None:
        diff = _check_diffraction(self.diffraction)
        m, n = diff.shape[0], diff.shape[1]

        probe = _as_array("probeGuess", self.probe)
        if probe.ndim != 2 or probe.shape[0] != probe.shape[1]:
            raise DataError(f"'probeGuess': expected a square (N, N) array, got {_describe(probe)}")
        if probe.shape[0] != n:
            raise DataError(f"'probeGuess': size {probe.shape[0]} does not match the pattern "
                            f"size N = {n} of 'diffraction' {tuple(diff.shape)}; expected "
                            f"({n}, {n})")
        probe = _complex("probeGuess", probe)
        _check_finite("probeGuess", probe)

        coords = {}
        for key in ("xcoords", "ycoords"):
            c = _real(key, getattr(self, key), np.float64, "positions in object pixels")
            if c.ndim != 1 or c.shape[0] != m:
                raise DataError(f"{key!r}: expected shape ({m},) (one position per pattern, "
                                f"M = {m}), got {_describe(c)}")
            _check_finite(key, c)
            coords[key] = c

        obj = self.object_guess
        if obj is not None:
            obj = _as_array("objectGuess", obj)
            if obj.ndim != 2 or 0 in obj.shape:
                raise DataError(f"'objectGuess': expected a non-empty (H, W) array, got "
                                f"{_describe(obj)}")
            obj = _complex("objectGuess", obj)
            _check_finite("objectGuess", obj)

        idx = self.scan_index
        if idx is not None:
            idx = _as_array("scan_index", idx)
            if idx.dtype.kind == "c":
                raise DataError(f"'scan_index': expected integers, got complex dtype {idx.dtype}")
            if idx.ndim != 1 or idx.shape[0] != m:
                raise DataError(f"'scan_index': expected shape ({m},) (one index per pattern, "
                                f"M = {m}), got {_describe(idx)}")
            if idx.dtype.kind == "f":
                _check_finite("scan_index", idx)
                if not np.array_equal(idx, np.round(idx)):
                    raise DataError(f"'scan_index': expected integers, got non-integral values "
                                    f"in dtype {idx.dtype}")
            idx = idx.astype(np.int64, copy=False)

        mask = self.mask
        if mask is not None:
            mask = _check_mask("mask", mask, m, n)
            _check_measured(mask)

        object.__setattr__(self, "diffraction", diff)
        object.__setattr__(self, "probe", probe)
        object.__setattr__(self, "xcoords", coords["xcoords"])
        object.__setattr__(self, "ycoords", coords["ycoords"])
        object.__setattr__(self, "object_guess", obj)
        object.__setattr__(self, "scan_index", idx)
        object.__setattr__(self, "mask", mask)

    @property
    def N(self) -> int:  # noqa: N802 (the physics name)
        """Side of a diffraction pattern (and of the probe) in pixels."""
        return int(self.diffraction.shape[-1])

    @property
    def n_patterns(self) -> int:
        """M, the number of diffraction patterns in the scan."""
        return int(self.diffraction.shape[0])

    def subset(self, indices: Any) -> "RawData":
        """The scan restricted to ``indices`` (int array or boolean mask), same probe and object.

        >>> raw = RawData(np.zeros((3, 16, 16), np.float32), np.ones((16, 16)),
        ...               np.array([0.0, 1.0, 2.0]), np.zeros(3))
        >>> raw.subset([2, 0]).xcoords.tolist()
        [2.0, 0.0]
        """
        sel = np.asarray(indices)
        if sel.dtype.kind == "b":
            if sel.shape != (self.n_patterns,):
                raise DataError(f"subset mask: expected shape ({self.n_patterns},), got "
                                f"{tuple(sel.shape)}")
            sel = np.flatnonzero(sel)
        if sel.dtype.kind not in "iu" or sel.ndim != 1:
            raise DataError(f"subset indices: expected a 1-D integer array, got {_describe(sel)}")
        if sel.size and (sel.min() < 0 or sel.max() >= self.n_patterns):
            raise DataError(f"subset indices: expected values in [0, {self.n_patterns}), got "
                            f"min {int(sel.min())} max {int(sel.max())}")
        mask = self.mask
        if mask is not None and mask.ndim == 3:
            mask = mask[sel]
        return RawData(self.diffraction[sel], self.probe, self.xcoords[sel], self.ycoords[sel],
                       self.object_guess,
                       None if self.scan_index is None else self.scan_index[sel], mask)

    def to_arrays(self) -> dict[str, np.ndarray]:
        """The NPZ members of this scan (contract key names; optional keys only when set)."""
        out = {"diffraction": self.diffraction, "probeGuess": self.probe,
               "xcoords": self.xcoords, "ycoords": self.ycoords}
        if self.object_guess is not None:
            out["objectGuess"] = self.object_guess
        if self.scan_index is not None:
            out["scan_index"] = self.scan_index
        if self.mask is not None:
            out["mask"] = self.mask
        return out


def _pick_diffraction(arrays: Mapping[str, Any]) -> np.ndarray:
    present = [k for k in DIFFRACTION_KEYS if k in arrays]
    if len(present) == 2:
        a = _as_array("diffraction", arrays["diffraction"])
        b = _as_array("diff3d", arrays["diff3d"])
        # chunk by chunk, so that two memory-mapped copies are not read into memory at once
        if a.shape != b.shape or not all(np.array_equal(x, y)
                                         for x, y in zip(_chunks(a), _chunks(b))):
            raise DataError(
                "both 'diffraction' and its alias 'diff3d' are present and they differ "
                f"(diffraction {_describe(a)}, diff3d {_describe(b)}); keep exactly one")
    return arrays[present[0]]


def _fix_layout(diff: Any, n_probe: Optional[int], m_coords: Optional[int]) -> Any:
    """Transpose the legacy (N, N, M) layout to (M, N, N) where that is unambiguous."""
    arr = np.asarray(diff)
    if arr.ndim != 3 or arr.dtype.hasobject:
        return diff  # RawData reports the problem
    a, b, c = arr.shape
    canonical_ok = b == c and (n_probe is None or b == n_probe)
    legacy_ok = a == b and (n_probe is None or a == n_probe) and c != a
    if canonical_ok and (m_coords is None or a == m_coords):
        return diff
    if legacy_ok:
        if m_coords is not None and c == m_coords:
            return np.ascontiguousarray(np.moveaxis(arr, -1, 0))
        if m_coords is None:
            raise DataError(
                f"'diffraction': shape {arr.shape} looks like the legacy (N, N, M) layout with "
                f"N = {a}, M = {c}, but 'xcoords' is not a 1-D array of M positions, so the "
                "layout cannot be confirmed; expected 'xcoords' of shape (M,)")
        raise DataError(
            f"'diffraction': shape {arr.shape} looks like the legacy (N, N, M) layout with "
            f"N = {a}, M = {c}, but 'xcoords' has {m_coords} entries; expected "
            f"(M, N, N) = ({m_coords}, {a}, {a}) or the legacy ({a}, {a}, {m_coords})")
    return diff  # RawData reports the mismatch with a specific message


def _pick_mask(arrays: Mapping[str, Any], m: int, n: int) -> Optional[np.ndarray]:
    """``mask``, or ``~bad_pixels``; both present must agree."""
    present = [k for k in ("mask", "bad_pixels") if k in arrays]
    if not present:
        return None
    masks = [_mask_from(k, arrays[k], m, n) for k in present]
    if len(masks) == 2 and (masks[0].shape != masks[1].shape
                            or not np.array_equal(masks[0], masks[1])):
        raise DataError("both 'mask' and 'bad_pixels' are present and they disagree (expected "
                        "mask == ~bad_pixels); keep exactly one")
    return masks[0]


def validate_raw(arrays: Mapping[str, Any]) -> RawData:
    """Check an NPZ-style mapping against the data contract and build a :class:`RawData`.

    Accepts ``diff3d`` as an alias of ``diffraction``, ``bad_pixels`` (True = bad) as the
    complement of ``mask``, and the unambiguous legacy (N, N, M) layout (see the module
    docstring). Raises :class:`DataError` for missing keys, wrong ranks, shapes, dtypes,
    non-finite or negative values, and empty scans.

    >>> validate_raw({"diffraction": np.ones((2, 16, 16), np.float32)})
    Traceback (most recent call last):
    ...
    ptycho.errors.DataError: missing keys ['probeGuess', 'xcoords', 'ycoords']; present: ['diffraction']
    """
    present = sorted(arrays)
    missing = [k for k in REQUIRED_KEYS if k not in arrays]
    if not any(k in arrays for k in DIFFRACTION_KEYS):
        missing.insert(0, "diffraction (or 'diff3d')")
    if missing:
        raise DataError(f"missing keys {missing}; present: {present}")
    probe = _as_array("probeGuess", arrays["probeGuess"])
    if probe.ndim != 2 or probe.shape[0] != probe.shape[1]:
        raise DataError(f"'probeGuess': expected a square (N, N) array, got {_describe(probe)}")
    n_probe = probe.shape[0]
    x = np.asarray(arrays["xcoords"])
    m_coords = x.shape[0] if x.ndim == 1 else None
    diff = _fix_layout(_pick_diffraction(arrays), n_probe, m_coords)
    shape = np.shape(diff)
    mask = None
    if len(shape) == 3 and shape[1] == shape[2]:   # otherwise RawData names the problem
        mask = _pick_mask(arrays, shape[0], shape[1])
    return RawData(diffraction=diff, probe=arrays["probeGuess"], xcoords=arrays["xcoords"],
                   ycoords=arrays["ycoords"], object_guess=arrays.get("objectGuess"),
                   scan_index=arrays.get("scan_index"), mask=mask)


#: Memory-map modes :func:`load_npz` accepts ("r+" and "w+" would write into the archive).
MMAP_MODES = (None, "r", "c")

#: The members :func:`load_npz` reads; any other member is only checked (by its header) for
#: a pickled object array, never read.
CONTRACT_KEYS = DIFFRACTION_KEYS + REQUIRED_KEYS + OPTIONAL_KEYS
#: PtychoPINN's members that :func:`load_npz` reads too, when they hold plain arrays: the
#: start positions (used when ``xcoords``/``ycoords`` are missing) and a JSON ``_metadata``.
PEER_READ_KEYS = ("xcoords_start", "ycoords_start", peer.METADATA_KEY)

_LOCAL_HEADER = struct.Struct("<4sHHHHHIIIHH")  # zip local file header, 30 bytes
_NPY_MAGIC = b"\x93NUMPY"

#: What a corrupt or hostile archive can make zipfile, zlib and numpy's .npy parser raise
#: (numpy tokenizes the header: a mangled one can raise tokenize.TokenError or SyntaxError).
_READ_ERRORS = (ValueError, OSError, EOFError, zipfile.BadZipFile, zlib.error, struct.error,
                NotImplementedError, RuntimeError, OverflowError, SyntaxError,
                tokenize.TokenError)


def _reason(exc: BaseException, limit: int = 300) -> str:
    """An exception's message, cut short (zipfile quotes whole headers in some of them)."""
    text = str(exc) or type(exc).__name__
    return text if len(text) <= limit else text[:limit] + " ..."


@dataclass(frozen=True)
class _NpyHeader:
    shape: tuple
    fortran: bool
    dtype: np.dtype
    offset: int          # where the array data starts, within the (uncompressed) member

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize


def _npy_header(zf: zipfile.ZipFile, info: zipfile.ZipInfo) -> Optional[_NpyHeader]:
    """The .npy header of a member (read without reading the data), or None if not a .npy."""
    with zf.open(info) as f:
        if f.read(len(_NPY_MAGIC)) != _NPY_MAGIC:
            return None
        f.seek(0)
        shape, fortran, dtype = read_npy_header(f)
        return _NpyHeader(shape, fortran, dtype, f.tell())


def _memmap_member(f, info: zipfile.ZipInfo, header: _NpyHeader,
                   mode: str) -> Optional[np.ndarray]:
    """Memory-map one stored (uncompressed) ``.npy`` member of the open archive ``f``, or None
    when it cannot be."""
    if not _mappable(info, header):
        return None
    f.seek(info.header_offset)
    raw = f.read(_LOCAL_HEADER.size)
    if len(raw) != _LOCAL_HEADER.size:
        return None
    fields = _LOCAL_HEADER.unpack(raw)
    if fields[0] != b"PK\x03\x04":
        return None
    offset = info.header_offset + _LOCAL_HEADER.size + fields[9] + fields[10] + header.offset
    if offset + header.nbytes > os.fstat(f.fileno()).st_size:
        raise ValueError(f"the data runs past the end of the file ({header.nbytes} bytes "
                         f"from offset {offset})")
    return np.memmap(f, dtype=header.dtype, mode=mode, offset=offset, shape=header.shape,
                     order="F" if header.fortran else "C")


def _mappable(info: zipfile.ZipInfo, header: _NpyHeader) -> bool:
    return info.compress_type == zipfile.ZIP_STORED and header.nbytes > 0


#: The dtype each contract member is cast to (a cast of a memory-mapped member is a copy).
_CONTRACT_DTYPES = {"diffraction": np.float32, "diff3d": np.float32, "probeGuess": np.complex64,
                    "xcoords": np.float64, "ycoords": np.float64, "objectGuess": np.complex64,
                    "scan_index": np.int64, "mask": np.bool_, "bad_pixels": np.bool_,
                    "xcoords_start": np.float64, "ycoords_start": np.float64}


def _memory_cost(key: str, info: zipfile.ZipInfo, header: _NpyHeader,
                 mmap_mode: Optional[str]) -> int:
    """Bytes that reading member ``key`` takes: 0 when it is memory-mapped with the contract
    dtype; its size when it is read; plus the size of its cast to the contract dtype."""
    target = np.dtype(_CONTRACT_DTYPES.get(key, header.dtype))
    count = math.prod(header.shape)
    mapped = mmap_mode is not None and _mappable(info, header)
    cost = 0 if mapped else header.nbytes
    if header.dtype != target:
        cost += count * target.itemsize
    return cost


def _read_member(f, zf: zipfile.ZipFile, info: zipfile.ZipInfo, header: _NpyHeader,
                 mmap_mode: Optional[str]) -> np.ndarray:
    arr = _memmap_member(f, info, header, mmap_mode) if mmap_mode is not None else None
    if arr is None:
        with zf.open(info) as member:
            arr = np.lib.format.read_array(member, allow_pickle=False)
    return arr


#: Most members an NPZ scan may hold (a scan has six at most; every member's header is read).
MAX_NPZ_MEMBERS = 10_000


def _open_archive(f, name: str) -> zipfile.ZipFile:
    try:
        head = f.read(len(_NPY_MAGIC))
        if head == _NPY_MAGIC:
            raise DataError(f"{name!r}: expected an NPZ archive (a zip of .npy members), got a "
                            "single ndarray (a .npy file); save it with save_npz")
        check_zip_directory(f, name, DataLimitError, MAX_NPZ_MEMBERS)
        f.seek(0)
        return zipfile.ZipFile(f, "r")
    except DataError:
        raise
    except _READ_ERRORS as exc:
        raise DataError(f"{name!r}: not an NPZ archive numpy can read ({_reason(exc)})") from None


def _read_members(f, name: str, mmap_mode: Optional[str]) -> dict[str, np.ndarray]:
    """The contract members of the open NPZ archive ``f``, read without ever unpickling.

    Every member's .npy header is checked first: object (pickled) arrays are refused, and so
    is a contract member whose declared shape the member does not hold, whose declared sizes
    lie (past the end of the file), whose compression ratio is a zip bomb's, or whose reading
    (with the other contract members) would exceed the memory budget
    (:mod:`ptycho.limits`). Only then are the contract members read; the other members are
    ignored.
    """
    file_size = os.fstat(f.fileno()).st_size
    with _open_archive(f, name) as zf:
        try:
            infos = zf.infolist()
        except _READ_ERRORS as exc:
            raise DataError(f"{name!r}: not an NPZ archive numpy can read "
                            f"({_reason(exc)})") from None
        seen: set[str] = set()
        planned: list[tuple[str, zipfile.ZipInfo, _NpyHeader]] = []
        for info in infos:
            key = info.filename[:-4] if info.filename.endswith(".npy") else info.filename
            if key in seen and key in CONTRACT_KEYS:
                raise DataError(f"{name!r}: member {key!r} appears more than once; keep "
                                "exactly one")
            seen.add(key)
            if info.flag_bits & 0x1:
                if key in CONTRACT_KEYS:
                    raise DataError(f"{name!r}: member {key!r} is encrypted; expected a plain "
                                    ".npy array")
                continue
            check_zip_member(info, file_size, name, DataError, whole=key in CONTRACT_KEYS,
                             limit_error=DataLimitError)
            try:
                header = _npy_header(zf, info)
            except _READ_ERRORS as exc:
                raise DataError(f"{name!r}: member {key!r} cannot be read "
                                f"({_reason(exc)})") from None
            if header is None:
                if key in CONTRACT_KEYS:
                    raise DataError(f"{name!r}: member {key!r} is not a .npy array")
                continue
            if header.dtype.hasobject:
                if key in CONTRACT_KEYS:
                    raise DataError(f"{name!r}: member {key!r} is an object array; pickled "
                                    "members are refused (store numeric arrays only)")
                warnings.warn(f"{name!r}: member {key!r} is a pickled object array; "
                              "skipped without unpickling it"
                              f"{peer.pickled_member_note(key)}", DataWarning, stacklevel=3)
                continue
            if key not in CONTRACT_KEYS and key not in PEER_READ_KEYS:
                continue
            held = info.file_size - header.offset
            if header.nbytes > held:
                raise DataError(
                    f"{name!r}: member {key!r} declares shape {header.shape} {header.dtype} "
                    f"({header.nbytes} bytes) but holds only {max(held, 0)} bytes of data")
            planned.append((key, info, header))
        costs = {key: _memory_cost(key, info, header, mmap_mode) for key, info, header in planned}
        if costs:
            big = max(costs, key=costs.get)
            shape = next(h.shape for k, _, h in planned if k == big)
            check_bytes(sum(costs.values()),
                        f"{name!r}: reading its members (the largest, {big!r}, declares shape "
                        f"{shape})", DataLimitError)
        arrays: dict[str, np.ndarray] = {}
        for key, info, header in planned:
            try:
                arrays[key] = _read_member(f, zf, info, header, mmap_mode)
            except _READ_ERRORS as exc:
                raise DataError(f"{name!r}: member {key!r} cannot be read "
                                f"({_reason(exc)})") from None
    return arrays


def load_npz(path: PathLike, mmap_mode: Optional[str] = None, *,
             nphotons: Optional[float] = None, amplitudes: str = "auto") -> RawData:
    """Read and validate a scan from an NPZ file (never unpickles anything).

    ``mmap_mode``: None reads every member into memory; ``"r"`` (read-only) or ``"c"``
    (copy-on-write) memory-maps the members stored uncompressed (as :func:`save_npz` writes
    them), so a large ``diffraction`` that already has the contract dtype (float32) is not
    read into memory; compressed members, and members that need a dtype cast, are read.

    Only the contract members (:data:`CONTRACT_KEYS`, and PtychoPINN's
    :data:`PEER_READ_KEYS`) are read; every member's .npy header is checked first, so a
    pickled contract member is refused, any other pickled member (e.g. PtychoPINN's
    ``_metadata``) is skipped with a :class:`ptycho.errors.DataWarning` naming it, and a header
    declaring more data than its member holds, a member whose declared sizes lie or whose
    compression ratio is a zip bomb's (:mod:`ptycho.untrusted`), or members whose reading would
    exceed the memory budget (:mod:`ptycho.limits`) are refused before anything is allocated.

    PtychoPINN files (:mod:`ptycho.data.peer`): ``xcoords_start``/``ycoords_start`` stand in
    for missing ``xcoords``/``ycoords`` (with a notice). ``amplitudes`` says what the
    diffraction holds: ``"photons"`` (the contract: sqrt of photon counts), ``"normalised"``
    (PtychoPINN's simulator output: a dataset-wide factor makes the mean total intensity of a
    pattern ``(N/2)**2``), or ``"auto"`` (default): normalised when the mean total is within
    10% of ``(N/2)**2`` and the squared amplitudes are not integer counts. Normalised
    amplitudes are converted to photon units (mean total intensity ``nphotons``) with
    ``nphotons`` if given, else the ``nphotons`` in the file's JSON ``_metadata``, with a
    :class:`ptycho.errors.DataWarning`; when neither is known a :class:`DataError` asks for it.

    Raises :class:`DataError` (naming the file) when the path is missing or not a regular
    file (a folder, a FIFO, a device, a socket: never opened), is not an NPZ archive, holds an
    object (pickled) member, a corrupt, encrypted or duplicated contract member, declares too
    much (:class:`ptycho.errors.DataLimitError`), or violates the contract
    (:func:`validate_raw`); nothing else for any content of the file (see
    docs/reliability.md).

    >>> import os, tempfile
    >>> p = os.path.join(tempfile.mkdtemp(), "scan.npz")
    >>> save_npz(RawData(np.ones((2, 16, 16), np.float32), np.ones((16, 16)),
    ...                  np.zeros(2), np.zeros(2)), p)
    >>> load_npz(p).n_patterns, isinstance(load_npz(p, mmap_mode="r").diffraction.base, np.memmap)
    (2, True)
    """
    name = os.fspath(path)
    if mmap_mode not in MMAP_MODES:
        raise DataError(f"load_npz: mmap_mode must be one of {list(MMAP_MODES)}, got "
                        f"{mmap_mode!r}")
    if amplitudes not in peer.AMPLITUDE_UNITS:
        raise DataError(f"load_npz: amplitudes must be one of {list(peer.AMPLITUDE_UNITS)}, got "
                        f"{amplitudes!r}")
    try:
        f = open_regular(name, DataError, "an NPZ file")
    except FileNotFoundError:
        raise DataError(f"{name!r}: expected an NPZ file, but the path is missing") from None
    with f:
        arrays = _read_members(f, name, mmap_mode)
    try:
        metadata = arrays.pop(peer.METADATA_KEY, None)
        arrays = peer.start_positions_fallback(arrays, name)
        raw = validate_raw(arrays)
        factor = peer.photon_scale(raw.diffraction, raw.mask, amplitudes=amplitudes,
                                   nphotons=nphotons, metadata=metadata, source=name)
    except DataError as exc:
        raise DataError(f"{name!r}: {exc}") from None
    if factor is None:
        return raw
    return dataclasses.replace(raw, diffraction=raw.diffraction * np.float32(factor))


def save_npz(raw: RawData, path: PathLike, *, peer_compatible: bool = False) -> None:
    """Write ``raw`` to ``path`` (exactly that name) as an NPZ file, atomically.

    Keys follow the contract: ``diffraction``, ``probeGuess``, ``xcoords``, ``ycoords`` and,
    when set, ``objectGuess``, ``scan_index`` and ``mask``. A failed save leaves no partial
    file. With ``peer_compatible=True`` the file is in PtychoPINN's layout, which its loader
    (``RawData.from_file``) accepts: see :func:`ptycho.data.peer.peer_arrays` (``diff3d``,
    start positions, ``scan_index`` zeros when unset, ``bad_pixels``; an object guess is
    required). Our :func:`load_npz` reads both layouts.

    >>> import os, tempfile
    >>> p = os.path.join(tempfile.mkdtemp(), "scan.npz")
    >>> save_npz(RawData(np.ones((1, 16, 16), np.float32), np.ones((16, 16)), [3.0], [4.0]), p)
    >>> sorted(np.load(p, allow_pickle=False).files)
    ['diffraction', 'probeGuess', 'xcoords', 'ycoords']
    """
    if not isinstance(raw, RawData):
        raise DataError(f"save_npz: expected a RawData, got {type(raw).__name__}")
    arrays = raw.to_arrays()
    if peer_compatible:
        arrays = peer.peer_arrays(arrays)
    atomic_save_npz(path, **arrays)
