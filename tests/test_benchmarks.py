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


def test_our_network_counts_the_peers_flops_at_its_size():
    """At widths 64/128/256, N=64, the central decoder costs what the peer's network does,
    within 1 %; the full decoder (the default) about 1.6x. One counting rule for both."""
    from benchmarks.peer import ours_flops, parameters, peer_flops
    from ptycho.config import ModelConfig

    peer = peer_flops(64, 1)
    assert 2.0e9 < peer < 2.2e9 and 2.2e6 < parameters(64, 1) < 2.4e6
    assert abs(ours_flops(ModelConfig(base_filters=32, central_decoder=True)) / peer - 1) < 0.01
    assert 1.5 < ours_flops(ModelConfig(base_filters=32)) / peer < 1.65
    # gridsize 2: ours runs a pass per pattern, the peer one pass of 4 channels per group
    g2 = ModelConfig(base_filters=32, gridsize=2, central_decoder=True)
    assert abs(ours_flops(g2) / (4 * peer_flops(64, 4)) - 1) < 0.01


def test_peer_size_rows_carry_flops_and_share_of_peak_and_render():
    from benchmarks import peer_size, report

    rec = {"benchmark": "train_peer", "backend": "torch",
           "config": {"N": 64, "gridsize": 1, "batch_groups": 16, "patterns_per_call": 16,
                      "base_filters": 32, "n_filters_scale": 2, "precision": "bfloat16"},
           "ours": {"patterns_per_s": 100.0}, "peer": {"patterns_per_s": 40.0},
           "ratio_ours_to_peer": 2.5, "load": {}}
    rec = peer_size._with_flops(rec, {("torch", "bfloat16"): 2000.0})
    ours = rec["gflop_per_pattern_forward"]["ours"]           # rounded to 3 places
    assert abs(rec["ours"]["gflops"] - 3 * ours * 100.0) < 0.2
    assert abs(rec["ours"]["share_of_peak"] - 3 * ours * 100.0 / 2000.0) < 1e-3
    records = [{**rec, "benchmark": peer_size.PREFIX + "train_peer"}]
    text = report.table(records)
    assert "at the peer's size" in text and "bfloat16" in text
    checks = {c["target"]: c["holds"] for c in report.targets(records)}
    assert checks["train torch N=64 grid=1 batch=16, full decoder, bfloat16: ours / peer >= 1.3"]


def test_a_scan_row_counts_the_peers_pass_per_group_and_is_a_target():
    """A whole-scan row at gridsize 2 (one group per position): per pattern the peer does a
    whole pass of C channels, ours one pass of one channel; the row renders and is checked."""
    from benchmarks import peer_size, report
    from benchmarks.peer import ours_flops, peer_flops
    from ptycho.config import ModelConfig

    config = {"N": 64, "gridsize": 2, "batch_groups": 16, "patterns_per_call": 64,
              "base_filters": 32, "n_filters_scale": 2, "precision": "bfloat16"}
    rec = {"benchmark": "scan_peer", "backend": "torch", "config": config,
           "ours": {"patterns_per_s": 300.0}, "peer": {"patterns_per_s": 150.0},
           "ratio_ours_to_peer": 2.0, "load": {}}
    rec = peer_size._with_flops(rec, {("torch", "bfloat16"): 2000.0})
    per = rec["gflop_per_pattern_forward"]
    assert per["peer"] == round(peer_flops(64, 4) / 1e9, 3)
    assert per["ours"] == round(ours_flops(ModelConfig(gridsize=2, base_filters=32)) / 4e9, 3)
    assert abs(rec["peer"]["gflops"] - per["peer"] * 150.0) < 0.2        # one pass, no backward
    records = [{**rec, "benchmark": peer_size.PREFIX + "scan_peer"}]
    assert any(line.split()[:2] == ["scan", "torch"] for line in report.table(records).splitlines())
    checks = {c["target"]: c["holds"] for c in report.targets(records)}
    assert checks["scan torch N=64 grid=2 batch=16, full decoder, bfloat16: ours / peer >= 1.3"]
    kinds = {(c.kind, c.gridsize) for c in peer_size.cases(quick=True)}
    assert ("scan_peer", 2) in kinds
