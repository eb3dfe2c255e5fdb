"""`ray job submit --working-dir .` of the trainer and of a sweep, against a real head started by the test.

The head has its own process group, temp dir and free loopback ports, and is stopped by killing that group (never
`ray stop`, which stops every Ray on the machine). Both sides run with RAY_AUTH_MODE=disabled: with Ray 2.60's
default token auth a plain submit fails (docs/deploy.md explains the token setup).
"""

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
RAY = str(Path(sys.executable).parent / "ray")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def ray_head():
    # The head (and so the job's `python`) must be this environment's interpreter.
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "PATH": path}
    tmp = tempfile.mkdtemp(prefix="rh", dir="/tmp")  # short: Ray's socket paths have a length limit
    port, dash = free_port(), free_port()
    head = subprocess.Popen(
        [RAY, "start", "--head", "--block", f"--port={port}", f"--dashboard-port={dash}",
         "--dashboard-host=127.0.0.1", "--num-cpus=3", f"--temp-dir={tmp}", "--include-dashboard=true"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    address = f"http://127.0.0.1:{dash}"
    deadline = time.time() + 90
    while time.time() < deadline:
        r = subprocess.run([RAY, "job", "list", "--address", address], env=env, capture_output=True, text=True)
        if r.returncode == 0:
            break
        time.sleep(2)
    else:
        os.killpg(head.pid, signal.SIGKILL)
        pytest.fail("the Ray head did not come up in 90 s")
    yield address, env
    os.killpg(head.pid, signal.SIGTERM)
    try:
        head.wait(timeout=10)
    except subprocess.TimeoutExpired:
        os.killpg(head.pid, signal.SIGKILL)


def submit(address: str, env: dict, entrypoint: list[str]) -> None:
    """`ray job submit`, which must succeed."""
    cmd = [RAY, "job", "submit", "--address", address, "--working-dir", str(REPO), "--", *entrypoint]
    deadline = time.time() + 240
    while True:
        r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600, cwd=REPO)
        # The head answers `job list` before its node's job agent has registered; a loaded machine can take minutes.
        if "No available agent" not in r.stdout + r.stderr or time.time() > deadline:
            break
        time.sleep(3)
    assert r.returncode == 0, (r.stdout[-3000:], r.stderr[-3000:])
    assert "succeeded" in (r.stdout + r.stderr).lower()


@pytest.mark.ray
def test_job_submit_trains(ray_head, data_dir, tmp_path):
    out = tmp_path / "job-run"
    submit(*ray_head, ["python", "-m", "jojoscl_dist.train", "--data", str(data_dir / "Yan.h5ad"), "--label-key",
                       "cell_type", "--num-workers", "2", "--epochs", "5", "--output", str(out), "--no-tracking"])
    final = json.loads((out / "metrics.json").read_text())["final"]
    assert final["num_workers"] == 2 and final["n_clusters_found"] == 7 and final["epochs"] == 5


@pytest.mark.ray
def test_job_submit_sweep(ray_head, data_dir, tmp_path):
    """A short sweep as a Ray job: the driver joins the head's cluster (RAY_ADDRESS), trials run as Train runs there."""
    out = tmp_path / "sweep"
    submit(*ray_head, ["python", "-m", "tune.sweep", "--data", str(data_dir / "Yan.h5ad"), "--label-key", "cell_type",
                       "--num-samples", "2", "--epochs", "3", "--scheduler", "fifo", "--output", str(out)])
    assert (out / "best.yaml").exists() and (out / "best_run" / "labels.csv").exists()
    trials = (out / "trials.csv").read_text().strip().splitlines()
    assert len(trials) == 1 + 2, trials  # header + one row per trial
    assert json.loads((out / "summary.json").read_text())["best_run_n_clusters_found"] == 7
