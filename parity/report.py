"""The parity report: per stage, per quantity, errors against the tolerance, and who drifted.

A :class:`Check` is one quantity of one stage (e.g. ``translate / reassemble``): the
comparison of backend A with backend B and, where the float64 reference applies, of each
backend with the reference. It passes when every comparison does. When a reference exists,
:attr:`Check.drifted` names the backend that moved away from it (or ``both``).

The report renders as a text table (:meth:`ParityReport.to_text`) and as JSON
(:meth:`ParityReport.to_dict`, :meth:`ParityReport.write_json`, written atomically), and
names the first failing stage (:attr:`ParityReport.first_failure`).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any, Optional

from ptycho.atomic import PathLike, atomic_write

from parity.compare import Diff, merge
from parity.tolerances import Tolerance

#: The stages of the design, in order: (number, name, title).
STAGES: tuple[tuple[int, str, str], ...] = (
    (1, "physics", "physics forward (illumination, far field)"),
    (2, "translate", "translation, extraction, reassembly"),
    (3, "network", "network forward with identical weights"),
    (4, "loss", "loss values"),
    (5, "gradients", "gradients per weight entry"),
    (6, "optimizer", "k optimizer steps"),
    (7, "bundle", "bundles across backends"),
    (8, "e2e", "end to end: simulate, train, reconstruct"),
)
STAGE_NAMES = tuple(name for _, name, _ in STAGES)
JSON_FORMAT = "ptycho-parity-report"
JSON_VERSION = 1


def _f(x: float) -> Any:
    return float(x) if math.isfinite(x) else str(x)


@dataclass
class Check:
    """One quantity of one stage: A vs B, and A vs reference / B vs reference when one exists."""

    stage: str
    quantity: str
    tolerance_key: str
    tolerance: Tolerance
    ab: list[Diff] = field(default_factory=list)
    a_ref: Optional[list[Diff]] = None
    b_ref: Optional[list[Diff]] = None
    note: str = ""

    @property
    def has_reference(self) -> bool:
        return self.a_ref is not None or self.b_ref is not None

    @property
    def ok(self) -> bool:
        return all(d.ok for d in self.ab + (self.a_ref or []) + (self.b_ref or []))

    def drifted(self, a_name: str = "A", b_name: str = "B") -> Optional[str]:
        """Which side left the reference: a backend's name, ``both``, ``none``; None without one.

        When both sides pass against the reference but not against each other, the side with
        the larger error against the reference is named with a ``?``.
        """
        if not self.has_reference:
            return None
        a_ok = all(d.ok for d in self.a_ref or [])
        b_ok = all(d.ok for d in self.b_ref or [])
        if not a_ok and not b_ok:
            return "both"
        if not a_ok:
            return a_name
        if not b_ok:
            return b_name
        if all(d.ok for d in self.ab):
            return "none"
        if self.a_ref is None or self.b_ref is None:
            return "?"
        ra, rb = merge(self.a_ref).ratio, merge(self.b_ref).ratio
        return f"{a_name if ra >= rb else b_name}?"

    def headline(self) -> Diff:
        """The diff the table shows: A vs B when there is one, else the worst reference diff."""
        if self.ab:
            return merge(self.ab).worst
        pool = (self.a_ref or []) + (self.b_ref or [])
        return merge(pool).worst

    def to_dict(self, a_name: str = "A", b_name: str = "B") -> dict[str, Any]:
        def side(diffs):
            if diffs is None:
                return None
            m = merge(diffs)
            return {"ok": m.ok, "max_abs": _f(m.max_abs), "max_rel": _f(m.max_rel),
                    "ratio": _f(m.ratio), "worst": m.worst.name if m.worst else None,
                    "leaves": [d.to_dict() for d in diffs]}
        return {"stage": self.stage, "quantity": self.quantity, "ok": self.ok,
                "tolerance_key": self.tolerance_key, "tolerance": self.tolerance.to_dict(),
                "drifted": self.drifted(a_name, b_name), "note": self.note,
                "a_vs_b": side(self.ab) if self.ab else None,
                "a_vs_reference": side(self.a_ref), "b_vs_reference": side(self.b_ref)}


@dataclass
class StageResult:
    """The checks of one stage, its wall time, and the error that stopped it, if any."""

    number: int
    name: str
    title: str
    checks: list[Check] = field(default_factory=list)
    seconds: float = 0.0
    error: Optional[str] = None

    @property
    def ok(self) -> bool:
        return self.error is None and bool(self.checks) and all(c.ok for c in self.checks)

    @property
    def failing(self) -> list[Check]:
        return [c for c in self.checks if not c.ok]

    def to_dict(self, a_name: str = "A", b_name: str = "B") -> dict[str, Any]:
        return {"number": self.number, "name": self.name, "title": self.title, "ok": self.ok,
                "seconds": round(self.seconds, 4), "error": self.error,
                "checks": [c.to_dict(a_name, b_name) for c in self.checks]}


@dataclass
class ParityReport:
    """Everything one :func:`parity.run` found."""

    backend_a: str
    backend_b: str
    versions: dict[str, str]
    config: dict[str, Any]
    seed: int
    stages: list[StageResult] = field(default_factory=list)
    seconds: float = 0.0
    reference: str = "numpy float64 (ptycho.physics, parity.reference)"

    @property
    def passed(self) -> bool:
        """Every stage ran and every check passed."""
        return bool(self.stages) and all(s.ok for s in self.stages)

    @property
    def first_failure(self) -> Optional[StageResult]:
        """The first stage (in design order) that failed or errored; None when all passed."""
        for s in self.stages:
            if not s.ok:
                return s
        return None

    def stage(self, name: str) -> StageResult:
        for s in self.stages:
            if s.name == name:
                return s
        raise KeyError(f"stage {name!r} was not run; ran {[s.name for s in self.stages]}")

    # -- rendering ----------------------------------------------------------------------------
    def to_text(self, verbose: bool = False) -> str:
        """The table: stage, quantity [worst leaf], max abs, max rel, tolerance, error as a
        multiple of the tolerance, verdict, relative error of A / B against the reference, and
        which side drifted. Failing checks get a line naming the worst element."""
        a, b = self.backend_a, self.backend_b
        lines = [f"parity: A = {a} ({self.versions.get(a, '?')}), B = {b} "
                 f"({self.versions.get(b, '?')}), reference = {self.reference}; seed {self.seed}"]
        head = (f"{'stage':12s} {'quantity [worst leaf]':52s} {'max abs':>9s} {'max rel':>9s} "
                f"{'tolerance':>15s} {'x tol':>7s} {'verdict':7s} {'ref rel A / B':>17s}  drifted")
        lines += [head, "-" * len(head)]
        for s in self.stages:
            label = f"{s.number} {s.name}"
            if s.error is not None:
                lines.append(f"{label:12s} {'(the stage raised)':52s} {'':>9s} {'':>9s} "
                             f"{'':>15s} {'':>7s} ERROR")
                lines.append(f"{'':12s}   ! {s.error.strip().splitlines()[-1][:150]}")
                label = ""
            for c in s.checks:
                lines += self._rows(c, label, a, b, verbose)
                label = ""
        lines.append("-" * len(head))
        times = ", ".join(f"{s.number} {s.name} {s.seconds:.2f}s" for s in self.stages)
        lines.append(f"time per stage: {times}; total {self.seconds:.2f}s")
        ff = self.first_failure
        if ff is None:
            lines.append(f"result: PASS ({len(self.stages)} stages, "
                         f"{sum(len(s.checks) for s in self.stages)} checks)")
        else:
            what = (f"raised {ff.error.strip().splitlines()[-1][:160]}" if ff.error else
                    "; ".join(f"{c.quantity} (drifted: {c.drifted(a, b) or 'no reference'})"
                              for c in ff.failing))
            lines.append(f"result: FAIL; first failing stage: {ff.number} {ff.name} "
                         f"({ff.title}): {what}")
        return "\n".join(lines)

    @staticmethod
    def _leaf(c: Check, d: Diff) -> str:
        return d.name[len(c.quantity) + 1:] if d.name.startswith(c.quantity + ".") else ""

    def _rows(self, c: Check, label: str, a: str, b: str, verbose: bool) -> list[str]:
        d = c.headline()
        leaf = self._leaf(c, d) if d is not None else ""
        qty = f"{c.quantity} [{leaf}]" if leaf else c.quantity
        if len(qty) > 52:
            qty = qty[:51] + "~"
        if d is None or d.problem:
            nums, ratio = f"{'-':>9s} {'-':>9s}", f"{'inf' if d is not None else '-':>7s}"
        else:
            nums = f"{d.max_abs:9.2e} {d.max_rel:9.2e}"
            ratio = f"{d.ratio:7.3f}" if d.ratio < 1e3 else f"{d.ratio:7.1e}"
        ref = ""
        if c.has_reference:
            parts = [f"{merge(x).max_rel:.1e}" if x is not None else "-" for x in (c.a_ref, c.b_ref)]
            ref = " / ".join(parts)
        rows = [f"{label:12s} {qty:52s} {nums} {c.tolerance.describe():>15s} {ratio} "
                f"{'pass' if c.ok else 'FAIL':7s} {ref:>17s}  {c.drifted(a, b) or '-'}"]
        if not c.ok:
            sides = [("A~B", c.ab), (f"{a}~ref", c.a_ref or []), (f"{b}~ref", c.b_ref or [])]
            for side, diffs in sides:
                bad = [x for x in diffs if not x.ok]
                if bad:
                    rows.append(f"{'':12s}   ! {side}: {merge(bad).worst.summary()}"
                                + (f" (+{len(bad) - 1} more leaves)" if len(bad) > 1 else ""))
        if verbose:
            for x in c.ab or (c.a_ref or []) + (c.b_ref or []):
                rows.append(f"{'':12s}     {x.summary()}")
        return rows

    def to_dict(self) -> dict[str, Any]:
        ff = self.first_failure
        return {"format": JSON_FORMAT, "format_version": JSON_VERSION,
                "passed": self.passed,
                "first_failing_stage": ff.name if ff else None,
                "first_failing_stage_number": ff.number if ff else None,
                "backend_a": self.backend_a, "backend_b": self.backend_b,
                "versions": self.versions, "reference": self.reference,
                "seed": self.seed, "config": self.config, "seconds": round(self.seconds, 4),
                "stages": [s.to_dict(self.backend_a, self.backend_b) for s in self.stages]}

    def to_json(self, indent: Optional[int] = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent, allow_nan=False)

    def write_json(self, path: PathLike) -> None:
        """Write :meth:`to_json` atomically (temporary file, then rename)."""
        with atomic_write(path, "w") as f:
            f.write(self.to_json() + "\n")
