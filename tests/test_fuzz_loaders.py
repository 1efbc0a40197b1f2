"""Fuzzing every loader with hostile input: only the library's documented errors may come out.

Loaders: :func:`ptycho.data.load_npz` (NPZ scans), :func:`ptycho.bundle.read_bundle` (model
bundles), :func:`ptycho.config.load_config` / :func:`from_json` / :func:`from_yaml` (config
documents and files) and :func:`ptycho.config.config_from_legacy` (legacy dictionaries).

Each test draws inputs with hypothesis (random byte corruption, truncation, wrong dtypes and
ranks, zero-length and huge declared shapes, NaN/Inf, duplicate and missing keys, pickled
members, escaping paths, YAML tags and alias bombs ...), calls the loader, and accepts only

* a successful load whose result satisfies the contract, or
* one of the documented :mod:`ptycho.errors` types (``DataError`` for NPZ files,
  ``BundleError`` / ``ConfigError`` / ``WeightsError`` for bundles, ``ConfigError`` for
  configs), whose message is non-trivial, bounded in length, and (for files) names the file.

Anything else (``MemoryError``, ``struct.error``, ``zlib.error``, ``RecursionError``, a plain
``ValueError`` ...) escapes, fails the test, and hypothesis prints the reproducing input.

How many inputs were tried is reported per loader and case: a line ``FUZZ <loader> [<case>]:
N inputs tried ...`` on stdout (``pytest -rA`` or ``-s`` shows it), the same numbers as a
JSON file under ``<pytest basetemp>/fuzz-counts/``, a ``fuzz_tried`` property in the JUnit
XML, and one JSON line per case appended to ``$PTYCHO_FUZZ_REPORT`` when that variable is set
(the way to collect them across ``pytest -n`` workers). The CI profile (the default) tries
:data:`CHEAP` x ``max_examples`` inputs per cheap case; ``HYPOTHESIS_PROFILE=dev`` is the
longer local run. See docs/reliability.md.
"""

from __future__ import annotations

import collections
import dataclasses
import io
import json
import math
import os
import struct
import warnings
import zipfile

import sys

import numpy as np
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ptycho import bundle as B
from ptycho.config import (LEGACY_KEYS, InferenceConfig, ModelConfig, TrainingConfig,
                           config_from_legacy, from_json, from_yaml, load_config, to_json,
                           update_legacy_dict)
from ptycho.data import RawData, load_npz, save_npz, validate_raw
from ptycho.errors import ConfigError, DataError, PtychoError
from ptycho.weights import init_weights, weight_spec

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _ROOT not in sys.path:     # benchmarks/ (the hand-made zips of benchmarks.hostile)
    sys.path.insert(0, _ROOT)

#: Cheap cases run this many times the profile's ``max_examples`` (25 in CI, 300 in dev).
CHEAP = 4
#: An error message longer than this is a bug (a repr of a huge value, an alias bomb ...).
MAX_MESSAGE = 4000

_PROFILE_EXAMPLES = settings.default.max_examples


def _examples(factor: int = CHEAP):
    return settings(max_examples=_PROFILE_EXAMPLES * factor,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                           HealthCheck.filter_too_much])


# --------------------------------------------------------------------------------------------
# counting


@dataclasses.dataclass
class Tally:
    """Inputs tried, loaded and rejected (by error type) for one loader and one case."""

    loader: str
    case: str
    tried: int = 0
    loaded: int = 0
    escaped: int = 0
    rejected: collections.Counter = dataclasses.field(default_factory=collections.Counter)

    def attempt(self, fn, allowed=PtychoError, name_in_message=None, check=None):
        """Call ``fn``; count the outcome; let an undocumented exception escape."""
        self.tried += 1
        try:
            result = fn()
        except allowed as exc:
            msg = str(exc)
            assert 15 <= len(msg) <= MAX_MESSAGE, \
                f"unhelpful message ({len(msg)} chars): {msg[:300]!r}"
            if name_in_message is not None:
                assert name_in_message in msg, f"the message does not name the file: {msg!r}"
            self.rejected[type(exc).__name__] += 1
            return exc
        except Exception:
            self.escaped += 1
            raise
        self.loaded += 1
        if check is not None:
            check(result)
        return result

    def as_dict(self) -> dict:
        return {"loader": self.loader, "case": self.case, "tried": self.tried,
                "loaded": self.loaded, "rejected": dict(self.rejected), "escaped": self.escaped,
                "profile": os.environ.get("HYPOTHESIS_PROFILE", "ci")}

    def line(self) -> str:
        rej = ", ".join(f"{k}: {v}" for k, v in sorted(self.rejected.items())) or "none"
        return (f"FUZZ {self.loader} [{self.case}]: {self.tried} inputs tried, {self.loaded} "
                f"loaded, {sum(self.rejected.values())} rejected ({rej}), {self.escaped} escaped")


@pytest.fixture
def tally(request, tmp_path_factory, record_property):
    made: list[Tally] = []

    def make(loader: str, case: str) -> Tally:
        t = Tally(loader, case)
        made.append(t)
        return t

    yield make
    out = tmp_path_factory.getbasetemp() / "fuzz-counts"
    out.mkdir(exist_ok=True)
    for t in made:
        print(t.line())
        record_property(f"fuzz_tried[{t.loader}:{t.case}]", t.tried)
        (out / f"{t.loader}--{t.case.replace(' ', '_')}.json").write_text(json.dumps(t.as_dict()))
        report = os.environ.get("PTYCHO_FUZZ_REPORT")
        if report:
            # one small O_APPEND write per line: lines from parallel workers do not interleave
            fd = os.open(report, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                os.write(fd, (json.dumps(t.as_dict()) + "\n").encode())
            finally:
                os.close(fd)


def _require(t: Tally, minimum: int) -> None:
    """Fuzzing that silently tried nothing is a failure too."""
    assert t.tried >= minimum, f"{t.loader} [{t.case}]: only {t.tried} inputs tried"
    assert t.escaped == 0


# --------------------------------------------------------------------------------------------
# shared strategies

_DTYPES = ["float32", "float64", "float16", "int8", "int64", "uint16", "bool", "complex64",
           "complex128", "<U3", "|S2", "<M8[s]", "<m8[s]", "|V4", "object", "structured", ">f4"]


def _dtype(name: str) -> np.dtype:
    return np.dtype([("a", "<f4"), ("b", "<i2")]) if name == "structured" else np.dtype(name)


@st.composite
def hostile_arrays(draw, shape=None):
    """Arrays of any dtype and rank (or ``shape``), with NaN/Inf/negatives sprinkled in."""
    kind = draw(st.sampled_from(_DTYPES))
    if shape is None:
        shape = tuple(draw(st.lists(st.integers(0, 18), max_size=4)))
    dtype = _dtype(kind)
    size = int(np.prod(shape))
    if kind == "object":
        return np.array([None] * size, dtype=object).reshape(shape)
    arr = np.zeros(shape, dtype)
    if size and dtype.kind in "fc":
        rng = np.random.default_rng(draw(st.integers(0, 2 ** 16)))
        with np.errstate(over="ignore"):      # 1e38 overflows float16 to Inf: wanted
            arr = (rng.random(shape) * draw(st.sampled_from([1.0, 1e3, 1e38]))).astype(dtype)
        for special in draw(st.lists(st.sampled_from([np.nan, np.inf, -np.inf, -1.0, 0.0]),
                                     max_size=3)):
            arr.reshape(-1)[draw(st.integers(0, size - 1))] = special
    elif size and dtype.kind in "iub":
        arr = np.ones(shape, dtype)
    return arr


def _npy_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=True)
    return buf.getvalue()


