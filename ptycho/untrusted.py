"""Opening files that may be hostile: regular files only, zip directories checked before use.

Every loader of the library (:func:`ptycho.data.load_npz`, :func:`ptycho.bundle.read_bundle`,
:func:`ptycho.config.load_config`, :func:`ptycho.simulate.load_image`) opens its file through
:func:`open_regular`, which follows symbolic links and refuses anything that is not a regular
file: a FIFO (named pipe) would block the reader forever, ``/dev/zero`` or ``/dev/urandom``
would feed it without end, a socket or a folder cannot be read as a file. The path is checked
with :func:`os.stat` before it is opened (a device is never opened, opening some has side
effects), opened with ``O_NONBLOCK`` (opening a FIFO that replaced the file in between does not
block) and checked again on the open descriptor.

Zip archives (NPZ scans, bundles) are checked by :func:`check_zip_directory` before
:mod:`zipfile` parses their central directory (its size and its number of entries, as the end
record declares them), and each member by :func:`check_zip_member` before it is read: its
declared sizes must fit in the file, and a compressed member may not inflate more than
:data:`MAX_COMPRESSION_RATIO` times (beyond :data:`RATIO_GRACE_BYTES`).

>>> import os, tempfile
>>> folder = tempfile.mkdtemp()
>>> fifo = os.path.join(folder, "scan.npz")
>>> os.mkfifo(fifo)
>>> open_regular(fifo, ValueError, "an NPZ file")
Traceback (most recent call last):
...
ValueError: '...scan.npz': expected an NPZ file, but the path is not a regular file (it is a FIFO (named pipe))
"""

from __future__ import annotations

import errno
import os
import stat
import struct
import zipfile
from typing import BinaryIO, Optional, Union

import numpy as np

PathLike = Union[str, "os.PathLike[str]"]

#: A compressed zip member may inflate to at most this many times its compressed size ...
MAX_COMPRESSION_RATIO = 200
#: ... once it inflates past this many bytes (small members are never refused for their ratio).
RATIO_GRACE_BYTES = 64 << 20
#: Largest central directory (bytes) a loader lets :mod:`zipfile` parse (about 40,000 entries).
MAX_ZIP_DIRECTORY_BYTES = 4 << 20

_KINDS = ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO (named pipe)"),
          (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
          (stat.S_ISSOCK, "a socket"))


def file_kind(mode: int) -> str:
    """What a ``st_mode`` describes, in words (``"a regular file"``, ``"a FIFO (named pipe)"``, ...).

    >>> import stat
    >>> file_kind(stat.S_IFREG | 0o644), file_kind(stat.S_IFCHR)
    ('a regular file', 'a character device')
    """
    if stat.S_ISREG(mode):
        return "a regular file"
    for test, name in _KINDS:
        if test(mode):
            return name
    return "not a file"


def _shown(name: str) -> str:
    real = os.path.realpath(name)
    if os.path.islink(name) or (real != os.path.abspath(name) and os.path.exists(real)
                                and os.path.basename(real) != os.path.basename(name)):
        return f"{name!r} (a link to {real!r})"
    return repr(name)


def open_regular(path: PathLike, error: type, expected: str = "a regular file") -> BinaryIO:
    """Open ``path`` for binary reading if, after resolving links, it is a regular file.

    Raises ``error`` (the caller's typed error) naming the path and saying what it is when it
    is a folder, FIFO, device or socket, or cannot be read (a link loop, no permission);
    raises :class:`FileNotFoundError` (``filename`` set) when it does not exist, so that each
    loader reports a missing file its own documented way. Never blocks on a FIFO.
    """
    name = os.fspath(path)
    try:
        st = os.stat(name)
    except FileNotFoundError:
        raise FileNotFoundError(errno.ENOENT, "no such file", name) from None
    except (OSError, ValueError) as exc:     # a link loop, a name too long, a NUL byte ...
        raise error(f"{name!r}: cannot be read ({_reason(exc)})") from None
    if not stat.S_ISREG(st.st_mode):
        raise error(_not_regular(name, expected, st.st_mode))
    try:
        fd = os.open(name, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
                     | getattr(os, "O_NOCTTY", 0) | getattr(os, "O_BINARY", 0))
    except FileNotFoundError:
        raise FileNotFoundError(errno.ENOENT, "no such file", name) from None
    except OSError as exc:
        raise error(f"{name!r}: cannot be read ({_reason(exc)})") from None
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):           # replaced between the stat and the open
            raise error(_not_regular(name, expected, mode))
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def _not_regular(name: str, expected: str, mode: int) -> str:
    if stat.S_ISDIR(mode):
        return f"{_shown(name)}: expected {expected}, but the path is a directory"
    return (f"{_shown(name)}: expected {expected}, but the path is not a regular file (it is "
            f"{file_kind(mode)})")


def _reason(exc: BaseException, limit: int = 200) -> str:
    text = (exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)) \
        or type(exc).__name__
    return text if len(text) <= limit else text[:limit] + " ..."


