"""Bundles without a framework: format, verification, specific errors, atomicity."""

import io
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import zipfile

import numpy as np
import pytest

from ptycho import bundle as B
from ptycho.config import ModelConfig, TrainingConfig
from ptycho.errors import BundleError, ConfigError, WeightsError
from ptycho.training import EpochRecord, History
from ptycho.weights import init_weights

CFG = TrainingConfig(model=ModelConfig(N=16, base_filters=1, n_filters_scale=1, gridsize=2),
                     nepochs=3, seed=5)


def _weights(seed=0):
    probe = (np.arange(256).reshape(16, 16) * (1 + 1j)).astype(np.complex64)
    return init_weights(CFG.model, seed, probe, 2.5)


def _history():
    return History(epochs=[EpochRecord(0, 1e-3, {"nll": 2.0, "mae": 0.0, "realspace": 0.0,
                                                 "total": 2.0}, seconds=0.5)], best_epoch=0)


@pytest.fixture
def bundle_path(tmp_path):
    path = tmp_path / "model.ptycho.zip"
    B.save_bundle(path, _weights(), CFG, backend_name="torch", framework_version="x",
                  history=_history(), extra={"note": "hello"})
    return path


def _rewrite(src, dst, change):
    """Copy a zip, letting ``change(name, data) -> (name, data) | None`` edit each member."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for info in zin.infolist():
            out = change(info.filename, zin.read(info))
            if out is not None:
                zout.writestr(out[0], out[1])


def _edit_manifest(src, dst, edit):
    def change(name, data):
        if name == B.MANIFEST:
            m = json.loads(data)
            edit(m)
            return name, json.dumps(m).encode()
        return name, data
    _rewrite(src, dst, change)


def test_round_trip_is_exact(bundle_path):
    c = B.read_bundle(bundle_path)
    assert c.config == CFG and c.backend == "torch" and c.extra == {"note": "hello"}
    assert c.history == _history()
    w = _weights()
    assert list(c.weights) == list(w)
    for k in w:
        assert c.weights[k].dtype == w[k].dtype
        np.testing.assert_array_equal(c.weights[k], w[k])
    assert c.manifest["intensity_scale"] == pytest.approx(np.exp(2.5))
    assert c.manifest["format"] == B.FORMAT_NAME and c.manifest["format_version"] == B.FORMAT_VERSION


def test_save_load_save_is_byte_identical(bundle_path, tmp_path):
    c = B.read_bundle(bundle_path)
    again = tmp_path / "again.zip"
    B.save_bundle(again, c.weights, c.config, backend_name="torch", framework_version="x",
                  history=c.history, extra=c.extra)
    with zipfile.ZipFile(bundle_path) as a, zipfile.ZipFile(again) as b:
        names = [n for n in a.namelist() if n.startswith(B.WEIGHTS_DIR)]
        assert names and names == [n for n in b.namelist() if n.startswith(B.WEIGHTS_DIR)]
        for n in names:
            assert a.read(n) == b.read(n)


def test_manifest_is_plain_json_listing_every_entry(bundle_path):
    with zipfile.ZipFile(bundle_path) as zf:
        m = json.loads(zf.read(B.MANIFEST))
        assert set(zf.namelist()) == {B.MANIFEST} | {e["member"] for e in m["entries"].values()}
    assert m["config"]["model"]["gridsize"] == 2 and m["backend"] == "torch"
    assert m["probe"]["shape"] == [16, 16]
    assert all(len(e["sha256"]) == 64 for e in m["entries"].values())


def test_flipped_byte_is_a_checksum_error_naming_the_entry(bundle_path, tmp_path):
    bad = tmp_path / "bad.zip"

    def flip(name, data):
        if name == "weights/enc1.conv2.kernel.npy":
            data = bytearray(data)
            data[-3] ^= 0xFF
            data = bytes(data)
        return name, data
    _rewrite(bundle_path, bad, flip)
    with pytest.raises(B.ChecksumError, match="'enc1.conv2.kernel'"):
        B.read_bundle(bad)


def test_flipped_byte_in_a_member_is_a_clear_bundle_error(bundle_path, tmp_path):
    with zipfile.ZipFile(bundle_path) as zf:
        info = zf.getinfo("weights/probe.npy")
    raw = bytearray(bundle_path.read_bytes())
    # the member's data start after its local header (30 bytes, its name, its extra field)
    start = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra)
    raw[start + info.compress_size // 2] ^= 0xFF
    bad = tmp_path / "bad.zip"
    bad.write_bytes(bytes(raw))
    with pytest.raises(BundleError):
        B.read_bundle(bad)


def test_a_flipped_byte_anywhere_is_an_error_or_changes_nothing(bundle_path, tmp_path):
    """Bytes that zip readers ignore (a local header's copy of the sizes, its time stamp)
    may flip unnoticed; every other flip is a BundleError (or a WeightsError naming the
    entry whose member it no longer finds), never another exception and never different
    contents."""
    good = B.read_bundle(bundle_path)
    data = bundle_path.read_bytes()
    bad = tmp_path / "bad.zip"
    refused = 0
    for at in range(0, len(data), 53):
        raw = bytearray(data)
        raw[at] ^= 0xFF
        bad.write_bytes(bytes(raw))
        try:
            got = B.read_bundle(bad)
        except (BundleError, WeightsError):
            refused += 1
            continue
        assert got.config == good.config and got.manifest == good.manifest, at
        assert list(got.weights) == list(good.weights), at
        for name, value in good.weights.items():
            np.testing.assert_array_equal(got.weights[name], value, err_msg=f"byte {at}")
    assert refused > 0.9 * len(range(0, len(data), 53))


def test_truncated_zip(bundle_path, tmp_path):
    bad = tmp_path / "cut.zip"
    bad.write_bytes(bundle_path.read_bytes()[: bundle_path.stat().st_size // 2])
    with pytest.raises(B.NotABundleError, match="not a readable zip"):
        B.read_bundle(bad)


def test_not_a_zip(tmp_path):
    bad = tmp_path / "notes.txt"
    bad.write_text("hello")
    with pytest.raises(B.NotABundleError, match="not a bundle"):
        B.read_bundle(bad)


def test_zip_without_manifest(tmp_path):
    bad = tmp_path / "other.zip"
    with zipfile.ZipFile(bad, "w") as zf:
        zf.writestr("readme.txt", "hi")
    with pytest.raises(B.NotABundleError, match="no manifest.json"):
        B.read_bundle(bad)


def test_wrong_format_version(bundle_path, tmp_path):
    bad = tmp_path / "v99.zip"
    _edit_manifest(bundle_path, bad, lambda m: m.__setitem__("format_version", 99))
    with pytest.raises(B.BundleVersionError, match="unknown bundle format version 99"):
        B.read_bundle(bad)


def test_missing_weight_entry(bundle_path, tmp_path):
    bad = tmp_path / "missing.zip"

    def drop(m):
        del m["entries"]["amp.head.bias"]

    def change(name, data):
        if name == "weights/amp.head.bias.npy":
            return None
        if name == B.MANIFEST:
            m = json.loads(data)
            drop(m)
            return name, json.dumps(m).encode()
        return name, data
    _rewrite(bundle_path, bad, change)
    with pytest.raises(WeightsError, match=r"missing entries \['amp.head.bias'\]"):
        B.read_bundle(bad)


def test_member_listed_but_absent(bundle_path, tmp_path):
    bad = tmp_path / "absent.zip"
    _rewrite(bundle_path, bad, lambda n, d: None if n == "weights/probe.npy" else (n, d))
    with pytest.raises(WeightsError, match="'probe' is listed in the manifest but its member"):
        B.read_bundle(bad)


def test_extra_weight_entry(bundle_path, tmp_path):
    bad = tmp_path / "extra.zip"
    extra = io.BytesIO()
    np.save(extra, np.zeros(3, np.float32))
    payload = extra.getvalue()

    def change(name, data):
        if name == B.MANIFEST:
            m = json.loads(data)
            m["entries"]["bonus.kernel"] = {"member": "weights/bonus.kernel.npy", "shape": [3],
                                            "dtype": "float32",
                                            "sha256": __import__("hashlib").sha256(payload).hexdigest()}
            return name, json.dumps(m).encode()
        return name, data
    _rewrite(bundle_path, bad, change)
    with zipfile.ZipFile(bad, "a") as zf:
        zf.writestr("weights/bonus.kernel.npy", payload)
    with pytest.raises(WeightsError, match=r"unexpected entries \['bonus.kernel'\]"):
        B.read_bundle(bad)


def test_unlisted_member_is_rejected(bundle_path, tmp_path):
    bad = tmp_path / "smuggle.zip"
    _rewrite(bundle_path, bad, lambda n, d: (n, d))
    with zipfile.ZipFile(bad, "a") as zf:
        zf.writestr("weights/run_me.py", "print('hi')")
    with pytest.raises(B.NotABundleError, match=r"unexpected members \['weights/run_me.py'\]"):
        B.read_bundle(bad)


@pytest.mark.parametrize("member", ["/etc/passwd", "../escape.npy", "weights/../../x.npy"])
def test_escaping_member_paths_are_rejected(bundle_path, tmp_path, member):
    bad = tmp_path / "escape.zip"
    _rewrite(bundle_path, bad, lambda n, d: (n, d))
    with zipfile.ZipFile(bad, "a") as zf:
        zf.writestr(zipfile.ZipInfo(member), b"x")
    with pytest.raises(B.NotABundleError, match="absolute or escaping path"):
        B.read_bundle(bad)


def test_huge_declared_tensor_is_refused_before_reading(bundle_path, tmp_path):
    bad = tmp_path / "huge.zip"
    _edit_manifest(bundle_path, bad,
                   lambda m: m["entries"]["probe"].__setitem__("shape", [1 << 20, 1 << 20]))
    with pytest.raises(B.BundleLimitError, match="'probe' declares shape"):
        B.read_bundle(bad)


def test_zip_bomb_member_is_refused(bundle_path, tmp_path, monkeypatch):
    monkeypatch.setattr(B, "MAX_MANIFEST_BYTES", 1000)
    with pytest.raises(B.BundleLimitError, match="'manifest.json' declares"):
        B.read_bundle(bundle_path)


def test_pickled_weight_member_is_refused_and_nothing_runs(bundle_path, tmp_path):
    marker = tmp_path / "pwned"
    payload = io.BytesIO()
    arr = np.array([_Boom(str(marker))], dtype=object)
    np.save(payload, arr, allow_pickle=True)
    data = payload.getvalue()
    bad = tmp_path / "pickle.zip"

    def change(name, d):
        if name == "weights/amp.head.bias.npy":
            return name, data
        if name == B.MANIFEST:
            m = json.loads(d)
            m["entries"]["amp.head.bias"]["sha256"] = __import__("hashlib").sha256(data).hexdigest()
            return name, json.dumps(m).encode()
        return name, d
    _rewrite(bundle_path, bad, change)
    with pytest.raises(B.NotABundleError, match="'amp.head.bias' is not a plain .npy array"):
        B.read_bundle(bad)
    assert not marker.exists()


class _Boom:
    """Unpickling this object would create a file: proof that nothing was unpickled."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_invalid_config_names_the_field(bundle_path, tmp_path):
    bad = tmp_path / "cfg.zip"
    _edit_manifest(bundle_path, bad, lambda m: m["config"]["model"].__setitem__("gridsize", 9))
    with pytest.raises(ConfigError, match=r"bundle config invalid.*gridsize"):
        B.read_bundle(bad)


def test_failed_save_leaves_the_old_bundle(bundle_path):
    before = bundle_path.read_bytes()
    w = _weights()
    w["probe"] = w["probe"][:8]
    with pytest.raises(WeightsError):
        B.save_bundle(bundle_path, w, CFG, backend_name="torch")
    assert bundle_path.read_bytes() == before
    assert os.listdir(bundle_path.parent) == [bundle_path.name]


def test_sigkill_during_save_leaves_the_previous_bundle_loadable(bundle_path):
    """A child saves big bundles in a loop onto the same path; we SIGKILL it mid-write."""
    script = textwrap.dedent(f"""
        import numpy as np, sys
        from ptycho import bundle as B
        from ptycho.config import ModelConfig, TrainingConfig
        from ptycho.weights import init_weights
        cfg = TrainingConfig(model=ModelConfig(N=128, base_filters=32, n_filters_scale=2))
        w = init_weights(cfg.model, 1, np.ones((128, 128)), 0.0)
        print("ready", flush=True)
        while True:
            B.save_bundle({str(bundle_path)!r}, w, cfg, backend_name="tensorflow")
    """)
    child = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert child.stdout.readline().strip() == "ready"
    time.sleep(1.5)
    child.send_signal(signal.SIGKILL)
    child.wait()
    c = B.read_bundle(bundle_path)   # old or new, never partial
    assert c.backend in ("torch", "tensorflow")


def test_bundle_written_before_the_added_model_keys_loads_as_it_was_trained(tmp_path):
    """A bundle whose config lacks per_pattern_network / match_intensity (written before they
    existed) is read with the values it was trained with (False), not today's defaults: its
    gridsize-2 weights have C input channels, which today's default would refuse."""
    import dataclasses
    old_model = dataclasses.replace(CFG.model, per_pattern_network=False, match_intensity=False)
    old_cfg = dataclasses.replace(CFG, model=old_model)
    weights = init_weights(old_model, 0, np.ones((16, 16), np.complex64), 2.5)
    assert weights["enc0.conv1.kernel"].shape[2] == 4
    written, old = tmp_path / "new.zip", tmp_path / "old.zip"
    B.save_bundle(written, weights, old_cfg, backend_name="torch", framework_version="x")

    def drop_added_keys(m):
        for key in B.MODEL_KEYS_ADDED:
            del m["config"]["model"][key]
    _edit_manifest(written, old, drop_added_keys)
    loaded = B.read_bundle(old)
    assert loaded.model_config == old_model
    assert CFG.model.per_pattern_network and CFG.model.match_intensity   # today's defaults


@pytest.mark.parametrize("estimate", [True, False])
def test_a_bundle_written_before_estimate_amplitude_keeps_the_amplitude_it_was_trained_with(
        tmp_path, estimate):
    """Before ``estimate_amplitude`` existed a model with ``backprop_estimate`` scaled the
    estimate's magnitude: such a bundle reads as ``"scale"`` (today's default, ``"input"``,
    would give other objects from the same weights); one without the estimate reads as the
    default, and a bundle that names its value keeps it."""
    import dataclasses
    model = dataclasses.replace(CFG.model, backprop_estimate=estimate,
                                estimate_amplitude="scale" if estimate else "input")
    cfg = dataclasses.replace(CFG, model=model)
    weights = init_weights(model, 0, np.ones((16, 16), np.complex64), 2.5)
    written, old = tmp_path / "new.zip", tmp_path / "old.zip"
    B.save_bundle(written, weights, cfg, backend_name="torch", framework_version="x")
    assert B.read_bundle(written).model_config.estimate_amplitude == model.estimate_amplitude

    def drop_the_key(m):
        del m["config"]["model"]["estimate_amplitude"]
    _edit_manifest(written, old, drop_the_key)
    assert B.read_bundle(old).model_config == model
    if estimate:    # named "input" in the manifest: kept
        current = dataclasses.replace(model, estimate_amplitude="input")
        named = tmp_path / "named.zip"
        B.save_bundle(named, weights, dataclasses.replace(cfg, model=current),
                      backend_name="torch", framework_version="x")
        assert B.read_bundle(named).model_config.estimate_amplitude == "input"
