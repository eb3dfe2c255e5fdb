"""Ray Train plumbing: the worker-side session and the TorchTrainer of a run or a sweep trial (no math here)."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import ray
import ray.train
import ray.train.torch
import torch

from jojoscl_dist.config import JojoConfig
from jojoscl_dist.data.loader import ArraySource
from jojoscl_dist.data.zarr_store import ZarrSource
from jojoscl_dist.errors import JojoInputError, TrainingDiverged, TrainingFailed
from jojoscl_dist.tracking.live import LiveRun
from jojoscl_dist.train.checkpoint import DIVERGED_FILE, STATE_FILE
from jojoscl_dist.train.loop import WorkerData, resolve_epochs, train_worker
from jojoscl_dist.train.session import EpochProgress, Session

# ray.train.report is throttled by the controller's health-check interval (default 2 s per report).
RAY_ENV = {"RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": os.environ.get("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.1")}
# A JSON object of faults for tests/faults (see inject_faults), passed to a run's workers in its train_loop_config.
FAULT_ENV = "JOJOSCL_FAULT_INJECT"


class RaySession(Session):
    def __init__(self, resume_from: str | None = None) -> None:
        self.observers = []
        self.resume_from = resume_from  # the checkpoint the driver announced (see resume_dir)
        ctx = ray.train.get_context()
        self.rank, self.world_size = ctx.get_world_rank(), ctx.get_world_size()
        self.device = ray.train.torch.get_device()
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)

    def prepare_model(self, model: torch.nn.Module) -> torch.nn.Module:
        return ray.train.torch.prepare_model(model)  # DDP (gloo on CPU, nccl on GPU) above one worker

    def report(self, metrics: dict, checkpoint_dir: str | None = None) -> None:
        if "diverged" in metrics and checkpoint_dir is None and self.rank == 0:
            # The driver gets (Result.metrics) only metrics reported with a checkpoint: one with the message and
            # no state.pt, which resume_dir and latest_loadable skip.
            with tempfile.TemporaryDirectory(prefix="jojoscl-diverged-") as tmp:
                (Path(tmp) / DIVERGED_FILE).write_text(json.dumps({"message": metrics["diverged"]}))
                self.report(metrics, checkpoint_dir=tmp)
            return
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(checkpoint_dir)
                         if checkpoint_dir else None)
        self.notify(metrics)

    @contextlib.contextmanager
    def resume_dir(self) -> Iterator[str | None]:
        """The newer of Ray's checkpoint and the driver's. Ray restores the last one its controller registered; a
        driver killed between a worker's upload and that registration leaves a newer complete one, which the
        driver announces. Both are named checkpoint_<timestamp>; a diverged run's last one holds no state.pt."""
        ckpt = ray.train.get_checkpoint()
        own = self.resume_from
        if ckpt is not None and (own is None or Path(ckpt.path).name >= Path(own).name):
            with ckpt.as_directory() as d:
                if (Path(d) / STATE_FILE).is_file():
                    yield d
                    return
        yield own


def quiet_worker_logs() -> None:
    """Silence Ray Train's per-report INFO line in worker logs: its logger is named by the file path of Ray's
    train context module, which neither LoggingConfig nor the 'ray.train' level reaches."""
    from ray.train.v2._internal.execution import context as train_context

    for name in (train_context.__file__, "ray.train", "faiss", "faiss.loader"):
        logging.getLogger(name).setLevel(logging.WARNING)


def ray_train_loop(config: dict[str, Any]) -> None:
    """Entry point of every Ray Train worker."""
    quiet_worker_logs()
    cfg = JojoConfig.from_dict(config["cfg"])
    # A prepared store is opened by path (shared storage on a cluster); small data comes through the object store.
    source = ZarrSource(config["data_path"]) if config.get("data_path") else ArraySource(ray.get(config["data_ref"]))
    session = RaySession(config.get("resume_from"))
    if session.rank == 0 and not cfg.run.quiet:
        session.observers.append(EpochProgress(resolve_epochs(cfg, source.shape[0]), mode="lines",
                                               stream=sys.stdout, prefix=""))
    with contextlib.ExitStack() as stack:
        if session.rank == 0 and config.get("tracking"):
            session.observers.append(stack.enter_context(LiveRun(**config["tracking"]).epoch_logger()))
        if config.get("faults"):
            inject_faults(session, json.loads(config["faults"]))
        train_worker(cfg, WorkerData(source, config["n_clusters"], config.get("labels"), config.get("fingerprint")),
                     session)


