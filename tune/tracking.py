"""MLflow for sweeps: one parent run per sweep, one child run per trial (tag mlflow.parentRunId).

Everything is logged from the Tune driver through one MlflowClient (a Tune logger callback), so an embedded sqlite
store has a single writer and trials need no MLflow setup of their own. A child run gets the full resolved config
as params at trial start, every epoch's metrics as they arrive (step = epoch), and at the end its config.yaml and
metrics.json (per-epoch history) as artifacts; its status says how it ended.
"""

from __future__ import annotations

import time
from pathlib import Path

from mlflow import MlflowClient
from mlflow.entities import Metric, Param
from ray.tune.logger import LoggerCallback

from jojoscl_dist.config import JojoConfig
from jojoscl_dist.outputs import run_dir
from jojoscl_dist.tracking.mlflow_log import flat_params
from tune.space import apply_trial_config

# Tune's own bookkeeping in every result; not model metrics.
TUNE_KEYS = {"timestamp", "time_this_iter_s", "time_total_s", "pid", "time_since_restore", "iterations_since_restore",
             "done", "training_iteration", "date", "hostname", "node_ip", "trial_id", "experiment_tag", "config",
             "checkpoint_dir_name", "should_checkpoint", "epoch"}


def ensure_experiment(client: MlflowClient, name: str, artifact_root: Path | None) -> str:
    """setup_mlflow/Tune never create the experiment: do it here, on the driver."""
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    return client.create_experiment(name, artifact_location=artifact_root.resolve().as_uri() if artifact_root else None)


class MlflowTrialCallback(LoggerCallback):
    def __init__(self, client: MlflowClient, experiment_id: str, parent_run_id: str, base: JojoConfig,
                 artifact_dir: Path, max_epochs: int):
        self.client, self.exp_id, self.parent = client, experiment_id, parent_run_id
        self.base, self.artifact_dir, self.max_epochs = base, artifact_dir, max_epochs
        self.runs: dict[str, str] = {}  # trial_id -> MLflow run id
        self.history: dict[str, list[dict]] = {}

    def log_trial_start(self, trial):
        if trial.trial_id in self.runs:  # restarted trial: keep its run
            return
        self.history[trial.trial_id] = []
        rid = self.client.create_run(self.exp_id, run_name=f"trial-{trial.trial_id}", tags={
            "mlflow.parentRunId": self.parent, "tune.trial_id": trial.trial_id, "jojoscl.kind": "trial"}).info.run_id
        self.runs[trial.trial_id] = rid
        cfg = apply_trial_config(self.base, trial.config)
        self.client.log_batch(rid, params=[Param(k, v[:6000]) for k, v in flat_params(cfg.to_dict()).items()])

    def log_trial_result(self, iteration, trial, result):
        rid = self.runs.get(trial.trial_id)
        if rid is None:
            return
        epoch = int(result.get("epoch", result.get("training_iteration", 1) - 1))
        values = {k: float(v) for k, v in result.items()
                  if k not in TUNE_KEYS and isinstance(v, (int, float)) and not isinstance(v, bool)}
        self.history[trial.trial_id].append({"epoch": epoch, **values})
        now = int(time.time() * 1000)
        self.client.log_batch(rid, metrics=[Metric(k, v, now, epoch) for k, v in values.items()])

    def log_trial_end(self, trial, failed: bool = False):
        self._finish(trial, "FAILED" if failed else "FINISHED")

    def on_experiment_end(self, trials, **info):
        for trial in trials:  # anything still open (interrupted sweep)
            self._finish(trial, "KILLED")

    def _finish(self, trial, status: str) -> None:
        rid = self.runs.pop(trial.trial_id, None)
        if rid is None:
            return
        hist = self.history.get(trial.trial_id, [])
        stopped = status == "FINISHED" and len(hist) < self.max_epochs
        self.client.set_tag(rid, "tune.stopped_early", str(stopped).lower())
        self.client.set_tag(rid, "tune.epochs_done", str(len(hist)))
        out = self.artifact_dir / trial.trial_id
        out.mkdir(parents=True, exist_ok=True)
        apply_trial_config(self.base, trial.config).save(out / "config.yaml")
        run_dir.write_json(out / "metrics.json", {"trial_id": trial.trial_id, "status": status,
                                                  "stopped_early": stopped, "history": hist})
        try:
            for name in ("config.yaml", "metrics.json"):
                self.client.log_artifact(rid, str(out / name))
        finally:
            self.client.set_terminated(rid, status=status)
