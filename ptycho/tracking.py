"""Optional experiment tracking. Off by default; ``tracking="mlflow"`` turns MLflow on.

MLflow logs to ``MLFLOW_TRACKING_URI`` when set, else to a local folder ``mlruns/`` inside
the run's ``output_dir`` (or the working directory), in the experiment
``MLFLOW_EXPERIMENT_NAME`` (created when missing) or MLflow's default one. A run logs the
flattened config as params, per-epoch losses and the learning rate as metrics (step = epoch),
and the bundle as an artifact.

The tracker talks to MLflow through an ``MlflowClient`` of its own: it never changes MLflow's
process-wide tracking URI or active run, so a caller's own MLflow use is left alone. Nothing
here touches the network unless ``MLFLOW_TRACKING_URI`` points at a server: MLflow's usage
telemetry is switched off (``MLFLOW_DISABLE_TELEMETRY=true`` unless the caller set it).
Recent MLflow refuses a file store unless ``MLFLOW_ALLOW_FILE_STORE=true``; the default local
``mlruns/`` folder sets that (unless the caller set it); a ``file:`` URI of the caller's needs it
set by the caller.
"""

from __future__ import annotations

import importlib.util
import os
import pathlib
import time
from typing import Any, Mapping, Optional

from ptycho.config.io import config_to_dict
from ptycho.errors import ConfigError


def _flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


class NullTracker:
    """Tracking switched off: every call does nothing."""

    def log_epoch(self, epoch: int, metrics: Mapping[str, float]) -> None:
        pass

    def log_artifact(self, path: str) -> None:
        pass

    def log_metrics(self, metrics: Mapping[str, float]) -> None:
        pass

    def close(self, status: str = "FINISHED") -> None:
        pass


class MlflowTracker:
    """Logs params once, metrics per epoch, and artifacts (the bundle) to one MLflow run."""

    #: MLflow accepts at most this many params or metrics per ``log_batch`` call.
    BATCH = 100

    def __init__(self, config, run_name: Optional[str] = None):
        os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
        uri = os.environ.get("MLFLOW_TRACKING_URI")
        if not uri:
            base = config.output_dir or os.getcwd()
            uri = pathlib.Path(os.path.abspath(os.path.join(base, "mlruns"))).as_uri()
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        from mlflow.entities import Param
        from mlflow.tracking import MlflowClient

        self.uri = uri
        self._client = MlflowClient(tracking_uri=uri)
        name = os.environ.get("MLFLOW_EXPERIMENT_NAME")
        experiment_id = "0"          # MLflow's default experiment
        if name:
            found = self._client.get_experiment_by_name(name)
            experiment_id = found.experiment_id if found else self._client.create_experiment(name)
        run = self._client.create_run(experiment_id, run_name=run_name)
        self.run_id = run.info.run_id
        params = [Param(k, "None" if v is None else str(v))
                  for k, v in _flatten(config_to_dict(config)).items()]
        for i in range(0, len(params), self.BATCH):
            self._client.log_batch(self.run_id, params=params[i:i + self.BATCH])

    def _log(self, metrics: Mapping[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [Metric(k, float(v), now, step) for k, v in metrics.items()]
        for i in range(0, len(items), self.BATCH):
            self._client.log_batch(self.run_id, metrics=items[i:i + self.BATCH])

    def log_epoch(self, epoch: int, metrics: Mapping[str, float]) -> None:
        self._log(metrics, step=epoch)

    def log_metrics(self, metrics: Mapping[str, float]) -> None:
        self._log(metrics, step=0)

    def log_artifact(self, path: str) -> None:
        self._client.log_artifact(self.run_id, path)

    def close(self, status: str = "FINISHED") -> None:
        self._client.set_terminated(self.run_id, status=status)


def make_tracker(config):
    """The tracker ``config.tracking`` asks for; a clear error when MLflow is not installed."""
    if config.tracking is None:
        return NullTracker()
    if config.tracking == "mlflow":
        if importlib.util.find_spec("mlflow") is None:
            raise ConfigError("tracking='mlflow' needs the 'mlflow' package, which is not "
                              "installed; install it with: pip install 'ptycho-pinn[tracking]'")
        return MlflowTracker(config)
    raise ConfigError(f"unknown tracking {config.tracking!r}; expected None or 'mlflow'")
