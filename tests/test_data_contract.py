"""The NPZ data contract: RawData, validate_raw, load_npz, save_npz, and their errors."""

from __future__ import annotations

import doctest
import os
import zipfile

import numpy as np
import pytest

import ptycho.atomic
import ptycho.data.contract as contract
from ptycho.data import RawData, load_npz, save_npz, validate_raw
from ptycho.errors import DataError, DataWarning

M, N = 5, 16


def good(m: int = M, n: int = N) -> dict:
    rng = np.random.default_rng(0)
    return {
        "diffraction": rng.random((m, n, n)).astype(np.float32),
        "probeGuess": (rng.random((n, n)) + 1j * rng.random((n, n))).astype(np.complex64),
        "xcoords": np.linspace(10.0, 20.0, m),
        "ycoords": np.linspace(30.0, 35.0, m),
    }


def test_doctests():
    result = doctest.testmod(contract)
    assert result.attempted > 0 and result.failed == 0


def test_valid_mapping_builds_rawdata_with_contract_dtypes():
    d = good()
    d["objectGuess"] = np.ones((40, 50))
    d["scan_index"] = np.arange(M, dtype=np.int32)
    raw = validate_raw(d)
    assert (raw.N, raw.n_patterns) == (N, M)
    assert raw.diffraction.dtype == np.float32 and raw.diffraction.shape == (M, N, N)
    assert raw.probe.dtype == np.complex64
    assert raw.xcoords.dtype == raw.ycoords.dtype == np.float64
    assert raw.object_guess.dtype == np.complex64 and raw.object_guess.shape == (40, 50)
    assert raw.scan_index.dtype == np.int64
    assert np.array_equal(raw.xcoords, d["xcoords"])


def test_arrays_with_contract_dtypes_are_not_copied():
    d = good()
    raw = RawData(d["diffraction"], d["probeGuess"], d["xcoords"], d["ycoords"])
    assert np.shares_memory(raw.diffraction, d["diffraction"])
    assert np.shares_memory(raw.xcoords, d["xcoords"])


def test_real_probe_and_float64_diffraction_are_cast():
    d = good()
    d["probeGuess"] = np.abs(d["probeGuess"]).astype(np.float64)
    d["diffraction"] = d["diffraction"].astype(np.float64)
    raw = validate_raw(d)
    assert raw.probe.dtype == np.complex64 and np.allclose(raw.probe.imag, 0)
    assert raw.diffraction.dtype == np.float32


def test_diff3d_alias_and_identical_duplicate_are_accepted():
    d = good()
    d["diff3d"] = d.pop("diffraction")
    assert validate_raw(d).n_patterns == M
    d["diffraction"] = d["diff3d"].copy()
    assert np.array_equal(validate_raw(d).diffraction, d["diff3d"])


def test_legacy_layout_is_transposed_when_unambiguous():
    d = good()
    canonical = d["diffraction"]
    d["diffraction"] = np.ascontiguousarray(np.moveaxis(canonical, 0, -1))  # (N, N, M)
    raw = validate_raw(d)
    assert raw.diffraction.shape == (M, N, N) and raw.diffraction.flags.c_contiguous
    assert np.array_equal(raw.diffraction, canonical)


def test_m_equal_to_n_is_read_as_the_documented_layout():
    d = good(m=N)
    raw = validate_raw(d)
    assert np.array_equal(raw.diffraction, d["diffraction"])


def _mut(**changes):
    def apply(d):
        for k, v in changes.items():
            if v is None:
                d.pop(k)
            else:
                d[k] = v(d) if callable(v) else v
        return d
    return apply