def _npy_with_header(shape, dtype="<f4", fortran=False, data=b"", version=(1, 0)) -> bytes:
    """A .npy file whose header declares ``shape`` whatever ``data`` really holds."""
    buf = io.BytesIO()
    header = {"descr": dtype, "fortran_order": fortran, "shape": tuple(shape)}
    if version == (1, 0):
        np.lib.format.write_array_header_1_0(buf, header)
    else:
        np.lib.format.write_array_header_2_0(buf, header)
    return buf.getvalue() + data


class Boom:
    """Unpickling this creates the file at ``path``: proof that something was unpickled."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def _pickle_npy(marker: str) -> bytes:
    return _npy_bytes(np.array([Boom(marker)], dtype=object))


def _write_zip(path, members, compress=zipfile.ZIP_STORED):
    """Write ``members`` [(name, bytes, compress_or_None)] as a zip, duplicates allowed."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")   # "Duplicate name"
        with zipfile.ZipFile(path, "w") as zf:
            for name, data, ctype in members:
                info = zipfile.ZipInfo(name, date_time=(2020, 1, 1, 0, 0, 0))
                info.compress_type = compress if ctype is None else ctype
                zf.writestr(info, data)


_BYTE_OPS = st.sampled_from(["flip", "set", "truncate", "insert", "delete", "zero"])


@st.composite
def corrupted(draw, data: bytes):
    """``data`` with 1-4 random byte-level changes, biased towards the zip headers at both ends."""
    out = bytearray(data)
    for _ in range(draw(st.integers(1, 4))):
        if not out:
            break
        n = len(out)
        pos = draw(st.one_of(st.integers(0, min(n - 1, 160)), st.integers(max(0, n - 200), n - 1),
                             st.integers(0, n - 1)))
        op = draw(_BYTE_OPS)
        if op == "flip":
            out[pos] ^= draw(st.integers(1, 255))
        elif op == "set":
            chunk = draw(st.binary(min_size=1, max_size=8))
            out[pos:pos + len(chunk)] = chunk
        elif op == "truncate":
            del out[pos:]
        elif op == "insert":
            out[pos:pos] = draw(st.binary(min_size=1, max_size=16))
        elif op == "delete":
            del out[pos:pos + draw(st.integers(1, 64))]
        else:
            out[pos:pos + draw(st.integers(1, 64))] = bytes(min(64, n - pos))
    return bytes(out)


# --------------------------------------------------------------------------------------------
# NPZ scans: load_npz

M, N = 6, 16


def _good_arrays(extra=False) -> dict:
    rng = np.random.default_rng(0)
    d = {"diffraction": rng.random((M, N, N)).astype(np.float32),
         "probeGuess": (rng.random((N, N)) + 1j).astype(np.complex64),
         "xcoords": np.linspace(10.0, 20.0, M), "ycoords": np.linspace(30.0, 35.0, M)}
    if extra:
        d["objectGuess"] = np.ones((40, 40), np.complex64)
        d["scan_index"] = np.arange(M)
    return d


def _npz_bytes(tmp, compressed: bool, extra: bool) -> bytes:
    p = tmp / "base.npz"
    if compressed:
        np.savez_compressed(p, **_good_arrays(extra))
    else:
        save_npz(validate_raw(_good_arrays(extra)), p)
    data = p.read_bytes()
    p.unlink()
    return data


def _check_raw(raw: RawData) -> None:
    assert isinstance(raw, RawData)
    assert raw.diffraction.dtype == np.float32 and raw.diffraction.ndim == 3
    assert raw.n_patterns > 0 and raw.diffraction.shape[1:] == (raw.N, raw.N)
    assert raw.probe.dtype == np.complex64 and raw.probe.shape == (raw.N, raw.N)
    assert raw.xcoords.shape == raw.ycoords.shape == (raw.n_patterns,)
    assert np.all(np.isfinite(raw.xcoords)) and np.all(np.isfinite(raw.ycoords))
    assert np.all(np.isfinite(raw.diffraction)) and np.all(raw.diffraction >= 0)


_MMAP = st.sampled_from([None, "r", "c"])


def test_fuzz_load_npz_byte_corruption(tmp_path, tally):
    t = tally("load_npz", "byte corruption")
    bases = {(c, e): _npz_bytes(tmp_path, c, e) for c in (False, True) for e in (False, True)}
    path = tmp_path / "scan.npz"

    @_examples()
    @given(st.sampled_from(sorted(bases)).flatmap(lambda k: corrupted(bases[k])), _MMAP)
    def run(data, mmap_mode):
        path.write_bytes(data)
        t.attempt(lambda: load_npz(path, mmap_mode=mmap_mode), allowed=DataError,
                  name_in_message=str(path), check=_check_raw)

    run()
    _require(t, 50)


_CONTRACT = ["diffraction", "probeGuess", "xcoords", "ycoords", "objectGuess", "scan_index"]


