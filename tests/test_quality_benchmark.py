"""The quality benchmark's harness (benchmarks/quality): its logic without a framework, the
refine hook, and one tiny row end to end (``--smoke``) so that the harness cannot rot.

Nothing here asserts image quality: the benchmark measures it, tests keep the harness true.
"""

from __future__ import annotations

import dataclasses
import doctest
import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:       # benchmarks/ is a folder of the repo, not an installed package
    sys.path.insert(0, str(ROOT))


@pytest.mark.parametrize("name", ["benchmarks.quality.report"])
def test_docstring_examples(name):
    assert doctest.testmod(importlib.import_module(name)).failed == 0


def test_importing_the_quality_benchmark_imports_no_framework():
    code = ("import sys, benchmarks.quality.__main__, benchmarks.quality.rows, "
            "benchmarks.quality.report, benchmarks.quality.objects; "
            "print(sorted(m for m in ('tensorflow', 'torch', 'ptychi') if m in sys.modules))")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=str(ROOT), env=env)
    assert out.stdout.strip() == "[]"


def test_configs_keep_training_and_held_out_objects_apart_and_scan_integer_grids():
    from benchmarks.quality.config import CONFIGS, FULL, ObjectSpec

    for config in CONFIGS.values():
        train = {o.name for o in config.train_objects}
        held = {o.name for o in config.heldout_objects}
        assert train and held and not train & held
        assert float(config.step).is_integer() and config.object_side == (
            (config.grid_side - 1) * config.step + config.N)
    assert {o.kind for o in FULL.heldout_objects} == {"lines", "grf", "natural"}
    assert FULL.N == 64 and FULL.doses == (1e6, 1e9) and FULL.gridsizes == (1, 2)
    assert set(FULL.backends) == {"tensorflow", "torch"}
    with pytest.raises(ValueError, match="needs amplitude_image"):
        ObjectSpec("x", "natural", amplitude_image="camera")
    with pytest.raises(ValueError, match="kind must be"):
        ObjectSpec("x", "photo")


def test_training_scans_sit_side_by_side_without_mixing():
    from benchmarks.quality.config import SMOKE, TRAIN_OBJECTS
    from benchmarks.quality.objects import training_scan

    config = dataclasses.replace(SMOKE, train_objects=TRAIN_OBJECTS[:2])
    raw = training_scan(config, 1e6)
    assert raw.n_patterns == 2 * config.grid_side ** 2 and raw.object_guess is None
    first, second = raw.xcoords[raw.scan_index == 0], raw.xcoords[raw.scan_index == 1]
    assert second.min() - first.max() > config.object_side       # far apart: no shared group


