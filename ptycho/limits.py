"""The memory budget: the one number every size check of the library compares against.

An input can ask for any amount of memory: an NPZ header may declare a 256 GiB array, a bundle's
config may describe a network that needs tens of GiB per batch, one scan position moved far away
makes the reconstruction canvas huge, ``simulate`` may be asked for 10^8 patterns. Each of these
is computed from the input *before* the memory is taken and compared with the budget; what would
exceed it is refused with an error that says what needed how much, and how to change the budget.

The budget is read from the environment variable :data:`ENV_VAR` (``PTYCHO_MAX_BYTES``) at the
moment of each check (nothing is cached): a number of bytes, optionally with a unit,
``2000000000``, ``1.5e9``, ``500M``, ``8G``, ``8GiB``, ``512 MiB``. SI units (k, M, G, T) are
powers of 1000, IEC units (Ki, Mi, Gi, Ti) powers of 1024; a trailing ``B`` is optional. Unset
(or empty), the budget is :data:`DEFAULT_FRACTION` of the memory this process may use: the
physical memory, or less where a cgroup (container) memory limit or ``ulimit -v`` says so; where
none of these can be read, :data:`FALLBACK_BYTES`.

>>> import os
>>> os.environ[ENV_VAR] = "1.5GiB"
>>> memory_budget(), format_bytes(memory_budget())
(1610612736, '1.5 GiB')
>>> check_bytes(2 << 30, "a 2 GiB array")
Traceback (most recent call last):
...
ptycho.errors.ResourceLimitError: a 2 GiB array needs 2 GiB, more than the memory budget of 1.5 GiB (PTYCHO_MAX_BYTES=1.5GiB); set PTYCHO_MAX_BYTES to change it
>>> del os.environ[ENV_VAR]
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass
from typing import Callable, Optional

from ptycho.errors import ConfigError, ResourceLimitError

#: The environment variable that sets the budget (bytes, units allowed).
ENV_VAR = "PTYCHO_MAX_BYTES"
#: Share of the usable memory that is the budget when :data:`ENV_VAR` is not set.
DEFAULT_FRACTION = 0.5
#: The budget when :data:`ENV_VAR` is not set and the machine's memory cannot be read.
FALLBACK_BYTES = 4 << 30

_UNITS = {"": 1, "k": 10 ** 3, "m": 10 ** 6, "g": 10 ** 9, "t": 10 ** 12,
          "ki": 1 << 10, "mi": 1 << 20, "gi": 1 << 30, "ti": 1 << 40}
_SIZE = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*([kKmMgGtT]i?)?[bB]?\s*$")


@dataclass(frozen=True)
class Budget:
    """The budget in bytes and where it came from (for messages)."""

    bytes: int
    source: str


def parse_bytes(text: str) -> int:
    """A size such as ``"8GiB"``, ``"500M"``, ``"1e9"`` in bytes (a ``ConfigError`` otherwise).

    >>> parse_bytes("8GiB"), parse_bytes("500 M"), parse_bytes("1e9"), parse_bytes("4096")
    (8589934592, 500000000, 1000000000, 4096)
    """
    match = _SIZE.match(text)
    if not match:
        raise ConfigError(f"{ENV_VAR}={text[:80]!r}: expected a number of bytes such as "
                          "2000000000, 500M, 8G or 8GiB")
    value = float(match.group(1)) * _UNITS[(match.group(2) or "").lower()]
    if not math.isfinite(value) or value < 1:
        raise ConfigError(f"{ENV_VAR}={text[:80]!r}: the budget must be at least 1 byte")
    return int(value)


def format_bytes(n: float) -> str:
    """``n`` bytes in binary units, three significant digits.

    >>> format_bytes(512), format_bytes(3 << 20), format_bytes(1.5e12), format_bytes(10 ** 400)
    ('512 B', '3 MiB', '1.36 TiB', 'more than 1e+300 B')
    """
    if n > 1e300:                  # an int a float cannot hold (an absurd request)
        return "more than 1e+300 B"
    n = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if abs(n) < 1024 or unit == "PiB":
            return f"{n:.3g} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def _read_int(path: str) -> Optional[int]:
    try:
        with open(path, encoding="ascii") as f:
            text = f.read(64).strip()
    except (OSError, UnicodeDecodeError):
        return None
    return int(text) if text.isdigit() else None     # cgroup v2 writes "max" for no limit


def usable_memory() -> Optional[int]:
    """Bytes this process may use: physical memory, a cgroup limit, ``ulimit -v`` (smallest).

    None where none of them can be read.
    """
    limits = []
    try:
        limits.append(os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (AttributeError, ValueError, OSError):
        pass
    for path in ("/sys/fs/cgroup/memory.max",                       # cgroup v2
                 "/sys/fs/cgroup/memory/memory.limit_in_bytes"):     # cgroup v1
        value = _read_int(path)
        if value is not None and value < (1 << 60):                  # v1 "no limit" is ~2**63
            limits.append(value)
    try:
        import resource

        soft = resource.getrlimit(resource.RLIMIT_AS)[0]
        if soft != resource.RLIM_INFINITY and soft > 0:
            limits.append(soft)
    except (ImportError, AttributeError, ValueError, OSError):
        pass
    limits = [v for v in limits if v > 0]
    return min(limits) if limits else None


def current_budget() -> Budget:
    """The budget now: :data:`ENV_VAR` when set, else the default (see the module docstring)."""
    text = os.environ.get(ENV_VAR, "").strip()
    if text:
        return Budget(parse_bytes(text), f"{ENV_VAR}={text}")
    usable = usable_memory()
    if usable is None:
        return Budget(FALLBACK_BYTES, f"the default when {ENV_VAR} is unset and the machine's "
                                      "memory is unknown")
    return Budget(int(usable * DEFAULT_FRACTION),
                  f"{DEFAULT_FRACTION:g} of the {format_bytes(usable)} this process may use; "
                  f"{ENV_VAR} is unset")


def memory_budget() -> int:
    """The budget in bytes (see :func:`current_budget`)."""
    return current_budget().bytes


def check_bytes(nbytes: float, what: str, error: type = ResourceLimitError,
                detail: Optional[Callable[[], str]] = None) -> None:
    """Raise ``error`` (a :mod:`ptycho.errors` type) when ``nbytes`` exceeds the budget.

    ``what`` names the thing that needs the memory, e.g. ``"member 'diffraction' (shape ...)"``;
    ``detail()``, called only when the budget is exceeded, adds to the message (e.g. which scan
    positions are to blame).
    """
    budget = current_budget()
    if nbytes > budget.bytes:
        extra = detail() if detail is not None else ""
        raise error(f"{what} needs {format_bytes(nbytes)}, more than the memory budget of "
                    f"{format_bytes(budget.bytes)} ({budget.source}); "
                    + (f"{extra}; " if extra else "") + f"set {ENV_VAR} to change it")
