"""Training and inference throughput per backend, against each framework's bare yardstick.

Patterns per second count diffraction patterns (a group of gridsize 2 holds four); the
batch size counts groups, as ``TrainingConfig.batch_size`` does. Ratios come from the
same rounds: ``ratio_to_bare`` is our throughput over the yardstick's (1.0 = no overhead),
``torch_over_tensorflow`` PyTorch's throughput over TensorFlow's.
"""

from __future__ import annotations

import contextlib
import math
import statistics
from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

from benchmarks.timing import ratio_of_rounds, summarize
from benchmarks.worker import Worker

#: The reference size: N=64, n_filters_scale=2, base_filters=16 (the defaults).
REFERENCE = {"n_filters_scale": 2, "base_filters": 16}


@dataclass(frozen=True)
class CaseSpec:
    kind: str              # "train", "infer" or "bf16"
    N: int                 # noqa: N815 (the physics name)
    gridsize: int
    batch: int             # groups per call
    model: dict = field(default_factory=lambda: dict(REFERENCE))
    precision: str = "float32"   # ours: TrainingConfig.precision / predict's precision

    @property
    def key(self) -> str:
        widths = "" if self.model == REFERENCE else "-" + "-".join(
            f"{k}={v}" for k, v in sorted(self.model.items()))
        bf16 = "" if self.precision == "float32" else f"-{self.precision}"
        return f"{self.kind}-N{self.N}-g{self.gridsize}-b{self.batch}{widths}{bf16}"


def cases(quick: bool) -> list[CaseSpec]:
    """The throughput cases of a full (or ``--quick``) run."""
    if quick:
        grid = [(64, 1, 16), (64, 2, 16)]
        return ([CaseSpec("train", *g) for g in grid] + [CaseSpec("infer", *g) for g in grid]
                + [CaseSpec("bf16", 64, 1, 64)])
    grid = [(64, 1, 16), (64, 1, 64), (64, 2, 16), (64, 2, 64), (128, 1, 16)]
    return ([CaseSpec("train", *g) for g in grid] + [CaseSpec("infer", *g) for g in grid]
            + [CaseSpec("bf16", 64, 1, 64), CaseSpec("bf16", 64, 2, 16)])


def _steps(est_s: float, target_s: float) -> int:
    return max(1, min(10, int(round(target_s / max(est_s, 1e-6)))))


