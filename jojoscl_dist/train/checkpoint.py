"""Checkpoint schema: one ``state.pt`` holding the full training state, with a schema version.

Keys: schema, epoch (last completed), step, model (query encoder + heads), key_encoder, optimizer, scheduler,
rng (torch generator, numpy/python/torch global states), kmeans (warm-start centroids), selector (history, best
epoch), best_model (weights of the label-free pick), history (per-epoch metrics), n_genes, n_clusters, config.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

SCHEMA_VERSION = 1
STATE_FILE = "state.pt"


def save_state(directory: str | Path, state: dict[str, Any]) -> Path:
    path = Path(directory) / STATE_FILE
    tmp = path.with_suffix(".tmp")
    torch.save({"schema": SCHEMA_VERSION, **state}, tmp)
    tmp.replace(path)  # never a half-written state.pt
    return path


def load_state(directory: str | Path) -> dict[str, Any]:
    path = Path(directory) / STATE_FILE
    state = torch.load(path, map_location="cpu", weights_only=False)
    if state.get("schema") != SCHEMA_VERSION:
        raise ValueError(f"checkpoint {path} has schema {state.get('schema')}, this version reads {SCHEMA_VERSION}")
    return state
