"""Output folders of a run: taken only when the run is about to write, one writer at a time.

:func:`output_folder` is what ``ptycho train`` and ``ptycho reconstruct`` write through, once
their inputs are validated (so a run that fails on its inputs leaves no folder behind):

* it creates the folder (and missing parents) if needed; a path that exists and is not a
  folder is an error;
* it takes the folder's lock, the file :data:`LOCK_NAME` inside it, with an exclusive
  ``flock`` (released by the kernel when the process ends, however it ends: a killed run never
  leaves a stale lock) and writes the holder's pid, host, command and start time into it. A
  second run into the same folder fails at once with :class:`ptycho.errors.OutputFolderBusyError`
  naming the holder's pid, instead of silently overwriting the first run's files;
* it removes the temporary files that killed writers left there
  (:func:`ptycho.atomic.remove_stale_parts`);
* on exit it removes the lock file and, when the run failed and the folder was created by this
  call and holds nothing, the folder (and the parents it created).

The library's own functions (``train(config)`` with ``output_dir``) do not take the lock; a
program that runs several of them into one folder can use :func:`output_folder` itself.

>>> import os, tempfile
>>> run = os.path.join(tempfile.mkdtemp(), "run1")
>>> with output_folder(run, "example") as folder:
...     sorted(os.listdir(folder))
['.ptycho.lock']
>>> os.listdir(run)
[]
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import json
import os
import socket
import time
from typing import Iterator, Optional

from ptycho.atomic import PathLike, lock_file, remove_stale_parts, unlock_file
from ptycho.errors import OutputFolderBusyError

#: Name of the lock file inside an output folder.
LOCK_NAME = ".ptycho.lock"


def _holder(lock_path: str) -> dict:
    """What the lock file says about its holder ({} while it is being written)."""
    for _ in range(20):
        try:
            with open(lock_path, encoding="utf-8") as f:
                text = f.read(4096)
        except OSError:
            return {}
        try:
            found = json.loads(text)
            if isinstance(found, dict):
                return found
        except ValueError:
            pass
        time.sleep(0.01)          # the holder took the lock and is writing its description
    return {}


def _describe_holder(holder: dict) -> str:
    pid = holder.get("pid", "unknown")
    parts = [f"pid {pid}"]
    if holder.get("host"):
        parts.append(f"on {holder['host']}")
    if holder.get("started"):
        parts.append(f"since {holder['started']}")
    command = holder.get("command")
    return (f"{command} " if isinstance(command, str) and command else "") + \
        "(" + ", ".join(str(p) for p in parts) + ")"


def _acquire(folder: str, command: str) -> tuple[int, str]:
    """Lock ``folder``'s lock file, describing this run in it; return (fd, path)."""
    lock_path = os.path.join(folder, LOCK_NAME)
    description = json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                              "command": command,
                              "started": datetime.datetime.now().isoformat(timespec="seconds")})
    fd = lock_file(lock_path, description + "\n")
    if fd is None:
        raise OutputFolderBusyError(
            errno.EBUSY, "the output folder is in use by another run: "
            f"{_describe_holder(_holder(lock_path))}; wait for it to finish or choose another "
            "output folder", folder)
    return fd, lock_path


@contextlib.contextmanager
def output_folder(path: PathLike, command: str = "ptycho") -> Iterator[str]:
    """Create (if needed) and lock the output folder ``path`` for this run; yield its path.

    ``command`` describes the run to a second one that finds the folder busy (e.g.
    ``"ptycho train"``). Raises :class:`ptycho.errors.OutputFolderBusyError` (an
    :class:`OSError`, ``filename`` the folder) when another process holds the lock, and
    :class:`NotADirectoryError` when ``path`` exists and is not a folder. See the module
    docstring for what happens on entry and exit.
    """
    folder = os.fspath(path)
    if os.path.exists(folder) and not os.path.isdir(folder):
        raise NotADirectoryError(errno.ENOTDIR, "the output folder exists and is not a folder",
                                 folder)
    created = _missing_ancestors(folder)
    os.makedirs(folder, exist_ok=True)
    try:
        fd, lock_path = _acquire(folder, command)
    except BaseException:
        _remove_if_empty(created)
        raise
    ok = False
    try:
        remove_stale_parts(folder)
        yield folder
        ok = True
    finally:
        unlock_file(fd, lock_path)
        if not ok:
            _remove_if_empty(created)


def _missing_ancestors(folder: str) -> list[str]:
    """``folder`` and its ancestors that do not exist yet, deepest first."""
    missing: list[str] = []
    current: Optional[str] = os.path.abspath(folder)
    while current and not os.path.exists(current):
        missing.append(current)
        parent = os.path.dirname(current)
        current = parent if parent != current else None
    return missing


def _remove_if_empty(created: list[str]) -> None:
    for folder in created:                       # deepest first
        try:
            os.rmdir(folder)
        except OSError:                          # not empty (or gone): keep it and its parents
            return
