"""Portable, safe model bundles: one zip file, readable by any backend.

Layout of a bundle (format ``ptycho-pinn-bundle``, version :data:`FORMAT_VERSION`)::

    manifest.json            format, versions, writing backend, full config, history,
                             intensity scale, and per weight entry: member, shape, dtype, sha256
    weights/<entry>.npy      one plain .npy array per canonical weight entry

Nothing in a bundle is code: the manifest is JSON and every array is a plain .npy read by
:func:`_read_npy` (the header is parsed and checked against the manifest, then the bytes are
copied into a numeric array; nothing is ever unpickled). Reading checks, in this order and before any model is
built: that the path is a regular file (not a FIFO or a device), that it is a zip whose directory
is of bounded size, member names (no absolute or ``..`` paths) and declared sizes (inside the file,
no zip-bomb compression ratio), the format name and version, declared tensor sizes against
:data:`MAX_MEMBER_BYTES` (and their total against :data:`MAX_TOTAL_BYTES`), the config, the
manifest's entries against the config's canonical weight spec, the memory the model needs
(:func:`ptycho.model_memory.check_model_memory`), that the file holds exactly the expected
members; only then is any weight member read: every sha256, every ``.npy`` header, the values.
Writing is atomic.

>>> import tempfile, os
>>> from ptycho.config import ModelConfig, TrainingConfig
>>> from ptycho.weights import init_weights
>>> cfg = TrainingConfig(model=ModelConfig(N=16, base_filters=1, n_filters_scale=1))
>>> w = init_weights(cfg.model, 0, np.ones((16, 16)), 0.0)
>>> path = os.path.join(tempfile.mkdtemp(), "model.zip")
>>> save_bundle(path, w, cfg, backend_name="tensorflow")
>>> contents = read_bundle(path)
>>> contents.config == cfg, np.array_equal(contents.weights["probe"], w["probe"])
(True, True)
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import posixpath
import struct
import tokenize
import zipfile
import zlib
from dataclasses import dataclass, field
from typing import Any, Mapping, Optional, Union

import numpy as np

import ptycho
from ptycho.atomic import PathLike, atomic_write
from ptycho.config.io import config_from_dict, config_to_dict
from ptycho.config.schema import InferenceConfig, ModelConfig, TrainingConfig
from ptycho.errors import BundleError, ConfigError, PtychoError, ResourceLimitError, WeightsError
from ptycho.model_memory import check_model_memory
from ptycho.training import History
from ptycho.untrusted import (check_zip_directory, check_zip_member, open_regular,
                              read_npy_header)
from ptycho.weights import validate_weights, weight_spec

FORMAT_NAME = "ptycho-pinn-bundle"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
WEIGHTS_DIR = "weights/"
#: Largest manifest we read (bytes): a training history of ~12,000 epochs (350 bytes each).
#: Parsed JSON can take ~30 times its size in Python objects (``[{}, {}, ...]``), so this
#: bounds what a hostile manifest costs to ~120 MiB.
MAX_MANIFEST_BYTES = 4 << 20
#: Largest single weight member (bytes); far above any network this library builds.
MAX_MEMBER_BYTES = 1 << 30
#: Largest total of all declared weight tensors (bytes), checked before any member is read.
MAX_TOTAL_BYTES = 4 << 30
#: Largest number of members in a bundle (checked before the zip directory is parsed).
MAX_MEMBERS = 4096
#: Bytes a weight member may hold beyond its tensor: the .npy header.
_NPY_HEADER_ALLOWANCE = 4096
#: What a corrupt or hostile zip can make zipfile, zlib and numpy's .npy parser raise.
#: (numpy tokenizes a .npy header: a mangled one can raise tokenize.TokenError or SyntaxError).
_READ_ERRORS = (zipfile.BadZipFile, zlib.error, EOFError, OSError, ValueError, struct.error,
                NotImplementedError, RuntimeError, OverflowError, SyntaxError,
                tokenize.TokenError)


def _reason(err: BaseException, limit: int = 300) -> str:
    """An exception's message, cut short (zipfile quotes whole headers in some of them)."""
    text = str(err) or type(err).__name__
    return text if len(text) <= limit else text[:limit] + " ..."
