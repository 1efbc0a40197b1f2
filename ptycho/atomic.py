"""Atomic file writes: every file the library writes goes through here.

A write goes to a uniquely named temporary file in the target's folder, is flushed and
fsync'ed, and is then renamed onto the target with :func:`os.replace` (atomic on POSIX and
Windows when both names are on the same file system, which a same-folder temporary ensures).
If anything fails before the rename, the temporary file is removed and an existing target is
left exactly as it was: a reader sees either the old file or the complete new one, never a
partial file. A write that fails for lack of space (or quota, or a file-size limit) raises an
:class:`OSError` whose ``filename`` is the target, so the message says which file it was.

A process that is killed while writing leaves its temporary file,
``.tmp-<name>.<pid>@<host>.<random>.part``; :func:`remove_stale_parts` removes those whose
writer (a process of this host) is no longer running (the ``ptycho`` commands call it when they
take an output folder, :mod:`ptycho.outdir`).

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
import errno
import os
import re
import socket
import stat
import tempfile
from typing import IO, Any, Iterator, Optional, Union

import numpy as np

from ptycho.errors import DataError
from ptycho.untrusted import file_kind

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
        st = os.stat(target)
    except FileNotFoundError:
        file_mode = _default_file_mode()
    else:
        if not stat.S_ISREG(st.st_mode):
            # the rename would put a file where a device, FIFO or socket was (/dev/null!)
            raise OSError(errno.EINVAL, f"not a regular file ({file_kind(st.st_mode)}); writing "
                                        "replaces the file, which would destroy it", target)
        file_mode = st.st_mode & 0o7777
    try:
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=_part_prefix(target), suffix=".part")
    except OSError as err:
        raise OSError(err.errno, f"{err.strerror} (creating a temporary file in {folder!r} to "
                                 "write it)", target) from err
    try:
        encoding = None if "b" in mode else "utf-8"
        with os.fdopen(fd, mode, encoding=encoding) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, file_mode)
        os.replace(tmp, target)
    except OSError as err:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if err.filename is None and err.errno in _WRITE_ERRNOS:
            raise OSError(err.errno, f"{err.strerror} while writing it (nothing was written; an "
                                     "earlier file of that name is unchanged)", target) from err
        raise
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_folder(folder)


#: Errors of a write itself (no space, quota, file size limit, I/O): reported with the file name.
_WRITE_ERRNOS = frozenset(getattr(errno, name) for name in ("ENOSPC", "EDQUOT", "EFBIG", "EIO")
                          if hasattr(errno, name))

#: A temporary file of :func:`atomic_write`: target name, writer's pid and host, random part.
_PART = re.compile(r"^\.tmp-(?P<target>.+)\.(?P<pid>[0-9]+)@(?P<host>[A-Za-z0-9-]*)"
                   r"\.[A-Za-z0-9_]+\.part$")


def _host_tag() -> str:
    """This host's name as it appears in temporary file names (first label, [A-Za-z0-9-])."""
    return re.sub(r"[^A-Za-z0-9-]", "", socket.gethostname().split(".")[0])[:32]


def _part_prefix(target: str) -> str:
    return f"{TMP_PREFIX}{os.path.basename(target)}.{os.getpid()}@{_host_tag()}."


def _writer_alive(pid: int) -> bool:
    """Whether process ``pid`` of this host runs (conservatively True when unsure)."""
    if os.name != "posix" or pid == os.getpid():
        return True       # (os.kill(pid, 0) would send CTRL_C_EVENT on Windows)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:       # PermissionError: it exists, it belongs to someone else
        return True
    return True


