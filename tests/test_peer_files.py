"""PtychoPINN's files both ways: its NPZ scans load (pickled members skipped, normalised
amplitudes converted or a photon count asked for, start positions accepted), our
``save_npz(..., peer_compatible=True)`` writes what its loader reads, and its model archives
(dill pickles) are refused without being unpickled.

The fixtures are built here from the peer's documented layout (its ``RawData.to_file`` /
``from_file`` keys, its simulator's normalisation and its ``_metadata`` JSON member, both the
older pickled object scalar and the current unicode scalar), not from its code.
"""

from __future__ import annotations

import doctest
import io
import json
import pickle
import zipfile

import numpy as np
import pytest

import ptycho.data.peer as peer
from ptycho.bundle import NotABundleError, read_bundle
from ptycho.data import RawData, load_npz, save_npz
from ptycho.errors import DataError, DataWarning

M, N = 20, 16
NPHOTONS = 1e5


class Boom:
    """Unpickling this creates ``path``: proof that something was unpickled."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (str(self.path), "w"))


def counts(seed=0) -> np.ndarray:
    """Poisson photon counts, mean total ~NPHOTONS per pattern."""
    rng = np.random.default_rng(seed)
    shape = np.exp(-((np.arange(N) - N // 2) ** 2) / 8.0)
    rate = np.outer(shape, shape)
    rate *= NPHOTONS / rate.sum()
    return rng.poisson(rate, (M, N, N)).astype(np.float64)


def peer_scan(c: np.ndarray, metadata=None, **extra) -> dict:
    """A scan in PtychoPINN's layout as its simulator writes it: diff3d normalised so that the
    mean total intensity of a pattern is (N/2)**2."""
    amp = np.sqrt(c)
    amp *= (N / 2) / np.sqrt(np.mean(np.sum(c, axis=(1, 2))))
    x = np.linspace(20.0, 40.0, M)
    y = np.full(M, 25.0)
    d = {"xcoords": x, "ycoords": y, "xcoords_start": x, "ycoords_start": y,
         "diff3d": amp.astype(np.float32), "probeGuess": np.ones((N, N), np.complex64),
         "objectGuess": np.ones((64, 64), np.complex64), "scan_index": np.zeros(M, np.int64)}
    if metadata is not None:
        d[peer.METADATA_KEY] = metadata
    d.update(extra)
    return d


def metadata_json(nphotons=NPHOTONS) -> str:
    return json.dumps({"schema_version": "1.0.0",
                       "physics_parameters": {"nphotons": nphotons, "N": N, "gridsize": 1}})


def test_doctests():
    result = doctest.testmod(peer)
    assert result.attempted > 0 and result.failed == 0


def test_pickled_metadata_is_skipped_and_the_photon_count_is_asked_for(tmp_path, no_unpickling):
    """The issue's case: a pickled ``_metadata`` and normalised ``diff3d``."""
    p = tmp_path / "peer.npz"
    np.savez(p, allow_pickle=True, **peer_scan(counts(), np.array(metadata_json(), dtype=object)))
    with pytest.warns(DataWarning, match=r"member '_metadata' is a pickled object array; "
                                         r"skipped without unpickling it .*PtychoPINN's metadata"):
        with pytest.raises(DataError, match=r"peer.npz.*amplitudes look normalised .*mean total "
                                            r"intensity per pattern 64 ~ \(N/2\)\^2 = 64.*pass "
                                            r"load_npz\(\.\.\., nphotons="):
            load_npz(p)


def test_normalised_amplitudes_convert_back_to_the_counts(tmp_path, no_unpickling):
    c = counts()
    p = tmp_path / "peer.npz"
    np.savez(p, allow_pickle=True, **peer_scan(c, np.array(metadata_json(), dtype=object)))
    true_mean = float(np.mean(np.sum(c, axis=(1, 2))))
    with pytest.warns(DataWarning) as notes:
        raw = load_npz(p, nphotons=true_mean)
    text = [str(w.message) for w in notes]
    assert any("'_metadata'" in t and "skipped" in t for t in text)
    assert any(f"converted to photon units with nphotons = {true_mean:g} (from the nphotons "
               "argument)" in t for t in text)
    assert np.allclose(raw.diffraction.astype(np.float64) ** 2, c, rtol=1e-5, atol=1e-3)
    assert np.mean(np.sum(raw.diffraction.astype(np.float64) ** 2, axis=(1, 2))) == \
        pytest.approx(true_mean, rel=1e-5)


