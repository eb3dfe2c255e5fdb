"""Per-worker batches over a preprocessed matrix (no Ray, no torch).

Each epoch draws one global permutation from (seed, epoch), truncates it so every worker gets the same number
of cells, and gives each worker a contiguous block of it. Every worker therefore takes the same number of steps
at the same local batch size, which the cross-worker gathers need. The leftover cells of a shard (fewer than a
batch) are merged into its last batch rather than forming a tail batch smaller than K.

On-disk sources (``ZarrSource``, prepared atlases) keep those guarantees but shuffle at chunk level plus a shuffle
buffer of a few chunks, read ahead in a background thread (``iter_epoch``; see ``stream_plan``).
"""

from __future__ import annotations

import queue
import threading
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


# --- Streaming from chunked on-disk sources (ZarrSource) -------------------------------------------------------
# Random rows read slowly from Zarr (every row decodes a whole chunk), so an epoch shuffles whole row chunks,
# splits the shuffled stream into equal contiguous shards (one per worker, the same cell count as epoch_batches),
# and shuffles rows within a window of a few chunks. Reads are whole contiguous ranges; the batches are the same
# count and size on every worker.


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
    per_worker = n_cells // world_size
    if per_worker == 0:
        raise ValueError(f"{n_cells} cells cannot be shared among {world_size} workers")
    n_chunks = -(-n_cells // chunk_rows)
    order = np.random.default_rng([seed, epoch]).permutation(n_chunks)
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
    windows = []
    for w in range(0, len(ranges), step):
        part = ranges[w:w + step]
        windows.append((part, rng.permutation(sum(e - s for s, e in part))))
    b = local_batch_size(global_batch, world_size)
    n_steps = max(1, per_worker // b)
    return StreamPlan(windows, [i * b for i in range(n_steps)] + [per_worker])


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


class Prefetcher:
    """Runs an iterator in a background thread, ``depth`` items ahead, so reading overlaps the training step."""

    _END = object()

    def __init__(self, it: Iterator, depth: int = 4):
        self._q: queue.Queue = queue.Queue(maxsize=max(1, depth))
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(it,), daemon=True, name="jojoscl-prefetch")
        self._thread.start()

    def _put(self, item) -> bool:
        while not self._stop.is_set():
            try:
                self._q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _run(self, it: Iterator) -> None:
        try:
            for item in it:
                if not self._put(item):
                    return
        except BaseException as e:  # handed to the consumer, raised there
            self._put(e)
            return
        self._put(self._END)

    def __iter__(self):
        while True:
            item = self._q.get()
            if item is self._END:
                return
            if isinstance(item, BaseException):
                raise item
            yield item

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


def epoch_batch_count(source, global_batch: int, world_size: int, rank: int, seed: int) -> int:
    n = source.shape[0]
    if hasattr(source, "read_range"):
        return stream_plan(n, source.chunk_rows, global_batch, world_size, rank, seed, 0).n_batches
    return len(epoch_batches(n, global_batch, world_size, rank, seed, 0))


def iter_epoch(source, global_batch: int, world_size: int, rank: int, seed: int, epoch: int,
               buffer_chunks: int = 8, prefetch: int = 4) -> Iterator[np.ndarray]:
    """This worker's batches (float32 arrays) for one epoch.

    In-memory sources keep ``epoch_batches`` (row-level shuffle); chunked on-disk sources stream whole chunks
    through a shuffle buffer in a background thread.
    """
    n = source.shape[0]
    if not hasattr(source, "read_range"):
        for idx in epoch_batches(n, global_batch, world_size, rank, seed, epoch):
            yield source.rows(idx)
        return
    plan = stream_plan(n, source.chunk_rows, global_batch, world_size, rank, seed, epoch, buffer_chunks)
    pre = Prefetcher(_stream_batches(source, plan), prefetch)
    try:
        yield from pre
    finally:
        pre.close()


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

    Above ``max_cells`` a seeded sample keeps rank 0's evaluation time and memory flat in the number of cells
    (embeddings of every cell are ~1.3 KB each: 1.3 GB at 1M). On-disk sources sample whole chunks, so an
    evaluation decodes ~max_cells rows instead of touching every chunk of the store.
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