def remove_stale_parts(folder: PathLike, targets=None) -> list[str]:
    """Remove the temporary files that killed writers left in ``folder``; return their names.

    Only temporaries of :func:`atomic_write` written by a process of this host that no longer
    runs are removed (a live writer's file, another host's, or a file of another name pattern
    is never touched). ``targets``: only temporaries of these file names (default: all).

    >>> import os, tempfile
    >>> folder = tempfile.mkdtemp()
    >>> dead = f".tmp-model.zip.{2 ** 22 + 12345}@{_host_tag()}.abc123_x.part"
    >>> open(os.path.join(folder, dead), "wb").close()
    >>> remove_stale_parts(folder) == [dead], os.listdir(folder)
    (True, [])
    """
    host = _host_tag()
    removed = []
    try:
        names = os.listdir(folder)
    except OSError:
        return removed
    for name in sorted(names):
        match = _PART.match(name)
        if (match is None or match["host"] != host
                or (targets is not None and match["target"] not in targets)
                or _writer_alive(int(match["pid"]))):
            continue
        with contextlib.suppress(FileNotFoundError, IsADirectoryError, PermissionError):
            os.unlink(os.path.join(folder, name))
            removed.append(name)
    return removed


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


#: Byte locked on platforms without flock (Windows: msvcrt locks a range, and reading a locked
#: range fails, so the lock sits past the holder's description).
_MSVCRT_LOCK_OFFSET = 1 << 20


def _try_lock(fd: int) -> bool:
    """Take an exclusive, non-blocking lock on ``fd``; False when another process holds it."""
    try:
        import fcntl
    except ImportError:                          # Windows (not tested in CI)
        import msvcrt

        os.lseek(fd, _MSVCRT_LOCK_OFFSET, os.SEEK_SET)
        try:
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
        except OSError:
            return False
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as err:
        if err.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            return False
        raise
    return True


def lock_file(path: PathLike, description: str) -> Optional[int]:
    """Take the lock file ``path`` (created if needed) for this process and write
    ``description`` into it; return its descriptor, or None when another process holds it.

    The lock is an exclusive ``flock`` on the open file: the kernel releases it when the
    process ends, however it ends, so a killed holder never leaves a stale lock. A lock file
    is the one write that cannot be atomic (its identity is the lock); it holds only the
    holder's description, for the message a second process shows. Release with
    :func:`unlock_file`.

    >>> import os, tempfile
    >>> p = os.path.join(tempfile.mkdtemp(), ".lock")
    >>> fd = lock_file(p, "pid 1")
    >>> open(p).read(), lock_file(p, "pid 2")
    ('pid 1', None)
    >>> unlock_file(fd, p); os.path.exists(p)
    False
    """
    name = os.fspath(path)
    for _ in range(100):
        # never through a link, never blocking (a FIFO planted there), never a non-file: the
        # description is written over what is there (a link to /etc/passwd must not be truncated)
        try:
            fd = os.open(name, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0)
                         | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0), 0o644)
        except OSError as err:
            if err.errno == errno.ELOOP:
                raise OSError(errno.ELOOP, "the lock file is a symbolic link; remove it", name) \
                    from None
            raise
        try:
            mode = os.fstat(fd).st_mode
            if not stat.S_ISREG(mode):
                raise OSError(errno.EINVAL, f"the lock file is not a regular file "
                                            f"({file_kind(mode)}); remove it", name)
            if not _try_lock(fd):
                os.close(fd)
                return None
            try:
                same = os.path.samestat(os.fstat(fd), os.stat(name))
            except FileNotFoundError:
                same = False
            if same:
                os.ftruncate(fd, 0)
                os.lseek(fd, 0, os.SEEK_SET)
                os.write(fd, description.encode())
                return fd
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)              # its holder removed that file on the way out: lock the new one
    raise OSError(errno.EBUSY, "could not take the lock", name)


def unlock_file(fd: int, path: PathLike) -> None:
    """Remove the lock file ``path`` (while still holding it: nobody locks a file on its way
    out) and release the lock taken by :func:`lock_file`."""
    with contextlib.suppress(OSError):
        if os.path.samestat(os.fstat(fd), os.stat(path)):
            os.unlink(path)
    os.close(fd)


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