def test_current_json_metadata_supplies_the_photon_count(tmp_path):
    p = tmp_path / "peer.npz"
    np.savez(p, **peer_scan(counts(), np.array(metadata_json(2e6))))   # unicode: no pickle
    with pytest.warns(DataWarning, match=r"nphotons = 2e\+06 \(from the file's '_metadata'\)"):
        raw = load_npz(p)
    assert np.mean(np.sum(raw.diffraction.astype(np.float64) ** 2, axis=(1, 2))) == \
        pytest.approx(2e6, rel=1e-5)
    with pytest.warns(DataWarning, match=r"nphotons = 3000 \(from the nphotons argument\)"):
        load_npz(p, nphotons=3000.0)     # the argument wins over the file


def test_pickled_metadata_never_runs(tmp_path, no_unpickling):
    marker = tmp_path / "pwned"
    p = tmp_path / "evil.npz"
    np.savez(p, allow_pickle=True,
             **peer_scan(counts(), np.array([Boom(marker)], dtype=object)))
    with pytest.warns(DataWarning) as notes:
        raw = load_npz(p, nphotons=NPHOTONS)
    assert any("'_metadata' is a pickled object array" in str(w.message) for w in notes)
    assert raw.n_patterns == M
    assert not marker.exists()


def test_photon_counts_are_not_mistaken_for_normalised_amplitudes(tmp_path, recwarn):
    """sqrt of integer counts whose mean total happens to be (N/2)**2: left as they are."""
    rng = np.random.default_rng(3)
    c = rng.poisson((N / 2) ** 2 / N ** 2, (M, N, N)).astype(float)
    d = peer_scan(c)
    d["diff3d"] = np.sqrt(c).astype(np.float32)
    np.savez(tmp_path / "c.npz", **d)
    raw = load_npz(tmp_path / "c.npz")
    assert np.array_equal(raw.diffraction, d["diff3d"])
    assert not [w for w in recwarn if issubclass(w.category, DataWarning)]


def test_amplitudes_argument_overrides_the_detection(tmp_path):
    d = peer_scan(counts())
    np.savez(tmp_path / "n.npz", **d)
    raw = load_npz(tmp_path / "n.npz", amplitudes="photons")
    assert np.array_equal(raw.diffraction, d["diff3d"])
    np.savez(tmp_path / "c.npz", **{**d, "diff3d": np.sqrt(counts()).astype(np.float32)})
    with pytest.raises(DataError, match=r"amplitudes='normalised' was given; the photon count"):
        load_npz(tmp_path / "c.npz", amplitudes="normalised")
    with pytest.warns(DataWarning, match="amplitudes='normalised' was given"):
        forced = load_npz(tmp_path / "c.npz", amplitudes="normalised", nphotons=10.0)
    assert np.mean(np.sum(forced.diffraction.astype(np.float64) ** 2, axis=(1, 2))) == \
        pytest.approx(10.0, rel=1e-5)
    with pytest.raises(DataError, match=r"amplitudes must be one of \['auto', 'photons', "
                                        r"'normalised'\], got 'counts'"):
        load_npz(tmp_path / "c.npz", amplitudes="counts")


def test_start_positions_stand_in_for_missing_positions(tmp_path):
    d = peer_scan(counts())
    d["xcoords_start"] = d.pop("xcoords") + 0.5
    d["ycoords_start"] = d.pop("ycoords") - 0.5
    np.savez(tmp_path / "s.npz", **d)
    with pytest.warns(DataWarning) as notes:
        raw = load_npz(tmp_path / "s.npz", amplitudes="photons")
    assert [str(w.message).split(": ", 1)[1] for w in notes] == [
        f"no '{a}coords'; using '{a}coords_start' (PtychoPINN's start positions) as the scan "
        "positions" for a in "xy"]
    assert np.array_equal(raw.xcoords, d["xcoords_start"])
    assert np.array_equal(raw.ycoords, d["ycoords_start"])
    both = peer_scan(counts())
    both["xcoords_start"] = both["xcoords"] + 1.0      # corrected positions win
    np.savez(tmp_path / "b.npz", **both)
    assert np.array_equal(load_npz(tmp_path / "b.npz", amplitudes="photons").xcoords,
                          both["xcoords"])


# --------------------------------------------------------------------------------------------
# writing for the peer


def peer_loader_accepts(path) -> dict:
    """What PtychoPINN's ``RawData.from_file`` does with a file: np.load (pickles off), read its
    eight keys, and its checks (1-D coordinates of one shape, 3-D square diff3d, 2-D probe and
    object, 1-D scan_index)."""
    with np.load(path) as z:   # numpy's default: allow_pickle=False, as the peer calls it
        d = {k: z[k] for k in peer.PEER_REQUIRED_KEYS}
    coords = [d[k] for k in ("xcoords", "ycoords", "xcoords_start", "ycoords_start")]
    assert all(c.ndim == 1 and c.shape == coords[0].shape for c in coords)
    assert d["diff3d"].ndim == 3 and d["diff3d"].shape[1] == d["diff3d"].shape[2]
    assert d["probeGuess"].ndim == 2 and d["objectGuess"].ndim == 2
    assert d["scan_index"].ndim == 1
    return d