MALFORMED = {
    "missing_keys": (_mut(probeGuess=None, ycoords=None),
                     r"missing keys \['probeGuess', 'ycoords'\]; present: \['diffraction', "
                     r"'xcoords'\]"),
    "no_diffraction": (_mut(diffraction=None),
                       r"missing keys \[\"diffraction \(or 'diff3d'\)\"\]"),
    "both_aliases_differ": (_mut(diff3d=lambda d: d["diffraction"] + 1),
                            r"both 'diffraction' and its alias 'diff3d' are present and they "
                            r"differ"),
    "rank_2": (_mut(diffraction=lambda d: d["diffraction"][0]),
               r"'diffraction': expected rank 3 \(M, N, N\), got rank 2 shape \(16, 16\)"),
    "rank_4": (_mut(diffraction=lambda d: d["diffraction"][None]),
               r"expected rank 3 \(M, N, N\), got rank 4 shape \(1, 5, 16, 16\)"),
    "legacy_layout_wrong_length": (
        _mut(diffraction=lambda d: np.moveaxis(d["diffraction"], 0, -1),
             xcoords=np.zeros(4), ycoords=np.zeros(4)),
        r"shape \(16, 16, 5\) looks like the legacy \(N, N, M\) layout with N = 16, M = 5, "
        r"but 'xcoords' has 4 entries"),
    "legacy_layout_bad_xcoords": (
        _mut(diffraction=lambda d: np.moveaxis(d["diffraction"], 0, -1), xcoords=np.zeros((5, 1))),
        r"looks like the legacy \(N, N, M\) layout .* but 'xcoords' is not a 1-D array"),
    "non_square": (_mut(diffraction=lambda d: d["diffraction"][:, :, :12]),
                   r"patterns must be square \(M, N, N\), got 16 x 12"),
    "probe_size_mismatch": (_mut(probeGuess=np.ones((32, 32), np.complex64)),
                            r"'probeGuess': size 32 does not match the pattern size N = 16"),
    "probe_rank": (_mut(probeGuess=np.ones((2, 16, 16), np.complex64)),
                   r"'probeGuess': expected a square \(N, N\) array, got shape \(2, 16, 16\)"),
    "probe_nan": (_mut(probeGuess=lambda d: np.where(np.eye(N, dtype=bool), np.nan,
                                                     d["probeGuess"])),
                  r"'probeGuess': 16 of 256 values are not finite"),
    "xcoords_length": (_mut(xcoords=np.zeros(4)),
                       r"'xcoords': expected shape \(5,\) \(one position per pattern, M = 5\), "
                       r"got shape \(4,\)"),
    "ycoords_rank": (_mut(ycoords=np.zeros((5, 1))),
                     r"'ycoords': expected shape \(5,\).*got shape \(5, 1\)"),
    "xcoords_complex": (_mut(xcoords=np.zeros(5, np.complex128)),
                        r"'xcoords': expected real positions in object pixels, got complex"),
    "xcoords_inf": (_mut(xcoords=np.array([0, 1, np.inf, 3, 4.0])),
                    r"'xcoords': 1 of 5 values are not finite"),
    "scan_index_length": (_mut(scan_index=np.arange(6)),
                          r"'scan_index': expected shape \(5,\) \(one index per pattern"),
    "scan_index_fractional": (_mut(scan_index=np.array([0, 0.5, 1, 2, 3])),
                              r"'scan_index': expected integers, got non-integral values"),
    "diffraction_nan": (_mut(diffraction=lambda d: np.where(
        np.arange(M)[:, None, None] == 1, np.nan, d["diffraction"]).astype(np.float32)),
        r"'diffraction': 256 of 1280 values are not finite \(NaN or Inf\)"),
    "negative_amplitudes": (_mut(diffraction=lambda d: d["diffraction"] - 2.0),
                            r"'diffraction': 1280 amplitudes are negative \(min -"),
    "integer_counts": (_mut(diffraction=lambda d: (d["diffraction"] * 100).astype(np.int32)),
                       r"'diffraction': got integer dtype int32, which looks like integer "
                       r"photon counts; pass amplitudes = sqrt\(counts\)"),
    "bool_diffraction": (_mut(diffraction=lambda d: d["diffraction"] > 0.5),
                         r"'diffraction': expected a numeric array, got bool dtype"),
    "string_diffraction": (_mut(diffraction=np.array([["a"]])),
                           r"'diffraction': expected a numeric array, got 'U'-kind dtype"),
    "object_probe": (_mut(probeGuess=np.array([None, 1], dtype=object)),
                     r"'probeGuess': expected a numeric array, got dtype object"),
    "complex_diffraction": (_mut(diffraction=lambda d: d["diffraction"].astype(np.complex64)),
                            r"'diffraction': expected real float32 amplitudes, got complex "
                            r"dtype complex64"),
    "empty_scan": (_mut(diffraction=np.zeros((0, N, N), np.float32), xcoords=np.zeros(0),
                        ycoords=np.zeros(0)),
                   r"'diffraction': the scan is empty \(M = 0 patterns\)"),
    "object_guess_rank": (_mut(objectGuess=np.ones(10)),
                          r"'objectGuess': expected a non-empty \(H, W\) array, got shape "
                          r"\(10,\)"),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_mapping_raises_specific_dataerror(case):
    mutate, message = MALFORMED[case]
    with pytest.raises(DataError, match=message):
        validate_raw(mutate(good()))


@pytest.mark.parametrize("case", ["missing_keys", "integer_counts", "legacy_layout_wrong_length",
                                  "xcoords_length", "diffraction_nan"])
def test_malformed_npz_file_names_file_and_problem(tmp_path, case):
    mutate, message = MALFORMED[case]
    path = tmp_path / f"{case}.npz"
    np.savez(path, **mutate(good()))
    with pytest.raises(DataError, match=message) as info:
        load_npz(path)
    assert str(path) in str(info.value)


def test_round_trip_through_npz_is_exact(tmp_path):
    d = good()
    d["objectGuess"] = (np.arange(20 * 30).reshape(20, 30) * (1 + 1j)).astype(np.complex64)
    d["scan_index"] = np.array([0, 0, 1, 1, 2])
    raw = validate_raw(d)
    path = tmp_path / "scan.npz"
    save_npz(raw, path)
    with np.load(path, allow_pickle=False) as z:
        assert sorted(z.files) == ["diffraction", "objectGuess", "probeGuess", "scan_index",
                                   "xcoords", "ycoords"]
    back = load_npz(path)
    for name in ("diffraction", "probe", "xcoords", "ycoords", "object_guess", "scan_index"):
        a, b = getattr(raw, name), getattr(back, name)
        assert a.dtype == b.dtype and np.array_equal(a, b), name
    assert os.listdir(tmp_path) == ["scan.npz"]


def test_load_with_mmap_mode_maps_stored_members_read_only(tmp_path):
    raw = validate_raw(good())
    save_npz(raw, tmp_path / "s.npz")
    mapped = load_npz(tmp_path / "s.npz", mmap_mode="r")
    assert isinstance(mapped.diffraction.base, np.memmap)
    assert not mapped.diffraction.flags.writeable
    for name in ("diffraction", "probe", "xcoords", "ycoords"):
        assert np.array_equal(getattr(mapped, name), getattr(raw, name)), name
    cow = load_npz(tmp_path / "s.npz", mmap_mode="c")
    cow.diffraction[0, 0, 0] = 123.0  # copy-on-write: the file is not changed
    assert load_npz(tmp_path / "s.npz").diffraction[0, 0, 0] == raw.diffraction[0, 0, 0]


def test_mmap_falls_back_to_reading_compressed_and_cast_members(tmp_path):
    d = good()
    d["xcoords"] = d["xcoords"].astype(np.float32)
    np.savez_compressed(tmp_path / "z.npz", **d)
    raw = load_npz(tmp_path / "z.npz", mmap_mode="r")
    assert np.array_equal(raw.diffraction, d["diffraction"])
    assert raw.xcoords.dtype == np.float64 and np.array_equal(raw.xcoords, d["xcoords"])


def test_mmap_refuses_writing_modes_and_pickled_members(tmp_path):
    save_npz(validate_raw(good()), tmp_path / "s.npz")
    with pytest.raises(DataError, match=r"mmap_mode must be one of \[None, 'r', 'c'\], "
                                        r"got 'w\+'"):
        load_npz(tmp_path / "s.npz", mmap_mode="w+")
    d = good()
    d["probeGuess"] = np.array([None], dtype=object)
    np.savez(tmp_path / "p.npz", allow_pickle=True, **d)
    with pytest.raises(DataError, match=r"member 'probeGuess' is an object array"):
        load_npz(tmp_path / "p.npz", mmap_mode="r")


def test_load_missing_path_and_directory(tmp_path):
    with pytest.raises(DataError, match=r"expected an NPZ file, but the path is missing"):
        load_npz(tmp_path / "nope.npz")
    with pytest.raises(DataError, match=r"expected an NPZ file, but the path is a directory"):
        load_npz(tmp_path)


def test_load_text_file_is_not_an_npz(tmp_path):
    p = tmp_path / "notes.npz"
    p.write_text("diffraction = 1, 2, 3\n")
    with pytest.raises(DataError, match=r"not an NPZ archive numpy can read"):
        load_npz(p)


def test_load_single_npy_is_refused(tmp_path):
    p = tmp_path / "a.npy"
    np.save(p, np.zeros((2, 16, 16), np.float32))
    with pytest.raises(DataError, match=r"expected an NPZ archive .* got a single ndarray"):
        load_npz(p)


def test_load_truncated_archive(tmp_path):
    p = tmp_path / "cut.npz"
    np.savez(p, **good())
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match=r"cut.npz.*(not an NPZ archive|cannot be read)"):
        load_npz(p)


