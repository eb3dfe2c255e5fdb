"""Per-worker batches over a preprocessed matrix (no Ray, no torch).

Every worker gets the same number of cells, hence the same number of steps at the same batch size, which the
cross-worker gathers need; a shard's leftover cells join its last batch instead of a tail batch smaller than K.
In memory, an epoch is one global permutation from (seed, epoch), cut into contiguous per-worker blocks. On disk
(``ZarrSource``), random rows are slow (each decodes a whole chunk), so an epoch shuffles whole row chunks, cuts the
shuffled stream into per-worker shards and shuffles rows within a window of a few chunks, read ahead in a thread.
"""

from __future__ import annotations

from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Iterator

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


def _per_worker(n_cells: int, world_size: int) -> int:
    if n_cells < world_size:
        raise ValueError(f"{n_cells} cells cannot be shared among {world_size} workers")
    return n_cells // world_size


def _batch_bounds(per_worker: int, global_batch: int, world_size: int) -> list[int]:
    """Batch i of a worker's ``per_worker`` cells is [bounds[i], bounds[i+1]); the leftover joins the last batch."""
    b = max(1, global_batch // world_size)
    return [i * b for i in range(max(1, per_worker // b))] + [per_worker]


def epoch_batches(n_cells: int, global_batch: int, world_size: int, rank: int, seed: int, epoch: int) -> list[np.ndarray]:
    """Row indices of this worker's batches for one epoch (sorted within a batch for faster reads)."""
    per_worker = _per_worker(n_cells, world_size)
    shard = np.random.default_rng([seed, epoch]).permutation(n_cells)[rank * per_worker:(rank + 1) * per_worker]
    bounds = _batch_bounds(per_worker, global_batch, world_size)
    return [np.sort(shard[a:b]) for a, b in zip(bounds[:-1], bounds[1:])]


@dataclass
class StreamPlan:
    windows: list[tuple[list[tuple[int, int]], np.ndarray]]  # (row ranges, permutation of their concatenation)
    bounds: list[int]  # batch boundaries in this worker's stream: batch i = stream[bounds[i]:bounds[i+1]]

    @property
    def n_batches(self) -> int:
        return len(self.bounds) - 1

    def batch_indices(self) -> list[np.ndarray]:
        """Row indices of every batch, in stream order (tests, and sources without range reads)."""
        order = np.concatenate([np.concatenate([np.arange(s, e) for s, e in r])[p] for r, p in self.windows])
        return [order[a:b] for a, b in zip(self.bounds[:-1], self.bounds[1:])]


def stream_plan(n_cells: int, chunk_rows: int, global_batch: int, world_size: int, rank: int, seed: int,
                epoch: int, buffer_chunks: int = 8) -> StreamPlan:
    per_worker = _per_worker(n_cells, world_size)
    order = np.random.default_rng([seed, epoch]).permutation(-(-n_cells // chunk_rows))
    lo, hi = rank * per_worker, (rank + 1) * per_worker  # this worker's part of the shuffled chunk stream
    ranges: list[tuple[int, int]] = []
    pos = 0
    for c in order:
        s, e = int(c) * chunk_rows, min((int(c) + 1) * chunk_rows, n_cells)
        a, b = max(lo, pos), min(hi, pos + e - s)
        if a < b:
            ranges.append((s + a - pos, s + b - pos))
        pos += e - s
        if pos >= hi:
            break
    rng = np.random.default_rng([seed, epoch, rank, 1])
    step = max(1, buffer_chunks)
    windows = [(ranges[w:w + step], rng.permutation(sum(e - s for s, e in ranges[w:w + step])))
               for w in range(0, len(ranges), step)]
    return StreamPlan(windows, _batch_bounds(per_worker, global_batch, world_size))


def _stream_batches(source, plan: StreamPlan) -> Iterator[np.ndarray]:
    pending: list[np.ndarray] = []
    n_pending, i = 0, 0
    for ranges, perm in plan.windows:
        block = np.concatenate([source.read_range(s, e) for s, e in ranges])[perm]
        pending.append(block)
        n_pending += len(block)
        while i < plan.n_batches and n_pending >= plan.bounds[i + 1] - plan.bounds[i]:
            size = plan.bounds[i + 1] - plan.bounds[i]
            buf = np.concatenate(pending) if len(pending) > 1 else pending[0]
            yield buf[:size]
            pending, n_pending, i = [buf[size:]], n_pending - size, i + 1
    if i != plan.n_batches:
        raise RuntimeError(f"stream ended after {i} of {plan.n_batches} batches")  # a bug, never data


def read_ahead(it: Iterator, depth: int = 4) -> Iterator:
    """The items of ``it``, produced ``depth`` ahead in a background thread so reading overlaps the training step;
    its errors are raised here, in order."""
    end = object()
    pool = ThreadPoolExecutor(1, thread_name_prefix="jojoscl-prefetch")
    try:
        ahead = deque(pool.submit(next, it, end) for _ in range(max(1, depth)))
        while (item := ahead.popleft().result()) is not end:
            ahead.append(pool.submit(next, it, end))
            yield item
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def epoch_batch_count(source, global_batch: int, world_size: int, rank: int, seed: int) -> int:
    n = source.shape[0]
    if hasattr(source, "read_range"):
        return stream_plan(n, source.chunk_rows, global_batch, world_size, rank, seed, 0).n_batches
    return len(epoch_batches(n, global_batch, world_size, rank, seed, 0))


def iter_epoch(source, global_batch: int, world_size: int, rank: int, seed: int, epoch: int,
               buffer_chunks: int = 8, prefetch: int = 4) -> Iterator[np.ndarray]:
    """This worker's batches (float32 arrays) for one epoch: ``epoch_batches`` in memory, a ``stream_plan`` read
    ahead in a background thread on disk."""
    n = source.shape[0]
    if not hasattr(source, "read_range"):
        for idx in epoch_batches(n, global_batch, world_size, rank, seed, epoch):
            yield source.rows(idx)
        return
    plan = stream_plan(n, source.chunk_rows, global_batch, world_size, rank, seed, epoch, buffer_chunks)
    yield from read_ahead(_stream_batches(source, plan), prefetch)


class SubsetSource:
    """Fixed rows of another source (sorted indices), read in order: the evaluation set of a large atlas."""

    def __init__(self, source, idx: np.ndarray):
        self.source, self.idx = source, np.asarray(idx)

    @property
    def shape(self) -> tuple[int, int]:
        return (len(self.idx), self.source.shape[1])

    def rows(self, idx: np.ndarray | slice) -> np.ndarray:
        return self.source.rows(self.idx[idx])


def eval_subset(source, max_cells: int, seed: int) -> np.ndarray | None:
    """Sorted indices of the cells that in-training evaluations embed, or None for all of them.

    Above ``max_cells`` a seeded sample keeps rank 0's evaluation time and memory flat (embeddings take ~1.3 KB a
    cell); on-disk sources sample whole chunks, so an evaluation decodes ~max_cells rows, not every chunk.
    """
    n = source.shape[0]
    if max_cells <= 0 or n <= max_cells:
        return None
    rng = np.random.default_rng([seed, 7])
    chunk = int(getattr(source, "chunk_rows", 0) or 0)
    if chunk <= 1:
        return np.sort(rng.choice(n, max_cells, replace=False))
    n_chunks = -(-n // chunk)
    take = np.sort(rng.choice(n_chunks, min(n_chunks, -(-max_cells // chunk)), replace=False))
    return np.concatenate([np.arange(c * chunk, min((c + 1) * chunk, n)) for c in take])
