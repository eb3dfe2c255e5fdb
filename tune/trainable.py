"""One Tune trial = one Ray Train run (the Train V2 pattern: a Tune function trainable launches a TorchTrainer).

The trial function holds almost no resources itself; its TorchTrainer asks Ray for the worker bundles, and the
workers run the same per-worker loop as a normal run: jojoscl_dist.train.ray_session.build_trainer assembles both
(scaling, torch and run config), the trial passing its resource share and Tune's report callback. Metrics flow
worker -> ray.train.report -> Train controller -> TuneReportCallback -> the trial's Tune session, so Tune's
scheduler (ASHA) sees every epoch and can stop the trial (which tears its Train run down).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from ray import tune
from ray.tune.integration.ray_train import TuneReportCallback

from jojoscl_dist.config import JojoConfig
from jojoscl_dist.errors import JojoInputError
from jojoscl_dist.train.ray_session import build_trainer
from tune.space import apply_trial_config


@dataclass
class TrialResources:
    workers: int = 1  # Train workers per trial (1: Tune + a 2-worker trainer hung on 2 CPUs)
    cpu: float = 1.0  # per worker; also the torch thread count Ray gives each worker
    gpu: float = 0.0  # per worker (fractions share a GPU between trials)

    @classmethod
    def parse(cls, text: str | None) -> "TrialResources":
        """'workers=1,cpu=1,gpu=0.5' (any subset)."""
        res = cls()
        for part in filter(None, (p.strip() for p in (text or "").split(","))):
            key, sep, value = part.partition("=")
            if not sep or key.strip() not in ("workers", "cpu", "gpu"):
                raise JojoInputError(f"--resources-per-trial: cannot read {part!r}; use e.g. workers=1,cpu=1,gpu=0")
            try:
                num = float(value)
            except ValueError:
                raise JojoInputError(f"--resources-per-trial: {key}={value!r} is not a number") from None
            setattr(res, key.strip(), num)
        res.workers = int(res.workers)
        if res.workers < 1 or res.cpu <= 0 or res.gpu < 0:
            raise JojoInputError("--resources-per-trial needs workers >= 1, cpu > 0, gpu >= 0")
        return res

    def worker_bundle(self) -> dict[str, float]:
        return {"CPU": self.cpu} | ({"GPU": self.gpu} if self.gpu > 0 else {})

    def concurrency(self, cluster: dict[str, float]) -> int:
        """How many trials fit at once in the cluster's CPU/GPU budget (at least 1)."""
        fits = int(cluster.get("CPU", 1) // (self.cpu * self.workers + TRIAL_HEAD_CPU))
        if self.gpu > 0:
            fits = min(fits, int(cluster.get("GPU", 0) // (self.gpu * self.workers)))
        return max(1, fits)


# The trial function only waits on its Train controller (which itself takes 0 CPUs); a sliver of a CPU keeps it
# schedulable without stealing a worker slot.
TRIAL_HEAD_CPU = 0.01


def train_trial(config: dict[str, Any], shared: dict[str, Any]) -> None:
    """Tune function trainable. ``shared`` (from tune.with_parameters): base config, TrainInputs (the cells as one
    object-store ref for every trial), resources, storage."""
    logging.getLogger("ray.train").setLevel(logging.WARNING)
    cfg = apply_trial_config(JojoConfig.from_dict(shared["base"]), config)
    res: TrialResources = shared["resources"]
    trainer = build_trainer(cfg, shared["inputs"], shared["storage"], f"train-{tune.get_context().get_trial_id()}",
                            resources_per_worker=res.worker_bundle(), keep_checkpoints=1,
                            callbacks=[TuneReportCallback()])
    trainer.fit()  # raises on a worker failure, which Tune records as a trial error
