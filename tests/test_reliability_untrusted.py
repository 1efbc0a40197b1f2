"""Untrusted files: pickles never run, zip bombs are refused without inflating, archive paths
never escape, and a bundle is verified before any model is built.

The zip bombs are real: a deflate stream of zeros (about 1000:1), either honestly declared
(refused by its declared size before a byte is inflated) or with a lying size in the central
directory (reading stops at the declared size, then the CRC check fails). A counting
decompressor proves how many bytes were actually inflated.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import struct
import zipfile
import zlib

import numpy as np
import pytest

from ptycho import bundle as B
from ptycho.config import ModelConfig, TrainingConfig
from ptycho.data import load_npz
from ptycho.errors import BundleError, DataError, DataWarning
from ptycho.weights import init_weights

CFG = TrainingConfig(model=ModelConfig(N=16, base_filters=2, n_filters_scale=1), nepochs=2)
MiB = 1 << 20
BOMB_BYTES = 64 * MiB


def _weights(seed=0):
    return init_weights(CFG.model, seed, np.ones((16, 16), np.complex64), 1.0)


@pytest.fixture
def bundle_path(tmp_path):
    p = tmp_path / "model.zip"
    B.save_bundle(p, _weights(), CFG, backend_name="torch")
    return p


def _members(path) -> list[list]:
    with zipfile.ZipFile(path) as zf:
        return [[i.filename, zf.read(i)] for i in zf.infolist()]


def _write(path, members, deflated=()):
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members:
            info = zipfile.ZipInfo(name, date_time=(2020, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED if name in deflated else zipfile.ZIP_STORED
            zf.writestr(info, data)


def _with_manifest(members, edit):
    manifest = json.loads(members[0][1])
    edit(manifest)
    members[0][1] = json.dumps(manifest).encode()
    return members


class Payload:
    """Unpickling this writes ``path`` (through ``open``): proof that unpickling happened."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def _pickle_npy(marker) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.array([Payload(str(marker))], dtype=object), allow_pickle=True)
    return buf.getvalue()


# --------------------------------------------------------------------------------------------
# pickles


def test_pickle_payload_in_a_bundle_never_runs(bundle_path, tmp_path, no_unpickling):
    marker = tmp_path / "pwned"
    payload = _pickle_npy(marker)
    members = _members(bundle_path)
    name = members[1][0]
    entry = name[len("weights/"):-len(".npy")]
    members[1][1] = payload

    def edit(m):   # an attacker can make the checksum agree: the manifest is not signed
        m["entries"][entry]["sha256"] = hashlib.sha256(payload).hexdigest()
    bad = tmp_path / "evil.zip"
    _write(bad, _with_manifest(members, edit))
    with pytest.raises(B.NotABundleError, match=rf"'{entry}' is not a plain .npy array"):
        B.read_bundle(bad)
    from ptycho.workflows.inference import load_inference_bundle
    with pytest.raises(B.NotABundleError):
        load_inference_bundle(bad, backend="torch")
    assert not marker.exists()


@pytest.mark.parametrize("key", ["diffraction", "probeGuess", "meta"])
@pytest.mark.parametrize("mmap_mode", [None, "r"])
@pytest.mark.parametrize("compressed", [False, True])
def test_pickle_payload_in_an_npz_never_runs(tmp_path, no_unpickling, key, mmap_mode, compressed):
    marker = tmp_path / "pwned"
    rng = np.random.default_rng(0)
    good = {"diffraction": rng.random((4, 16, 16)).astype(np.float32),
            "probeGuess": np.ones((16, 16), np.complex64), "xcoords": np.arange(4.0),
            "ycoords": np.zeros(4)}
    members = []
    for k, v in good.items():
        buf = io.BytesIO()
        np.save(buf, v)
        members.append((k + ".npy", buf.getvalue()))
    members = [m for m in members if m[0] != key + ".npy"] + [(key + ".npy", _pickle_npy(marker))]
    p = tmp_path / "evil.npz"
    _write(p, members, deflated={m[0] for m in members} if compressed else ())
    if key == "meta":     # not a contract member: skipped (named in a notice), never unpickled
        with pytest.warns(DataWarning, match=rf"'{key}' is a pickled object array; skipped "
                                             "without unpickling it"):
            assert load_npz(p, mmap_mode=mmap_mode).n_patterns == 4
    else:
        with pytest.raises(DataError, match=rf"member '{key}' is an object array; pickled "
                                            "members are refused") as info:
            load_npz(p, mmap_mode=mmap_mode)
        assert str(p) in str(info.value)
    assert not marker.exists()