def inject_faults(session: RaySession, spec: dict) -> None:
    """'starts': append this worker's rank to that file. 'nan_step': the loss becomes NaN from that step of this
    worker on. 'epoch' (with 'rank', default 1, and 'marker'): that rank exits after reporting that epoch, once."""
    if spec.get("starts"):
        with open(spec["starts"], "a") as f:
            f.write(f"{session.rank}\n")
    if spec.get("nan_step"):
        from jojoscl_dist.losses import objective

        real, calls = objective.instance_contrastive_loss, [0]

        def nan_loss(*args, **kwargs):
            calls[0] += 1
            out = real(*args, **kwargs)
            return out * float("nan") if calls[0] >= spec["nan_step"] else out

        objective.instance_contrastive_loss = nan_loss
    if "epoch" not in spec:
        return
    marker, original = Path(spec["marker"]), session.report

    def report(metrics: dict, checkpoint_dir: str | None = None) -> None:
        original(metrics, checkpoint_dir)
        if session.rank == spec.get("rank", 1) and metrics["epoch"] == spec["epoch"] and not marker.exists():
            marker.write_text("killed")
            os._exit(1)

    session.report = report  # type: ignore[method-assign]


def ensure_ray(num_workers: int) -> None:
    if ray.is_initialized():
        return
    for k, v in RAY_ENV.items():
        os.environ.setdefault(k, v)
    if os.environ.get("RAY_ADDRESS"):
        ray.init(runtime_env={"env_vars": RAY_ENV})  # an existing cluster (ray job submit) keeps its settings
        return
    # The controller's frequent health checks filled the GCS task-event table, growing its memory with a run's
    # duration; 1,000 tasks bound it (docs/benchmarks.md "Scale").
    os.environ.setdefault("RAY_task_events_max_num_task_in_gcs", "1000")
    # Logical CPUs above physical: the Train controller needs a slot beside the workers.
    # address="local": a new cluster of our own even when `ray start` left one running here (join it: RAY_ADDRESS).
    ray.init(address="local", num_cpus=max(os.cpu_count() or 1, num_workers) + 1, log_to_driver=True,
             runtime_env={"env_vars": RAY_ENV}, logging_level=logging.WARNING)


def cluster_gpus() -> float:
    return float(ray.cluster_resources().get("GPU", 0))


def workers_use_gpu(cfg: JojoConfig, poll_s: float = 2.0) -> bool:
    """GPUs for the Ray workers by what the cluster holds, not by the driver (a KubeRay head has no GPU): by
    default when there is one per worker. ``--use-gpu`` waits up to ``run.gpu_wait_s`` for GPU workers to join
    (a starting or autoscaling cluster), then fails at once instead of waiting for the job's deadline."""
    n, wanted = cfg.run.num_workers, cfg.run.use_gpu
    if wanted is False:
        return False
    if wanted is None:
        return cluster_gpus() >= n
    if cluster_gpus() < n and cfg.run.gpu_wait_s > 0:
        from ray.autoscaler.sdk import request_resources

        request_resources(bundles=[{"GPU": 1}] * n)  # an autoscaler adds GPU nodes only for a pending request
        deadline = time.monotonic() + cfg.run.gpu_wait_s
        while cluster_gpus() < n and time.monotonic() < deadline:
            time.sleep(poll_s)
        request_resources(bundles=[])
    if cluster_gpus() < n:
        raise JojoInputError(f"--use-gpu asks for {n} GPU(s), one per worker, but the Ray cluster has "
                             f"{cluster_gpus():g} after {cfg.run.gpu_wait_s:g} s: add GPU workers, lower "
                             f"--num-workers, raise --gpu-wait for an autoscaling cluster, or drop --use-gpu")
    return True