_ZIP_DATE = (2020, 1, 1, 0, 0, 0)   # fixed, so that equal contents give equal bytes
_CONFIG_KINDS = {"training": TrainingConfig, "inference": InferenceConfig, "model": ModelConfig}

AnyConfig = Union[TrainingConfig, InferenceConfig, ModelConfig]


class NotABundleError(BundleError):
    """The file is not a zip, or not a bundle of this library."""


class BundleVersionError(BundleError):
    """The bundle's format version is not one this library reads."""


class ChecksumError(BundleError):
    """A weight member's sha256 differs from the manifest (the message names the entry)."""


class BundleLimitError(BundleError, ResourceLimitError):
    """A member, a declared tensor or the model is larger than a safety bound or the memory
    budget (zip-bomb and expensive-config guard)."""


@dataclass
class BundleContents:
    """What a bundle holds, verified, as plain Python and numpy (no framework)."""

    manifest: dict[str, Any]
    config: AnyConfig
    weights: dict[str, np.ndarray]
    history: Optional[History] = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def model_config(self) -> ModelConfig:
        return self.config if isinstance(self.config, ModelConfig) else self.config.model

    @property
    def backend(self) -> str:
        """The backend that wrote the bundle."""
        return self.manifest["backend"]


def _config_kind(config: AnyConfig) -> str:
    for kind, cls in _CONFIG_KINDS.items():
        if type(config) is cls:
            return kind
    raise ConfigError(f"bundle config must be one of {list(_CONFIG_KINDS)}, got {type(config).__name__}")


def _npy_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.array(arr, order="C", copy=True), allow_pickle=False)
    return buf.getvalue()


def _member_name(entry: str) -> str:
    return f"{WEIGHTS_DIR}{entry}.npy"


def save_bundle(path: PathLike, weights: Mapping[str, np.ndarray], config: AnyConfig, *,
                backend_name: str, framework_version: Optional[str] = None,
                history: Optional[History] = None, extra: Optional[Mapping[str, Any]] = None) -> None:
    """Write a bundle atomically: an interrupted save leaves any earlier file at ``path`` intact.

    ``weights`` is the canonical mapping (validated against ``config``'s spec first);
    ``extra`` is JSON-serialisable metadata (e.g. a legacy dictionary, timings).
    """
    kind = _config_kind(config)
    model_config = config if isinstance(config, ModelConfig) else config.model
    validate_weights(model_config, weights)
    entries: dict[str, dict[str, Any]] = {}
    payloads: dict[str, bytes] = {}
    for name in weight_spec(model_config):
        data = _npy_bytes(np.asarray(weights[name]))
        member = _member_name(name)
        payloads[member] = data
        arr = np.asarray(weights[name])
        entries[name] = {"member": member, "shape": list(arr.shape), "dtype": arr.dtype.name,
                         "sha256": hashlib.sha256(data).hexdigest()}
    log_scale = float(np.asarray(weights["log_intensity_scale"]))
    manifest = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "library_version": ptycho.__version__,
        "backend": backend_name,
        "framework_version": framework_version,
        "config_kind": kind,
        "config": config_to_dict(config),
        "intensity_scale": math.exp(log_scale),
        "probe": {"entry": "probe", "shape": entries["probe"]["shape"]},
        "entries": entries,
        "history": history.to_dict() if history is not None else None,
        "extra": dict(extra or {}),
    }
    try:
        manifest_bytes = json.dumps(manifest, indent=2, sort_keys=True, allow_nan=False).encode()
    except (TypeError, ValueError) as err:
        raise BundleError(f"bundle manifest is not JSON-serialisable: {err}") from err
    with atomic_write(path, "wb") as f:
        with zipfile.ZipFile(f, "w", compression=zipfile.ZIP_STORED) as zf:
            for member, data in [(MANIFEST, manifest_bytes), *payloads.items()]:
                info = zipfile.ZipInfo(member, date_time=_ZIP_DATE)
                info.compress_type = zipfile.ZIP_STORED
                info.external_attr = 0o644 << 16
                zf.writestr(info, data)


