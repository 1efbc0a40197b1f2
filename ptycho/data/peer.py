"""PtychoPINN's NPZ layout (the peer project's files), read and written without pickle.

What differs from our contract (:mod:`ptycho.data.contract`) and how it is bridged:

* ``diff3d`` instead of ``diffraction``: an alias our loader accepts; written in peer mode.
* ``xcoords_start`` / ``ycoords_start`` (the positions before position correction): its loader
  requires them; our loader uses them only when ``xcoords`` / ``ycoords`` are missing (with a
  notice); written equal to ``xcoords`` / ``ycoords`` in peer mode.
* ``_metadata``: a JSON string. Files written by PtychoPINN's current tools store it as a plain
  unicode scalar, which is read (its ``physics_parameters.nphotons`` can restore the intensity
  scale); older files store it as a pickled object scalar, which is skipped without being
  unpickled, with a :class:`ptycho.errors.DataWarning` naming it.
* Normalised amplitudes: PtychoPINN's simulator writes ``diff3d`` divided by a dataset-wide
  factor so that the mean total intensity of a pattern is ``(N/2)**2``, not sqrt(counts). Our
  contract needs photon units; :func:`photon_scale` detects this and converts with a photon
  count, or asks for one.
* Its loader requires ``objectGuess`` and ``scan_index``; ``bad_pixels`` (True = bad pixel) is
  the mask key ptychodus writes for it.

Its model archives (``wts.h5.zip``: dill pickles) are refused by :mod:`ptycho.bundle`.

>>> a = np.full((4, 16, 16), 0.5, np.float32)        # mean total 64 = (16/2)**2, not counts
>>> looks_normalised(a, None)
(True, 64.0)
>>> with warnings.catch_warnings(record=True) as notes:
...     warnings.simplefilter("always")
...     factor = photon_scale(a, None, amplitudes="auto", nphotons=1e4, metadata=None,
...                           source="x.npz")
>>> round(factor ** 2 * 64.0), notes[0].category.__name__
(10000, 'DataWarning')
"""

from __future__ import annotations

import json
import math
import warnings
from typing import Any, Mapping, Optional

import numpy as np

from ptycho.data.scaling import intensity_scale, normalisation_factor
from ptycho.errors import DataError, DataWarning

#: PtychoPINN's metadata member (a JSON string).
METADATA_KEY = "_metadata"
#: What ``load_npz(amplitudes=...)`` accepts.
AMPLITUDE_UNITS = ("auto", "photons", "normalised")
#: The keys PtychoPINN's loader (``RawData.from_file``) reads; each must be present.
PEER_REQUIRED_KEYS = ("xcoords", "ycoords", "xcoords_start", "ycoords_start", "diff3d",
                     "probeGuess", "objectGuess", "scan_index")
#: ``"auto"`` calls amplitudes normalised when the mean total intensity is within this
#: relative distance of ``(N/2)**2`` (a train/test split of a normalised set is off by a few %).
NORMALISED_RTOL = 0.1
#: Pixels looked at to decide: the first patterns up to this many pixels (at least one
#: pattern), so a memory-mapped scan is not read whole and the float64 copy stays ~1 MiB.
DETECTION_PIXELS = 1 << 17
#: A squared amplitude within this of an integer counts as an integer photon count (float32
#: sqrt(k) squared back is within 2e-3 of k for the k < 1e4 a normalised-looking scan holds).
INTEGRAL_ATOL = 1e-2


def pickled_member_note(key: str) -> str:
    """What the loader adds to its notice about a skipped pickled member ``key``."""
    if key == METADATA_KEY:
        return (" (PtychoPINN's metadata, which may record the scan's nphotons; if the "
                "amplitudes are normalised, pass nphotons= to load_npz)")
    return ""


def start_positions_fallback(arrays: Mapping[str, Any], source: str) -> dict[str, Any]:
    """``arrays`` with ``xcoords_start``/``ycoords_start`` standing in for missing positions.

    The start keys are dropped either way; when ``xcoords`` is present it wins (PtychoPINN's
    ``xcoords`` are the corrected positions, ``xcoords_start`` the nominal ones).
    """
    out = dict(arrays)
    for axis in ("x", "y"):
        key, start = f"{axis}coords", f"{axis}coords_start"
        value = out.pop(start, None)
        if key not in out and value is not None:
            warnings.warn(f"{source!r}: no {key!r}; using {start!r} (PtychoPINN's start "
                          "positions) as the scan positions", DataWarning, stacklevel=3)
            out[key] = value
    return out


def metadata_nphotons(value: Any) -> Optional[float]:
    """``physics_parameters.nphotons`` from a plain (unicode or bytes) JSON ``_metadata``.

    None when absent or unreadable (a malformed member is not an error: it is only a hint).

    >>> metadata_nphotons(np.array('{"physics_parameters": {"nphotons": 1e6}}'))
    1000000.0
    """
    arr = np.asarray(value) if value is not None else None
    if arr is None or arr.shape != () or arr.dtype.kind not in "US":
        return None
    text = arr.item()
    try:
        if isinstance(text, bytes):
            text = text.decode("utf-8")
        meta = json.loads(text)
        n = float(meta["physics_parameters"]["nphotons"])
    except (UnicodeDecodeError, ValueError, KeyError, TypeError):
        return None
    return n if math.isfinite(n) and n > 0 else None


