"""Optional experiment tracking. Off by default; ``tracking="mlflow"`` turns MLflow on.

MLflow logs to ``MLFLOW_TRACKING_URI`` when set, else to a local folder ``mlruns/`` inside
the run's ``output_dir`` (or the working directory). Nothing here touches the network
unless that variable points at a server.
"""

from __future__ import annotations

import importlib.util
import os
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
    """Logs params once, metrics per epoch, and artifacts (the bundle) to MLflow."""

    def __init__(self, config, run_name: Optional[str] = None):
        import mlflow

        self._mlflow = mlflow
        uri = os.environ.get("MLFLOW_TRACKING_URI")
        if not uri:
            base = config.output_dir or os.getcwd()
            uri = "file:" + os.path.abspath(os.path.join(base, "mlruns"))
        mlflow.set_tracking_uri(uri)
        self.uri = uri
        self.run = mlflow.start_run(run_name=run_name)
        params = {k: ("None" if v is None else v) for k, v in _flatten(config_to_dict(config)).items()}
        mlflow.log_params(params)

    def log_epoch(self, epoch: int, metrics: Mapping[str, float]) -> None:
        self._mlflow.log_metrics({k: float(v) for k, v in metrics.items()}, step=epoch)

    def log_metrics(self, metrics: Mapping[str, float]) -> None:
        self._mlflow.log_metrics({k: float(v) for k, v in metrics.items()})

    def log_artifact(self, path: str) -> None:
        self._mlflow.log_artifact(path)

    def close(self, status: str = "FINISHED") -> None:
        self._mlflow.end_run(status=status)


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