@st.composite
def hostile_npz_members(draw, marker):
    """Members of an NPZ built from a valid scan by structural mutations."""
    arrays = {k: _npy_bytes(v) for k, v in _good_arrays(draw(st.booleans())).items()}
    members = [[k + ".npy", v, None] for k, v in arrays.items()]
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["replace", "same_shape_dtype", "delete", "duplicate", "alias",
                                   "huge_header", "short_data", "pickle", "raw_bytes",
                                   "no_suffix", "extra", "transpose", "deflate", "zero_length"]))
        key = draw(st.sampled_from(_CONTRACT))
        i = next((j for j, m in enumerate(members) if m[0] == key + ".npy"), None)
        if op == "replace":
            members.append([key + ".npy", _npy_bytes(draw(hostile_arrays())), None])
        elif op == "same_shape_dtype" and key in arrays:
            shape = np.load(io.BytesIO(arrays[key])).shape
            members.append([key + ".npy", _npy_bytes(draw(hostile_arrays(shape=shape))), None])
        elif op == "delete" and i is not None:
            members.pop(i)
        elif op == "duplicate" and i is not None:
            members.append([members[i][0], _npy_bytes(draw(hostile_arrays())), None])
        elif op == "alias":
            members.append(["diff3d.npy", _npy_bytes(draw(hostile_arrays())), None])
        elif op == "huge_header":
            shape = draw(st.sampled_from([(2 ** 40,), (1 << 20, 1 << 20, 16), (2 ** 62, 16, 16),
                                          (M, 2 ** 31, 2 ** 31), (-1, 16, 16)]))
            data = draw(st.sampled_from([b"", b"\0" * 64]))
            try:
                blob = _npy_with_header(shape, draw(st.sampled_from(["<f4", "<c8", "<f8"])),
                                        data=data, version=draw(st.sampled_from([(1, 0), (2, 0)])))
            except ValueError:   # numpy refuses to write some of these headers
                blob = b"\x93NUMPY\x01\x00" + b"v\x00{'descr': '<f4', 'fortran_order': False, " \
                    b"'shape': (-1, 16, 16), }" + b" " * 58 + b"\n"
            members.append([key + ".npy", blob, None])
        elif op == "short_data" and i is not None:
            members[i][1] = members[i][1][:-draw(st.integers(1, 64))]
        elif op == "pickle":
            members.append([draw(st.sampled_from(_CONTRACT + ["meta"])) + ".npy",
                            _pickle_npy(marker), None])
        elif op == "raw_bytes":
            members.append([key + ".npy", draw(st.binary(max_size=200)), None])
        elif op == "no_suffix" and i is not None:
            members[i][0] = key
        elif op == "extra":
            members.append([draw(st.sampled_from(["Y.npy", "notes.txt", "../x.npy", "/abs.npy",
                                                  "dir/", "a/b.npy"])),
                            _npy_bytes(draw(hostile_arrays())), None])
        elif op == "transpose" and "diffraction" in arrays:
            members.append(["diffraction.npy", _npy_bytes(np.moveaxis(
                np.load(io.BytesIO(arrays["diffraction"])), 0, -1)), None])
        elif op == "deflate" and members:
            members[draw(st.integers(0, len(members) - 1))][2] = zipfile.ZIP_DEFLATED
        elif op == "zero_length":
            members.append([key + ".npy", _npy_bytes(np.zeros((0,) * draw(st.integers(1, 3)),
                                                              np.float32)), None])
    return [tuple(m) for m in members]


def test_fuzz_load_npz_structure(tmp_path, tally):
    t = tally("load_npz", "structure")
    marker = tmp_path / "unpickled"
    path = tmp_path / "scan.npz"

    @_examples()
    @given(hostile_npz_members(str(marker)), _MMAP)
    def run(members, mmap_mode):
        _write_zip(path, members)
        t.attempt(lambda: load_npz(path, mmap_mode=mmap_mode), allowed=DataError,
                  name_in_message=str(path), check=_check_raw)
        assert not marker.exists(), "a pickled member was unpickled"

    run()
    _require(t, 50)


def test_fuzz_load_npz_not_a_file(tmp_path, tally):
    """Paths that are missing, folders, empty, text, a single .npy, or garbage."""
    t = tally("load_npz", "paths and garbage")

    @_examples(1)
    @given(st.sampled_from(["missing", "dir", "empty", "npy", "text", "garbage"]),
           st.binary(max_size=300), _MMAP)
    def run(kind, junk, mmap_mode):
        p = tmp_path / f"{kind}.npz"
        if kind == "dir":
            p.mkdir(exist_ok=True)
        elif kind == "empty":
            p.write_bytes(b"")
        elif kind == "npy":
            p.write_bytes(_npy_bytes(np.zeros((2, 16, 16), np.float32)) + junk)
        elif kind == "text":
            p.write_text("diffraction, probeGuess\n" + junk.hex())
        elif kind == "garbage":
            p.write_bytes(b"PK\x03\x04" + junk)
        t.attempt(lambda: load_npz(p, mmap_mode=mmap_mode), allowed=DataError,
                  name_in_message=str(p))

    run()
    _require(t, 10)


# --------------------------------------------------------------------------------------------
# bundles: read_bundle

_CFG = TrainingConfig(model=ModelConfig(N=16, base_filters=1, n_filters_scale=1, gridsize=1),
                      nepochs=2, seed=3)


def _bundle_bytes(tmp) -> bytes:
    from ptycho.training import EpochRecord, History
    p = tmp / "base.zip"
    w = init_weights(_CFG.model, 0, np.ones((16, 16), np.complex64), 1.5)
    hist = History(epochs=[EpochRecord(0, 1e-3, {"nll": 1.0, "mae": 0.0, "realspace": 0.0,
                                                 "total": 1.0})], best_epoch=0)
    B.save_bundle(p, w, _CFG, backend_name="torch", history=hist, extra={"k": [1, 2]})
    data = p.read_bytes()
    p.unlink()
    return data


def _members(data: bytes) -> list[list]:
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        return [[i.filename, zf.read(i), None] for i in zf.infolist()]


def _check_contents(c) -> None:
    assert isinstance(c, B.BundleContents)
    spec = weight_spec(c.model_config)
    assert list(c.weights) == list(spec)
    for name, arr in c.weights.items():
        assert isinstance(arr, np.ndarray) and arr.dtype != object and arr.shape == spec[name].shape
        assert np.all(np.isfinite(arr)), name


json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-2 ** 70, 2 ** 70),
              st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=10)),
    lambda children: st.one_of(st.lists(children, max_size=4),
                               st.dictionaries(st.text(max_size=8), children, max_size=4)),
    max_leaves=12)


def _paths(obj, prefix=()):
    """Every path into a JSON object (dict keys and list indices)."""
    yield prefix
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _paths(v, prefix + (k,))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from _paths(v, prefix + (i,))


@st.composite
def edited_json(draw, doc):
    """``doc`` (a JSON object) with 1-3 random replacements, deletions or additions."""
    doc = json.loads(json.dumps(doc))
    for _ in range(draw(st.integers(1, 3))):
        paths = [p for p in _paths(doc) if p]
        if not paths:
            break
        where = draw(st.sampled_from(paths))
        parent = doc
        for k in where[:-1]:
            parent = parent[k]
        op = draw(st.sampled_from(["replace", "replace", "delete", "add"]))
        if op == "replace":
            parent[where[-1]] = draw(json_values)
        elif op == "delete":
            del parent[where[-1]]
        elif isinstance(parent, dict):
            parent[draw(st.text(max_size=8))] = draw(json_values)
    return doc


def _pickled_member_bytes(marker):
    return _pickle_npy(marker)