# --------------------------------------------------------------------------------------------
# zip bombs


@pytest.fixture
def inflated(monkeypatch):
    """Counts the bytes every zipfile deflate decompressor produces."""
    count = [0]
    real = zipfile._get_decompressor

    class Counting:
        def __init__(self, inner):
            self.inner = inner

        def decompress(self, data, max_length=0):
            out = self.inner.decompress(data, max_length)
            count[0] += len(out)
            return out

        def __getattr__(self, name):
            return getattr(self.inner, name)

    monkeypatch.setattr(zipfile, "_get_decompressor", lambda t: Counting(real(t)) if
                        t == zipfile.ZIP_DEFLATED else real(t))
    return count


def _bomb_member(name: str, fill: bytes = b" ", size: int = BOMB_BYTES) -> bytes:
    """A one-member zip: ``size`` bytes of ``fill`` deflated at level 9 (about 1000:1)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=9) as zf:
        info = zipfile.ZipInfo(name, date_time=(2020, 1, 1, 0, 0, 0))
        info.compress_type = zipfile.ZIP_DEFLATED
        with zf.open(info, "w", force_zip64=True) as f:
            chunk = fill * MiB
            for _ in range(size // MiB):
                f.write(chunk)
    return buf.getvalue()


@pytest.fixture(scope="module")
def manifest_bomb() -> bytes:
    return _bomb_member(B.MANIFEST)


def _merge(bomb_zip: bytes, others: list, path) -> None:
    """A zip holding the bomb's member, its compressed bytes copied as they are (never
    inflated), plus ``others`` [(name, data)] stored."""
    with zipfile.ZipFile(io.BytesIO(bomb_zip)) as src:
        info = src.infolist()[0]
        fp = src.fp
        fp.seek(info.header_offset)
        n, e = struct.unpack("<HH", fp.read(30)[26:30])
        fp.seek(info.header_offset + 30 + n + e)
        compressed = fp.read(info.compress_size)
    _raw_zip(path, [(info, compressed)] + [(None, (name, data)) for name, data in others])


def _raw_zip(path, entries) -> None:
    """Write a zip from pre-compressed members ``(ZipInfo, compressed)`` and plain ``(None,
    (name, data))`` ones, computing headers by hand (zip64 extras dropped, sizes < 4 GiB)."""
    out = io.BytesIO()
    central = []
    for info, payload in entries:
        if info is None:
            name, data = payload
            name_b, method, crc = name.encode(), 0, zlib.crc32(data)
            csize = usize = len(data)
            body = data
        else:
            name_b, method, crc = info.filename.encode(), 8, info.CRC
            csize, usize, body = len(payload), info.file_size, payload
        offset = out.tell()
        out.write(struct.pack("<4sHHHHHIIIHH", b"PK\x03\x04", 20, 0, method, 0, 0x21, crc,
                              csize, usize, len(name_b), 0) + name_b + body)
        central.append(struct.pack("<4sHHHHHHIIIHHHHHII", b"PK\x01\x02", 20, 20, 0, method, 0,
                                   0x21, crc, csize, usize, len(name_b), 0, 0, 0, 0, 0, offset)
                       + name_b)
    start = out.tell()
    for c in central:
        out.write(c)
    out.write(struct.pack("<4sHHHHIIH", b"PK\x05\x06", 0, 0, len(central), len(central),
                          out.tell() - start, start, 0))
    path.write_bytes(out.getvalue())


def _lie_about_size(path, member: str, size: int) -> None:
    """Rewrite the central directory's uncompressed size of ``member`` (and the local one)."""
    data = bytearray(path.read_bytes())
    for sig, size_at, name_len_at, name_at in ((b"PK\x01\x02", 24, 28, 46),
                                               (b"PK\x03\x04", 22, 26, 30)):
        pos = data.find(sig)
        while pos != -1:
            n = struct.unpack_from("<H", data, pos + name_len_at)[0]
            if bytes(data[pos + name_at:pos + name_at + n]).decode() == member:
                struct.pack_into("<I", data, pos + size_at, size)
            pos = data.find(sig, pos + 4)
    path.write_bytes(bytes(data))


