"""A real ASHA sweep (Ray Tune -> Ray Train trials) on a small real dataset, read back through MLflow."""

import json
import os
import subprocess
import sys

import pandas as pd
import pytest
import yaml
from mlflow import MlflowClient

from jojoscl_dist.config import JojoConfig

N_TRIALS = 8
EPOCHS = 4
METRIC = "select_input_silhouette"  # the default objective (input-silhouette)


@pytest.mark.slow
@pytest.mark.ray
@pytest.mark.timeout(1500)
def test_asha_sweep_tracks_every_trial(data_dir, tmp_path):
    out = tmp_path / "sweep"
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}  # always its own local Ray
    r = subprocess.run([sys.executable, "-m", "tune.sweep", "--data", str(data_dir / "Yan.h5ad"),
                        "--label-key", "cell_type", "--num-samples", str(N_TRIALS), "--epochs", str(EPOCHS),
                        "--scheduler", "asha", "--search", "optuna", "--output", str(out)],
                       capture_output=True, text=True, timeout=1400, env=env)
    assert r.returncode == 0, (r.stdout[-2000:], r.stderr[-4000:])
    summary = json.loads((out / "summary.json").read_text())

    # the table: every trial, how it ended; ASHA stopped some on the label-free score
    table = pd.read_csv(out / "trials.csv")
    assert len(table) == N_TRIALS and table["trial_id"].is_unique
    assert (table["status"] == "TERMINATED").all()
    assert table["epochs_done"].max() == EPOCHS
    assert summary["n_stopped_early"] >= 1 and (table["stopped_early"] == (table["epochs_done"] < EPOCHS)).all()
    assert table["is_default"].sum() == 1  # the default config ran as the reference trial
    assert (out / "trials.md").read_text().count("\n|") == N_TRIALS + 2  # header, rule, one row per trial

    # best.yaml: a full config holding the best trial's sampled values, accepted by the training CLI loader
    best = JojoConfig.load(out / "best.yaml")
    row = table.set_index("trial_id").loc[summary["best_trial"]]
    assert row["epochs_done"] == EPOCHS
    assert best.loss.alpha == pytest.approx(row["loss.alpha"]) and best.model.mask_keep == pytest.approx(row["model.mask_keep"])
    assert best.optim.epochs == EPOCHS and best.data.label_key == "cell_type"
    assert row[METRIC] == table.loc[table["epochs_done"] == EPOCHS, METRIC].max()
    assert table["select_silhouette"].notna().any()  # the other label-free scores are in the table too
    # the best config retrained as a normal run reproduces the trial's label-free score
    assert summary[f"best_run_{METRIC}"] == pytest.approx(row[METRIC], abs=1e-3)
    for name in ("results.h5ad", "labels.csv", "model/model.pt", "umap.png", "metrics.json"):
        assert (out / "best_run" / name).exists(), name

    # MLflow: one parent, >= 8 trial children with per-epoch metrics and artifacts
    client = MlflowClient(f"sqlite:///{out / 'mlflow.db'}")
    exp = client.get_experiment_by_name("jojoscl-sweep")
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    parents = [x for x in runs if x.data.tags.get("jojoscl.kind") == "sweep"]
    assert len(parents) == 1
    pid = parents[0].info.run_id
    children = [x for x in runs if x.data.tags.get("mlflow.parentRunId") == pid]
    trials = [x for x in children if x.data.tags.get("jojoscl.kind") == "trial"]
    assert len(trials) == N_TRIALS and {x.info.run_name[len("trial-"):] for x in trials} == set(table["trial_id"])
    for t in trials:
        assert t.info.status == "FINISHED"
        steps = [m.step for m in client.get_metric_history(t.info.run_id, METRIC)]
        assert steps == list(range(int(t.data.tags["tune.epochs_done"])))
        assert "eval_ari" in t.data.metrics and "loss.tau_instance" in t.data.params
        assert {a.path for a in client.list_artifacts(t.info.run_id)} == {"config.yaml", "metrics.json"}
    best_runs = [x for x in children if x.data.tags.get("jojoscl.kind") == "best"]
    assert len(best_runs) == 1 and "umap.png" in {a.path for a in client.list_artifacts(best_runs[0].info.run_id)}
    parent_arts = {a.path for a in client.list_artifacts(pid)}
    assert {"best.yaml", "trials.csv", "trials.md", "summary.json", "umap.png"} <= parent_arts
    assert parents[0].data.metrics[f"best_{METRIC}"] == pytest.approx(row[METRIC])
    assert yaml.safe_load((out / "space.yaml").read_text()).keys() >= {"loss.alpha", "model.mask_keep"}


def test_sweep_tracks_to_the_flag_then_the_environment_then_its_own_store(tmp_path, monkeypatch):
    from tune.sweep import sweep_tracking

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert sweep_tracking(None, tmp_path) == (f"sqlite:///{tmp_path / 'mlflow.db'}", tmp_path / "mlartifacts")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow:5000")
    assert sweep_tracking(None, tmp_path) == ("http://mlflow:5000", None)  # the server's own artifact store
    assert sweep_tracking("http://other:5000", tmp_path) == ("http://other:5000", None)