def test_peer_compatible_save_is_read_by_the_peer_loader_and_by_ours(tmp_path):
    mask = np.ones((N, N), bool)
    mask[2, 3] = False
    raw = RawData(np.sqrt(counts()).astype(np.float32), np.ones((N, N), np.complex64),
                  np.linspace(20, 40, M), np.full(M, 25.0),
                  object_guess=np.ones((64, 64), np.complex64), mask=mask)
    save_npz(raw, tmp_path / "for_peer.npz", peer_compatible=True)
    d = peer_loader_accepts(tmp_path / "for_peer.npz")
    assert np.array_equal(d["diff3d"], raw.diffraction)
    assert np.array_equal(d["xcoords_start"], raw.xcoords)
    assert np.array_equal(d["scan_index"], np.zeros(M))
    with np.load(tmp_path / "for_peer.npz") as z:
        assert np.array_equal(z["bad_pixels"], ~mask) and "diffraction" not in z.files
    back = load_npz(tmp_path / "for_peer.npz")
    assert np.array_equal(back.diffraction, raw.diffraction)
    assert np.array_equal(back.mask, mask) and np.array_equal(back.ycoords, raw.ycoords)


def test_scan_written_by_ptycho_simulate_layout_needs_an_object_for_the_peer(tmp_path):
    raw = RawData(np.ones((2, N, N), np.float32), np.ones((N, N)), np.zeros(2), np.zeros(2))
    save_npz(raw, tmp_path / "plain.npz")
    with np.load(tmp_path / "plain.npz") as z:
        missing = sorted(set(peer.PEER_REQUIRED_KEYS) - set(z.files))
    assert missing == ["diff3d", "objectGuess", "scan_index", "xcoords_start", "ycoords_start"]
    with pytest.raises(DataError, match=r"PtychoPINN's loader requires 'objectGuess'"):
        save_npz(raw, tmp_path / "peer.npz", peer_compatible=True)
    assert not (tmp_path / "peer.npz").exists()


# --------------------------------------------------------------------------------------------
# the peer's model archives


def peer_archive(path, marker, json_manifest=False):
    """A ``wts.h5.zip`` as PtychoPINN's model manager writes it: a dill manifest and per-model
    dill params beside the Keras payloads (here each pickle would create ``marker``)."""
    bomb = pickle.dumps(Boom(marker))
    with zipfile.ZipFile(path, "w") as zf:
        if json_manifest:
            zf.writestr("manifest.json", json.dumps({"artifact_schema_version":
                                                     "torch-artifact-v5", "models": []}))
        else:
            zf.writestr("manifest.dill", bomb)
            zf.writestr("diffraction_to_obj/params.dill", bomb)
            zf.writestr("diffraction_to_obj/model.keras", b"PK not really keras")
            zf.writestr("custom_objects.dill", bomb)


def test_peer_model_archive_is_refused_and_nothing_is_unpickled(tmp_path, no_unpickling):
    marker = tmp_path / "pwned"
    archive = tmp_path / "wts.h5.zip"
    peer_archive(archive, marker)
    with pytest.raises(NotABundleError, match=r"wts.h5.zip: not a ptycho-pinn-bundle but a "
                                              r"PtychoPINN model archive .*dill/pickle members "
                                              r"\['custom_objects.dill', .*never unpickles"):
        read_bundle(archive)
    from ptycho.workflows import load_inference_bundle
    with pytest.raises(NotABundleError, match="PtychoPINN model archive"):
        load_inference_bundle(archive, backend="torch")
    assert not marker.exists()


def test_peer_json_era_archive_is_named(tmp_path):
    archive = tmp_path / "wts.h5.zip"
    peer_archive(archive, tmp_path / "m", json_manifest=True)
    with pytest.raises(NotABundleError, match=r"PtychoPINN model archive \(its manifest declares "
                                              r"artifact_schema_version 'torch-artifact-v5'\)"):
        read_bundle(archive)


def test_dark_first_patterns_do_not_break_the_detection(tmp_path, monkeypatch):
    monkeypatch.setattr(peer, "DETECTION_PIXELS", 2 * N * N)     # look at two patterns only
    d = peer_scan(counts())
    d["diff3d"][:2] = 0.0
    np.savez(tmp_path / "dark.npz", **d)
    assert np.array_equal(load_npz(tmp_path / "dark.npz").diffraction, d["diff3d"])
    assert peer.looks_normalised(d["diff3d"][2:], None)[0]