def read_npy_header(f) -> tuple[tuple, bool, np.dtype]:
    """``(shape, fortran_order, dtype)`` of the ``.npy`` file that ``f`` is positioned at,
    leaving ``f`` at the start of the data (nothing of the data is read, nothing unpickled).

    Raises ``ValueError`` (or numpy's parser's ``SyntaxError`` / ``tokenize.TokenError`` for a
    mangled header) for anything but a version 1.0 or 2.0 header.

    >>> import io
    >>> buf = io.BytesIO(); np.save(buf, np.zeros((2, 3), np.float32)); _ = buf.seek(0)
    >>> read_npy_header(buf)
    ((2, 3), False, dtype('float32'))
    """
    version = np.lib.format.read_magic(f)
    if version == (1, 0):
        shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
    elif version == (2, 0):
        shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
    else:
        raise ValueError(f"unsupported .npy format version {version}")
    return tuple(shape), bool(fortran), dtype


# --------------------------------------------------------------------------------------------
# zip archives

_END = struct.Struct("<4s4H2LH")            # end of central directory record, 22 bytes
_END64_LOCATOR = struct.Struct("<4sLQL")    # zip64 end of central directory locator, 20 bytes
_END64 = struct.Struct("<4sQ2H2L4Q")        # zip64 end of central directory record, 56 bytes
_LOCAL_HEADER_SIZE = 30


def _end_record(f: BinaryIO) -> Optional[tuple[int, int]]:
    """(entries, directory bytes) as the archive's end record declares them, found the way
    :mod:`zipfile` finds it; None when there is none (zipfile then refuses the file)."""
    f.seek(0, os.SEEK_END)
    size = f.tell()
    if size < _END.size:
        return None
    f.seek(size - _END.size)
    data = f.read(_END.size)
    where = None
    if data[:4] == b"PK\x05\x06" and data[-2:] == b"\0\0":
        record, where = data, size - _END.size
    else:
        start = max(size - (1 << 16) - _END.size, 0)
        f.seek(start)
        tail = f.read()
        i = tail.rfind(b"PK\x05\x06")
        if i < 0 or len(tail) - i < _END.size:
            return None
        record, where = tail[i:i + _END.size], start + i
    fields = _END.unpack(record)
    entries, directory = fields[4], fields[5]
    # a zip64 archive keeps the real numbers in the records just before the end record
    if where >= _END64_LOCATOR.size + _END64.size:
        f.seek(where - _END64_LOCATOR.size)
        locator = f.read(_END64_LOCATOR.size)
        if locator[:4] == b"PK\x06\x07":
            f.seek(where - _END64_LOCATOR.size - _END64.size)
            record64 = f.read(_END64.size)
            if record64[:4] == b"PK\x06\x06":
                fields64 = _END64.unpack(record64)
                entries, directory = fields64[7], fields64[8]
    return entries, directory


def check_zip_directory(f: BinaryIO, name: str, error: type, max_entries: int,
                        max_bytes: int = MAX_ZIP_DIRECTORY_BYTES) -> None:
    """Refuse an archive whose central directory is too large to parse, before zipfile does.

    zipfile reads the whole directory and builds an object per entry; a small file can declare
    millions of entries. ``f`` is the open archive (its position is left anywhere).
    """
    found = _end_record(f)
    if found is None:
        return
    entries, directory = found
    if entries > max_entries:
        raise error(f"{name!r}: the zip directory declares {entries} members, more than the "
                    f"limit of {max_entries}")
    if directory > max_bytes:
        raise error(f"{name!r}: the zip directory declares {directory} bytes, more than the "
                    f"limit of {max_bytes}")


def check_zip_member(info: zipfile.ZipInfo, file_size: int, name: str, error: type,
                     whole: bool = True, limit_error: Optional[type] = None) -> None:
    """Refuse a member whose declared sizes lie (``error``) or whose compression ratio is a
    bomb's (``limit_error``, default ``error``).

    ``file_size`` is the archive's size in bytes; ``whole``: the member is about to be read
    whole (False: only its first bytes, so only that it lies inside the file is checked).
    Nothing is read: the numbers are those of the central directory, which bound what
    zipfile reads and inflates.
    """
    member = info.filename
    end = info.header_offset + _LOCAL_HEADER_SIZE + info.compress_size
    if info.header_offset < 0 or end > file_size:
        raise error(f"{name!r}: member {member!r} declares {info.compress_size} bytes at offset "
                    f"{info.header_offset}, past the end of the {file_size}-byte file")
    if not whole:
        return
    if info.compress_type == zipfile.ZIP_STORED:
        if info.file_size != info.compress_size and not info.flag_bits & 0x1:
            raise error(f"{name!r}: member {member!r} is stored uncompressed but declares "
                        f"{info.file_size} bytes of data in {info.compress_size}")
        return
    if (info.file_size > RATIO_GRACE_BYTES
            and info.file_size > MAX_COMPRESSION_RATIO * max(info.compress_size, 1)):
        ratio = info.file_size / max(info.compress_size, 1)
        raise (limit_error or error)(f"{name!r}: member {member!r} would inflate {info.compress_size} bytes to "
                    f"{info.file_size} (ratio {ratio:.0f}:1, more than the limit of "
                    f"{MAX_COMPRESSION_RATIO}:1 for members over {RATIO_GRACE_BYTES >> 20} MiB); "
                    "a zip bomb, or data to store uncompressed (np.savez, ptycho.data.save_npz)")
