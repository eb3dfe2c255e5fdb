"""Several Ray nodes on one machine (Ray's own ``cluster_utils.Cluster``, as Ray's test suite uses): workers on
different nodes, and a whole node lost mid-run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

ARGS = ["--label-key", "cell_type", "--batch-size", "64", "--eval-every", "5", "--num-workers", "2",
        "--cpus-per-worker", "1", "--no-tracking", "--no-plots", "-q", "--seed", "0"]


def start_train(data: Path, out: Path, address: str | None, *extra: str) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    if address:
        env["RAY_ADDRESS"] = address
    return subprocess.Popen([sys.executable, "-m", "jojoscl_dist.train", "--data", str(data), "--output", str(out),
                             *ARGS, *extra], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def finish(proc: subprocess.Popen, timeout: float = 600) -> str:
    out, _ = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, out[-3000:]
    return out


@pytest.fixture
def three_nodes():
    """A head without CPUs (the driver and the Train controller) and two 1-CPU worker nodes."""
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
    workers = [cluster.add_node(num_cpus=1) for _ in range(2)]
    cluster.wait_for_nodes()
    yield cluster, workers
    cluster.shutdown()


def train_worker_nodes(cluster) -> set[str]:
    from ray.util.state import list_actors

    actors = list_actors(address=cluster.head_node.address, filters=[("class_name", "=", "RayTrainWorker")],
                         detail=True, limit=100)
    return {a.node_id for a in actors}


@pytest.mark.ray
def test_two_nodes_give_the_labels_of_one_node(three_nodes, data_dir, tmp_path):
    cluster, workers = three_nodes
    data = data_dir / "Human_brain.h5ad"
    spread = start_train(data, tmp_path / "spread", cluster.address, "--epochs", "10", "--placement", "STRICT_SPREAD")
    finish(spread)
    # One worker per node: the two worker nodes, not the head.
    assert train_worker_nodes(cluster) == {w.node_id for w in workers}
    one_node = start_train(data, tmp_path / "one", None, "--epochs", "10")
    finish(one_node)
    # Same seed, same global batch, same threads per worker: gloo's sums agree across nodes to the last bit.
    assert (tmp_path / "spread" / "labels.csv").read_bytes() == (tmp_path / "one" / "labels.csv").read_bytes()


def checkpoints(storage: Path) -> list[Path]:
    return sorted(storage.glob("*/checkpoint_*"))


@pytest.mark.ray
@pytest.mark.slow
def test_a_lost_node_is_replaced_and_the_run_finishes(three_nodes, data_dir, tmp_path):
    cluster, workers = three_nodes
    data, epochs = data_dir / "Human_brain.h5ad", "20"
    storage = tmp_path / "storage"
    run = start_train(data, tmp_path / "lost", cluster.address, "--epochs", epochs, "--placement", "STRICT_SPREAD",
                      "--max-failures", "3", "--storage-path", str(storage), "--run-name", "lost")
    deadline = time.monotonic() + 300
    while len(checkpoints(storage)) < 2 and run.poll() is None and time.monotonic() < deadline:
        time.sleep(0.5)
    assert run.poll() is None and checkpoints(storage), "the run ended before a node could be removed"
    cluster.remove_node(workers[1], allow_graceful=False)  # its raylet and the Train worker on it die
    time.sleep(3)
    cluster.add_node(num_cpus=1)  # a replacement node joins, as a rescheduled pod would
    log = finish(run, timeout=900)
    final = json.loads((tmp_path / "lost" / "metrics.json").read_text())
    assert [h["epoch"] for h in final["history"]] == list(range(int(epochs)))

    calm = start_train(data, tmp_path / "calm", None, "--epochs", epochs)
    finish(calm, timeout=900)
    undisturbed = json.loads((tmp_path / "calm" / "metrics.json").read_text())["final"]["ari"]
    # Resumed from its last checkpoint on a new node: within seed noise of a run nothing happened to.
    assert abs(final["final"]["ari"] - undisturbed) < 0.1, (final["final"]["ari"], undisturbed, log[-2000:])
