"""log_run against the embedded sqlite store: what lands in MLflow, and no global state left behind."""

import os

from mlflow import MlflowClient

from jojoscl_dist.config import JojoConfig
from jojoscl_dist.tracking.mlflow_log import log_run


def test_log_run_writes_its_own_store_and_leaves_the_environment_alone(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "config.yaml").write_text("x: 1\n")
    cfg = JojoConfig().override({"run.experiment": "exp-a"})
    history = [{"epoch": 0, "loss": 3.0}, {"epoch": 1, "loss": 2.5}]
    rid = log_run(cfg, {"ari": 0.5, "n_cells": 10, "selection_rule": "last"}, history, out)
    # mlflow.set_tracking_uri exports MLFLOW_TRACKING_URI, which would send every later run in this process (and
    # its subprocesses) to this store: the logging must go through a client only.
    assert "MLFLOW_TRACKING_URI" not in os.environ
    client = MlflowClient(f"sqlite:///{out / 'mlflow.db'}")
    run = client.get_run(rid)
    assert run.data.metrics["final_ari"] == 0.5 and run.data.params["run.experiment"] == "exp-a"
    assert [m.value for m in client.get_metric_history(rid, "loss")] == [3.0, 2.5]
    assert {a.path for a in client.list_artifacts(rid)} == {"config.yaml"}
