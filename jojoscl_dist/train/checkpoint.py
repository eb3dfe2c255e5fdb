"""Checkpoint schema: one ``state.pt`` holding the full training state, with a schema version.

Keys: schema, epoch (last completed), step, model (query encoder + heads), key_encoder, optimizer, scheduler,
rng (per-rank augmentation generators and per-rank torch/numpy/python global states), kmeans (warm-start
centroids), selector (history, best epoch), best_model (weights of the label-free pick), history (per-epoch
metrics), n_genes, n_clusters, config, device (the type the run trained on), data_fingerprint (data/fingerprint.py: the input it was trained on).
Written and read by ``outputs/safe_files.py``: no pickle, a ``state.pt.sha256`` beside it, fsynced before the rename.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from jojoscl_dist.errors import JojoInputError
from jojoscl_dist.outputs import safe_files

SCHEMA_VERSION = 2
READABLE_SCHEMAS = (1, 2)  # 1: the same fields with plain numpy arrays (read without pickle all the same)
STATE_FILE = "state.pt"

# Config fields a resumed run may change without invalidating the checkpoint: where things go and how
# often/how long it trains. Everything else (data, model, loss, optimiser, seed) must match.
RESUMABLE_CHANGES = {"optim.epochs", "optim.min_steps", "eval.eval_every", "run.num_workers", "run.use_gpu",
                     "run.output", "run.storage_path", "run.max_failures", "run.overwrite", "run.tracking",
                     "run.tracking_uri", "run.experiment", "run.quiet", "run.run_name"}


def save_state(directory: str | Path, state: dict[str, Any]) -> Path:
    return safe_files.save({"schema": SCHEMA_VERSION, **state}, Path(directory) / STATE_FILE)


def load_state(directory: str | Path) -> dict[str, Any]:
    path = Path(directory) / STATE_FILE
    state = safe_files.load(path, "checkpoint")
    if not isinstance(state, dict) or state.get("schema") not in READABLE_SCHEMAS:
        raise JojoInputError(f"checkpoint {path} has schema {state.get('schema') if isinstance(state, dict) else None}"
                             f", this version reads {READABLE_SCHEMAS}: start the run under another --run-name")
    return state


def global_rng_state() -> dict[str, Any]:
    """This process's global RNG states (torch CPU, numpy legacy, python)."""
    return {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}


def set_global_rng_state(st: dict[str, Any]) -> None:
    torch.set_rng_state(st["torch"])
    np.random.set_state(st["numpy"])
    random.setstate(st["python"])


def checkpoints(root: str | Path) -> list[Path]:
    """Checkpoint directories under ``root`` (Ray Train or LocalSession layout), newest first.

    Both name their folders so that name order is time order (checkpoint_<timestamp> / checkpoint_<counter>).
    """
    root = Path(root)
    if not root.is_dir():
        return []
    return sorted((p for p in root.glob("checkpoint_*") if p.is_dir()), key=lambda p: p.name, reverse=True)


def latest_checkpoint(root: str | Path) -> Path | None:
    """The newest checkpoint directory under ``root`` holding a state.pt, or None."""
    return next((d for d in checkpoints(root) if (d / STATE_FILE).is_file()), None)


def latest_loadable(root: str | Path) -> tuple[Path, dict[str, Any]] | None:
    """The newest checkpoint under ``root`` whose state.pt loads, with that state; None when there is none.

    A driver killed while a worker was uploading can leave the newest folder with a truncated state.pt: it is
    skipped (with a note), and the run resumes from the one before.
    """
    for d in checkpoints(root):
        if not (d / STATE_FILE).is_file():
            continue
        try:
            return d, load_state(d)
        except JojoInputError as e:  # truncated by a crash mid-copy, altered, or not ours: never trained on
            print(f"jojoscl: skipping checkpoint {d}: {e}", flush=True)
    return None


def config_differences(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """'section.field' keys whose values differ between two config dicts, except RESUMABLE_CHANGES."""
    out = []
    for section, fields in current.items():
        for name, value in fields.items():
            key = f"{section}.{name}"
            old = saved.get(section, {}).get(name)
            if key in RESUMABLE_CHANGES:
                continue
            norm = (lambda v: list(v) if isinstance(v, tuple) else v)
            if norm(old) != norm(value):
                out.append(f"{key}: {old!r} -> {value!r}")
    return out
