"""Live MLflow logging while a run trains: rank 0 (in-process, or Ray Train worker 0) logs each reported epoch to the
run the driver opened (mlflow_log.start_run), step = epoch at the time it is reported, and its machine's system
metrics. Ray's setup_mlflow does not serve here: it starts a fluent run of its own in the worker, while this run
belongs to the driver, which continues it on a resume and ends it."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)


def numeric(metrics: dict) -> dict[str, float]:
    """The loggable values of a reported epoch: numbers, less the epoch itself (it is the step)."""
    return {k: float(v) for k, v in metrics.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and k != "epoch"}


@dataclass(frozen=True)
class LiveRun:
    """The driver's MLflow run, as rank 0 needs it (plain strings: it travels to Ray workers)."""

    tracking_uri: str
    run_id: str
    resumed: bool = False  # a relaunch continuing the run: system metrics go on from their last step

    def epoch_logger(self) -> EpochLogger:
        return EpochLogger(self)


class EpochLogger:
    """A session observer and context manager. A failed call warns once and stops the live logging, so training
    never waits on a lost server again; the driver logs the missing epochs at the end (mlflow_log.log_run)."""

    def __init__(self, run: LiveRun):
        from mlflow import MlflowClient

        self.run, self.monitor, self.off = run, None, False
        self.client = MlflowClient(run.tracking_uri)
        db = Path(run.tracking_uri[len("sqlite:///"):]) if run.tracking_uri.startswith("sqlite:///") else None
        if db is not None and not db.is_file():  # a worker on another node: the driver's sqlite file is not here
            log.warning("MLflow store %s is not on this node: the epochs are logged when the run ends",
                        run.tracking_uri)
            self.off = True

    def __enter__(self) -> EpochLogger:
        if self.off:
            return self
        try:  # CPU, memory, disk, network (and GPU) every MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL s (default 10)
            from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

            self.monitor = SystemMetricsMonitor(self.run.run_id, tracking_uri=self.run.tracking_uri,
                                                resume_logging=self.run.resumed)
            self.monitor.start()
        except ImportError as e:
            log.warning("no MLflow system metrics (%s): install psutil to log them", e)
        return self

    def __call__(self, metrics: dict) -> None:
        if self.off:
            return
        from mlflow.entities import Metric

        now, step = int(time.time() * 1000), int(metrics.get("epoch", 0))
        try:
            self.client.log_batch(self.run.run_id, [Metric(k, v, now, step) for k, v in numeric(metrics).items()])
        except Exception as e:  # any client or server error: training goes on
            log.warning("live MLflow logging stopped at epoch %d (%s: %s); the epochs are logged when the run ends",
                        step, e.__class__.__name__, e)
            self.off = True

    def __exit__(self, *exc) -> None:
        if self.monitor is not None:
            self.monitor.finish()
