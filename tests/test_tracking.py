"""Experiment tracking: off by default, a clear error without MLflow, and with MLflow a run that
holds the params, the per-epoch metrics and the bundle, in a local file store, offline.

Training runs on the numpy stand-in backend (:mod:`parity.fake`), so these tests need no
framework: tracking is backend-neutral.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import socket
import sys

import numpy as np
import pytest

from ptycho.bundle import read_bundle
from ptycho.config import ModelConfig, TrainingConfig
from ptycho.errors import ConfigError
from ptycho.simulate import simulate_dataset
from ptycho.tracking import NullTracker, make_tracker

N = 16
MLFLOW_MISSING = "mlflow not installed (pip install 'ptycho-pinn[tracking]')"


def config(tmp_path, **kw) -> TrainingConfig:
    settings = dict(model=ModelConfig(N=N, base_filters=2, n_filters_scale=1), nepochs=2,
                    batch_size=8, nphotons=1e6, output_dir=str(tmp_path / "out"))
    return TrainingConfig(**{**settings, **kw})


@pytest.fixture(scope="module")
def raw():
    return simulate_dataset(16, N, nphotons=1e6, seed=5)[0]


@pytest.fixture
def train(numpy_backend):
    """``ptycho.workflows.train`` running on the numpy stand-in backend (registered)."""
    return importlib.import_module("ptycho.workflows.train").train   # the package shadows the name


@pytest.fixture
def offline(monkeypatch):
    """Every attempt to open a network connection is recorded and refused."""
    attempts: list = []

    def refuse(*args, **kwargs):
        attempts.append(args)
        raise OSError("network access refused by the test")

    monkeypatch.setattr(socket.socket, "connect", lambda self, *a: refuse(*a))
    monkeypatch.setattr(socket.socket, "connect_ex", lambda self, *a: refuse(*a))
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    return attempts


def test_tracking_is_off_by_default(tmp_path, raw, train, monkeypatch):
    assert TrainingConfig().tracking is None
    assert isinstance(make_tracker(TrainingConfig()), NullTracker)
    monkeypatch.setitem(sys.modules, "mlflow", None)     # any import of mlflow would fail
    monkeypatch.chdir(tmp_path)
    result = train(config(tmp_path), raw)
    assert len(result.history.epochs) == 2
    assert sorted(os.listdir(tmp_path / "out")) == ["model.zip"]
    assert sorted(os.listdir(tmp_path)) == ["out"]          # no mlruns/ anywhere


def test_unknown_tracker_is_a_config_error():
    with pytest.raises(ConfigError, match="tracking"):
        TrainingConfig(tracking="wandb")


def test_mlflow_missing_is_a_clear_config_error(tmp_path, raw, train, monkeypatch):
    """Without MLflow, tracking='mlflow' fails before training with the install command."""
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "mlflow" else real_find_spec(name, *a))
    with pytest.raises(ConfigError) as info:
        train(config(tmp_path, tracking="mlflow"), raw)
    message = str(info.value)
    assert "mlflow" in message and "pip install 'ptycho-pinn[tracking]'" in message
    assert "\n" not in message
    assert not (tmp_path / "out" / "model.zip").exists()      # nothing was trained


def _client(uri):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


def test_mlflow_logs_params_metrics_and_the_bundle(tmp_path, raw, train, monkeypatch, offline):
    pytest.importorskip("mlflow", reason=MLFLOW_MISSING)
    uri = (tmp_path / "store").as_uri()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")     # recent MLflow asks for it
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
    monkeypatch.delenv("MLFLOW_EXPERIMENT_NAME", raising=False)
    cfg = config(tmp_path, tracking="mlflow", mae_weight=0.5)
    result = train(cfg, raw)

    client = _client(uri)
    runs = client.search_runs(["0"])
    assert len(runs) == 1
    run = runs[0]
    assert run.info.status == "FINISHED"
    params = run.data.params
    assert params["model.N"] == str(N) and params["nepochs"] == "2"
    assert params["mae_weight"] == "0.5" and params["tracking"] == "mlflow"
    assert params["early_stopping_patience"] == "None"
    for key, split in (("train_total", "train"), ("train_nll", "train")):
        history = client.get_metric_history(run.info.run_id, key)
        assert [m.step for m in history] == [0, 1]
        np.testing.assert_allclose([m.value for m in history],
                                   result.history.losses(key.split("_", 1)[1], split), rtol=1e-6)
    lrs = client.get_metric_history(run.info.run_id, "learning_rate")
    assert [m.value for m in lrs] == [cfg.learning_rate] * 2
    assert [a.path for a in client.list_artifacts(run.info.run_id)] == ["model.zip"]
    local = client.download_artifacts(run.info.run_id, "model.zip", str(tmp_path / "dl"))
    with open(local, "rb") as a, open(tmp_path / "out" / "model.zip", "rb") as b:
        assert a.read() == b.read()
    assert read_bundle(local).history.losses() == result.history.losses()
    assert offline == []


def test_mlflow_default_store_is_inside_the_output_dir(tmp_path, raw, train, monkeypatch,
                                                       offline):
    pytest.importorskip("mlflow", reason=MLFLOW_MISSING)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_EXPERIMENT_NAME", raising=False)
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
    monkeypatch.chdir(tmp_path)
    train(config(tmp_path, tracking="mlflow", nepochs=1), raw)
    assert sorted(os.listdir(tmp_path)) == ["out"]              # nothing in the cwd
    store = tmp_path / "out" / "mlruns"
    assert store.is_dir()
    runs = _client(store.as_uri()).search_runs(["0"])
    assert len(runs) == 1 and runs[0].data.params["nepochs"] == "1"
    assert offline == []


def test_mlflow_experiment_name_is_honoured(tmp_path, raw, train, monkeypatch, offline):
    pytest.importorskip("mlflow", reason=MLFLOW_MISSING)
    uri = (tmp_path / "store").as_uri()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "ptycho-tests")
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
    train(config(tmp_path, tracking="mlflow", nepochs=1), raw)
    client = _client(uri)
    experiment = client.get_experiment_by_name("ptycho-tests")
    assert experiment is not None
    assert len(client.search_runs([experiment.experiment_id])) == 1
    assert offline == []