@st.composite
def hostile_bundles(draw, base: bytes, marker: str):
    """A bundle's members after structural attacks; ``fix_sha`` makes checksums agree."""
    members = _members(base)
    manifest = json.loads(members[0][1])
    assert members[0][0] == B.MANIFEST
    fix_sha = draw(st.booleans())
    for _ in range(draw(st.integers(1, 3))):
        op = draw(st.sampled_from(["manifest", "manifest", "weight", "pickle", "nested_zip",
                                   "huge_header", "path", "duplicate", "drop", "deflate",
                                   "encrypted", "method", "manifest_text"]))
        wi = draw(st.integers(1, len(members) - 1))
        if op == "manifest":
            manifest = draw(edited_json(manifest))
        elif op == "weight":
            members[wi][1] = _npy_bytes(draw(hostile_arrays()))
        elif op == "pickle":
            members[wi][1] = _pickled_member_bytes(marker)
        elif op == "nested_zip":
            members[wi][1] = base
        elif op == "huge_header":
            members[wi][1] = _npy_with_header(draw(st.sampled_from([(2 ** 40,), (2 ** 31, 2 ** 31),
                                                                    (4,), ()])),
                                              draw(st.sampled_from(["<f4", "<c8", "|O"])),
                                              data=b"\0" * draw(st.integers(0, 64)))
        elif op == "path":
            members[wi][0] = draw(st.sampled_from(["/etc/passwd", "../../x.npy", "weights/../x.npy",
                                                   "C:\\w.npy", "weights\\..\\x.npy", "weights/",
                                                   "weights//a.npy", "./manifest.json"]))
        elif op == "duplicate":
            members.append(list(members[draw(st.integers(0, len(members) - 1))]))
        elif op == "drop":
            members.pop(wi)
        elif op == "deflate":
            members[wi][2] = zipfile.ZIP_DEFLATED
        elif op in ("encrypted", "method"):
            members[wi][2] = op
        elif op == "manifest_text":
            manifest = draw(st.sampled_from(["[" * 100000, "1" * 5000, '"x"', "null", "{",
                                             '{"format": "ptycho-pinn-bundle"}', "\ufeff{}"]))
    if fix_sha and isinstance(manifest, dict) and isinstance(manifest.get("entries"), dict):
        by_name = {m[0]: m[1] for m in members}
        import hashlib
        for meta in manifest["entries"].values():
            if isinstance(meta, dict) and isinstance(meta.get("member"), str) \
                    and meta["member"] in by_name:
                meta["sha256"] = hashlib.sha256(by_name[meta["member"]]).hexdigest()
    text = manifest if isinstance(manifest, str) else json.dumps(manifest)
    members[0][1] = text.encode()
    return members


def _write_bundle_zip(path, members):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with zipfile.ZipFile(path, "w") as zf:
            for name, data, how in members:
                info = zipfile.ZipInfo(name, date_time=(2020, 1, 1, 0, 0, 0))
                info.compress_type = zipfile.ZIP_DEFLATED if how == zipfile.ZIP_DEFLATED \
                    else zipfile.ZIP_STORED
                zf.writestr(info, data)
    if any(how in ("encrypted", "method") for _, _, how in members):
        _patch_headers(path, {m[0]: m[2] for m in members if m[2] in ("encrypted", "method")})


def _patch_headers(path, how_by_name):
    """Set the 'encrypted' flag bit or an unknown compression method in the central directory."""
    data = bytearray(path.read_bytes())
    pos = data.find(b"PK\x01\x02")
    while pos != -1:
        name_len = struct.unpack_from("<H", data, pos + 28)[0]
        name = bytes(data[pos + 46:pos + 46 + name_len]).decode("utf-8", "replace")
        how = how_by_name.get(name)
        if how == "encrypted":
            flags = struct.unpack_from("<H", data, pos + 8)[0]
            struct.pack_into("<H", data, pos + 8, flags | 0x1)
        elif how == "method":
            struct.pack_into("<H", data, pos + 10, 99)
        pos = data.find(b"PK\x01\x02", pos + 4)
    path.write_bytes(bytes(data))


def test_fuzz_read_bundle_byte_corruption(tmp_path, tally):
    t = tally("read_bundle", "byte corruption")
    base = _bundle_bytes(tmp_path)
    path = tmp_path / "model.zip"

    @_examples()
    @given(corrupted(base))
    def run(data):
        path.write_bytes(data)
        t.attempt(lambda: B.read_bundle(path), check=_check_contents)

    run()
    _require(t, 50)


def test_fuzz_read_bundle_structure(tmp_path, tally):
    t = tally("read_bundle", "structure")
    base = _bundle_bytes(tmp_path)
    marker = tmp_path / "unpickled"
    path = tmp_path / "model.zip"

    @_examples()
    @given(hostile_bundles(base, str(marker)))
    def run(members):
        _write_bundle_zip(path, members)
        t.attempt(lambda: B.read_bundle(path), check=_check_contents)
        assert not marker.exists(), "a pickled member was unpickled"

    run()
    _require(t, 50)


def test_fuzz_read_bundle_paths_and_garbage(tmp_path, tally):
    """A missing path is FileNotFoundError (documented); everything else a BundleError."""
    t = tally("read_bundle", "paths and garbage")

    @_examples(1)
    @given(st.sampled_from(["missing", "dir", "empty", "npz", "garbage", "zip_of_garbage"]),
           st.binary(max_size=300))
    def run(kind, junk):
        p = tmp_path / f"{kind}.zip"
        if kind == "dir":
            p.mkdir(exist_ok=True)
        elif kind == "empty":
            p.write_bytes(b"")
        elif kind == "npz":
            buf = io.BytesIO()
            np.savez(buf, a=np.zeros(3))
            p.write_bytes(buf.getvalue())
        elif kind == "garbage":
            p.write_bytes(b"PK\x05\x06" + junk)
        elif kind == "zip_of_garbage":
            _write_zip(p, [(B.MANIFEST, junk, None)])
        allowed = (PtychoError, FileNotFoundError) if kind == "missing" else PtychoError
        exc = t.attempt(lambda: B.read_bundle(p), allowed=allowed)
        if kind == "missing":
            assert isinstance(exc, FileNotFoundError)

    run()
    _require(t, 10)


# --------------------------------------------------------------------------------------------
# lying sizes: zip directories, end records, local headers and .npy headers that lie, zip
# bombs, expensive bundle configs; every load runs under a small memory budget and the Python
# heap's peak over the whole run is bounded (tracemalloc tracks numpy's buffers too)

_FUZZ_BUDGET = "256MiB"
#: Heap peak allowed over a whole lying-sizes run (the inputs are a few kB; a load that
#: allocated what they declare would take GiB).
_FUZZ_PEAK = 96 << 20

_CD = struct.Struct("<4s4B4HL2L5H2L")       # central directory entry
_EOCD = struct.Struct("<4s4H2LH")           # end of central directory record
_CD_FIELDS = {"crc": 9, "compress_size": 10, "file_size": 11, "header_offset": 18,
              "method": 6, "flags": 5}
_LYING_SIZES = [0, 1, 7, 4095, 2 ** 31 - 1, 2 ** 31, 0xFFFFFFFE, 0xFFFFFFFF, 80 << 20, 1 << 30]


def _directory(data: bytes) -> tuple[int, list[int]]:
    """(offset of the end record, offsets of the central directory entries) of a zip that
    zipfile wrote (no archive comment)."""
    end = len(data) - _EOCD.size
    fields = _EOCD.unpack_from(data, end)
    entries, pos = [], fields[6]
    for _ in range(fields[4]):
        entries.append(pos)
        head = _CD.unpack_from(data, pos)
        pos += _CD.size + head[12] + head[13] + head[14]
    return end, entries


def _bomb_member(name: str, declared_shape, zeros: int) -> bytes:
    """A deflate stream of a .npy header then ``zeros`` zero bytes (cheap, see
    benchmarks.hostile.deflated_zeros)."""
    from benchmarks.hostile import deflated_zeros, npy_header
    return deflated_zeros(npy_header(declared_shape), zeros)


