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

ensure_ray(1, False)

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
