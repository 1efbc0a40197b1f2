"""Atomic writes: the target is either the old file or the complete new one, never partial."""

from __future__ import annotations

import doctest
import os
import stat

import numpy as np
import pytest

import ptycho.atomic as atomic
from ptycho.atomic import atomic_save_npz, atomic_write
from ptycho.errors import DataError


def test_doctests():
    result = doctest.testmod(atomic, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0


def test_binary_write_lands_at_exact_name_without_leftovers(tmp_path):
    target = tmp_path / "out.bin"
    with atomic_write(target) as f:
        f.write(b"abc")
        assert not target.exists()  # nothing visible until the rename
    assert target.read_bytes() == b"abc"
    assert os.listdir(tmp_path) == ["out.bin"]


def test_text_mode_is_utf8(tmp_path):
    target = tmp_path / "t.txt"
    with atomic_write(str(target), "w") as f:
        f.write("Ångström λ")
    assert target.read_bytes().decode("utf-8") == "Ångström λ"


def test_exception_keeps_old_target_and_removes_temporary(tmp_path):
    target = tmp_path / "keep.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError, match="boom"):
        with atomic_write(target, "w") as f:
            f.write("new, partial")
            raise RuntimeError("boom")
    assert target.read_text() == "old"
    assert os.listdir(tmp_path) == ["keep.txt"]


def test_exception_on_new_target_leaves_nothing(tmp_path):
    with pytest.raises(KeyboardInterrupt):
        with atomic_write(tmp_path / "new.bin") as f:
            f.write(b"x" * 1000)
            raise KeyboardInterrupt
    assert os.listdir(tmp_path) == []


def test_bad_mode_and_missing_folder_and_directory_target(tmp_path):
    with pytest.raises(ValueError, match="mode must be one of"):
        with atomic_write(tmp_path / "a", "ab"):
            pass
    with pytest.raises(FileNotFoundError, match="does not exist"):
        with atomic_write(tmp_path / "no" / "such" / "a"):
            pass
    with pytest.raises(IsADirectoryError, match="is a directory"):
        with atomic_write(tmp_path):
            pass
    assert os.listdir(tmp_path) == []


@pytest.mark.skipif(os.name != "posix", reason="POSIX permission bits")
def test_replacing_keeps_permission_bits_and_new_file_is_not_private(tmp_path):
    target = tmp_path / "p.txt"
    target.write_text("old")
    os.chmod(target, 0o640)
    with atomic_write(target, "w") as f:
        f.write("new")
    assert stat.S_IMODE(os.stat(target).st_mode) == 0o640
    fresh = tmp_path / "fresh.txt"
    with atomic_write(fresh, "w") as f:
        f.write("x")
    assert stat.S_IMODE(os.stat(fresh).st_mode) & 0o044  # readable like any new file


@pytest.mark.parametrize("name", ["arrays.npz", "arrays.dat", "no_suffix"])
def test_save_npz_keeps_exact_name(tmp_path, name):
    target = tmp_path / name
    atomic_save_npz(target, a=np.arange(4, dtype=np.int16), path=np.ones(2))
    assert os.listdir(tmp_path) == [name]
    with np.load(target, allow_pickle=False) as z:
        assert sorted(z.files) == ["a", "path"]
        assert z["a"].dtype == np.int16 and z["a"].tolist() == [0, 1, 2, 3]


def test_save_npz_refuses_object_arrays_and_leaves_old_file(tmp_path):
    target = tmp_path / "x.npz"
    atomic_save_npz(target, a=np.zeros(3))
    with pytest.raises(DataError, match=r"array 'bad'.*dtype object.*pickle"):
        atomic_save_npz(target, a=np.ones(3), bad=np.array([1, None], dtype=object))
    with np.load(target, allow_pickle=False) as z:
        assert z["a"].tolist() == [0.0, 0.0, 0.0]
    assert os.listdir(tmp_path) == ["x.npz"]


def test_save_npz_failure_midway_leaves_no_partial_file(tmp_path, monkeypatch):
    def broken_savez(f, **kw):
        f.write(b"PK\x03\x04 half an archive")
        raise OSError("disk full")

    monkeypatch.setattr(atomic.np, "savez", broken_savez)
    with pytest.raises(OSError, match="disk full"):
        atomic_save_npz(tmp_path / "y.npz", a=np.zeros(2))
    assert os.listdir(tmp_path) == []