@st.composite
def lying_zips(draw, base: bytes):
    """``base`` (a zip) with 1-3 of its declared sizes, offsets or counts replaced by lies."""
    data = bytearray(base)
    end, entries = _directory(bytes(data))
    for _ in range(draw(st.integers(1, 3))):
        where = draw(st.sampled_from(["entry", "entry", "entry", "end", "local"]))
        if where == "entry":
            pos = draw(st.sampled_from(entries))
            field = draw(st.sampled_from(["compress_size", "file_size", "file_size",
                                          "header_offset", "method", "crc"]))
            values = list(_CD.unpack_from(data, pos))
            if field == "method":
                values[_CD_FIELDS[field]] = draw(st.sampled_from([8, 12, 14, 99]))
            else:
                values[_CD_FIELDS[field]] = draw(st.one_of(st.sampled_from(_LYING_SIZES),
                                                           st.integers(0, 0xFFFFFFFF)))
            _CD.pack_into(data, pos, *values)
        elif where == "end":
            values = list(_EOCD.unpack_from(data, end))
            field = draw(st.sampled_from([3, 4, 5, 6]))   # entries (disk, total), size, offset
            limit = 0xFFFF if field in (3, 4) else 0xFFFFFFFF
            values[field] = draw(st.one_of(st.sampled_from([0, 1, limit, limit - 1]),
                                           st.integers(0, limit)))
            _EOCD.pack_into(data, end, *values)
        else:
            pos = draw(st.sampled_from(entries))
            local = _CD.unpack_from(data, pos)[18]
            if local + 30 <= len(data):
                off = draw(st.sampled_from([18, 22]))        # local compressed / real size
                struct.pack_into("<L", data, local + off,
                                 draw(st.sampled_from(_LYING_SIZES)) & 0xFFFFFFFF)
    return bytes(data)


@st.composite
def lying_npz_members(draw):
    """A valid scan whose diffraction member declares (in its .npy header, compressed or
    stored) much more than it holds, or is a zip bomb of zeros."""
    arrays = {k: _npy_bytes(v) for k, v in _good_arrays().items()}
    members = [[k + ".npy", v, None] for k, v in arrays.items() if k != "diffraction"]
    kind = draw(st.sampled_from(["bomb", "bomb_small", "header", "header_deflated"]))
    shape = draw(st.sampled_from([(1 << 16, N, N), (M, 1 << 14, 1 << 14), (1 << 30,),
                                  (1 << 12, 64, 64)]))
    if kind.startswith("bomb"):
        zeros = (80 << 20) if kind == "bomb" else (16 << 20)
        members.append(["diffraction.npy", _bomb_member("diffraction", shape, zeros), "raw"])
        return members, zeros
    blob = _npy_with_header(shape, data=b"\0" * draw(st.integers(0, 4096)))
    members.append(["diffraction.npy", blob,
                    zipfile.ZIP_DEFLATED if kind == "header_deflated" else None])
    return members, None


def _write_raw_deflate_zip(path, members, zeros):
    """Like _write_zip, with members marked "raw" being already deflated streams of a .npy
    header plus ``zeros`` zero bytes (their directory entries say so)."""
    from benchmarks.hostile import Member, npy_header, write_zip
    out = []
    for name, data, how in members:
        if how == "raw":
            header = npy_header((1 << 16, N, N))
            out.append(Member(name, data, method=8, file_size=len(header) + zeros, crc=0))
        else:
            if how == zipfile.ZIP_DEFLATED:
                c = __import__("zlib").compressobj(6, 8, -15)
                raw = c.compress(data) + c.flush()
                out.append(Member(name, raw, method=8, file_size=len(data),
                                  crc=__import__("zlib").crc32(data)))
            else:
                out.append(Member(name, data))
    write_zip(str(path), out)


def _bounded_heap(run):
    """Run ``run()`` with tracemalloc on; fail if the heap peak exceeds _FUZZ_PEAK."""
    import tracemalloc
    tracemalloc.start()
    try:
        run()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < _FUZZ_PEAK, f"heap peak {peak / 2 ** 20:.0f} MiB over the run"


def test_fuzz_load_npz_lying_sizes(tmp_path, tally, monkeypatch):
    monkeypatch.setenv("PTYCHO_MAX_BYTES", _FUZZ_BUDGET)
    t = tally("load_npz", "lying sizes")
    bases = [_npz_bytes(tmp_path, c, e) for c in (False, True) for e in (False, True)]
    path = tmp_path / "scan.npz"

    @_examples()
    @given(st.one_of(st.sampled_from(bases).flatmap(lying_zips),
                     lying_npz_members().map(lambda mz: ("members", mz))), _MMAP)
    def run(item, mmap_mode):
        if isinstance(item, tuple):
            members, zeros = item[1]
            _write_raw_deflate_zip(path, members, zeros)
        else:
            path.write_bytes(item)
        t.attempt(lambda: load_npz(path, mmap_mode=mmap_mode), allowed=DataError,
                  name_in_message=str(path), check=_check_raw)

    _bounded_heap(run)
    _require(t, 50)


@st.composite
def lying_bundles(draw, base: bytes):
    """A bundle whose manifest declares an expensive network (payloads garbage), lists extra
    or huge entries, or whose zip directory lies about sizes."""
    import hashlib
    kind = draw(st.sampled_from(["expensive", "extra", "directory", "directory"]))
    if kind == "directory":
        return "bytes", draw(lying_zips(base))
    members = _members(base)
    manifest = json.loads(members[0][1])
    if kind == "expensive":
        model = ModelConfig(N=draw(st.sampled_from([16, 64, 256, 512])),
                            gridsize=draw(st.integers(1, 4)),
                            base_filters=draw(st.sampled_from([1, 16, 64, 256])),
                            n_filters_scale=draw(st.sampled_from([1, 2, 16])))
        cfg = TrainingConfig(model=model, neighbor_count=max(4, model.gridsize ** 2),
                             batch_size=draw(st.sampled_from([1, 16, 4096])))
        manifest["config"] = json.loads(to_json(cfg))
        manifest["config"].pop("kind")
        manifest["entries"] = {n: {"member": f"weights/{n}.npy", "shape": list(e.shape),
                                   "dtype": e.dtype, "sha256": "0" * 64}
                               for n, e in weight_spec(model).items()}
        members = [[B.MANIFEST, b"", None]] + [[m["member"], b"garbage", None]
                                              for m in manifest["entries"].values()]
    else:
        for i in range(draw(st.integers(1, 3))):
            n = draw(st.sampled_from([1 << 8, 1 << 20, 1 << 28, 1 << 40]))
            blob = _npy_with_header((n,), data=b"\0" * 64)
            name = f"bonus{i}.kernel"
            members.append([f"weights/{name}.npy", blob, None])
            manifest["entries"][name] = {"member": f"weights/{name}.npy", "shape": [n],
                                         "dtype": "float32",
                                         "sha256": hashlib.sha256(blob).hexdigest()}
    members[0][1] = json.dumps(manifest).encode()
    return "members", members