def run_case(workers: Sequence[Worker], spec: CaseSpec, rounds: int, target_s: float,
             log: Callable[[str], None] = lambda s: None) -> list[dict]:
    """Measure one case on every worker in alternating rounds; one record per backend plus,
    with two backends, a cross-backend record."""
    defaults = [w for w in workers if w.runtime == "default"] if spec.kind != "bf16" else []
    workers = [w for w in workers if w.runtime != "default"]
    everyone = workers + defaults
    setups = {_wkey(w): w.ask(op="setup", key=spec.key, kind=spec.kind, N=spec.N,
                              gridsize=spec.gridsize, batch=spec.batch, model=spec.model,
                              precision=spec.precision)
              for w in everyone}
    est = max(max(s["info"]["est_a_s"], s["info"]["est_b_s"]) for s in setups.values())
    steps = _steps(est, target_s)
    data = {_wkey(w): {"a": [], "b": [], "load": [], "nonfinite": 0} for w in everyone}
    for r in range(rounds):
        order = list(everyone) if r % 2 == 0 else list(reversed(everyone))
        for w in order:
            res = w.ask(op="round", key=spec.key, steps=steps)
            d = data[_wkey(w)]
            d["a"].append(res["a"])
            d["b"].append(res["b"])
            d["load"].append(res["load"])
            d["nonfinite"] = res["nonfinite"]
        log(f"  {spec.key} round {r + 1}/{rounds}")
    for w in everyone:
        w.ask(op="drop", key=spec.key)

    records = []
    for w in defaults:
        d, s = data[_wkey(w)], setups[_wkey(w)]
        a = [x for rnd in d["a"] for x in rnd]
        sa = summarize(a)
        rec = {"benchmark": f"{spec.kind}_bare_out_of_the_box", "backend": w.backend,
               "config": {"N": spec.N, "gridsize": spec.gridsize, "batch_groups": spec.batch,
                          "patterns_per_call": s["patterns"], **spec.model},
               "threads": w.hello["threads"], "runtime": "framework defaults",
               "bare": {**sa, "patterns_per_s": round(s["patterns"] / sa["wall_s"], 2)},
               "rounds": rounds, "calls_per_round": steps, "load": _load_summary(d["load"])}
        lib = data.get(w.backend)
        if lib is not None:
            rec["ratio_ours_to_this"] = ratio_of_rounds(
                [[x[0] for x in r] for r in lib["a"]], [[x[0] for x in r] for r in d["a"]])
        records.append(rec)
    for w in workers:
        d, s = data[w.backend], setups[w.backend]
        la, lb = s["labels"]
        a = [x for rnd in d["a"] for x in rnd]
        b = [x for rnd in d["b"] for x in rnd]
        sa, sb = summarize(a), summarize(b)
        pat = s["patterns"]
        rec = {
            "benchmark": spec.kind, "backend": w.backend,
            "config": {"N": spec.N, "gridsize": spec.gridsize, "batch_groups": spec.batch,
                       "patterns_per_call": pat, **spec.model, "precision": spec.precision},
            "threads": w.hello["threads"],
            la: {**sa, "patterns_per_s": round(pat / sa["wall_s"], 2)},
            lb: {**sb, "patterns_per_s": round(pat / sb["wall_s"], 2)},
            f"ratio_{la}_to_{lb}": ratio_of_rounds([[x[0] for x in r] for r in d["a"]],
                                                   [[x[0] for x in r] for r in d["b"]]),
            f"ratio_{la}_to_{lb}_cpu": ratio_of_rounds([[x[1] for x in r] for r in d["a"]],
                                                       [[x[1] for x in r] for r in d["b"]]),
            "rounds": rounds, "calls_per_round": steps,
            "first_call_s": {la: round(s["info"]["first_a_s"], 4),
                             lb: round(s["info"]["first_b_s"], 4)},
            "load": _load_summary(d["load"]),
        }
        extra = {k: v for k, v in s["info"].items() if k.startswith("bf16_")}
        if extra:
            rec["accuracy"] = extra
        if spec.kind == "train":
            rec["nonfinite_steps"] = d["nonfinite"]
        records.append(rec)
    if len(workers) == 2 and {w.backend for w in workers} == {"tensorflow", "torch"}:
        a_key = "a"
        records.append({
            "benchmark": f"{spec.kind}_torch_vs_tensorflow", "backend": "both",
            "config": records[0]["config"],
            "measure": setups["torch"]["labels"][0],
            "torch_over_tensorflow": ratio_of_rounds(
                [[x[0] for x in r] for r in data["torch"][a_key]],
                [[x[0] for x in r] for r in data["tensorflow"][a_key]]),
            "torch_over_tensorflow_cpu": ratio_of_rounds(
                [[x[1] for x in r] for r in data["torch"][a_key]],
                [[x[1] for x in r] for r in data["tensorflow"][a_key]]),
            "load": _load_summary(data["torch"]["load"] + data["tensorflow"]["load"]),
        })
    return records


def _wkey(w: Worker) -> str:
    return w.backend if w.runtime != "default" else f"{w.backend}:default"


def _load_summary(snaps: list[dict]) -> dict:
    out = {}
    for key in ("loadavg_1m", "cpu_pressure_10s", "procs_running"):
        vals = [s[key] for s in snaps if key in s]
        if vals:
            out[f"{key}_median"] = round(statistics.median(vals), 2)
            out[f"{key}_max"] = round(max(vals), 2)
    return out


def run(backends: Sequence[str], quick: bool, threads: Optional[int] = None,
        rounds: Optional[int] = None, target_s: Optional[float] = None,
        only: Optional[Sequence[str]] = None, out_of_the_box: Optional[bool] = None,
        log: Callable[[str], None] = lambda s: None) -> list[dict]:
    """All throughput cases on ``backends`` (one worker process each). ``out_of_the_box``
    (default: not quick) adds a torch worker with torch's own defaults that measures the
    yardstick alone, for the comparison with PyTorch as it comes."""
    out_of_the_box = (not quick) if out_of_the_box is None else out_of_the_box
    rounds = rounds or (3 if quick else 5)
    target_s = target_s or (0.3 if quick else 0.6)
    workers = []
    records: list[dict] = []
    with contextlib.ExitStack() as stack:     # every started worker is closed, whatever happens
        for b in backends:
            w = stack.enter_context(contextlib.closing(Worker(b, threads)))
            workers.append(w)
            log(f"{w.backend} worker up (import {w.hello['import_s']:.1f} s, "
                f"threads {w.hello['threads']})")
        if "torch" in backends and out_of_the_box:
            w = stack.enter_context(contextlib.closing(Worker("torch", threads,
                                                              runtime="default")))
            workers.append(w)
            log(f"torch (framework defaults) worker up, threads {w.hello['threads']}")
        for spec in cases(quick):
            if only and spec.kind not in only:
                continue
            log(f"{spec.key} ...")
            r = rounds if spec.batch * spec.gridsize ** 2 * (spec.N / 64) ** 2 <= 64 else \
                max(3, rounds - 2)
            records += run_case(workers, spec, r, target_s, log)
    return records


def is_finite(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)
