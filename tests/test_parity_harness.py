"""The parity harness itself, without frameworks: the runner, stage selection, the CLI, the
import hygiene, and property tests of the harness on the numpy stand-in backend."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given

import parity
from parity.fake import NumpyBackend
from parity.strategies import model_configs, parity_settings, training_configs
from ptycho.config import ModelConfig

PAIR = (NumpyBackend("np-a"), NumpyBackend("np-b"))


def test_import_parity_imports_no_framework():
    code = ("import sys, parity, parity.report, parity.stages, parity.e2e, ptycho.cli.parity; "
            "bad = [m for m in ('tensorflow', 'torch', 'hypothesis') if m in sys.modules]; "
            "sys.exit(f'imported {bad}' if bad else 0)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr + proc.stdout


def test_all_stages_pass_on_two_stand_ins():
    report = parity.run(backends=PAIR)
    assert report.passed, report.to_text()
    assert [s.name for s in report.stages] == list(parity.STAGE_NAMES)
    assert all(s.seconds > 0 for s in report.stages)
    # the stand-ins agree with the float64 reference to float32 rounding, not exactly
    network = report.stage("network")
    predict = next(c for c in network.checks if c.quantity.startswith("predict"))
    assert 0 < max(d.max_rel for d in predict.a_ref) < 1e-6


def test_stage_selection():
    assert parity.select_stages("2, physics") == ["physics", "translate"]
    assert parity.select_stages([8, "bundle"]) == ["bundle", "e2e"]
    with pytest.raises(ValueError, match=r"unknown parity stage 'fft'.*1 \(physics\)"):
        parity.select_stages("fft")
    with pytest.raises(ValueError, match="no parity stage"):
        parity.select_stages("")
    report = parity.run(stages="loss", backends=PAIR)
    assert [s.name for s in report.stages] == ["loss"]


def test_run_rejects_bad_arguments():
    with pytest.raises(ValueError, match="exactly two"):
        parity.run(backends=PAIR[:1])
    with pytest.raises(ValueError, match="steps"):
        parity.run(backends=PAIR, steps=0)
    with pytest.raises(TypeError):
        parity.run(config="N=16", backends=PAIR)


def test_model_config_is_wrapped_and_same_names_are_told_apart():
    report = parity.run(ModelConfig(N=16, base_filters=1, n_filters_scale=1), stages="physics",
                        backends=(NumpyBackend("np"), NumpyBackend("np")))
    assert report.config["model"]["N"] == 16
    assert (report.backend_a, report.backend_b) == ("np[A]", "np[B]")


def test_a_stage_that_raises_is_reported_and_the_run_goes_on():
    class Broken(NumpyBackend):
        def far_field_amplitude(self, psi):
            raise RuntimeError("no FFT today")

    report = parity.run(stages="physics,translate", backends=(Broken("broken"), NumpyBackend()))
    assert not report.passed
    assert report.first_failure.name == "physics" and "no FFT today" in report.first_failure.error
    assert report.stage("translate").ok
    assert "ERROR" in report.to_text()


def test_json_report_is_complete(tmp_path):
    report = parity.run(stages="physics,gradients", backends=PAIR)
    path = tmp_path / "out" / "parity.json"
    path.parent.mkdir()
    report.write_json(path)
    data = json.loads(path.read_text())
    assert data["format"] == "ptycho-parity-report" and data["passed"] is True
    assert data["backend_a"] == "np-a" and data["seed"] == 0
    grads = data["stages"][1]["checks"][0]
    leaves = {leaf["name"] for leaf in grads["a_vs_b"]["leaves"]}
    assert any(name.endswith("probe") for name in leaves)
    assert grads["tolerance"]["reason"]


# -- the CLI ------------------------------------------------------------------------------------
@pytest.fixture
def stand_in_registry(monkeypatch):
    """``configure_process(name)`` returns a stand-in (or a faulty one for the name 'faulty')."""
    import backends

    class Faulty(NumpyBackend):
        def translate(self, images, offsets):
            return super().translate(images, -np.asarray(offsets))

    def fake_get_backend(name=None):
        return Faulty("faulty") if name == "faulty" else NumpyBackend(name)

    monkeypatch.setattr(backends, "configure_process", fake_get_backend)
    monkeypatch.setattr(backends, "canonical_name", lambda name: name)


def test_cli_passes_and_writes_json(stand_in_registry, tmp_path, capsys):
    from ptycho.cli.parity import main

    out = tmp_path / "p.json"
    rc = main(["--stages", "physics,translate", "--backends", "x", "y", "--json", str(out),
               "--seed", "2"])
    captured = capsys.readouterr()
    assert rc == 0, captured.out + captured.err
    assert "result: PASS" in captured.out and "stage 1 physics: pass" in captured.err
    assert json.loads(out.read_text())["seed"] == 2


def test_cli_exit_status_is_one_on_a_failure(stand_in_registry, capsys):
    from ptycho.cli.parity import main

    rc = main(["--stages", "1,2", "--backends", "faulty", "y"])
    assert rc == 1
    assert "first failing stage: 2 translate" in capsys.readouterr().out


def test_cli_usage_errors(stand_in_registry, tmp_path, capsys):
    from ptycho.cli.parity import main

    assert main(["--stages", "nope", "--backends", "x", "y"]) == 2
    assert "unknown parity stage" in capsys.readouterr().err
    assert main(["--config", str(tmp_path / "missing.yaml"), "--backends", "x", "y"]) == 2
    assert main(["--tolerances"]) == 0
    assert "network.forward" in capsys.readouterr().out


def test_cli_reads_a_config_file(stand_in_registry, tmp_path, capsys):
    from ptycho.cli.parity import main
    from ptycho.config import TrainingConfig, save_config

    path = tmp_path / "run.yaml"
    save_config(TrainingConfig(model=ModelConfig(N=16, base_filters=1, n_filters_scale=1)), path)
    assert main(["--config", str(path), "--stages", "physics", "--backends", "x", "y"]) == 0


def test_cli_is_registered_and_its_stage_help_is_current():
    from ptycho.cli import parity as cli

    assert cli.STAGE_HELP == ", ".join(f"{n} {name}" for n, name, _ in parity.STAGES)
    main_src = open(sys.modules["ptycho.cli.parity"].__file__.replace("parity.py", "main.py")).read()
    if '"ptycho.cli.parity"' not in main_src:
        pytest.skip("ptycho.cli.main does not list ptycho.cli.parity yet")
    from ptycho.cli.main import main
    assert main(["parity", "--tolerances"]) == 0


# -- properties of the harness on the stand-in ------------------------------------------------
@parity_settings(max_examples=3)
@given(config=training_configs(models=model_configs(sizes=(16,), max_width=4)))
def test_harness_has_no_false_alarms_on_any_config(config):
    """Every config branch runs through stages 1-6 on the stand-in without a false alarm."""
    report = parity.run(config, stages="1,2,3,4,5,6", backends=PAIR, steps=2, seed=config.seed)
    assert report.passed, report.to_text()