@dataclass(frozen=True)
class TrainInputs:
    """What the driver hands the workers: the cells, K, the truth (logged metrics only) and the input's identity."""

    x: Any  # np.ndarray (put in the object store), a ray.ObjectRef to one (a sweep's trials share it) or a ZarrSource
    n_clusters: int
    labels: np.ndarray | None = None  # int32 codes: 4 bytes a cell in every worker
    fingerprint: dict | None = None
    tracking: LiveRun | None = None  # the MLflow run rank 0 logs each epoch to

    @classmethod
    def of(cls, data, tracking: LiveRun | None = None) -> "TrainInputs":
        """From a PreparedData (data/dataset.py)."""
        labels = None if data.labels is None else np.unique(data.labels, return_inverse=True)[1].astype(np.int32)
        return cls(data.x, data.n_clusters, labels, data.fingerprint, tracking)


def build_trainer(cfg: JojoConfig, inputs: TrainInputs, storage_path: str, name: str, *,
                  resume_from: str | None = None, resources_per_worker: dict[str, float] | None = None,
                  keep_checkpoints: int = 2, callbacks: Sequence[Any] = ()) -> ray.train.torch.TorchTrainer:
    """The TorchTrainer of a CLI run or a sweep trial. Each worker gets ``resources_per_worker`` (a trial's share;
    a GPU when it names one), else ``cfg.run.cpus_per_worker`` CPUs (default: the cluster's shared out, which
    sets torch's threads) and a GPU per ``workers_use_gpu``. ``resume_from``: see RaySession.resume_dir."""
    n = cfg.run.num_workers
    ensure_ray(n)
    use_gpu = resources_per_worker.get("GPU", 0) > 0 if resources_per_worker else workers_use_gpu(cfg)
    if not resources_per_worker:
        total_cpu = int(ray.cluster_resources().get("CPU", 1))
        resources_per_worker = {"CPU": cfg.run.cpus_per_worker or max(1, (total_cpu - 1) // n)}
    x = inputs.x
    if isinstance(x, ZarrSource):
        data = {"data_path": x.path}
    else:
        data = {"data_ref": x if isinstance(x, ray.ObjectRef) else ray.put(x)}
    return ray.train.torch.TorchTrainer(
        ray_train_loop,
        train_loop_config={"cfg": cfg.to_dict(), "n_clusters": inputs.n_clusters, "labels": inputs.labels,
                           "resume_from": resume_from, "fingerprint": inputs.fingerprint,
                           "faults": os.environ.get(FAULT_ENV),
                           "tracking": dataclasses.asdict(inputs.tracking) if inputs.tracking else None, **data},
        torch_config=ray.train.torch.TorchConfig(backend="nccl" if use_gpu else "gloo"),
        scaling_config=ray.train.ScalingConfig(num_workers=n, use_gpu=use_gpu, resources_per_worker=resources_per_worker,
                                               placement_strategy=cfg.run.placement),
        run_config=ray.train.RunConfig(
            name=name, storage_path=storage_path,
            failure_config=ray.train.FailureConfig(max_failures=cfg.run.max_failures),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=keep_checkpoints),
            callbacks=list(callbacks),
            logging_config=ray.train.LoggingConfig(log_level="WARNING"),
        ),
    )


def fit_ray(cfg: JojoConfig, inputs: TrainInputs, storage_path: str, name: str,
            resume_from: str | None = None) -> Path:
    """Train on Ray -> the final checkpoint's path; TrainingDiverged on a NaN/Inf loss, TrainingFailed on Ray's."""
    trainer = build_trainer(cfg, inputs, storage_path, name, resume_from=resume_from)
    try:
        result = trainer.fit()
    except (ray.train.TrainingFailedError, ray.exceptions.RayError) as e:
        raise TrainingFailed(f"training failed: {e}") from e
    if (result.metrics or {}).get("diverged"):
        raise TrainingDiverged(result.metrics["diverged"])
    if result.checkpoint is None:
        raise TrainingFailed(f"training failed: the workers of {name} reported no checkpoint")
    return Path(result.checkpoint.path)
