"""Atomic file writes: every file the library writes goes through here.

A write goes to a uniquely named temporary file in the target's folder, is flushed and
fsync'ed, and is then renamed onto the target with :func:`os.replace` (atomic on POSIX and
Windows when both names are on the same file system, which a same-folder temporary ensures).
If anything fails before the rename, the temporary file is removed and an existing target is
left exactly as it was: a reader sees either the old file or the complete new one, never a
partial file.

>>> import os, tempfile
>>> folder = tempfile.mkdtemp()
>>> target = os.path.join(folder, "hello.txt")
>>> with atomic_write(target, "w") as f:
...     _ = f.write("hello")
>>> open(target).read(), sorted(os.listdir(folder))
('hello', ['hello.txt'])
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from typing import IO, Any, Iterator, Union

import numpy as np

from ptycho.errors import DataError

PathLike = Union[str, "os.PathLike[str]"]

#: Modes :func:`atomic_write` accepts: a fresh file, binary or text (UTF-8).
WRITE_MODES = ("wb", "w")

#: Prefix of the temporary files (hidden on POSIX, so a half-written file is never listed
#: as a dataset by a glob such as ``*.npz``).
TMP_PREFIX = ".tmp-"


def _default_file_mode() -> int:
    """Permission bits a freshly created file would get (0o666 minus the umask).

    The umask is read from ``/proc/self/status`` where available (Linux), because reading it
    with :func:`os.umask` needs a set-and-restore that is not thread safe; elsewhere the
    common default 0o022 is assumed.
    """
    umask = 0o022
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    umask = int(line.split()[1], 8)
                    break
    except (OSError, ValueError):
        pass
    return 0o666 & ~umask


@contextlib.contextmanager
def atomic_write(path: PathLike, mode: str = "wb") -> Iterator[IO[Any]]:
    """Open a temporary file next to ``path``; on success rename it onto ``path``.

    ``mode`` is ``"wb"`` (binary) or ``"w"`` (text, UTF-8). The folder must exist. On any
    exception inside the ``with`` block (or while flushing), the temporary file is deleted,
    ``path`` is untouched, and the exception propagates. The new file keeps the permission
    bits of the file it replaces, or gets the usual ``0o666 & ~umask`` when it is new.

    >>> import os, tempfile
    >>> target = os.path.join(tempfile.mkdtemp(), "data.bin")
    >>> with atomic_write(target) as f:
    ...     _ = f.write(b"\\x00\\x01")
    >>> os.path.getsize(target)
    2
    """
    if mode not in WRITE_MODES:
        raise ValueError(f"atomic_write mode must be one of {list(WRITE_MODES)}, got {mode!r}")
    target = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(target))
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"cannot write {target!r}: folder {folder!r} does not exist")
    if os.path.isdir(target):
        raise IsADirectoryError(f"cannot write {target!r}: it is a directory")
    try:
        file_mode = os.stat(target).st_mode & 0o7777
    except FileNotFoundError:
        file_mode = _default_file_mode()
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=TMP_PREFIX + os.path.basename(target) + ".",
                               suffix=".part")
    try:
        encoding = None if "b" in mode else "utf-8"
        with os.fdopen(fd, mode, encoding=encoding) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, file_mode)
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_folder(folder)


def _fsync_folder(folder: str) -> None:
    """Best effort: make the rename itself durable (POSIX only; ignored where unsupported)."""
    if os.name != "posix":
        return
    with contextlib.suppress(OSError):
        dfd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)


def atomic_save_npz(path: PathLike, /, **arrays: Any) -> None:
    """Write ``arrays`` as an uncompressed NPZ archive at exactly ``path``, atomically.

    Unlike :func:`numpy.savez` with a string name, no ``.npz`` suffix is appended: the file
    is written under the name given. Object arrays are refused (nothing is ever pickled).

    >>> import os, tempfile
    >>> target = os.path.join(tempfile.mkdtemp(), "arrays.dat")
    >>> atomic_save_npz(target, a=np.arange(3))
    >>> with np.load(target, allow_pickle=False) as z:
    ...     z["a"].tolist()
    [0, 1, 2]
    """
    prepared = {}
    for key, value in arrays.items():
        arr = np.asarray(value)
        if arr.dtype.hasobject:
            raise DataError(f"cannot save array {key!r}: dtype {arr.dtype} holds Python objects, "
                            "which would need pickle; convert it to a numeric or string dtype")
        prepared[key] = arr
    with atomic_write(path, "wb") as f:
        np.savez(f, allow_pickle=False, **prepared)