def test_fuzz_read_bundle_lying_sizes(tmp_path, tally, monkeypatch):
    monkeypatch.setenv("PTYCHO_MAX_BYTES", _FUZZ_BUDGET)
    t = tally("read_bundle", "lying sizes")
    base = _bundle_bytes(tmp_path)
    path = tmp_path / "model.zip"

    @_examples()
    @given(lying_bundles(base))
    def run(item):
        kind, value = item
        if kind == "bytes":
            path.write_bytes(value)
        else:
            _write_bundle_zip(path, value)
        t.attempt(lambda: B.read_bundle(path), check=_check_contents)

    _bounded_heap(run)
    _require(t, 50)


# --------------------------------------------------------------------------------------------
# special files: FIFOs, devices, sockets, folders, links (also with a good suffix), link loops,
# dangling links, a huge sparse file; never a hang (an alarm fails the test instead). Every
# kind is tried (with each mmap mode for load_npz), not drawn: there are few enough.

_SPECIAL = ["fifo", "fifo_link", "dev_zero", "dev_null", "dev_urandom", "socket", "dir",
            "dir_link", "loop", "dangling", "chain_to_fifo", "sparse_huge"]

_LOADERS = {
    "load_npz": (".npz", DataError, lambda p, mode: load_npz(p, mmap_mode=mode)),
    "read_bundle": (".zip", B.BundleError, lambda p, mode: B.read_bundle(p)),
    "load_config": (".yaml", ConfigError, lambda p, mode: load_config(p, TrainingConfig)),
    "load_image": (".npy", ValueError, lambda p, mode: __import__(
        "ptycho.simulate", fromlist=["load_image"]).load_image(p)),
}


def _make_special(folder, kind: str, suffix: str, keep: list):
    """Create a special path of ``kind`` named with ``suffix`` in ``folder``; return it."""
    import socket
    p = folder / f"{kind}{suffix}"
    if os.path.lexists(p):
        return p
    if kind == "fifo":
        os.mkfifo(p)
    elif kind == "fifo_link":
        os.mkfifo(folder / "target.fifo")
        os.symlink(folder / "target.fifo", p)
    elif kind.startswith("dev_"):
        os.symlink("/dev/" + kind[4:], p)
    elif kind == "socket":
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.bind(str(p))
        keep.append(s)
    elif kind == "dir":
        p.mkdir()
    elif kind == "dir_link":
        (folder / "a_dir").mkdir()
        os.symlink(folder / "a_dir", p)
    elif kind == "loop":
        os.symlink(folder / f"loop2{suffix}", p)
        os.symlink(p, folder / f"loop2{suffix}")
    elif kind == "dangling":
        os.symlink(folder / "nowhere", p)
    elif kind == "chain_to_fifo":
        os.mkfifo(folder / "chain.fifo")
        os.symlink(folder / "chain.fifo", folder / "chain1")
        os.symlink(folder / "chain1", p)
    elif kind == "sparse_huge":
        with open(p, "wb") as f:          # 64 GiB of zeros, no disk used
            f.truncate(64 << 30)
    return p


@pytest.mark.skipif(os.name != "posix", reason="FIFOs, sockets, /dev (POSIX)")
@pytest.mark.parametrize("loader", sorted(_LOADERS))
def test_fuzz_special_files(tmp_path, tally, loader):
    import signal
    t = tally(loader, "special files")
    suffix, error, call = _LOADERS[loader]
    keep: list = []
    # a short folder: AF_UNIX socket paths are limited to ~100 characters
    short = type(tmp_path)(__import__("tempfile").mkdtemp(prefix="sp"))

    def alarm(*_):
        raise TimeoutError("the loader hung on a special file")

    previous = signal.signal(signal.SIGALRM, alarm)
    modes = [None, "r", "c"] if loader == "load_npz" else [None]
    try:
        def run(kind, mode):
            p = _make_special(short, kind, suffix, keep)
            signal.alarm(20)
            try:
                allowed = (error, FileNotFoundError) if kind == "dangling" else error
                exc = t.attempt(lambda: call(p, mode), allowed=allowed, name_in_message=str(p))
            finally:
                signal.alarm(0)
            assert isinstance(exc, BaseException), f"{kind} loaded"
            if "fifo" in kind:
                assert "not a regular file (it is a FIFO" in str(exc), str(exc)
                assert "missing" not in str(exc)
            if kind == "dangling" and loader == "read_bundle":
                assert isinstance(exc, FileNotFoundError)   # the documented missing-file error

        for kind in _SPECIAL:            # every kind (and mmap mode): few enough to try all
            for mode in modes:
                run(kind, mode)
    finally:
        signal.signal(signal.SIGALRM, previous)
        for s in keep:
            s.close()
        import shutil
        shutil.rmtree(short, ignore_errors=True)
    _require(t, len(_SPECIAL) * len(modes))


# --------------------------------------------------------------------------------------------
# configs: from_json, from_yaml, load_config

_DOCS = [json.loads(to_json(c)) for c in (
    TrainingConfig(model=ModelConfig(N=32, gridsize=2), nepochs=3, output_dir="out"),
    InferenceConfig(model=ModelConfig(N=64), batch_size=8),
    ModelConfig(N=16, base_filters=4))]

_KINDS = (TrainingConfig, InferenceConfig, ModelConfig, None)


def _check_config(cfg) -> None:
    assert isinstance(cfg, (TrainingConfig, InferenceConfig, ModelConfig))
    assert from_json(to_json(cfg)) == cfg


def _dumps_with_duplicates(doc, dup) -> str:
    """JSON text of ``doc`` (a non-empty object) with its key ``dup`` written twice."""
    body = json.dumps(doc, allow_nan=True)
    return "{" + json.dumps(dup) + ": " + json.dumps(doc[dup], allow_nan=True) + ", " + body[1:]


@st.composite
def json_documents(draw):
    kind = draw(st.sampled_from(["edited", "edited", "random", "text", "duplicate", "deep",
                                 "bigint", "special"]))
    if kind == "edited":
        return json.dumps(draw(edited_json(draw(st.sampled_from(_DOCS)))), allow_nan=True)
    if kind == "random":
        return json.dumps(draw(json_values), allow_nan=True)
    if kind == "text":
        return draw(st.text(max_size=80))
    if kind == "duplicate":
        doc = draw(st.sampled_from(_DOCS))
        return _dumps_with_duplicates(doc, draw(st.sampled_from(sorted(doc))))
    if kind == "deep":
        depth = draw(st.sampled_from([10, 1000, 100000]))
        return '{"kind": "model", "N": ' + "[" * depth + "]" * depth + "}"
    if kind == "bigint":
        digits = draw(st.sampled_from([30, 400, 5000]))
        field = draw(st.sampled_from(["learning_rate", "nphotons", "N", "seed", "nepochs"]))
        return '{"kind": "training", "%s": %s}' % (field, "9" * digits)
    return draw(st.sampled_from(['{"kind": "training", "learning_rate": NaN}',
                                 '{"kind": "training", "nphotons": Infinity}',
                                 '{"kind": "training", "nphotons": -Infinity}',
                                 '{"kind": ["training"]}', '{"kind": {"a": 1}}',
                                 '{"kind": "model", "model": {}}', "[]", "null", "\ufeff{}",
                                 '{"kind": "training", "model": null}']))