def _read_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo, limit: int) -> bytes:
    if info.file_size > limit:
        raise BundleLimitError(f"bundle member {info.filename!r} declares {info.file_size} bytes, "
                               f"more than the limit of {limit}")
    with zf.open(info) as f:
        # never ask the decompressor for more than the member declares (zlib produces what
        # is asked for before zipfile cuts it to the declared size)
        data = f.read(min(info.file_size, limit) + 1)
    if len(data) > limit:
        raise BundleLimitError(f"bundle member {info.filename!r} inflates past {limit} bytes")
    return data


def _read_npy(data: bytes, shape: list, dtype: str) -> np.ndarray:
    """A plain .npy array from ``data``, whose header must declare ``shape`` and ``dtype``.

    The header is compared with the manifest before the data is allocated, so a header that
    declares a huge array is refused without allocating it; pickled (object) arrays and
    anything that is not a .npy file (a nested zip, say) are refused too.
    """
    f = io.BytesIO(data)
    got_shape, fortran, got_dtype = read_npy_header(f)
    if list(got_shape) != shape or got_dtype != np.dtype(dtype) or fortran:
        raise ValueError(f"the .npy header declares {got_dtype}{list(got_shape)}"
                         f"{' (Fortran order)' if fortran else ''}")
    body = memoryview(data)[f.tell():]
    nbytes = math.prod(shape) * np.dtype(dtype).itemsize
    if len(body) != nbytes:
        raise ValueError(f"it holds {len(body)} bytes of data, {nbytes} expected")
    return np.frombuffer(body, dtype=dtype).reshape(shape).copy()


def _check_member_names(infos: list[zipfile.ZipInfo]) -> None:
    if len(infos) > MAX_MEMBERS:
        raise BundleLimitError(f"bundle has {len(infos)} members, more than {MAX_MEMBERS}")
    seen = set()
    for info in infos:
        name = info.filename
        norm = posixpath.normpath(name)
        if (name.startswith(("/", "\\")) or ".." in name.replace("\\", "/").split("/")
                or ":" in name or norm != name):
            raise NotABundleError(f"bundle member {name!r} has an absolute or escaping path")
        if name in seen:
            raise NotABundleError(f"bundle member {name!r} appears twice")
        seen.add(name)


#: Member names that mark a PtychoPINN model archive (its ``wts.h5.zip``), by suffix.
PEER_MEMBER_SUFFIXES = (".dill", ".pkl", ".pickle", ".keras", ".h5", ".pth", ".ckpt")
PEER_ARCHIVE_HELP = ("this library never unpickles or runs code from a file, so it cannot "
                     "load that model: retrain it here (ptycho train) or re-export its weights "
                     "as plain arrays")


def _refuse_peer_archive(names: list[str], path: str) -> None:
    """A PtychoPINN model archive (dill pickles, Keras / torch payloads) is named and refused."""
    peer_members = sorted(n for n in names if n.lower().endswith(PEER_MEMBER_SUFFIXES))
    if peer_members:
        pickled = [n for n in peer_members if n.lower().endswith((".dill", ".pkl", ".pickle"))]
        what = (f"dill/pickle members {pickled[:4]}" if pickled
                else f"framework payloads {peer_members[:4]}")
        raise NotABundleError(f"{path}: not a {FORMAT_NAME} but a PtychoPINN model archive "
                              f"(wts.h5.zip layout: {what}); {PEER_ARCHIVE_HELP}")


