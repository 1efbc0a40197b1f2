"""The comparison utilities, the tolerance table and the report of the parity harness."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from parity.compare import compare_arrays, compare_tree, merge
from parity.report import STAGE_NAMES, Check, ParityReport, StageResult
from parity.tolerances import TOLERANCES, Tolerance, table_text, tolerance

EL = Tolerance(1e-6, 0.0, "elementwise", "test")
MAX = Tolerance(1e-6, 0.0, "max", "test")
EXACT = Tolerance(0.0, 0.0, "elementwise", "test")


# -- compare_arrays -----------------------------------------------------------------------------
def test_shape_is_checked_before_values():
    d = compare_arrays(np.zeros((2, 3), np.float32), np.zeros((3, 2), np.float32), EL)
    assert not d.ok and d.problem == "shape (2, 3) vs (3, 2)"


def test_dtype_policies():
    a, b = np.zeros(3, np.float32), np.zeros(3, np.float64)
    assert compare_arrays(a, b, EL).problem == "dtype float32 vs float64"
    assert compare_arrays(a, b, EL, dtype="kind").ok
    bad = compare_arrays(a, b.astype(np.complex128), EL, dtype="kind")
    assert not bad.ok and "complex vs real" in bad.problem
    assert compare_arrays(a, b, EL, dtype="none").ok
    with pytest.raises(ValueError, match="dtype policy"):
        compare_arrays(a, b, EL, dtype="loose")


def test_nan_policy_fail_is_the_default():
    a = np.array([1.0, np.nan, 3.0])
    d = compare_arrays(a, np.array([1.0, 2.0, 3.0]), EL)
    assert not d.ok and "1 in A, 0 in B" in d.problem
    d = compare_arrays(a, a.copy(), EL)
    assert not d.ok, "NaN on both sides still fails under 'fail'"


def test_nan_policy_match_needs_the_same_places_and_signs():
    a = np.array([1.0, np.nan, np.inf, 4.0])
    assert compare_arrays(a, a.copy(), EL, nan="match").ok
    b = np.array([1.0, np.nan, -np.inf, 4.0])
    assert not compare_arrays(a, b, EL, nan="match").ok
    c = np.array([np.nan, 2.0, np.inf, 4.0])
    assert not compare_arrays(a, c, EL, nan="match").ok
    # finite parts are still compared
    d = np.array([1.5, np.nan, np.inf, 4.0])
    assert not compare_arrays(a, d, EL, nan="match").ok


def test_worst_element_is_located_with_both_values():
    b = np.arange(12, dtype=np.float64).reshape(3, 4) + 1.0
    a = b.copy()
    a[2, 1] += 1e-3
    a[0, 0] += 1e-7          # below tolerance
    d = compare_arrays(a, b, EL, reference=True)
    assert not d.ok
    assert d.worst_index == (2, 1) and d.worst_a == pytest.approx(10.001) and d.worst_b == 10.0
    assert d.max_abs == pytest.approx(1e-3)
    assert d.max_rel == pytest.approx(1e-4)
    assert d.ratio == pytest.approx(100.0)
    assert "at [2, 1]" in d.summary()


def test_elementwise_versus_max_scale():
    b = np.array([1000.0, 1e-3])
    a = b + np.array([0.0, 1e-5])            # 1% of the small element, 1e-8 of the max
    assert not compare_arrays(a, b, EL, reference=True).ok
    assert compare_arrays(a, b, MAX, reference=True).ok


def test_given_scale_number_and_array():
    t = Tolerance(1e-3, 0.0, "given", "test")
    assert compare_arrays(np.float64(1.001), np.float64(1.0), t, scale=2.0).ok
    assert not compare_arrays(np.float64(1.01), np.float64(1.0), t, scale=2.0).ok
    a, b = np.array([1.0, 1.0]), np.array([1.0005, 1.0005])
    d = compare_arrays(a, b, t, scale=np.array([1.0, 0.1]))
    assert not d.ok and d.worst_index == (1,)
    with pytest.raises(ValueError, match="explicit scale"):
        compare_arrays(a, b, t)


def test_complex_error_is_the_modulus_of_the_difference():
    b = np.array([1 + 1j], np.complex64)
    a = b + np.complex64(3e-3 + 4e-3j)
    d = compare_arrays(a, b, EXACT)
    assert d.max_abs == pytest.approx(5e-3, rel=1e-5)
    assert isinstance(d.worst_a, complex)


def test_identical_and_exact():
    x = np.arange(5, dtype=np.float32)
    d = compare_arrays(x, x.copy(), EXACT)
    assert d.ok and d.identical and d.ratio == 0.0
    y = x.copy()
    y[3] = np.nextafter(y[3], np.float32(10))
    assert not compare_arrays(y, x, EXACT).ok


def test_empty_and_scalar_inputs():
    assert compare_arrays(np.zeros((0, 3)), np.zeros((0, 3)), EL).ok
    d = compare_arrays(2.0, 2.0 + 1e-9, EL)
    assert d.ok and d.shape == ()


def test_json_of_a_diff_has_no_nan():
    d = compare_arrays(np.array([np.inf]), np.array([1.0]), EL)
    json.dumps(d.to_dict(), allow_nan=False)


# -- compare_tree -------------------------------------------------------------------------------
def test_tree_names_missing_and_extra_keys_and_recurses():
    a = {"w": {"k": np.ones(2), "b": 1.0}, "extra": 1.0}
    b = {"w": {"k": np.ones(2), "b": 1.0}, "gone": 1.0}
    diffs = {d.name: d for d in compare_tree(a, b, EL, dtype="none")}
    assert diffs["w.k"].ok and diffs["w.b"].ok
    assert diffs["gone"].problem == "missing in A"
    assert diffs["extra"].problem == "missing in B"


def test_tree_sequences_and_structure_mismatch():
    assert compare_tree([1.0, 2.0], [1.0], EL)[0].problem == "length 2 vs 1"
    assert "structure" in compare_tree({"a": 1.0}, [1.0], EL)[0].problem
    diffs = compare_tree((1.0, 2.0), (1.0, 2.5), EL)
    assert [d.name for d in diffs] == ["0", "1"] and not diffs[1].ok


def test_tree_tolerance_and_scale_per_leaf():
    a = {"x": np.float64(1.0), "y": np.float64(1.0)}
    b = {"x": np.float64(1.1), "y": np.float64(1.1)}
    loose = Tolerance(0.2, 0.0, "elementwise", "loose")
    diffs = compare_tree(a, b, lambda name: loose if name == "x" else EL)
    assert [d.ok for d in diffs] == [True, False]
    t = Tolerance(1e-3, 0.0, "given", "given")
    diffs = compare_tree(a, b, t, scale={"x": 1000.0, "y": 1.0})
    assert [d.ok for d in diffs] == [True, False]


def test_merge_keeps_the_worst_leaf():
    diffs = compare_tree({"a": 1.0, "b": 2.0}, {"a": 1.0, "b": 2.1}, EL)
    m = merge(diffs)
    assert not m.ok and m.worst.name == "b" and m.max_abs == pytest.approx(0.1)


# -- tolerances ---------------------------------------------------------------------------------
def test_every_tolerance_has_a_reason_and_a_known_stage():
    # besides the stages: the speed options checked against each backend's own float32
    prefixes = set(STAGE_NAMES) | {"inference", "precision"}
    for key, t in TOLERANCES.items():
        assert key.split(".")[0] in prefixes, key
        assert len(t.reason) > 30, f"{key}: a one-line reason is required"


def test_every_stage_has_tolerances():
    used = {key.split(".")[0] for key in TOLERANCES}
    assert set(STAGE_NAMES) <= used


def test_growth_with_steps():
    base = TOLERANCES["optimizer.weights"]
    assert tolerance("optimizer.weights", steps=1).rtol == base.rtol
    assert tolerance("optimizer.weights", steps=5).rtol == pytest.approx(5 * base.rtol)
    e2e = TOLERANCES["e2e.patches"]
    assert tolerance("e2e.patches", steps=4).rtol == e2e.rtol          # below its 8 reference steps
    assert tolerance("e2e.patches", steps=16).rtol == pytest.approx(2 * e2e.rtol)
    assert tolerance("network.forward", steps=100).rtol == TOLERANCES["network.forward"].rtol


def test_reserved_and_unknown_entries(monkeypatch):
    monkeypatch.setitem(TOLERANCES, "test.reserved",
                        Tolerance(0.0, 0.0, "max", "numbers not set yet", reserved=True))
    with pytest.raises(ValueError, match="reserved"):
        tolerance("test.reserved")
    assert not TOLERANCES["inference.bf16_vs_fp32"].reserved     # set by the bf16 work
    assert tolerance("inference.bf16_vs_fp32").rtol > 0
    with pytest.raises(KeyError, match="network.forward"):
        tolerance("no.such")
    with pytest.raises(ValueError):
        Tolerance(1e-6, 0.0, "nearby", "bad scale")


def test_strict_starting_points_from_the_issue():
    assert TOLERANCES["physics.illuminate"].rtol <= 1e-6
    assert TOLERANCES["translate.translate"].rtol <= 1e-6
    assert TOLERANCES["physics.far_field"].scale == "max"
    assert TOLERANCES["network.forward"].rtol <= 1e-5
    assert tolerance("optimizer.weights", steps=4).rtol <= 1e-3
    assert TOLERANCES["e2e.metrics"].atol <= 1e-2
    assert "physics.far_field" in table_text()


# -- report -------------------------------------------------------------------------------------
def _report(ok_second: bool = True, error: str | None = None) -> ParityReport:
    good = compare_tree({"x": 1.0}, {"x": 1.0 + 1e-9}, EL, name="q1")
    bad = compare_tree({"x": 1.0}, {"x": 1.5}, EL, name="q1")
    r = ParityReport("tfx", "tox", {"tfx": "1", "tox": "2"}, {"model": {"N": 16}}, seed=3)
    r.stages.append(StageResult(1, "physics", "t1", [Check("physics", "q1", "network.forward", EL,
                                                          ab=good, a_ref=good, b_ref=good)], 0.5))
    s2 = StageResult(2, "translate", "t2", [Check("translate", "q2", "network.forward", EL,
                                                  ab=good if ok_second else bad, a_ref=good,
                                                  b_ref=good if ok_second else bad)], 0.25)
    s2.error = error
    r.stages.append(s2)
    return r


def test_report_pass_text_and_json(tmp_path):
    r = _report()
    assert r.passed and r.first_failure is None
    text = r.to_text()
    assert "result: PASS" in text and "1 physics 0.50s" in text
    out = tmp_path / "r.json"
    r.write_json(out)
    data = json.loads(out.read_text())
    assert data["passed"] is True and data["first_failing_stage"] is None
    assert data["stages"][0]["checks"][0]["a_vs_b"]["leaves"][0]["name"] == "q1.x"
    assert [p.name for p in tmp_path.iterdir()] == ["r.json"]      # no temporary left behind


def test_report_names_first_failure_and_the_side_that_drifted():
    r = _report(ok_second=False)
    assert not r.passed and r.first_failure.name == "translate"
    check = r.first_failure.checks[0]
    assert check.drifted("tfx", "tox") == "tox"
    text = r.to_text()
    assert "first failing stage: 2 translate" in text and "FAIL" in text and "tox" in text
    data = r.to_dict()
    assert data["first_failing_stage"] == "translate" and data["first_failing_stage_number"] == 2


def test_report_stage_error_is_a_failure():
    r = _report(error="Traceback...\nRuntimeError: boom")
    assert not r.passed and r.first_failure.name == "translate"
    assert "RuntimeError: boom" in r.to_text()
    assert r.to_dict()["stages"][1]["error"].endswith("boom")


def test_a_stage_without_checks_is_not_a_pass():
    assert not StageResult(1, "physics", "t").ok


def test_drift_without_reference_and_when_only_a_and_b_disagree():
    good = compare_tree(1.0, 1.0, EL)
    bad = compare_tree(1.0, 2.0, EL)
    assert Check("s", "q", "k", EL, ab=bad).drifted() is None
    c = Check("s", "q", "k", EL, ab=bad, a_ref=compare_tree(1.0, 1.0 + 1e-7, EL), b_ref=good)
    assert c.drifted("a", "b") == "a?"
    assert not math.isnan(merge(c.ab).ratio)