def test_load_pickled_contract_member_is_refused(tmp_path):
    p = tmp_path / "pickled.npz"
    d = good()
    d["xcoords"] = np.array([{"evil": True}], dtype=object)
    np.savez(p, allow_pickle=True, **d)
    with pytest.raises(DataError, match=r"member 'xcoords' is an object array; pickled members "
                                        r"are refused"):
        load_npz(p)


def test_load_pickled_other_member_is_skipped_with_a_notice(tmp_path):
    p = tmp_path / "pickled.npz"
    d = good()
    d["meta"] = np.array([{"evil": True}], dtype=object)
    np.savez(p, allow_pickle=True, **d)
    with pytest.warns(DataWarning, match=r"member 'meta' is a pickled object array; skipped "
                                         r"without unpickling it"):
        raw = load_npz(p)
    assert np.array_equal(raw.diffraction, d["diffraction"])


def test_extra_members_are_ignored(tmp_path):
    p = tmp_path / "extra.npz"
    np.savez(p, Y=np.zeros(3), xcoords_start=np.zeros(M), **good())
    assert load_npz(p).n_patterns == M


def test_save_refuses_non_rawdata_and_writes_nothing(tmp_path):
    with pytest.raises(DataError, match=r"save_npz: expected a RawData, got dict"):
        save_npz(good(), tmp_path / "x.npz")
    assert os.listdir(tmp_path) == []


