"""The embedded sqlite store: what log_run writes, a run that fails mid-training and its relaunch, and no global
MLflow state left behind."""

import os

import anndata as ad
import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow import MlflowClient

from jojoscl_dist.config import JojoConfig
from jojoscl_dist.outputs import bundle
from jojoscl_dist.predict import predict
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
    assert run.info.status == "FINISHED"
    assert run.data.metrics["final_ari"] == 0.5 and run.data.params["run.experiment"] == "exp-a"
    assert [m.value for m in client.get_metric_history(rid, "loss")] == [3.0, 2.5]
    assert {a.path for a in client.list_artifacts(rid)} == {"config.yaml"}


def test_a_killed_run_is_failed_in_mlflow_and_its_relaunch_continues_the_same_run(tmp_path, monkeypatch):
    from jojoscl_dist.train.run import run
    from tests.faults.crash import Crash, crash_training_after
    from tests.tracking.cells import write_counts

    write_counts(tmp_path / "cells.h5ad")
    out = tmp_path / "out"
    cfg = JojoConfig().override({"data.path": str(tmp_path / "cells.h5ad"), "data.label_key": "cell_type",
                                 "optim.epochs": 3, "optim.batch_size": 64, "eval.eval_every": 1,
                                 "run.num_workers": 0, "run.plots": False, "run.quiet": True,
                                 "run.output": str(out)})

    crash_training_after(monkeypatch, epoch=1)
    with pytest.raises(Crash):
        run(cfg)
    client = MlflowClient(f"sqlite:///{out / 'mlflow.db'}")
    (first,) = client.search_runs([client.get_experiment_by_name("jojoscl").experiment_id])
    rid = first.info.run_id
    assert first.info.status == "FAILED" and first.data.tags["jojoscl.error"].startswith("Crash")
    assert [m.step for m in client.get_metric_history(rid, "loss")] == [0, 1]  # logged as they were reported
    assert {p.name for p in out.iterdir()} <= {"mlflow.db", "mlartifacts"}  # the live store only: no outputs yet

    monkeypatch.undo()
    cfg.optim.epochs = 4  # a change a relaunch may make: MLflow params never change, a tag records it
    run(cfg)  # the same command (output holds only the store): resumes training and the MLflow run
    (again,) = client.search_runs([client.get_experiment_by_name("jojoscl").experiment_id])
    assert again.info.run_id == rid and again.info.status == "FINISHED"
    assert [m.step for m in client.get_metric_history(rid, "loss")] == [0, 1, 2, 3]
    assert again.data.params["optim.epochs"] == "3" and again.data.tags["jojoscl.resumed_with"] == "optim.epochs: 3 -> 4"
    assert (out / "mlflow.db").exists() and (out / "labels.csv").exists()  # the store moved into the finished run
    assert "MLFLOW_TRACKING_URI" not in os.environ  # the model logging's fluent run left nothing behind

    # the logged pyfunc model: a cell with zero counts gets no cluster, the others those of jojoscl_dist.predict
    model = mlflow.pyfunc.load_model(client.get_logged_model(again.outputs.model_outputs[0].model_id).artifact_location)
    cells = ad.read_h5ad(tmp_path / "cells.h5ad")[:6]
    df = pd.DataFrame(cells.X.toarray(), index=cells.obs_names, columns=cells.var_names).astype("float64")
    df.iloc[0] = 0.0
    got = model.predict(df)
    expected = predict(bundle.load(out), ad.AnnData(df.to_numpy(np.float32)[1:], var=pd.DataFrame(index=df.columns)))
    assert got["cluster"].iloc[0] == -1 and got.iloc[0, 1:].isna().all()
    np.testing.assert_array_equal(got["cluster"].to_numpy()[1:], expected.labels)
