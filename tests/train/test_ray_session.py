"""The local Ray cluster that ``ensure_ray`` starts (a fresh process each: the test session may hold Ray already)."""

import os
import subprocess
import sys

import pytest

SCRIPT = """
import ray
from ray.util.state.api import StateApiClient
from ray.util.state.common import ListApiOptions, StateResource
from jojoscl_dist.train.ray_session import ensure_ray

ensure_ray(1)

@ray.remote(num_cpus=1)
def f(i):
    return i

ray.get([f.remote(i) for i in range(1500)])
import time; time.sleep(2)  # task events reach the GCS once a second
# This cluster's own dashboard: another local Ray (a concurrent test, a sweep) may run on the host.
tasks = StateApiClient(address="http://" + ray._private.worker._global_node.webui_url).list(StateResource.TASKS, options=ListApiOptions(limit=10000),
                              raise_on_missing_output=False, _explain=False)
print("TASKS", len(tasks))
"""


def _tasks_kept(extra_env: dict[str, str]) -> int:
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_task_events_max_num_task_in_gcs", "RAY_ADDRESS")}
    env.update(extra_env)
    r = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=240)
    assert r.returncode == 0, r.stderr[-2000:]
    return int(next(line for line in r.stdout.splitlines() if line.startswith("TASKS")).split()[1])


@pytest.mark.ray
def test_local_cluster_caps_the_task_events_its_gcs_keeps():
    # The Train controller's 0.1 s polls made the GCS grow with a run's duration (docs/benchmarks.md "Scale").
    assert _tasks_kept({}) <= 1000
    # The cap is ours: a user's own setting wins, and Ray's default keeps all 1500.
    assert _tasks_kept({"RAY_task_events_max_num_task_in_gcs": "100000"}) >= 1500


@pytest.fixture(scope="module")
def local_ray():
    import ray

    from jojoscl_dist.train.ray_session import ensure_ray

    ensure_ray(1)
    yield ray
    ray.shutdown()


@pytest.mark.ray
def test_one_trainer_factory_for_the_cli_and_sweep_trials(local_ray, tmp_path, monkeypatch):
    """build_trainer: a CLI run's and a sweep trial's TorchTrainer differ only in what the caller passes."""
    from types import SimpleNamespace

    import numpy as np

    from jojoscl_dist.config import JojoConfig
    from jojoscl_dist.train.ray_session import FAULT_ENV, TrainInputs, build_trainer

    ray = local_ray
    monkeypatch.delenv(FAULT_ENV, raising=False)
    cfg = JojoConfig()
    cfg.run.num_workers, cfg.run.use_gpu, cfg.run.max_failures = 2, False, 3
    x = np.arange(20, dtype=np.float32).reshape(10, 2)
    truth = np.array(list("bab") + ["c"] * 7)
    inputs = TrainInputs.of(SimpleNamespace(x=x, n_clusters=3, labels=truth, fingerprint={"path": "in.h5ad"}))
    assert inputs.labels.dtype == np.int32 and inputs.labels.tolist() == [1, 0, 1] + [2] * 7

    cli = build_trainer(cfg, inputs, str(tmp_path), "run-a", resume_from="/ckpt")
    total = int(ray.cluster_resources()["CPU"])
    assert cli.scaling_config.num_workers == 2 and not cli.scaling_config.use_gpu
    assert cli.scaling_config.resources_per_worker == {"CPU": max(1, (total - 1) // 2)}
    assert cli.backend_config.backend == "gloo"
    rc = cli.run_config
    assert (rc.name, rc.storage_path) == ("run-a", str(tmp_path))
    assert rc.failure_config.max_failures == 3 and rc.checkpoint_config.num_to_keep == 2 and not rc.callbacks
    loop_cfg = cli.train_loop_config
    assert JojoConfig.from_dict(loop_cfg["cfg"]).to_dict() == cfg.to_dict()
    assert loop_cfg["n_clusters"] == 3 and loop_cfg["labels"] is inputs.labels
    assert loop_cfg["resume_from"] == "/ckpt" and loop_cfg["fingerprint"] == {"path": "in.h5ad"}
    np.testing.assert_array_equal(ray.get(loop_cfg["data_ref"]), x)  # the cells went to the object store
    assert loop_cfg["faults"] is None
    cfg.run.cpus_per_worker = 1
    assert build_trainer(cfg, inputs, str(tmp_path), "run-a").scaling_config.resources_per_worker == {"CPU": 1}

    # A trial: its share of a GPU decides the backend; the cells come as the sweep's one object-store ref.
    ref = ray.put(x)
    callback = ray.train.UserCallback()  # a sweep passes TuneReportCallback
    trial = build_trainer(cfg, TrainInputs(ref, 3, inputs.labels), str(tmp_path), "train-t1",
                          resources_per_worker={"CPU": 0.5, "GPU": 0.25}, keep_checkpoints=1, callbacks=[callback])
    assert trial.scaling_config.use_gpu and trial.scaling_config.resources_per_worker == {"CPU": 0.5, "GPU": 0.25}
    assert trial.backend_config.backend == "nccl" and trial.train_loop_config["data_ref"] is ref
    assert trial.run_config.checkpoint_config.num_to_keep == 1 and trial.run_config.callbacks == [callback]
    assert trial.run_config.failure_config.max_failures == 3  # the same retry rule as a CLI run

    # Fault injection reaches the workers only through the driver's environment (tests/faults).
    monkeypatch.setenv(FAULT_ENV, '{"starts": "s.txt"}')
    assert build_trainer(cfg, inputs, str(tmp_path), "run-b").train_loop_config["faults"] == '{"starts": "s.txt"}'


GPU_SCRIPT = """
import time, ray
from jojoscl_dist.config import JojoConfig
from jojoscl_dist.errors import JojoInputError
from jojoscl_dist.train.ray_session import workers_use_gpu

def cfg(workers, use_gpu=None, wait=0.0):
    c = JojoConfig()
    c.run.num_workers, c.run.use_gpu, c.run.gpu_wait_s = workers, use_gpu, wait
    return c

ray.init(num_cpus=1, num_gpus=2)  # GPUs as the cluster declares them; nothing runs on them here
print("AUTO2", workers_use_gpu(cfg(2)), "AUTO3", workers_use_gpu(cfg(3)), "CPU", workers_use_gpu(cfg(2, False)))
t = time.monotonic()
try:
    workers_use_gpu(cfg(3, True, wait=1.0), poll_s=0.2)
except JojoInputError as e:
    print("WAITED", round(time.monotonic() - t, 1), "ERROR", e)
ray.shutdown()
ray.init(num_cpus=1, num_gpus=0)
print("NOGPU", workers_use_gpu(cfg(1)))
"""


@pytest.mark.ray
def test_gpu_use_follows_the_clusters_gpus_not_the_driver():
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    r = subprocess.run([sys.executable, "-c", GPU_SCRIPT], env=env, capture_output=True, text=True, timeout=240)
    assert r.returncode == 0, r.stderr[-2000:]
    out = r.stdout
    assert "AUTO2 True AUTO3 False CPU False" in out  # one GPU per worker, or none: no half-GPU run
    waited = float(out.split("WAITED ")[1].split()[0])
    assert 1.0 <= waited < 10  # waited for GPU workers to join, then failed fast
    assert "asks for 3 GPU(s), one per worker, but the Ray cluster has 2" in out and "--gpu-wait" in out
    assert "NOGPU False" in out