def _sample(diffraction: np.ndarray, mask: Optional[np.ndarray]):
    n = diffraction.shape[-1]
    k = min(diffraction.shape[0], max(1, DETECTION_PIXELS // (n * n)))
    sample = np.asarray(diffraction[:k], dtype=np.float64)
    m = mask[:k] if mask is not None and mask.ndim == 3 else mask
    return sample, m


def looks_normalised(diffraction: np.ndarray, mask: Optional[np.ndarray]) -> tuple[bool, float]:
    """(whether the amplitudes look like PtychoPINN's normalised ones, their mean total).

    Normalised: the mean total intensity of a pattern (as :func:`normalisation_factor` counts
    it, over measured pixels) is within :data:`NORMALISED_RTOL` of ``(N/2)**2`` and most
    squared amplitudes are not integers (photon counts squared back are).
    """
    sample, m = _sample(diffraction, mask)
    n = sample.shape[-1]
    try:
        mean_total = (n / 2.0) ** 2 / normalisation_factor(sample, m) ** 2
    except DataError:                  # the patterns looked at are all dark: nothing to tell
        return False, 0.0
    if abs(mean_total / (n / 2.0) ** 2 - 1.0) > NORMALISED_RTOL:
        return False, mean_total
    squares = np.square(sample) if m is None else np.square(sample)[np.broadcast_to(m, sample.shape)]
    lit = squares[squares > INTEGRAL_ATOL]
    if lit.size == 0:
        return False, mean_total       # all dark: nothing to tell by, take the contract's word
    off_integer = np.abs(lit - np.round(lit)) > INTEGRAL_ATOL
    return bool(np.mean(off_integer) > 0.5), mean_total


def photon_scale(diffraction: np.ndarray, mask: Optional[np.ndarray], *, amplitudes: str,
                 nphotons: Optional[float], metadata: Any, source: str) -> Optional[float]:
    """The factor that turns normalised amplitudes into photon units, or None (already are).

    ``amplitudes``: one of :data:`AMPLITUDE_UNITS`. The factor is
    ``normalisation_factor * intensity_scale(nphotons, N)``: afterwards the mean total
    intensity of a pattern is ``nphotons``. ``nphotons`` comes from the argument, else from a
    plain JSON ``metadata``; a conversion is announced with a :class:`DataWarning`. Raises
    :class:`DataError` asking for the photon count when the amplitudes are normalised and
    none is known.
    """
    if amplitudes not in AMPLITUDE_UNITS:
        raise DataError(f"amplitudes must be one of {list(AMPLITUDE_UNITS)}, got {amplitudes!r}")
    if amplitudes == "photons":
        return None
    n = diffraction.shape[-1]
    if amplitudes == "auto":
        normalised, mean_total = looks_normalised(diffraction, mask)
        if not normalised:
            return None
        why = (f"the amplitudes look normalised (mean total intensity per pattern "
               f"{mean_total:.6g} ~ (N/2)^2 = {(n / 2.0) ** 2:g}, and their squares are not "
               "integer photon counts), as PtychoPINN's simulator writes them")
    else:
        why = "amplitudes='normalised' was given"
    origin = "the nphotons argument"
    if nphotons is None:
        nphotons = metadata_nphotons(metadata)
        origin = f"the file's {METADATA_KEY!r}"
    if nphotons is None:
        raise DataError(
            f"{why}; the photon count per pattern is needed to restore the intensity scale: "
            "pass load_npz(..., nphotons=<mean photons per pattern>) (the value the scan was "
            "simulated with), or amplitudes='photons' if these really are sqrt(counts)")
    factor = normalisation_factor(diffraction, mask) * intensity_scale(nphotons, n)
    warnings.warn(f"{source!r}: {why}; converted to photon units with nphotons = "
                  f"{float(nphotons):g} (from {origin})", DataWarning, stacklevel=3)
    return factor


def peer_arrays(arrays: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Our NPZ members (``RawData.to_arrays``) in PtychoPINN's layout.

    ``diff3d`` (our amplitudes, sqrt of counts: its loader normalises them itself),
    ``probeGuess``, ``objectGuess`` (required by its loader: a :class:`DataError` when the
    scan has none), ``xcoords``/``ycoords`` and equal ``xcoords_start``/``ycoords_start``,
    ``scan_index`` (zeros, one scan, when unset) and ``bad_pixels = ~mask`` when masked.

    >>> out = peer_arrays({"diffraction": np.ones((2, 4, 4), np.float32),
    ...                    "probeGuess": np.ones((4, 4), np.complex64), "xcoords": np.zeros(2),
    ...                    "ycoords": np.zeros(2), "objectGuess": np.ones((8, 8), np.complex64)})
    >>> sorted(out) == sorted(PEER_REQUIRED_KEYS)
    True
    """
    if "objectGuess" not in arrays:
        raise DataError("peer_compatible=True: PtychoPINN's loader requires 'objectGuess' and "
                        "this scan has none; set one first, e.g. dataclasses.replace(raw, "
                        "object_guess=np.ones((H, W), np.complex64))")
    m = arrays["diffraction"].shape[0]
    out = {"diff3d": arrays["diffraction"], "probeGuess": arrays["probeGuess"],
           "objectGuess": arrays["objectGuess"],
           "xcoords": arrays["xcoords"], "ycoords": arrays["ycoords"],
           "xcoords_start": arrays["xcoords"], "ycoords_start": arrays["ycoords"],
           "scan_index": arrays.get("scan_index", np.zeros(m, np.int64))}
    if "mask" in arrays:
        out["bad_pixels"] = ~arrays["mask"]
    return out
