"""A worker's training state (``TrainState``) and its checkpoint: one ``state.pt`` (``TrainState.state_dict`` plus
a schema version) written and read by ``outputs/safe_files.py`` (no pickle, a sha256 beside it); the rules for
resuming from one."""

from __future__ import annotations

import copy
import json
import logging
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from jojoscl_dist.clustering.kmeans import BatchKMeans
from jojoscl_dist.clustering.selection import Selector
from jojoscl_dist.config import JojoConfig
from jojoscl_dist.errors import JojoInputError
from jojoscl_dist.outputs import safe_files
from jojoscl_dist.train import distributed as D

log = logging.getLogger(__name__)

SCHEMA_VERSION = 2
READABLE_SCHEMAS = (1, 2)  # 1: the same fields with plain numpy arrays
STATE_FILE = "state.pt"
DIVERGED_FILE = "diverged.json"  # a NaN/Inf stop, recorded so that a relaunch of the same settings stops at once

# What a resumed run may change: where things go and how often/how long it trains; the rest must match.
RESUMABLE_CHANGES = {"optim.epochs", "optim.min_steps", "eval.eval_every", "run.num_workers", "run.use_gpu",
                     "run.gpu_wait_s", "run.placement", "run.cpus_per_worker", "run.output", "run.storage_path",
                     "run.max_failures", "run.overwrite", "run.tracking", "run.tracking_uri", "run.experiment",
                     "run.quiet", "run.run_name", "run.register_model"}


def save_state(directory: str | Path, state: dict[str, Any]) -> Path:
    return safe_files.save({"schema": SCHEMA_VERSION, **state}, Path(directory) / STATE_FILE)


def load_state(directory: str | Path) -> dict[str, Any]:
    path = Path(directory) / STATE_FILE
    state = safe_files.load(path, "checkpoint")
    if not isinstance(state, dict) or state.get("schema") not in READABLE_SCHEMAS:
        raise JojoInputError(f"checkpoint {path} has schema {state.get('schema') if isinstance(state, dict) else None}"
                             f", this version reads {READABLE_SCHEMAS}: start the run under another --run-name")
    return state


def checkpoints(root: str | Path) -> list[Path]:
    """Checkpoint folders under ``root``, newest first (Ray's and LocalSession's names sort in time order)."""
    root = Path(root)
    found = (p for p in root.glob("checkpoint_*") if p.is_dir()) if root.is_dir() else ()
    return sorted(found, key=lambda p: p.name, reverse=True)


def latest_checkpoint(root: str | Path) -> Path | None:
    return next((d for d in checkpoints(root) if (d / STATE_FILE).is_file()), None)


def latest_loadable(root: str | Path) -> tuple[Path, dict[str, Any]] | None:
    """The newest checkpoint whose state.pt loads (a driver killed mid-upload leaves a truncated one), and its state."""
    for d in checkpoints(root):
        if (d / STATE_FILE).is_file():
            try:
                return d, load_state(d)
            except JojoInputError as e:
                print(f"jojoscl: skipping checkpoint {d}: {e}", flush=True)
    return None