def test_a_new_reconstruct_argument_is_a_new_column(monkeypatch, tmp_path):
    """The refine hook: one more entry of config.variants reaches reconstruct as keyword
    arguments and becomes a column of the rows and the table (here with stand-ins for
    train and reconstruct, so no framework is needed)."""
    pytest.importorskip("skimage", reason="natural-image objects need scikit-image: pip install "
                                          "'ptycho-pinn[quality]'")
    import ptycho.workflows as workflows
    from benchmarks.quality import report
    from benchmarks.quality.config import SMOKE
    from benchmarks.quality.config import NATURAL
    from benchmarks.quality.rows import (TIMED_CALLS, baseline_rows, network_rows,
                                         training_config, warm_up_patterns)
    from ptycho.training import EpochRecord, History
    from ptycho.workflows.reconstruct import Reconstruction

    calls, warmed = [], []

    class Result:
        history = History(epochs=[EpochRecord(0, 1e-3, {"total": 1.0})])
        timings = {"train_s": 1.0}
        model = object()

    warm_sizes, sizes = [], []

    def fake_reconstruct(model, raw, keep_patches=True, **kwargs):
        if raw.object_guess is None:          # the untimed warm-up call
            warmed.append(kwargs)
            warm_sizes.append(raw.n_patterns)
            return None
        calls.append(kwargs)
        sizes.append(raw.n_patterns)
        truth = raw.object_guess
        obj = truth if kwargs.get("refine") else np.ones_like(truth)
        # each timed figure is the fastest of its calls: here the second of three
        seconds = (0.9, 0.5, 0.7)[(len(calls) - 1) % 3]
        return Reconstruction(obj=obj, coverage=np.ones(truth.shape), positions=np.zeros((1, 1, 2)),
                              patches=None, seconds=seconds, n_patterns=raw.n_patterns)

    monkeypatch.setattr(workflows, "train", lambda config, data, backend=None: Result())
    monkeypatch.setattr(workflows, "reconstruct", fake_reconstruct)
    # a variant runs the network in the training precision unless it names its own
    config = dataclasses.replace(SMOKE, precision="bfloat16", variants={
        "network": {}, "refined": {"refine": 7, "precision": "float32"}})
    rows = network_rows(config, "torch", str(tmp_path), lambda msg: None)
    # the curve refines from the sparse network pass
    curve_call = {"refine": 1, "precision": config.refine_curve_precision,
                  "spacing": config.refine_curve_spacing}
    assert config.refine_curve_spacing == 18.0
    expected = [{"precision": "bfloat16"}, {"precision": "float32", "refine": 7}, curve_call]
    assert TIMED_CALLS == 3 and calls == [c for c in expected for _ in range(TIMED_CALLS)]
    assert warmed == expected
    assert rows[0]["network"]["seconds"] == rows[0]["refined"]["seconds"] == 0.5
    assert [e["seconds"] for e in rows[0]["refine_curve"]] == [0.5]
    # a scan smaller than one prediction batch is warmed up whole (the timed calls' shapes)
    assert warm_sizes == [sizes[0]] * 3 and sizes[0] < 64
    assert warm_up_patterns(training_config(config, 1, 1e6)) >= sizes[0]
    assert warm_up_patterns(training_config(NATURAL, 2, 1e9)) == 64    # 16 groups of 4
    row = rows[0]
    assert [(e["passes"], e["amplitude_ssim"]) for e in row["refine_curve"]] == [(1, 1.0)]
    assert row["refined"]["kwargs"] == {"precision": "float32", "refine": 7}
    assert row["refined"]["amplitude"]["ssim"] == 1.0
    assert row["network"]["amplitude"]["ssim"] < 0.5
    merged = report.merge(rows, [], baseline_rows(config), list(config.variants))
    table = report.markdown(merged, list(config.variants))
    assert "amp. SSIM refined" in table and "refined s" in table
    assert "amp. SSIM estimate" in table and merged[0]["estimate"]["amplitude"]["ssim"] > 0
    assert (tmp_path / "objects").is_dir() and len(list((tmp_path / "objects").iterdir())) == 2
    # with a reference: the curve's first entry within reach of it, its seconds in the table
    ref = {"available": True, "object": row["object"], "dose": row["dose"], "seconds": 3.0,
           **{p: {"ssim": 0.99, "psnr": 30.0, "frc50_px": 4.0} for p in ("amplitude", "phase")}}
    merged = report.merge(rows, [ref], baseline_rows(config), list(config.variants))
    assert merged[0]["reached"] == row["refine_curve"][0]
    assert "0.50 (1)" in report.markdown(merged, list(config.variants))
    far = {**ref, "amplitude": {"ssim": 1.0}, "phase": {"ssim": 1.0}}
    assert report.reached([{**row["refine_curve"][0], "phase_ssim": 0.96}], far) is None


def test_the_results_header_names_the_network_it_measured():
    """What the header says of the network: its widths, the architecture options that are on,
    and how it uses the estimate; results saved before a key existed read as they ran (no
    skip connections; a back-propagated estimate then scaled by the amplitude head)."""
    from benchmarks.quality import report
    plain = {"base_filters": 16, "n_filters_scale": 2}
    assert report._network_words(plain) == "network base_filters 16, n_filters_scale 2"
    words = report._network_words({**plain, "skip_connections": True, "central_decoder": True,
                                   "backprop_estimate": True, "estimate_scope": "scan",
                                   "estimate_amplitude": "input"})
    assert words == ("network base_filters 16, n_filters_scale 2, central decoder, skip "
                     "connections, back-propagated estimate stitched over the scan")
    old = report._network_words({**plain, "backprop_estimate": True})
    assert old.endswith("back-propagated estimate (the amplitude head scales its magnitude)")
    assert "skip" not in old
    assert report._averaged_words({"average_epochs": 8}) == ", the mean of the last 8 epochs' weights"
    assert report._averaged_words({}) == report._averaged_words({"average_epochs": 0}) == ""


