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
        """The table: stage, quantity, max abs, max rel, tolerance, ratio, verdict, drift."""
        a, b = self.backend_a, self.backend_b
        lines = [f"parity: A = {a} ({self.versions.get(a, '?')}), B = {b} "
                 f"({self.versions.get(b, '?')}), reference = {self.reference}; seed {self.seed}"]
        head = (f"{'stage':14s} {'quantity':34s} {'max abs':>9s} {'max rel':>9s} "
                f"{'tolerance':>13s} {'x tol':>7s} {'verdict':7s} {'ref rel A / B':>19s}  drifted")
        lines += [head, "-" * len(head)]
        for s in self.stages:
            label = f"{s.number} {s.name}"
            if s.error is not None:
                lines.append(f"{label:14s} {'(stage raised)':34s} {'':>9s} {'':>9s} {'':>13s} "
                             f"{'':>7s} {'ERROR':7s}")
                lines.append(f"{'':14s}   {s.error.strip().splitlines()[-1][:110]}")
            for c in s.checks:
                d = c.headline()
                qty = c.quantity
                if d is not None and len(c.ab or c.a_ref or c.b_ref or []) > 1:
                    qty = f"{qty} [{d.name.split('.', 1)[-1] if '.' in d.name else d.name}]"
                if d is not None and d.problem:
                    nums = f"{'-':>9s} {'-':>9s}"
                    ratio = f"{'inf':>7s}"
                elif d is not None:
                    nums = f"{d.max_abs:9.2e} {d.max_rel:9.2e}"
                    ratio = f"{d.ratio:7.3f}" if d.ratio < 1e4 else f"{d.ratio:7.1e}"
                else:
                    nums, ratio = f"{'-':>9s} {'-':>9s}", f"{'-':>7s}"
                if not c.ab and d is not None:
                    nums = "(ref) " + nums[6:] if nums.startswith("   ") else nums
                ref = ""
                if c.has_reference:
                    ra = merge(c.a_ref).max_rel if c.a_ref is not None else None
                    rb = merge(c.b_ref).max_rel if c.b_ref is not None else None
                    ref = (f"{ra:.1e}" if ra is not None else "-") + " / " + (
                        f"{rb:.1e}" if rb is not None else "-")
                verdict = "pass" if c.ok else "FAIL"
                drift = c.drifted(a, b) or "-"
                lines.append(f"{label:14s} {qty[:34]:34s} {nums} {c.tolerance.describe():>13s} "
                             f"{ratio} {verdict:7s} {ref:>19s}  {drift}")
                if not c.ok:
                    for diff in (c.ab + (c.a_ref or []) + (c.b_ref or [])):
                        if not diff.ok:
                            side = ("A~B" if diff in c.ab else
                                    f"{a}~ref" if c.a_ref and diff in c.a_ref else f"{b}~ref")
                            lines.append(f"{'':14s}   ! {side}: {diff.summary()}")
                            break
                if verbose:
                    for diff in c.ab:
                        lines.append(f"{'':14s}     {diff.summary()}")
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
                    ", ".join(f"{c.quantity} (drifted: {c.drifted(a, b) or 'n/a'})"
                              for c in ff.failing))
            lines.append(f"result: FAIL; first failing stage: {ff.number} {ff.name} "
                         f"({ff.title}): {what}")
        return "\n".join(lines)

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