def config_differences(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """'key: old -> new' for each config value that differs, except RESUMABLE_CHANGES (tuples equal lists)."""
    norm, out = (lambda v: list(v) if isinstance(v, tuple) else v), []
    for section, fields in current.items():
        for name, value in fields.items():
            old = saved.get(section, {}).get(name)
            if f"{section}.{name}" not in RESUMABLE_CHANGES and norm(old) != norm(value):
                out.append(f"{section}.{name}: {old!r} -> {value!r}")
    return out


def read_divergence(root: str | Path) -> dict | None:
    """{'message', 'config'} recorded under a run's checkpoint folder, or None."""
    path = Path(root) / DIVERGED_FILE
    return json.loads(path.read_text()) if path.is_file() else None


def record_divergence(root: str | Path, message: str, config: dict) -> None:
    Path(root).mkdir(parents=True, exist_ok=True)
    safe_files.write_durably(Path(root) / DIVERGED_FILE, json.dumps({"message": message, "config": config}, indent=1))


def clear_divergence(root: str | Path) -> None:
    (Path(root) / DIVERGED_FILE).unlink(missing_ok=True)


def resume_scheduler(sched, saved: dict, step: int) -> bool:
    """Load a saved scheduler state; a cosine schedule saved for another length (--epochs changed on resume) is set
    to this run's length at the saved step instead (True then)."""
    t_max = getattr(sched, "T_max", None)
    sched.load_state_dict(saved)
    if t_max is None or sched.T_max == t_max:
        return False
    sched.T_max, sched.last_epoch = t_max, step
    # step() continues recursively from the current lr: it must sit on the new curve.
    for group, lr in zip(sched.optimizer.param_groups, sched._get_closed_form_lr()):
        group["lr"] = lr
    sched._last_lr = [g["lr"] for g in sched.optimizer.param_groups]
    return True


def augment_seed(seed: int, epoch: int, rank: int) -> int:
    """Seed of a worker's augmentation stream when a checkpoint's stream cannot be restored (another device)."""
    return int(np.random.SeedSequence([seed, epoch, rank]).generate_state(1, np.uint64)[0] >> 1)


def restore_generator(gen: torch.Generator, state: torch.Tensor, saved_device: str | None, seed: int, epoch: int,
                      rank: int) -> bool:
    """Restore a worker's augmentation stream, or reseed it from (seed, epoch, rank) when it was written on another
    device type (torch cannot convert it): reproducible, not identical to an uninterrupted run. False then."""
    if saved_device in (None, gen.device.type):
        try:
            gen.set_state(state)
            return True
        except RuntimeError:  # a state of the other device type
            pass
    new_seed = augment_seed(seed, epoch, rank)
    gen.manual_seed(new_seed)
    log.warning("the checkpoint was written on %s and this worker runs on %s: augmentation stream of rank %d "
                "reseeded from seed %d, epoch %d (seed %d)", saved_device or "another device", gen.device.type,
                rank, seed, epoch, new_seed)
    return False


@dataclass
class TrainState:
    cfg: JojoConfig
    rank: int
    epochs: int  # this run's length (resolve_epochs)
    n_genes: int
    n_clusters: int
    fingerprint: dict | None  # the input's identity (data/fingerprint.py)
    device: torch.device
    model: torch.nn.Module  # query encoder + heads, unwrapped
    net: torch.nn.Module  # the model as the session runs it (DDP when distributed)
    key_encoder: torch.nn.Module  # momentum copy of model.encoder
    optimizer: torch.optim.Optimizer
    scheduler: Any
    kmeans: BatchKMeans  # per-batch k-means and its warm-start centroids
    selector: Selector  # label-free scores of the evaluations and the pick
    generator: torch.Generator  # this worker's augmentation stream
    best_model: dict | None = None  # weights (CPU) of the pick so far
    history: list[dict] = field(default_factory=list)  # metrics of every completed epoch
    epoch: int = -1  # last completed epoch
    step: int = 0  # optimiser steps taken

    def keep_best(self) -> None:
        self.best_model = copy.deepcopy({n: t.cpu() for n, t in self.model.state_dict().items()})

    def state_dict(self) -> dict[str, Any]:
        """Collective: it gathers every worker's augmentation stream and global RNG states."""
        gen_states = D.all_gather_object(self.generator.get_state())
        global_states = D.all_gather_object({"torch": torch.get_rng_state(), "numpy": np.random.get_state(),
                                             "python": random.getstate()})
        return {
            "epoch": self.epoch, "step": self.step, "epochs": self.epochs,
            "model": self.model.state_dict(), "key_encoder": self.key_encoder.state_dict(),
            "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
            "rng": {"generators": gen_states, "global": global_states}, "device": self.device.type,
            "kmeans": self.kmeans.state_dict(), "selector": self.selector.state_dict(),
            "best_model": self.best_model, "history": self.history,
            "n_genes": self.n_genes, "n_clusters": self.n_clusters, "config": self.cfg.to_dict(),
            "data_fingerprint": self.fingerprint,
        }

    def load_state_dict(self, st: dict[str, Any]) -> None:
        """Resume (tensors on the CPU, whatever device wrote them). This run's length, config and input stay: the
        driver has checked that the checkpoint may continue under them."""
        self.model.load_state_dict(st["model"])
        self.key_encoder.load_state_dict(st["key_encoder"])
        self.optimizer.load_state_dict(st["optimizer"])  # torch moves each state tensor to its parameter's device
        self.epoch, self.step = st["epoch"], st["step"]
        if resume_scheduler(self.scheduler, st["scheduler"], self.step):
            log.info("cosine schedule rebuilt for %d epochs at step %d", self.epochs, self.step)
        self.kmeans.load_state_dict(st["kmeans"])
        self.selector.load_state_dict(st["selector"])
        self.best_model, self.history = st["best_model"], st["history"]
        if 0 <= self.selector.best_epoch < self.selector.min_epoch:
            # --epochs grew on resume: the pick lies before the new selection window, whose first evaluation wins.
            self.selector.best_epoch, self.selector.best_value, self.best_model = -1, -np.inf, None
        # A rank beyond the saved world size keeps its fresh seeded streams.
        rng = st["rng"]
        if self.rank < len(rng["generators"]):
            restore_generator(self.generator, rng["generators"][self.rank], st.get("device"), self.cfg.run.seed,
                              self.epoch + 1, self.rank)
        if self.rank < len(rng.get("global", [])):
            g = rng["global"][self.rank]
            torch.set_rng_state(g["torch"])
            np.random.set_state(g["numpy"])
            random.setstate(g["python"])
        log.info("resumed from epoch %d", st["epoch"])