@pytest.mark.slow
def test_the_smoke_suite_runs_end_to_end(tmp_path):
    pytest.importorskip("torch", reason="the smoke row trains on torch: pip install "
                                        "'ptycho-pinn[torch]'")
    pytest.importorskip("skimage", reason="natural-image objects need scikit-image: pip install "
                                          "'ptycho-pinn[quality]'")
    has_ptychi = importlib.util.find_spec("ptychi") is not None
    out = tmp_path / "out"
    readme = tmp_path / "README.md"
    readme.write_text("# bench\n\n<!-- quality:begin -->\nold ![x](quality/figures/old.png)\n"
                      "<!-- quality:end -->\n\nafter ![y](quality/figures/kept.png)\n")
    figures_dir = tmp_path / "quality" / "figures"
    figures_dir.mkdir(parents=True)
    for name in ("old.png", "kept.png"):
        (figures_dir / name).write_bytes(b"png")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "benchmarks.quality", "--smoke", "--out",
                           str(out), "--readme", str(readme)], cwd=str(ROOT), env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((out / "quality.json").read_text())
    (row,) = results["rows"]
    assert (row["object"], row["gridsize"], row["backend"]) == ("astronaut/gravel", 1, "torch")
    for method in ("network", "estimate", "floor") + (("reference",) if has_ptychi else ()):
        for part in ("amplitude", "phase"):
            assert -1.0 <= row[method][part]["ssim"] <= 1.0
    assert row["network"]["seconds"] > 0 and row["train_s"] > 0
    if has_ptychi:
        assert row["reference"]["engine"] == "lsqml" and row["reference"]["curve"]
        assert row["network"]["speedup"] > 0
    (figure,) = results["figures"]
    assert (out / "figures" / figure).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    text = readme.read_text()
    assert "old" not in text and text.endswith("after ![y](quality/figures/kept.png)\n")
    assert "| astronaut/gravel | 1e6 |" in text
    assert "refinement from the network's pass on points 18 px apart (`spacing=18`)" in text
    # the previous section's figure went, the one linked outside the section stayed
    assert sorted(p.name for p in figures_dir.iterdir()) == sorted([figure, "kept.png"])
    assert "| astronaut/gravel | 1e6 |" in (out / "quality.md").read_text()

    # the saved run published again, into another README, without running anything
    other = tmp_path / "again" / "README.md"
    other.parent.mkdir()
    other.write_text("<!-- quality:begin -->\n<!-- quality:end -->\n")
    proc = subprocess.run([sys.executable, "-m", "benchmarks.quality", "--render", str(out),
                           "--readme", str(other)], cwd=str(ROOT), env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    section = text[text.index("<!-- quality:begin -->"):text.index("<!-- quality:end -->")]
    assert section in other.read_text()
    assert (other.parent / "quality" / "figures" / figure).read_bytes() == \
        (out / "figures" / figure).read_bytes()


def test_render_names_what_it_lacks_and_runs_nothing(tmp_path, capsys):
    from benchmarks.quality.__main__ import main, render

    with pytest.raises(SystemExit) as exc:
        main(["--render", str(tmp_path)])
    assert exc.value.code == 2
    assert "quality.json does not exist: --render takes the --out folder" in capsys.readouterr().err
    (tmp_path / "quality.json").write_text(json.dumps(
        {"benchmark": "quality", "started": "then", "figures": ["a.png"]}))
    with pytest.raises(FileNotFoundError, match="figures lacks 1 of the run's figures: a.png"):
        render(str(tmp_path))
    with pytest.raises(SystemExit) as exc:
        main(["--render", str(tmp_path), "--smoke", "--set", "nepochs=2"])
    assert exc.value.code == 2
    assert "--quick/--natural/--smoke, --set cannot go with it" in capsys.readouterr().err
    assert not (tmp_path / "quality.md").exists()


def test_set_changes_a_size_for_one_run_and_names_what_is_wrong():
    from benchmarks.quality.config import NATURAL, with_settings

    cfg = with_settings(NATURAL, ["precision=bfloat16", "gridsizes=1,2", "nepochs=48"])
    assert (cfg.precision, cfg.gridsizes, cfg.nepochs) == ("bfloat16", (1, 2), 48)
    assert cfg.name == "natural,gridsizes=1,2,nepochs=48,precision=bfloat16"
    assert cfg.heldout_objects == NATURAL.heldout_objects          # the rest as the size has it
    assert with_settings(NATURAL, []) is NATURAL
    with pytest.raises(ValueError, match="'threads=3'.*KEY one of"):
        with_settings(NATURAL, ["threads=3"])
    assert with_settings(NATURAL, ["seed=3"]).seed == 3        # training, noise and reference
    # train_seed draws the model again on the same scans: the training's seed alone changes
    from benchmarks.quality.objects import scan_seed
    from benchmarks.quality.rows import training_config

    redrawn = with_settings(NATURAL, ["train_seed=1"])
    spec = NATURAL.heldout_objects[0]
    assert training_config(redrawn, 1, 1e9).seed == 1
    assert training_config(NATURAL, 1, 1e9).seed == NATURAL.seed == 0
    assert scan_seed(spec, 1e9, redrawn) == scan_seed(spec, 1e9, NATURAL)
    assert with_settings(NATURAL, ["train_seed=none"]).train_seed is None
    with pytest.raises(ValueError, match="'train_seed=one'"):
        with_settings(NATURAL, ["train_seed=one"])
    with pytest.raises(ValueError, match="'estimate_scope=group'.*'pattern', 'scan'"):
        with_settings(NATURAL, ["estimate_scope=group"])
    with pytest.raises(ValueError, match="'precision=float16'.*float32"):
        with_settings(NATURAL, ["precision=float16"])
    # where bfloat16 is emulated (ptycho.hardware) the refinement curve's sparse pass can be
    # float32 too
    assert with_settings(NATURAL, ["refine_curve_precision=float32"]).refine_curve_precision \
        == "float32"
    with pytest.raises(ValueError, match="'refine_curve_precision=fp32'.*float32"):
        with_settings(NATURAL, ["refine_curve_precision=fp32"])
    with pytest.raises(ValueError, match="'nepochs=many'"):
        with_settings(NATURAL, ["nepochs=many"])
    assert with_settings(NATURAL, ["backprop_estimate=true"]).backprop_estimate is True
    assert with_settings(NATURAL, ["realspace_weight=1e4"]).realspace_weight == 1e4
    from benchmarks.quality.rows import training_config    # what a run trains with
    trained = training_config(with_settings(NATURAL, ["backprop_estimate=1",
                                                      "realspace_weight=5",
                                                      "estimate_scope=scan",
                                                      "central_decoder=true",
                                                      "skip_connections=true",
                                                      "lr_schedule=cosine"]), 2, 1e9)
    assert trained.model.backprop_estimate and trained.realspace_weight == 5.0
    assert trained.lr_schedule == "cosine" and training_config(NATURAL, 2, 1e9).lr_schedule \
        == "constant"
    averaged = training_config(with_settings(NATURAL, ["average_epochs=4"]), 1, 1e9)
    assert averaged.average_epochs == 4 and training_config(NATURAL, 1, 1e9).average_epochs == 0
    with pytest.raises(ValueError, match="'average_epochs=last'"):
        with_settings(NATURAL, ["average_epochs=last"])
    with pytest.raises(ValueError, match="'lr_schedule=step'.*'cosine'"):
        with_settings(NATURAL, ["lr_schedule=step"])
    assert trained.model.estimate_scope == "scan" and trained.model.central_decoder
    assert trained.model.skip_connections and not training_config(NATURAL, 2, 1e9).model \
        .skip_connections
    assert trained.model.estimate_amplitude == "input"
    scaled = with_settings(NATURAL, ["backprop_estimate=1", "estimate_amplitude=scale"])
    assert training_config(scaled, 1, 1e9).model.estimate_amplitude == "scale"
    with pytest.raises(ValueError, match="'estimate_amplitude=both'.*'input', 'scale'"):
        with_settings(NATURAL, ["estimate_amplitude=both"])
    with pytest.raises(ValueError, match="'backprop_estimate=yes'.*true or false"):
        with_settings(NATURAL, ["backprop_estimate=yes"])
    assert with_settings(NATURAL, ["probe=diffuser"]).probe == "diffuser"
    with pytest.raises(ValueError, match="'probe=airy'.*diffuser"):
        with_settings(NATURAL, ["probe=airy"])
    # the timed refinement starts from the sparse pass unless told every point
    assert with_settings(NATURAL, ["refine_curve_spacing=none"]).refine_curve_spacing is None
    assert with_settings(NATURAL, ["refine_curve_spacing=12"]).refine_curve_spacing == 12.0
    for bad in ("0", "-6", "inf", "nan"):
        with pytest.raises(ValueError, match=f"'refine_curve_spacing={bad}'.*positive number"):
            with_settings(NATURAL, [f"refine_curve_spacing={bad}"])
    # a wider training set, by name; never one that holds a held-out object
    wide = with_settings(NATURAL, ["train_objects=eight"])
    assert len(wide.train_objects) == 8 and wide.train_objects[:4] == NATURAL.train_objects
    assert "train_objects=eight" in wide.name
    assert not {o.name for o in wide.train_objects} & {o.name for o in wide.heldout_objects}
    assert with_settings(NATURAL, ["train_objects=four"]).train_objects == NATURAL.train_objects
    with pytest.raises(ValueError, match="'train_objects=all'.*one of \\['eight', 'four'\\]"):
        with_settings(NATURAL, ["train_objects=all"])


def test_the_estimate_baseline_is_above_the_floor_on_every_held_out_object():
    """The back-propagated estimate (no network) recovers something of every kind of object:
    the baseline a network alone has to beat, beside the constant floor."""
    pytest.importorskip("skimage", reason="natural-image objects need scikit-image: pip install "
                                          "'ptycho-pinn[quality]'")
    from benchmarks.quality.config import HELDOUT_OBJECTS, QUICK
    from benchmarks.quality.rows import baseline_rows

    rows = baseline_rows(dataclasses.replace(QUICK, heldout_objects=HELDOUT_OBJECTS,
                                             doses=(1e9,)))
    assert [r["object"] for r in rows] == [o.name for o in HELDOUT_OBJECTS]
    for r in rows:
        for part in ("amplitude", "phase"):
            assert r["estimate"][part]["ssim"] > r["floor"][part]["ssim"] + 0.05, (r["object"], part)


def test_every_training_set_builds_from_bundled_pictures():
    """The named training sets' natural objects load from scikit-image's bundled data (no
    download) with the amplitude and phase in the suite's ranges."""
    pytest.importorskip("skimage", reason="natural-image objects need scikit-image")
    from benchmarks.quality.config import SMOKE, TRAIN_SETS
    from benchmarks.quality.objects import build_object

    for name, objects in TRAIN_SETS.items():
        for spec in objects:
            obj = build_object(spec, SMOKE)
            amp, phase = np.abs(obj), np.angle(obj)
            assert obj.shape == (SMOKE.object_side,) * 2, (name, spec.name)
            assert SMOKE.amplitude_range[0] - 1e-6 <= amp.min() < amp.max() \
                <= SMOKE.amplitude_range[1] + 1e-6, (name, spec.name)
            assert SMOKE.phase_range[0] - 1e-6 <= phase.min() < phase.max() \
                <= SMOKE.phase_range[1] + 1e-6, (name, spec.name)


def test_nudged_weight_moves_one_initial_element_by_one_ulp():
    from benchmarks.quality.config import NATURAL, with_settings
    from benchmarks.quality.rows import nudged_weights, training_config
    from ptycho.weights import init_weights

    cfg = with_settings(NATURAL, ["skip_connections=true", "nudged_weight=enc0.conv1.kernel"])
    assert cfg.nudged_weight == "enc0.conv1.kernel" and NATURAL.nudged_weight is None
    tc = training_config(cfg, 1, 1e9)
    (name, nudged), = nudged_weights(tc, cfg.nudged_weight).items()
    n = tc.model.N
    seeded = init_weights(tc.model, tc.seed, np.ones((n, n), np.complex64), 0.0)[name]
    assert nudged.dtype == seeded.dtype == np.float32 and nudged.shape == seeded.shape
    assert nudged.flat[0] == np.nextafter(seeded.flat[0], np.float32(np.inf)) != seeded.flat[0]
    assert np.array_equal(nudged.flat[1:], seeded.flat[1:])
    with pytest.raises(ValueError, match="nudged_weight=probe: not a network entry.*enc0"):
        with_settings(NATURAL, ["nudged_weight=probe"])
