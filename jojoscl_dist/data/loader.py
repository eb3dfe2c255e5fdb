"""Per-worker batches over a preprocessed matrix (no Ray, no torch).

Each epoch draws one global permutation from (seed, epoch), truncates it so every worker gets the same number
of cells, and gives each worker a contiguous block of it. Every worker therefore takes the same number of steps
at the same local batch size, which the cross-worker gathers need. The leftover cells of a shard (fewer than a
batch) are merged into its last batch rather than forming a tail batch smaller than K.
"""

from __future__ import annotations

import numpy as np


class ArraySource:
    """A preprocessed matrix held in memory (cells x genes, float32)."""

    def __init__(self, x: np.ndarray):
        self.x = x

    @property
    def shape(self) -> tuple[int, int]:
        return self.x.shape

    def rows(self, idx: np.ndarray | slice) -> np.ndarray:
        return self.x[idx]


def local_batch_size(global_batch: int, world_size: int) -> int:
    return max(1, global_batch // world_size)


def epoch_batches(n_cells: int, global_batch: int, world_size: int, rank: int, seed: int, epoch: int) -> list[np.ndarray]:
    """Row indices of this worker's batches for one epoch (sorted within a batch for faster reads)."""
    perm = np.random.default_rng([seed, epoch]).permutation(n_cells)
    per_worker = n_cells // world_size
    if per_worker == 0:
        raise ValueError(f"{n_cells} cells cannot be shared among {world_size} workers")
    shard = perm[rank * per_worker:(rank + 1) * per_worker]
    b = local_batch_size(global_batch, world_size)
    n_steps = max(1, per_worker // b)
    batches = [shard[i * b:(i + 1) * b] for i in range(n_steps)]
    leftover = shard[n_steps * b:]
    if leftover.size:
        batches[-1] = np.concatenate([batches[-1], leftover])
    return [np.sort(bt) for bt in batches]
