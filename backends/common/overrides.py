"""How a backend replaces a shared composite with its own, faster version.

A composite decorated with :func:`overridable` runs the function of the same name in the
backend's ops namespace when there is one (same signature, ``ops`` first), else itself. A
backend overrides a composite only where a benchmark shows the gain; ``benchmarks/README.md``
lists each override with its figure, and :func:`overrides_of` tells which a backend has.
"""

from __future__ import annotations

import functools

#: Names of the composites a backend may override (each decorated with :func:`overridable`).
OVERRIDABLE = ("adam_update",)


def overridable(fn):
    """Mark ``fn(ops, ...)`` as a composite that an ops namespace may replace."""
    if fn.__name__ not in OVERRIDABLE:
        raise ValueError(f"{fn.__name__!r} is not listed in OVERRIDABLE")

    @functools.wraps(fn)
    def dispatch(ops, *args, **kwargs):
        return getattr(ops, fn.__name__, fn)(ops, *args, **kwargs)

    dispatch.shared = fn
    return dispatch


def overrides_of(ops) -> list[str]:
    """The composites that ``ops`` replaces with its own functions."""
    return [name for name in OVERRIDABLE if hasattr(ops, name)]