def test_manifest_bomb_declared_honestly_is_refused_before_inflating(tmp_path, manifest_bomb,
                                                                     inflated):
    p = tmp_path / "bomb.zip"
    _merge(manifest_bomb, [], p)
    assert p.stat().st_size < BOMB_BYTES / 500                  # a real ~1000:1 bomb
    with zipfile.ZipFile(p) as zf:
        assert zf.getinfo(B.MANIFEST).file_size == BOMB_BYTES
    with pytest.raises(B.BundleLimitError, match=rf"'manifest.json' declares {BOMB_BYTES} bytes"):
        B.read_bundle(p)
    assert inflated[0] == 0


def test_manifest_bomb_with_a_lying_size_stops_at_the_declared_size(tmp_path, manifest_bomb,
                                                                    inflated):
    p = tmp_path / "liar.zip"
    _merge(manifest_bomb, [], p)
    _lie_about_size(p, B.MANIFEST, 1000)
    with pytest.raises(BundleError, match=r"corrupted zip|not valid JSON|CRC"):
        B.read_bundle(p)
    assert 0 < inflated[0] <= 64 * 1024, f"inflated {inflated[0]} of {BOMB_BYTES} bytes"


def test_weight_member_bomb_is_refused_before_inflating(bundle_path, tmp_path, inflated):
    """The probe entry (2 KiB declared) replaced by 64 MiB of deflated zeros."""
    members = _members(bundle_path)
    i = [m[0] for m in members].index("weights/probe.npy")
    bomb = _bomb_member("weights/probe.npy", fill=b"\0")
    p = tmp_path / "bomb.zip"
    _merge(bomb, [tuple(m) for j, m in enumerate(members) if j != i], p)
    with pytest.raises(B.BundleLimitError, match=r"'weights/probe.npy' declares 67108864 bytes"):
        B.read_bundle(p)
    assert inflated[0] == 0
    # the same with a lying size: reading stops after the declared size, then the CRC fails
    _lie_about_size(p, "weights/probe.npy", 2176)
    with pytest.raises(BundleError):
        B.read_bundle(p)
    assert inflated[0] <= 64 * 1024


def test_declared_tensors_beyond_the_total_bound_are_refused_before_reading(bundle_path,
                                                                           tmp_path, inflated):
    members = _members(bundle_path)

    def edit(m):    # five entries of 1 GiB each: each under the member bound, together not
        for k in list(m["entries"])[:5]:
            m["entries"][k]["shape"] = [256, 1024, 1024]
    p = tmp_path / "huge.zip"
    _write(p, _with_manifest(members, edit))
    with pytest.raises(B.BundleLimitError, match=r"declares \d+ bytes of weights, more than "
                                                 r"the limit"):
        B.read_bundle(p)
    assert inflated[0] == 0


