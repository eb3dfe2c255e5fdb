"""A training run logged to a real `mlflow server` on loopback, read back through the REST API."""

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from mlflow import MlflowClient

MLFLOW = Path(sys.executable).with_name("mlflow")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def mlflow_server(tmp_path):
    port = free_port()
    log = open(tmp_path / "server.log", "w")
    proc = subprocess.Popen(
        [str(MLFLOW), "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
         "--backend-store-uri", f"sqlite:///{tmp_path / 'server.db'}",
         "--artifacts-destination", str(tmp_path / "server-artifacts")],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True)  # own group: kill it and its workers only
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 120
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


def test_training_run_logs_to_a_server(mlflow_server, data_dir, tmp_path):
    url, root = mlflow_server
    out = tmp_path / "run"
    r = subprocess.run([sys.executable, "-m", "jojoscl_dist.train", "--data", str(data_dir / "Yan.h5ad"),
                        "--label-key", "cell_type", "--num-workers", "0", "--epochs", "3", "--eval-every", "1",
                        "--output", str(out), "--tracking-uri", url, "--experiment", "server-test"],
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