def test_fuzz_from_json(tally):
    t = tally("from_json", "documents")

    @_examples()
    @given(json_documents(), st.sampled_from(_KINDS))
    def run(text, cls):
        t.attempt(lambda: from_json(text, cls), allowed=ConfigError, check=_check_config)

    run()
    _require(t, 50)


_YAML_SPECIALS = [
    "!!python/object/apply:os.system ['touch {marker}']",
    "kind: training\nseed: !!python/object/apply:os.getpid []",
    "kind: training\noutput_dir: !!python/name:os.system",
    "kind: training\nnepochs: 2020-13-45",                 # an invalid timestamp
    "kind: training\nnepochs: 2020-01-01",
    "kind: training\nnepochs: !!binary aGVsbG8=",
    "kind: training\nnepochs: !!set {a, b}",
    "kind: training\nmodel: {<<: {N: 32}}",
    "kind: training\nnepochs: 3\nnepochs: 4",               # duplicate key
    "kind: training\nmodel: {N: 32, N: 64}",
    "kind: training\n? [a, b]\n: 1",
    "kind: training\nlearning_rate: .nan",
    "kind: training\nnphotons: .inf",
    "kind: training\nseed: " + "9" * 5000,
    "kind: training\nlearning_rate: " + "9" * 400,
    "kind: model\nN: " + "[" * 2000 + "]" * 2000,
    "kind: training\n\tnepochs: 3",
    "%YAML 1.1\n---\nkind: model\n...\n---\nkind: model",
    "a: &a [x]\nkind: training\noutput_dir: *a",
    "a: &a [x, x, x, x, x, x, x, x, x, x]\n"
    + "".join(f"{n}: &{n} [{', '.join(['*' + p] * 10)}]\n" for p, n in zip("abcdefg", "bcdefgh"))
    + "kind: training\nmodel: *h",                       # an alias bomb: 10^8 leaves
    "&a [*a]",
    "kind: training\nmodel: &m {N: 32}\nnepochs: *m",
]


@st.composite
def yaml_documents(draw, marker):
    kind = draw(st.sampled_from(["edited", "edited", "random", "text", "special", "special"]))
    if kind == "edited":
        return yaml.safe_dump(draw(edited_json(draw(st.sampled_from(_DOCS)))))
    if kind == "random":
        return yaml.safe_dump(draw(json_values))
    if kind == "text":
        return draw(st.text(alphabet=st.sampled_from(list("kind:trg ,[]{}-?&*!|>'\"#%@`\n\t0123."
                                                          "eE+")), max_size=60))
    return draw(st.sampled_from(_YAML_SPECIALS)).replace("{marker}", marker)


def test_fuzz_from_yaml(tmp_path, tally):
    t = tally("from_yaml", "documents")
    marker = tmp_path / "executed"

    @_examples()
    @given(yaml_documents(str(marker)), st.sampled_from(_KINDS))
    def run(text, cls):
        t.attempt(lambda: from_yaml(text, cls), allowed=ConfigError, check=_check_config)
        assert not marker.exists(), "a YAML tag ran code"

    run()
    _require(t, 50)


def test_fuzz_load_config_files(tmp_path, tally):
    t = tally("load_config", "files")
    marker = tmp_path / "executed"

    @_examples()
    @given(st.sampled_from([".json", ".yaml", ".yml", ".txt", ""]),
           st.one_of(json_documents().map(str.encode),
                     yaml_documents(str(marker)).map(str.encode),
                     st.binary(max_size=100),
                     st.sampled_from([b"\xff\xfe{", b"\x00" * 10, b"kind: model\n\x80"]),
                     st.sampled_from(_DOCS).map(lambda d: json.dumps(d).encode())
                     .flatmap(corrupted)),
           st.sampled_from(["file", "file", "missing", "dir"]), st.sampled_from(_KINDS))
    def run(suffix, data, where, cls):
        p = tmp_path / f"cfg-{where}{suffix}"
        if where == "file":
            p.write_bytes(data)
        elif where == "dir":
            p.mkdir(exist_ok=True)
        t.attempt(lambda: load_config(p, cls), allowed=ConfigError, name_in_message=str(p),
                  check=_check_config)
        assert not marker.exists(), "a YAML tag ran code"

    run()
    _require(t, 50)


# --------------------------------------------------------------------------------------------
# legacy dictionaries: config_from_legacy

_LEGACY_BASE = [update_legacy_dict({}, c) for c in (
    TrainingConfig(model=ModelConfig(N=32, gridsize=2), nepochs=3, output_dir="out"),
    InferenceConfig(model=ModelConfig(N=64), batch_size=8, model_path="m.zip"))]

legacy_values = st.one_of(
    st.none(), st.booleans(), st.integers(-2 ** 80, 2 ** 80),
    st.sampled_from([10 ** 400, -10 ** 400]),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=6),
    st.sampled_from([np.float32(np.nan), np.float64(np.inf), np.int64(7), np.int8(-3),
                     np.uint64(2 ** 63), np.bool_(True), np.str_("sigmoid"), np.float16(1.5),
                     np.complex64(1 + 2j), 1 + 2j, b"bytes", np.array(3), np.array([1, 2]),
                     np.array(2.5, dtype=np.float32), np.datetime64("2020-01-01"),
                     __import__("fractions").Fraction(1, 3), __import__("decimal").Decimal("0.1"),
                     float("nan"), [1, 2], (3,), {"a": 1}, object(), "sigmoid", "exponential",
                     "tensorflow", "mlflow", "bfloat16"]))


@st.composite
def legacy_dicts(draw):
    d = dict(draw(st.sampled_from(_LEGACY_BASE)))
    keys = sorted(set(LEGACY_KEYS.values()) | {"unrelated", "N ", "object.big.x"})
    for _ in range(draw(st.integers(1, 5))):
        key = draw(st.sampled_from(keys))
        if draw(st.integers(0, 4)) == 0:
            d.pop(key, None)
        else:
            d[key] = draw(legacy_values)
    return d


def test_fuzz_config_from_legacy(tally):
    t = tally("config_from_legacy", "dictionaries")

    @_examples()
    @given(st.one_of(legacy_dicts(), legacy_values, st.lists(st.integers(), max_size=3)),
           st.sampled_from([TrainingConfig, InferenceConfig, ModelConfig, dict]))
    def run(d, cls):
        def check(cfg):
            assert isinstance(cfg, cls)
            assert config_from_legacy(update_legacy_dict({}, cfg), cls) == cfg
        t.attempt(lambda: config_from_legacy(d, cls), allowed=ConfigError, check=check)

    run()
    _require(t, 50)


# --------------------------------------------------------------------------------------------
# a few fixed hostile inputs whose outcome is pinned (reproducers of what the fuzzing found)