def test_npz_bomb_with_a_lying_size_is_refused_without_inflating_it(tmp_path, inflated):
    """An NPZ member whose header is honest but whose zip size lies: reading stops early."""
    n_patterns = 4096      # 4096 x 64 x 64 float32 = 64 MiB of zeros
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": "<f4", "fortran_order": False,
                                               "shape": (n_patterns, 64, 64)})
    header = buf.getvalue()
    zbuf = io.BytesIO()
    with zipfile.ZipFile(zbuf, "w") as zf:
        info = zipfile.ZipInfo("diffraction.npy", date_time=(2020, 1, 1, 0, 0, 0))
        info.compress_type = zipfile.ZIP_DEFLATED
        with zf.open(info, "w", force_zip64=True) as f:
            f.write(header)
            for _ in range(64):
                f.write(b"\0" * MiB)
    others = []
    for k, v in {"probeGuess": np.ones((64, 64), np.complex64), "xcoords": np.zeros(n_patterns),
                 "ycoords": np.zeros(n_patterns)}.items():
        b = io.BytesIO()
        np.save(b, v)
        others.append((k + ".npy", b.getvalue()))
    p = tmp_path / "bomb.npz"
    _merge(zbuf.getvalue(), others, p)
    assert p.stat().st_size < BOMB_BYTES / 200
    _lie_about_size(p, "diffraction.npy", len(header) + 4096)
    with pytest.raises(DataError, match=r"'diffraction'.*declares shape \(4096, 64, 64\)"):
        load_npz(p)
    assert inflated[0] <= 64 * 1024


# --------------------------------------------------------------------------------------------
# archive paths


@pytest.mark.parametrize("member", ["/etc/cron.d/evil", "../../outside.npy", "weights/../../x.npy",
                                    "C:\\Windows\\evil.npy", "weights\\..\\..\\evil.npy",
                                    "\\\\server\\share\\x.npy", "weights/./probe.npy",
                                    "weights//x"])
def test_escaping_member_names_are_refused_and_nothing_is_written(bundle_path, tmp_path, member):
    members = _members(bundle_path) + [[member, b"x"]]
    p = tmp_path / "escape.zip"
    _write(p, members)
    before = sorted(os.listdir(tmp_path))
    with pytest.raises(B.NotABundleError, match="absolute or escaping path"):
        B.read_bundle(p)
    assert sorted(os.listdir(tmp_path)) == before
    assert not os.path.exists("/etc/cron.d/evil")


# --------------------------------------------------------------------------------------------
# verification before a model is built


class _RecordingBackend:
    name = "recording"

    def __init__(self):
        self.built = []

    def build_model(self, config, weights):
        self.built.append(weights)
        return object()


@pytest.fixture
def recording(monkeypatch):
    import backends
    import ptycho.workflows.inference as inference
    rec = _RecordingBackend()
    calls = []

    def get_backend(name=None):
        calls.append(name)
        return rec
    monkeypatch.setattr(backends, "get_backend", get_backend)
    monkeypatch.setattr(inference, "get_backend", get_backend)
    rec.calls = calls
    return rec


def _flip_weight_byte(src, dst):
    members = _members(src)
    i = [m[0] for m in members].index("weights/enc0.conv1.kernel.npy")
    data = bytearray(members[i][1])
    data[-3] ^= 0x10
    members[i][1] = bytes(data)
    _write(dst, members)


def test_bad_checksum_never_reaches_build_model(bundle_path, tmp_path, recording):
    from ptycho.workflows.inference import load_inference_bundle
    bad = tmp_path / "tampered.zip"
    _flip_weight_byte(bundle_path, bad)
    with pytest.raises(B.ChecksumError, match=r"checksum mismatch for weight entry "
                                              r"'enc0.conv1.kernel'"):
        load_inference_bundle(bad, backend="torch")
    assert recording.calls == [] and recording.built == []
    # the control: the untouched bundle does reach the backend, with exactly its weights
    load_inference_bundle(bundle_path, backend="torch")
    assert recording.calls == ["torch"] and len(recording.built) == 1
    assert all(np.array_equal(recording.built[0][k], v) for k, v in _weights().items())


def test_invalid_config_in_a_bundle_never_reaches_build_model(bundle_path, tmp_path, recording):
    members = _with_manifest(_members(bundle_path),
                             lambda m: m["config"]["model"].__setitem__("N", 17))
    bad = tmp_path / "badcfg.zip"
    _write(bad, members)
    from ptycho.workflows.inference import load_inference_bundle
    with pytest.raises(Exception, match=r"bundle config invalid.*N"):
        load_inference_bundle(bad, backend="torch")
    assert recording.calls == [] and recording.built == []