def _parse_manifest(raw: bytes, path: str) -> dict[str, Any]:
    try:
        manifest = json.loads(raw.decode("utf-8"))
    except RecursionError:
        raise NotABundleError(f"{path}: manifest.json is nested too deeply to be a manifest") from None
    except ValueError as err:   # JSONDecodeError, UnicodeDecodeError, over-long integers
        raise NotABundleError(f"{path}: manifest.json is not valid JSON ({_reason(err)})") from err
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT_NAME:
        fmt = manifest.get("format") if isinstance(manifest, dict) else None
        if isinstance(manifest, dict) and "artifact_schema_version" in manifest:
            raise NotABundleError(
                f"{path}: not a {FORMAT_NAME} but a PtychoPINN model archive (its manifest "
                f"declares artifact_schema_version "
                f"{_reason(repr(manifest['artifact_schema_version']), 60)}); {PEER_ARCHIVE_HELP}")
        raise NotABundleError(f"{path}: not a {FORMAT_NAME} (format field is {fmt!r})")
    version = manifest.get("format_version")
    if version != FORMAT_VERSION:
        raise BundleVersionError(f"{path}: unknown bundle format version {version!r}; this "
                                 f"library (ptycho {ptycho.__version__}) reads version {FORMAT_VERSION}")
    for key in ("backend", "config_kind", "config", "entries"):
        if key not in manifest:
            raise NotABundleError(f"{path}: manifest lacks the {key!r} field")
    if not isinstance(manifest["entries"], dict) or not isinstance(manifest["config"], dict):
        raise NotABundleError(f"{path}: manifest 'entries' and 'config' must be objects")
    for key in ("backend", "config_kind"):
        if not isinstance(manifest[key], str):
            raise NotABundleError(f"{path}: manifest {key!r} must be a string, got "
                                  f"{type(manifest[key]).__name__}")
    return manifest


def _declared_nbytes(name: str, meta: Any) -> int:
    if not isinstance(meta, dict) or not {"member", "shape", "dtype", "sha256"} <= set(meta):
        raise NotABundleError(f"manifest entry {name!r} must give member, shape, dtype and sha256")
    if not isinstance(meta["member"], str) or not isinstance(meta["sha256"], str):
        raise NotABundleError(f"manifest entry {name!r}: member and sha256 must be strings")
    shape, dtype = meta["shape"], meta["dtype"]
    if (not isinstance(shape, list) or not all(isinstance(s, int) and not isinstance(s, bool)
                                                 and s >= 0 for s in shape)):
        raise NotABundleError(f"manifest entry {name!r} has an invalid shape {shape!r}")
    if not isinstance(dtype, str) or dtype not in ("float32", "complex64"):
        raise NotABundleError(f"manifest entry {name!r} has dtype {dtype!r}; "
                              "only float32 and complex64 are allowed")
    nbytes = math.prod(shape) * np.dtype(dtype).itemsize
    if nbytes > MAX_MEMBER_BYTES:
        raise BundleLimitError(f"manifest entry {name!r} declares shape {shape} ({nbytes} bytes), "
                               f"more than the limit of {MAX_MEMBER_BYTES}")
    return nbytes


def _check_entries_against_spec(entries: Mapping[str, Any], model_config: ModelConfig,
                                path: str) -> None:
    """The manifest's entries must be exactly the config's canonical spec (names, shapes and
    dtypes), checked before any weight member is read."""
    spec = weight_spec(model_config)
    problems = []
    missing = [k for k in spec if k not in entries]
    extra = [k for k in entries if k not in spec]
    if missing:
        problems.append(f"missing entries {missing}")
    if extra:
        problems.append(f"unexpected entries {extra}")
    for name, entry in spec.items():
        meta = entries.get(name)
        if meta is None:
            continue
        if tuple(meta["shape"]) != entry.shape:
            problems.append(f"{name!r}: expected shape {entry.shape}, got {tuple(meta['shape'])}")
        elif meta["dtype"] != entry.dtype:
            problems.append(f"{name!r}: expected dtype {entry.dtype}, got {meta['dtype']}")
    if problems:
        raise WeightsError(f"{path}: weights do not match the canonical spec for this config: "
                           + "; ".join(problems))