def test_yaml_alias_bomb_is_refused_quickly_with_a_short_message():
    bomb = [s for s in _YAML_SPECIALS if s.startswith("a: &a [x, x")][0]
    with pytest.raises(ConfigError, match=r"YAML config.*(alias|expands)") as info:
        from_yaml(bomb)
    assert len(str(info.value)) < MAX_MESSAGE


def test_deeply_nested_json_is_a_config_error():
    with pytest.raises(ConfigError, match="nested too deeply"):
        from_json('{"kind": "model", "N": ' + "[" * 100000 + "]" * 100000 + "}")


@pytest.mark.parametrize("text", ['{"kind": "training", "learning_rate": 1%s}' % ("0" * 400),
                                  '{"kind": "training", "seed": 1%s}' % ("0" * 5000)])
def test_huge_json_numbers_are_config_errors(text):
    with pytest.raises(ConfigError, match="learning_rate|seed|number|digits"):
        from_json(text)


@pytest.mark.parametrize("text,key", [("kind: training\nnepochs: 3\nnepochs: 4", "nepochs"),
                                      ('{"kind": "training", "nepochs": 3, "nepochs": 4}',
                                       "nepochs"),
                                      ("kind: training\nmodel: {N: 32, N: 64}", "N")])
def test_duplicate_keys_are_refused_not_silently_overwritten(text, key):
    loader = from_json if text.startswith("{") else from_yaml
    with pytest.raises(ConfigError, match=rf"duplicate key '{key}'"):
        loader(text)


def test_invalid_yaml_timestamp_is_a_config_error():
    with pytest.raises(ConfigError, match=r"(?s)cannot read the value '2020-13-45' .*line 2"):
        from_yaml("kind: training\nnepochs: 2020-13-45")


def test_legacy_huge_int_for_a_float_field_is_a_config_error():
    with pytest.raises(ConfigError, match="learning_rate"):
        config_from_legacy({"learning_rate": 10 ** 400})


def test_npz_member_declaring_a_huge_shape_is_refused_before_allocation(tmp_path):
    p = tmp_path / "huge.npz"
    members = [(k + ".npy", _npy_bytes(v), None) for k, v in _good_arrays().items()]
    members[0] = ("diffraction.npy", _npy_with_header((1 << 20, 1 << 20, 16)), None)
    _write_zip(p, members)
    for mode in (None, "r"):
        with pytest.raises(DataError, match=r"'diffraction'.*declares shape"):
            load_npz(p, mmap_mode=mode)


@pytest.mark.parametrize("how", ["encrypted", "method"])
def test_npz_and_bundle_with_unsupported_zip_features_are_clear_errors(tmp_path, how):
    p = tmp_path / "scan.npz"
    _write_zip(p, [(k + ".npy", _npy_bytes(v), None) for k, v in _good_arrays().items()])
    _patch_headers(p, {"diffraction.npy": how})
    with pytest.raises(DataError, match="'diffraction'"):
        load_npz(p)
    b = tmp_path / "model.zip"
    members = _members(_bundle_bytes(tmp_path))
    members[1][2] = how
    _write_bundle_zip(b, members)
    with pytest.raises(B.BundleError):
        B.read_bundle(b)


def test_bundle_member_holding_a_zip_is_refused(tmp_path):
    """np.load would return an NpzFile for zip bytes; the reader wants a plain .npy array."""
    import hashlib
    base = _bundle_bytes(tmp_path)
    members = _members(base)
    manifest = json.loads(members[0][1])
    name = members[1][0]
    members[1][1] = base
    entry = [k for k, m in manifest["entries"].items() if m["member"] == name][0]
    manifest["entries"][entry]["sha256"] = hashlib.sha256(base).hexdigest()
    members[0][1] = json.dumps(manifest).encode()
    p = tmp_path / "nested.zip"
    _write_bundle_zip(p, members)
    with pytest.raises(B.BundleError, match="not a plain .npy array|larger|declares"):
        B.read_bundle(p)


def test_manifest_with_unhashable_fields_is_a_bundle_error(tmp_path):
    members = _members(_bundle_bytes(tmp_path))
    for edit in ({"config_kind": ["training"]}, {"entries": {"probe": {"member": ["x"]}}}):
        manifest = json.loads(members[0][1])
        manifest.update(edit)
        ms = [list(m) for m in members]
        ms[0][1] = json.dumps(manifest).encode()
        p = tmp_path / "m.zip"
        _write_bundle_zip(p, ms)
        with pytest.raises(B.BundleError):
            B.read_bundle(p)


def test_counts_are_reported(tmp_path, tally, capsys):
    """The reporting itself: a line on stdout and a JSON file per case."""
    t = tally("demo", "self test")
    t.attempt(lambda: 1)
    t.attempt(lambda: (_ for _ in ()).throw(DataError("a documented failure")))
    assert (t.tried, t.loaded, dict(t.rejected)) == (2, 1, {"DataError": 1})
    assert "FUZZ demo [self test]: 2 inputs tried, 1 loaded, 1 rejected (DataError: 1)" in t.line()
    assert math.isfinite(t.tried)


def test_huge_invalid_value_gives_a_short_message():
    with pytest.raises(ConfigError, match=r"N must be an int") as info:
        from_json(json.dumps({"kind": "model", "N": "x" * 1_000_000}))
    assert len(str(info.value)) < MAX_MESSAGE


def _mangled_header_npy() -> bytes:
    """A .npy whose header text cannot even be tokenized (an unterminated triple quote)."""
    text = "{'descr': '<f4', 'fortran_order': False, 'shape': (4,), '''"
    text = text + " " * (117 - len(text)) + "\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(text)) + text.encode() + b"\0" * 16


def test_npz_and_bundle_members_with_an_untokenizable_header_are_clear_errors(tmp_path):
    import hashlib
    blob = _mangled_header_npy()
    p = tmp_path / "scan.npz"
    members = [(k + ".npy", _npy_bytes(v), None) for k, v in _good_arrays().items()]
    members[0] = ("diffraction.npy", blob, None)
    _write_zip(p, members)
    for mode in (None, "r"):
        with pytest.raises(DataError, match=r"member 'diffraction' cannot be read"):
            load_npz(p, mmap_mode=mode)
    ms = _members(_bundle_bytes(tmp_path))
    manifest = json.loads(ms[0][1])
    entry = [k for k, m in manifest["entries"].items() if m["member"] == ms[1][0]][0]
    ms[1][1] = blob
    manifest["entries"][entry]["sha256"] = hashlib.sha256(blob).hexdigest()
    ms[0][1] = json.dumps(manifest).encode()
    b = tmp_path / "model.zip"
    _write_bundle_zip(b, ms)
    with pytest.raises(B.NotABundleError, match="is not a plain .npy array"):
        B.read_bundle(b)


def test_yaml_merge_keys_still_override():
    """Refusing duplicate keys must not break YAML merges, whose own keys override."""
    from ptycho.config.io import _Loader
    doc = yaml.load("b: &b {N: 32, gridsize: 2}\nm: {<<: *b, N: 64}", Loader=_Loader)
    assert doc["m"] == {"N": 64, "gridsize": 2}
