"""The benchmark package's own logic (no framework, no timing asserted): it imports without
TensorFlow or PyTorch, its docstring examples hold, and the report turns records into a
table and target checks, and replaces (not appends) the README's results section."""

from __future__ import annotations

import doctest
import importlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:       # benchmarks/ is a folder of the repo, not an installed package
    sys.path.insert(0, str(ROOT))

MODULES = ["benchmarks.machine", "benchmarks.timing", "benchmarks.report", "benchmarks.memory",
           "benchmarks.distributed"]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert result.failed == 0


def test_the_parent_process_imports_no_framework():
    code = ("import sys, benchmarks.__main__, benchmarks.throughput, benchmarks.report, "
            "benchmarks.distributed; "
            "print(sorted(m for m in ('tensorflow', 'torch') if m in sys.modules))")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=str(ROOT), env=env)
    assert out.stdout.strip() == "[]"


def _throughput(kind, backend, ours, bare, ratio, n=64, g=1, b=16):
    return {"benchmark": kind, "backend": backend,
            "config": {"N": n, "gridsize": g, "batch_groups": b},
            "ours": {"patterns_per_s": ours}, "bare": {"patterns_per_s": bare},
            "ratio_ours_to_bare": ratio, "load": {"cpu_pressure_10s_median": 3.0}}


def test_report_checks_the_targets_and_renders_a_table():
    from benchmarks import report
    records = [
        _throughput("train", "tensorflow", 60.0, 62.0, 0.97),
        _throughput("train", "torch", 50.0, 60.0, 0.83),
        {"benchmark": "train_torch_vs_tensorflow", "backend": "both",
         "config": {"N": 64, "gridsize": 1, "batch_groups": 16}, "torch_over_tensorflow": 0.83},
        {"benchmark": "scaling", "backend": "torch", "patterns": 1000,
         "reconstruct_us_per_pattern": 600.0, "stitch_us_per_pattern": 20.0, "peak_anon_mib": 400.0},
        {"benchmark": "scaling", "backend": "torch", "patterns": 100000,
         "reconstruct_us_per_pattern": 400.0, "stitch_us_per_pattern": 22.0, "peak_anon_mib": 450.0},
    ]
    checks = {c["target"]: c["holds"] for c in report.targets(records)}
    assert checks["train tensorflow N=64 grid=1 batch=16: ours / bare >= 0.9"]
    assert not checks["train torch N=64 grid=1 batch=16: ours / bare >= 0.9"]
    assert not checks["train N=64 grid=1 batch=16: torch / tensorflow >= 0.9"]
    assert checks["stitching 100000 vs 1000 (torch): time per pattern <= 1.2x"]
    assert checks["memory 100000 vs 1000 (torch): peak <= 1.25x"]
    text = report.table(records)
    assert "training: patterns/s" in text and "[NO ]" in text and "[ok ]" in text


def test_report_renders_the_distributed_rows():
    from benchmarks import report
    run = {"patterns_per_s": 40.0, "load": {"cpu_pressure_10s": 10.0}}
    multi = dict(run, patterns_per_s=70.0, gradient_all_reduce_ms=4.5)
    records = [{"benchmark": "distributed", "backend": "torch", "N": 64, "gridsize": 1,
                "batch": 16, "nproc": 2, "single_patterns_per_s": 40.0,
                "multi_patterns_per_s": 70.0, "speedup": 1.75, "single_cpu_s_per_step": 0.8,
                "multi_cpu_s_per_step": 0.9, "cpu_efficiency": 0.889, "single_runs": [run],
                "multi_runs": [multi]}]
    text = report.table(records)
    row = next(line for line in text.splitlines() if line.strip().startswith("torch"))
    assert row.split() == ["torch", "64", "1", "16", "2", "40.0", "70.0", "1.75", "0.800",
                           "0.900", "0.89", "4.50", "10%"]


def test_readme_section_is_replaced_not_appended(tmp_path):
    from benchmarks import report
    path = tmp_path / "README.md"
    path.write_text("# Bench\n\nintro\n")
    report.update_readme(str(path), "first run")
    report.update_readme(str(path), "second run")
    text = path.read_text()
    assert text.count(report.BEGIN) == 1 and "second run" in text and "first run" not in text
    assert text.startswith("# Bench\n\nintro\n")