#: ModelConfig fields added after bundles were first written, with the value that reproduces
#: how a bundle that lacks them was trained (a missing key must not take today's default:
#: the weights would be read into another model).
MODEL_KEYS_ADDED = {"per_pattern_network": False, "match_intensity": False,
                    "central_decoder": False, "backprop_estimate": False,
                    "estimate_scope": "pattern", "skip_connections": False}


#: ModelConfig fields added after bundles were first written whose past value depends on
#: another field: name -> (that field, its value, the added field's value then). A bundle with
#: ``backprop_estimate`` written before ``estimate_amplitude`` existed scaled the estimate.
MODEL_KEYS_ADDED_IF = {"estimate_amplitude": ("backprop_estimate", True, "scale")}


def _with_added_model_keys(kind: str, config: Any) -> Any:
    if not isinstance(config, dict):
        return config
    if kind == "model":
        return _model_with_added_keys(config)
    if isinstance(config.get("model"), dict):
        return {**config, "model": _model_with_added_keys(config["model"])}
    return config


def _model_with_added_keys(model: dict) -> dict:
    full = {**MODEL_KEYS_ADDED, **model}
    for key, (other, when, value) in MODEL_KEYS_ADDED_IF.items():
        if key not in model and full.get(other) is when:
            full[key] = value
    return full


def _bundle_config(manifest: dict[str, Any], path: str) -> AnyConfig:
    kind = manifest["config_kind"]
    if kind not in _CONFIG_KINDS:
        raise NotABundleError(f"{path}: unknown config_kind {kind!r}; expected one of {list(_CONFIG_KINDS)}")
    try:
        return config_from_dict(_CONFIG_KINDS[kind],
                                _with_added_model_keys(kind, manifest["config"]))
    except ConfigError as err:
        raise ConfigError(f"{path}: bundle config invalid: {err}") from err


def _open_bundle(path: str):
    """The bundle file, opened after checking that it is a regular file."""
    return open_regular(path, NotABundleError, "a bundle (a zip file)")


def read_bundle(path: PathLike, *, batch_size: Optional[int] = None) -> BundleContents:
    """Read and verify a bundle without building a model (no framework is imported).

    Before any weight member is read: the member names, the manifest, the config, the
    manifest's entries against the config's canonical spec (names, shapes, dtypes), and the
    memory the model would take (parameters and the activations of ``batch_size`` groups,
    default the config's ``batch_size``, 1 for a bare model config) against the budget of
    :mod:`ptycho.limits`. Then every member's checksum and ``.npy`` header.

    Raises :class:`NotABundleError` (also for a path that is not a regular file: a FIFO,
    a device, a folder), :class:`BundleVersionError`, :class:`ChecksumError`,
    :class:`BundleLimitError`, :class:`ptycho.errors.ConfigError` (which field) or
    :class:`ptycho.errors.WeightsError` (missing / extra / misshapen entry); nothing else for
    any content of the file (a missing ``path`` is :class:`FileNotFoundError`).
    """
    path = os.fspath(path)
    with _open_bundle(path) as f:
        file_size = os.fstat(f.fileno()).st_size
        try:
            check_zip_directory(f, path, BundleLimitError, MAX_MEMBERS)
            f.seek(0)
            zf = zipfile.ZipFile(f, "r")
        except PtychoError:
            raise
        except _READ_ERRORS as err:
            raise NotABundleError(f"{path}: not a bundle (not a readable zip file: "
                                  f"{_reason(err)})") from err
        with zf:
            manifest, config, weights = _read_verified(zf, path, file_size, batch_size)
    model_config = config if isinstance(config, ModelConfig) else config.model
    try:
        validate_weights(model_config, weights)
    except WeightsError as err:
        raise WeightsError(f"{path}: {err}") from err
    weights = {name: weights[name] for name in weight_spec(model_config)}   # canonical order
    history = manifest.get("history")
    try:
        hist = History.from_dict(history) if history else None
    except (TypeError, KeyError, AttributeError) as err:
        raise NotABundleError(f"{path}: manifest history is malformed ({_reason(err)})") from err
    extra = manifest.get("extra") or {}
    return BundleContents(manifest=manifest, config=config, weights=weights, history=hist,
                          extra=extra if isinstance(extra, dict) else {})


