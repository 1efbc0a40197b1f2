"""Comparison of arrays and of nested named arrays: shape and dtype first, then the numbers.

Policy, in the order it is applied:

1. **structure**: a mapping must have the same keys (missing and extra keys are failures,
   named), a sequence the same length; leaves are numpy arrays or Python / numpy scalars;
2. **shape**: must be equal (no broadcasting);
3. **dtype** (``dtype=``): ``"exact"`` (between two backends: float32 is float32),
   ``"kind"`` (against the float64 reference: real vs complex must agree) or ``"none"``;
4. **non-finite values** (``nan=``): ``"fail"`` (the default: any NaN or Inf on either side
   fails, with counts) or ``"match"`` (NaN and +-Inf must sit at the same places on both
   sides; only the finite elements are then compared);
5. **numbers**: ``err = |a - b|`` (complex: modulus of the difference) against
   ``allowed = atol + rtol * scale`` (see :mod:`parity.tolerances`); ``ratio = err / allowed``
   and an element passes when ``ratio <= 1``. ``max_rel`` is ``err / max(scale, atol / rtol)``
   (the relative error, floored where the values are negligible). The worst element is the
   one with the largest ratio; its index and both values are kept.

>>> import numpy as np
>>> from parity.tolerances import Tolerance
>>> d = compare_arrays(np.float32([1, 2, 3]), np.array([1.0, 2.0, 3.0 + 1e-6]),
...                    Tolerance(1e-6, 0.0, "elementwise", "example"), dtype="kind", reference=True)
>>> d.ok, d.worst_index, f"{d.max_abs:.0e}"
(True, (2,), '1e-06')
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Optional, Sequence, Union

import numpy as np

from parity.tolerances import Tolerance

DTYPE_POLICIES = ("exact", "kind", "none")
NAN_POLICIES = ("fail", "match")


@dataclass
class Diff:
    """The comparison of one array pair (one leaf of a tree)."""

    name: str
    ok: bool
    max_abs: float = 0.0
    max_rel: float = 0.0
    ratio: float = 0.0
    worst_index: Optional[tuple] = None
    worst_a: Any = None
    worst_b: Any = None
    shape: Optional[tuple] = None
    dtype_a: Optional[str] = None
    dtype_b: Optional[str] = None
    nonfinite_a: int = 0
    nonfinite_b: int = 0
    size: int = 0
    problem: Optional[str] = None

    @property
    def identical(self) -> bool:
        """Whether the arrays were equal element for element (an error of exactly zero)."""
        return self.ok and self.problem is None and self.max_abs == 0.0

    def summary(self) -> str:
        """One line: the problem, or the errors and the worst element."""
        if self.problem:
            return f"{self.name}: {self.problem}"
        where = f" at {list(self.worst_index)}" if self.worst_index is not None else ""
        return (f"{self.name}: max abs {self.max_abs:.3g}, max rel {self.max_rel:.3g}, "
                f"{self.ratio:.3g} x tolerance{where} ({_fmt(self.worst_a)} vs {_fmt(self.worst_b)})")

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "ok": self.ok, "max_abs": _json_float(self.max_abs),
                "max_rel": _json_float(self.max_rel), "ratio": _json_float(self.ratio),
                "worst_index": list(self.worst_index) if self.worst_index is not None else None,
                "worst_a": _json_value(self.worst_a), "worst_b": _json_value(self.worst_b),
                "shape": list(self.shape) if self.shape is not None else None,
                "dtype_a": self.dtype_a, "dtype_b": self.dtype_b,
                "nonfinite_a": self.nonfinite_a, "nonfinite_b": self.nonfinite_b,
                "size": self.size, "problem": self.problem}


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, complex):
        return f"{v.real:.6g}{v.imag:+.6g}j"
    return f"{v:.6g}" if isinstance(v, float) else str(v)


def _json_float(x: float) -> Union[float, str]:
    return float(x) if math.isfinite(x) else str(x)


def _json_value(v: Any) -> Any:
    if v is None:
        return None
    if isinstance(v, complex):
        return [_json_float(v.real), _json_float(v.imag)]
    if isinstance(v, float):
        return _json_float(v)
    return v


def _as_array(x: Any) -> np.ndarray:
    if hasattr(x, "numpy") and not isinstance(x, np.ndarray):   # a framework tensor, if one slips in
        x = x.numpy()
    return np.asarray(x)


def _scalar(v: Any) -> Any:
    v = v.item() if hasattr(v, "item") else v
    if isinstance(v, complex):
        return complex(v)
    if isinstance(v, (bool, np.bool_)):
        return bool(v)
    if isinstance(v, (int, np.integer)):
        return int(v)
    return float(v)


def compare_arrays(a: Any, b: Any, tol: Tolerance, *, name: str = "", dtype: str = "exact",
                   nan: str = "fail", reference: bool = False,
                   scale: Optional[float] = None) -> Diff:
    """Compare ``a`` with ``b`` under ``tol``; see the module docstring for the policy.

    ``reference``: ``b`` is the float64 reference, so the scale is taken from ``b`` alone;
    otherwise from ``max(|a|, |b|)`` (neither side is privileged). ``scale`` (a number, or
    an array broadcastable to the arrays' shape) is required when ``tol.scale == "given"``.
    """
    if dtype not in DTYPE_POLICIES:
        raise ValueError(f"dtype policy must be one of {DTYPE_POLICIES}, got {dtype!r}")
    if nan not in NAN_POLICIES:
        raise ValueError(f"nan policy must be one of {NAN_POLICIES}, got {nan!r}")
    a, b = _as_array(a), _as_array(b)
    diff = Diff(name=name, ok=False, shape=tuple(b.shape), dtype_a=str(a.dtype),
                dtype_b=str(b.dtype), size=int(b.size))
    if a.shape != b.shape:
        diff.problem = f"shape {tuple(a.shape)} vs {tuple(b.shape)}"
        return diff
    numeric = "biufc"
    if a.dtype.kind not in numeric or b.dtype.kind not in numeric:
        diff.problem = f"non-numeric dtype {a.dtype} vs {b.dtype}"
        return diff
    if dtype == "exact" and a.dtype != b.dtype:
        diff.problem = f"dtype {a.dtype} vs {b.dtype}"
        return diff
    if dtype == "kind" and (a.dtype.kind == "c") != (b.dtype.kind == "c"):
        diff.problem = f"dtype kind {a.dtype} vs {b.dtype} (complex vs real)"
        return diff
    complex_ = a.dtype.kind == "c" or b.dtype.kind == "c"
    wide = np.complex128 if complex_ else np.float64
    a64, b64 = a.astype(wide), b.astype(wide)
    fa, fb = np.isfinite(a64), np.isfinite(b64)
    diff.nonfinite_a, diff.nonfinite_b = int(a.size - fa.sum()), int(b.size - fb.sum())
    if diff.nonfinite_a or diff.nonfinite_b:
        if nan == "fail":
            diff.problem = (f"non-finite values: {diff.nonfinite_a} in A, {diff.nonfinite_b} in B "
                            "(NaN/Inf policy 'fail')")
            return diff
        same_nan = np.array_equal(np.isnan(a64), np.isnan(b64))
        inf_a, inf_b = np.isinf(a64), np.isinf(b64)
        same_inf = np.array_equal(inf_a, inf_b) and np.array_equal(a64[inf_a], b64[inf_b])
        if not (same_nan and same_inf):
            diff.problem = "non-finite values at different places or of different sign"
            return diff
    if tol.scale == "given" and scale is None:
        raise ValueError(f"{name}: tolerance scale 'given' needs an explicit scale")
    mask = fa & fb
    with np.errstate(invalid="ignore", over="ignore"):
        err = np.where(mask, np.abs(a64 - b64), 0.0)
    mag = np.abs(b64) if reference else np.maximum(np.abs(a64), np.abs(b64))
    mag = np.where(mask, mag, 0.0)
    if tol.scale == "elementwise":
        s = mag
    elif tol.scale == "max":
        s = np.full(mag.shape, float(mag.max()) if mag.size else 0.0)
    else:
        s = np.broadcast_to(np.abs(np.asarray(scale, dtype=np.float64)), mag.shape)
    allowed = tol.atol + tol.rtol * s
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(err == 0, 0.0, np.where(allowed > 0, err / allowed, np.inf))
        floor = tol.atol / tol.rtol if tol.rtol > 0 else 0.0
        denom = np.maximum(s, floor)
        rel = np.where(err == 0, 0.0, np.where(denom > 0, err / denom, np.inf))
    if a.size:
        flat = int(np.argmax(ratio))
        idx = np.unravel_index(flat, a.shape)
        diff.worst_index = tuple(int(i) for i in idx)
        diff.worst_a, diff.worst_b = _scalar(a[idx]), _scalar(b[idx])
        diff.max_abs = float(err.max())
        diff.max_rel = float(rel.max())
        diff.ratio = float(ratio.max())
    diff.ok = diff.ratio <= 1.0
    return diff


Tree = Any
TolFor = Union[Tolerance, Callable[[str], Tolerance]]
ScaleFor = Union[None, float, Mapping[str, float], Callable[[str], Optional[float]]]


def _lookup(spec: Any, name: str) -> Any:
    if callable(spec) and not isinstance(spec, Tolerance):
        return spec(name)
    if isinstance(spec, Mapping):
        return spec.get(name)
    return spec


def _join(prefix: str, key: Any) -> str:
    return f"{prefix}.{key}" if prefix else str(key)


def compare_tree(a: Tree, b: Tree, tol: TolFor, *, name: str = "", dtype: str = "exact",
                 nan: str = "fail", reference: bool = False, scale: ScaleFor = None) -> list[Diff]:
    """Compare two nested structures of named arrays, leaf by leaf; one :class:`Diff` per leaf.

    Mappings are matched by key (sorted by the order of ``b``, then any extra keys of ``a``),
    sequences by position. ``tol`` and ``scale`` may be fixed or functions of the leaf's
    dotted name (``scale`` may also be a mapping from that name).

    >>> from parity.tolerances import Tolerance
    >>> t = Tolerance(0.0, 0.0, "elementwise", "exact")
    >>> [(d.name, d.problem) for d in compare_tree({"w": 1.0}, {"w": 1.0, "b": 2.0}, t)]
    [('w', None), ('b', 'missing in A')]
    """
    out: list[Diff] = []
    if isinstance(a, Mapping) or isinstance(b, Mapping):
        if not (isinstance(a, Mapping) and isinstance(b, Mapping)):
            return [Diff(name=name, ok=False, problem=f"structure: {type(a).__name__} vs "
                                                       f"{type(b).__name__}")]
        for key in b:
            sub = _join(name, key)
            if key not in a:
                out.append(Diff(name=sub, ok=False, problem="missing in A"))
            else:
                out += compare_tree(a[key], b[key], tol, name=sub, dtype=dtype, nan=nan,
                                    reference=reference, scale=scale)
        for key in a:
            if key not in b:
                out.append(Diff(name=_join(name, key), ok=False, problem="missing in B"))
        return out
    seq = (list, tuple)
    if isinstance(a, seq) or isinstance(b, seq):
        if not (isinstance(a, seq) and isinstance(b, seq)):
            return [Diff(name=name, ok=False, problem=f"structure: {type(a).__name__} vs "
                                                       f"{type(b).__name__}")]
        if len(a) != len(b):
            return [Diff(name=name, ok=False, problem=f"length {len(a)} vs {len(b)}")]
        for i, (x, y) in enumerate(zip(a, b)):
            out += compare_tree(x, y, tol, name=_join(name, i), dtype=dtype, nan=nan,
                                reference=reference, scale=scale)
        return out
    return [compare_arrays(a, b, _lookup(tol, name), name=name, dtype=dtype, nan=nan,
                           reference=reference, scale=_lookup(scale, name))]


def worst(diffs: Sequence[Diff]) -> Optional[Diff]:
    """The failing diff with a problem, else the one with the largest ratio (None if empty)."""
    if not diffs:
        return None
    problems = [d for d in diffs if d.problem]
    if problems:
        return problems[0]
    return max(diffs, key=lambda d: d.ratio)


@dataclass
class Merged:
    """Several leaves summarised as one quantity (e.g. every weight entry's gradient)."""

    ok: bool
    max_abs: float
    max_rel: float
    ratio: float
    worst: Optional[Diff]
    leaves: list[Diff] = field(default_factory=list)


def merge(diffs: Sequence[Diff]) -> Merged:
    """Summarise leaves: all must pass; the maxima and the worst leaf are kept."""
    w = worst(diffs)
    return Merged(ok=all(d.ok for d in diffs),
                  max_abs=max((d.max_abs for d in diffs), default=0.0),
                  max_rel=max((d.max_rel for d in diffs), default=0.0),
                  ratio=max((math.inf if d.problem else d.ratio for d in diffs), default=0.0),
                  worst=w, leaves=list(diffs))