def test_failed_save_leaves_old_file_and_no_partial(tmp_path, monkeypatch):
    path = tmp_path / "scan.npz"
    raw = validate_raw(good())
    save_npz(raw, path)
    before = path.read_bytes()

    def failing(f, **kw):
        f.write(b"PK partial")
        raise OSError("no space left on device")

    monkeypatch.setattr(ptycho.atomic.np, "savez", failing)
    with pytest.raises(OSError, match="no space left"):
        save_npz(raw.subset([0, 1]), path)
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["scan.npz"]
    assert zipfile.is_zipfile(path)


def test_subset_by_indices_and_mask():
    d = good()
    d["scan_index"] = np.arange(M)
    raw = validate_raw(d)
    sub = raw.subset([3, 1])
    assert sub.n_patterns == 2 and sub.scan_index.tolist() == [3, 1]
    assert np.array_equal(sub.diffraction[0], raw.diffraction[3])
    mask = np.array([True, False, True, False, False])
    assert raw.subset(mask).xcoords.tolist() == raw.xcoords[[0, 2]].tolist()
    with pytest.raises(DataError, match=r"subset indices: expected values in \[0, 5\), got "
                                        r"min -1 max 7"):
        raw.subset([7, -1])
    with pytest.raises(DataError, match=r"subset mask: expected shape \(5,\), got \(3,\)"):
        raw.subset(np.ones(3, bool))