def _read_verified(zf: zipfile.ZipFile, path: str, file_size: int,
                   batch_size: Optional[int]) -> tuple[dict, AnyConfig, dict[str, np.ndarray]]:
    """Manifest, config and weights of an open bundle, every check in the documented order."""
    try:
        infos = zf.infolist()
        _check_member_names(infos)
        for info in infos:
            check_zip_member(info, file_size, path, NotABundleError,
                             limit_error=BundleLimitError)
        by_name = {i.filename: i for i in infos}
        _refuse_peer_archive(list(by_name), path)
        if MANIFEST not in by_name:
            raise NotABundleError(f"{path}: not a bundle (no {MANIFEST} inside)")
        manifest = _parse_manifest(_read_member(zf, by_name[MANIFEST], MAX_MANIFEST_BYTES), path)
        entries = manifest["entries"]
        declared = {name: _declared_nbytes(name, meta) for name, meta in entries.items()}
        total = sum(declared.values())
        if total > MAX_TOTAL_BYTES:
            raise BundleLimitError(f"{path}: the manifest declares {total} bytes of weights, "
                                   f"more than the limit of {MAX_TOTAL_BYTES}")
        config = _bundle_config(manifest, path)
        model_config = config if isinstance(config, ModelConfig) else config.model
        _check_entries_against_spec(entries, model_config, path)
        if batch_size is None:
            batch_size = getattr(config, "batch_size", 1)
        check_model_memory(model_config, batch_size, error=BundleLimitError, where=f"{path}: ")
        expected_members = {MANIFEST} | {meta["member"] for meta in entries.values()}
        unexpected = sorted(set(by_name) - expected_members)
        if unexpected:
            raise NotABundleError(f"{path}: unexpected members {unexpected}")
        for name, meta in entries.items():
            member = meta["member"]
            if member != _member_name(name):
                raise NotABundleError(f"manifest entry {name!r} points at {member!r}, "
                                      f"expected {_member_name(name)!r}")
            if member not in by_name:
                raise WeightsError(f"{path}: weight entry {name!r} is listed in the manifest "
                                   f"but its member {member!r} is missing")
            if by_name[member].file_size > declared[name] + _NPY_HEADER_ALLOWANCE:
                raise BundleLimitError(f"{path}: member {member!r} declares "
                                       f"{by_name[member].file_size} bytes for weight entry "
                                       f"{name!r} of {declared[name]} bytes")
        weights: dict[str, np.ndarray] = {}
        for name, meta in entries.items():
            member = meta["member"]
            data = _read_member(zf, by_name[member], declared[name] + _NPY_HEADER_ALLOWANCE)
            if hashlib.sha256(data).hexdigest() != meta["sha256"]:
                raise ChecksumError(f"{path}: checksum mismatch for weight entry {name!r} "
                                    f"(member {member!r}); the file is corrupted or was altered")
            try:
                weights[name] = _read_npy(data, meta["shape"], meta["dtype"])
            except (ValueError, SyntaxError, tokenize.TokenError) as err:
                raise NotABundleError(f"{path}: weight entry {name!r} is not a plain .npy "
                                      f"array of {meta['dtype']}{meta['shape']} "
                                      f"({_reason(err)})") from err
            del data
    except PtychoError:
        raise
    except RuntimeError as err:    # zipfile: an encrypted member
        raise NotABundleError(f"{path}: unreadable member ({_reason(err)}); bundles are "
                              "never encrypted") from err
    except _READ_ERRORS as err:
        raise NotABundleError(f"{path}: corrupted zip ({type(err).__name__}: "
                              f"{_reason(err)})") from err
    return manifest, config, weights


def weight_payload_digest(path: PathLike) -> dict[str, str]:
    """sha256 of every weight member, as stored (for byte-identity checks)."""
    return {name: meta["sha256"] for name, meta in read_bundle(path).manifest["entries"].items()}
