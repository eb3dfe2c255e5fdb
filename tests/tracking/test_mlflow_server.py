"""A training run logged to a real `mlflow server` on loopback, read back through the REST API."""

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import anndata as ad
import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow import MlflowClient

from jojoscl_dist.data.fingerprint import fingerprint
from jojoscl_dist.outputs import bundle
from jojoscl_dist.predict import predict
from tests.tracking.cells import write_counts

MLFLOW = Path(sys.executable).with_name("mlflow")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    """One server for the module's tests (its start takes seconds to a minute on a loaded machine)."""
    tmp_path = tmp_path_factory.mktemp("mlflow-server")
    port = free_port()
    log = open(tmp_path / "server.log", "w")
    proc = subprocess.Popen(
        [str(MLFLOW), "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
         "--backend-store-uri", f"sqlite:///{tmp_path / 'server.db'}",
         "--artifacts-destination", str(tmp_path / "server-artifacts")],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True)  # own group: kill it and its workers only
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 180
        while True:
            try:
                if urllib.request.urlopen(url + "/health", timeout=2).status == 200:
                    break
            except OSError:
                pass
            if proc.poll() is not None or time.time() > deadline:
                pytest.fail("mlflow server did not start:\n" + (tmp_path / "server.log").read_text()[-3000:])
            time.sleep(0.5)
        yield url, tmp_path
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()


@contextlib.contextmanager
def fluent_uri(url: str):
    """mlflow.pyfunc.load_model resolves runs:/ and models:/ URIs on the process-wide tracking URI: set it for the
    block only, so later tests in this process keep their own stores."""
    mlflow.set_tracking_uri(url)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(None)


def test_training_run_logs_to_a_server(mlflow_server, data_dir, tmp_path):
    url, root = mlflow_server
    out = tmp_path / "run"
    r = subprocess.run([sys.executable, "-m", "jojoscl_dist.train", "--data", str(data_dir / "Yan.h5ad"),
                        "--label-key", "cell_type", "--num-workers", "0", "--epochs", "3", "--eval-every", "1",
                        "--output", str(out), "--tracking-uri", url, "--experiment", "server-test",
                        "--register-model", "yan-clusters"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert not (out / "mlflow.db").exists()  # went to the server, not the embedded store

    client = MlflowClient(url)
    exp = client.get_experiment_by_name("server-test")
    runs = client.search_runs([exp.experiment_id])
    assert len(runs) == 1
    run = runs[0]
    assert run.info.status == "FINISHED"
    assert run.data.params["loss.alpha"] == "1.0" and run.data.params["data.label_key"] == "cell_type"
    assert 0.0 <= run.data.metrics["final_ari"] <= 1.0
    assert [m.step for m in client.get_metric_history(run.info.run_id, "loss")] == [0, 1, 2]
    assert len(client.get_metric_history(run.info.run_id, "select_silhouette")) == 3
    arts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"config.yaml", "metrics.json", "labels.csv"} <= arts
    # the server stored the artifacts in its own artifact root
    assert any(p.name == "labels.csv" for p in (root / "server-artifacts").rglob("*"))
    # each epoch logged when it was reported (in-process: the driver is rank 0), with its own time
    stamps = [m.timestamp for m in client.get_metric_history(run.info.run_id, "loss")]
    assert stamps == sorted(stamps) and len(set(stamps)) == 3
    # the input as an MLflow dataset, its digest our fingerprint's content hash; the run's tags
    (inp,) = run.inputs.dataset_inputs
    fp = fingerprint(data_dir / "Yan.h5ad")
    assert inp.dataset.name == "Yan.h5ad" and fp["sha256"].startswith(inp.dataset.digest)
    assert json.loads(inp.dataset.source)["uri"] == fp["path"]
    assert {t.key: t.value for t in inp.tags}["mlflow.data.context"] == "training"
    assert run.data.tags["dataset"] == "Yan.h5ad" and run.data.tags["workers"] == "0"
    assert run.data.tags["K"] == str(json.loads((out / "metrics.json").read_text())["final"]["n_clusters"])
    # --register-model: version 1 of that name, the run's logged model
    (version,) = client.search_model_versions("name='yan-clusters'")
    assert version.version == "1" and version.run_id == run.info.run_id
    assert version.source == f"models:/{run.outputs.model_outputs[0].model_id}"


EPOCHS = 40


@pytest.mark.ray
def test_ray_run_logs_each_epoch_while_it_trains_and_its_model_predicts_like_predict(mlflow_server, tmp_path):
    url, _ = mlflow_server
    data, out = tmp_path / "cells.h5ad", tmp_path / "run"
    write_counts(data)
    env = {**os.environ, "MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL": "1"}
    with open(tmp_path / "train.log", "w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "jojoscl_dist.train", "--data", str(data), "--label-key",
                                 "cell_type", "--num-workers", "2", "--epochs", str(EPOCHS), "--eval-every", "5",
                                 "--batch-size", "64", "--no-plots", "--output", str(out), "--tracking-uri", url,
                                 "--experiment", "live"], stdout=log, stderr=subprocess.STDOUT, env=env)
        client, live, deadline = MlflowClient(url), None, time.time() + 600
        while live is None and proc.poll() is None and time.time() < deadline:
            exp = client.get_experiment_by_name("live")
            for run in client.search_runs([exp.experiment_id]) if exp else []:
                steps = [m.step for m in client.get_metric_history(run.info.run_id, "loss")]
                # while the run trains: some epochs on the server, not all, and the run RUNNING
                if 0 < len(steps) < EPOCHS and client.get_run(run.info.run_id).info.status == "RUNNING":
                    live = steps
            time.sleep(0.2)
        assert proc.wait(timeout=max(1, deadline - time.time())) == 0, (tmp_path / "train.log").read_text()[-3000:]
    assert live is not None, "the server showed no epoch while the run was training"
    assert live == list(range(len(live))), live  # step = epoch
    (run,) = client.search_runs([client.get_experiment_by_name("live").experiment_id])
    rid = run.info.run_id
    assert run.info.status == "FINISHED" and run.data.tags["workers"] == "2"
    loss = client.get_metric_history(rid, "loss")
    assert [m.step for m in loss] == list(range(EPOCHS))
    assert [m.step for m in client.get_metric_history(rid, "select_silhouette")] == list(range(4, EPOCHS, 5))
    assert {"l_ins", "l_clu", "l_sure", "cells_per_s", "eval_ari", "final_ari"} <= set(run.data.metrics)
    assert any(k.startswith("system/cpu") for k in run.data.metrics)  # system metrics from rank 0's machine

    # The logged pyfunc model on the same cells: the clusters and embedding of jojoscl_dist.predict.
    cells = ad.read_h5ad(data)
    expected = predict(bundle.load(out), cells)
    df = pd.DataFrame(cells.X.toarray().astype(np.float64), index=cells.obs_names, columns=cells.var_names)
    with fluent_uri(url):
        model = mlflow.pyfunc.load_model(f"runs:/{rid}/model")
    got = model.predict(df)
    assert list(got.index) == list(df.index) and got.shape == (len(df), 1 + expected.z.shape[1])
    np.testing.assert_array_equal(got["cluster"].to_numpy(), expected.labels)
    np.testing.assert_allclose(got.filter(like="z_").to_numpy(), expected.z, rtol=1e-5, atol=1e-6)
    assert model.metadata.get_input_schema().input_names() == list(cells.var_names)
    assert model.metadata.flavors["python_function"]["loader_module"] == "jojoscl_dist.pyfunc"  # no stored code
