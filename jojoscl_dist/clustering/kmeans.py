"""k-means: FAISS (GPU index when CUDA and faiss-gpu are present) for all cells, torch for per-batch.

Two uses:
- ``BatchKMeans``: the per-batch k-means that gives L_SURE its hard assignment, a torch Lloyd loop on the
  model's device (no host round-trip per step; NaN in the embedding surfaces as a NaN loss at the epoch check).
  Centroids are carried from the previous step (warm start), so k-means++ seeding runs only on the first call.
- ``fit_kmeans``: final labels on all cells, k-means++ seeding (scikit-learn) + FAISS Lloyd iterations over
  several restarts (FAISS alone has no k-means++ and lands in poor solutions on separated clusters). The restart
  kept is either the lowest inertia or the consensus one: the restart whose labels agree most (mean ARI) with
  the other restarts' (``select="consensus"``, the final labels' default; why: ``consensus_index``).

FAISS subsamples to 256 points per centroid by default; we raise that cap to n so no point is silently dropped,
and set the minimum to 1 so small batches do not warn.
"""

from __future__ import annotations

import logging

# faiss logs its CPU-feature choice at INFO on import: noise in every Ray worker log.
logging.getLogger("faiss.loader").setLevel(logging.WARNING)
import faiss  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from sklearn.cluster import kmeans_plusplus  # noqa: E402

log = logging.getLogger(__name__)


def faiss_gpu_available() -> bool:
    return hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0 and torch.cuda.is_available()


def _lloyd(x: np.ndarray, k: int, niter: int, seed: int, init: np.ndarray | None, gpu: bool) -> tuple[np.ndarray, float]:
    """FAISS Lloyd iterations; returns (centroids (k, d), final objective)."""
    n, d = x.shape
    km = faiss.Kmeans(d, k, niter=niter, seed=seed, gpu=gpu, verbose=False,
                      max_points_per_centroid=max(n, 1), min_points_per_centroid=1, spherical=False)
    km.train(x, init_centroids=init)
    return km.centroids, float(km.obj[-1]) if len(km.obj) else float("nan")


def assign(x: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    index = faiss.IndexFlatL2(centroids.shape[1])
    index.add(np.ascontiguousarray(centroids, dtype=np.float32))
    _, labels = index.search(np.ascontiguousarray(x, dtype=np.float32), 1)
    return labels.ravel().astype(np.int64)


def _check(x: np.ndarray, k: int) -> np.ndarray:
    x = np.ascontiguousarray(x, dtype=np.float32)
    if x.ndim != 2:
        raise ValueError(f"k-means needs a 2-D array, got shape {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError("k-means input holds NaN or Inf (the embedding diverged; lower the learning rate)")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    return x


KMeansSelect = ("inertia", "consensus")


def fit_kmeans(x: np.ndarray, k: int, seed: int = 0, restarts: int = 10, niter: int = 50,
               gpu: bool | None = None, max_seed_points: int = 100_000, select: str = "inertia") -> np.ndarray:
    """Labels (n,) from ``restarts`` k-means++-seeded runs, one kept by ``select``. k is capped at n."""
    return fit_kmeans_centroids(x, k, seed, restarts, niter, gpu, max_seed_points, select)[0]


def fit_kmeans_centroids(x: np.ndarray, k: int, seed: int = 0, restarts: int = 10, niter: int = 50,
                         gpu: bool | None = None, max_seed_points: int = 100_000,
                         select: str = "inertia") -> tuple[np.ndarray, np.ndarray]:
    """(labels (n,), centroids (k, d)) of the kept restart; labels are each point's nearest centroid.

    select: "inertia" keeps the lowest objective; "consensus" the restart whose labels agree most with the
    others' (``consensus_index``)."""
    if select not in KMeansSelect:
        raise ValueError(f"unknown k-means restart selection {select!r}: one of {', '.join(KMeansSelect)}")
    x = _check(x, k)
    n = x.shape[0]
    k = min(k, n)
    gpu = faiss_gpu_available() if gpu is None else gpu
    rng = np.random.default_rng(seed)
    cents, objs, labels = [], [], []
    for r in range(max(1, restarts)):
        # k-means++ on a subsample keeps seeding cheap on atlases of millions of cells.
        sample = x if n <= max_seed_points else x[rng.choice(n, max_seed_points, replace=False)]
        init, _ = kmeans_plusplus(sample, k, random_state=int(rng.integers(2**31 - 1)))
        c, obj = _lloyd(x, k, niter, seed + r, init.astype(np.float32), gpu)
        cents.append(c)
        objs.append(obj)
        if select == "consensus":
            labels.append(assign(x, c))
    best = int(np.argmin(objs)) if select == "inertia" else consensus_index(labels, objs)
    return (labels[best] if labels else assign(x, cents[best])), np.asarray(cents[best], dtype=np.float32)


def consensus_index(labels: list[np.ndarray], objs: list[float]) -> int:
    """Index of the partition with the highest mean ARI to the other partitions (the medoid partition); ties ->
    lower objective.

    Why not the lowest inertia: on the concatenated [z, input PCA] space, the lowest-inertia restart is not the
    best clustering (30 or 100 restarts scored lower ARI than 10 on the 21 benchmark sets), while the restart
    most restarts agree with is a robust pick that needs no labels (docs/decisions.md)."""
    from sklearn.metrics import adjusted_rand_score

    r = len(labels)
    agree = np.zeros(r)
    for i in range(r):
        for j in range(i + 1, r):
            a = adjusted_rand_score(labels[i], labels[j])
            agree[i] += a
            agree[j] += a
    return int(np.lexsort((np.asarray(objs), -agree))[0])


@torch.no_grad()
def torch_lloyd(x: torch.Tensor, init: torch.Tensor, niter: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Lloyd iterations in torch on x's device (no host round-trip); returns (centroids (k, d), labels (n,)).

    An empty cluster keeps its previous centroid. Labels are the assignment to the returned centroids.
    """
    c = init.to(device=x.device, dtype=x.dtype).clone()
    k = c.shape[0]
    ones = torch.ones(x.shape[0], dtype=x.dtype, device=x.device)

    def nearest(c: torch.Tensor) -> torch.Tensor:
        # argmin_j ||x - c_j||^2 = argmin_j (||c_j||^2 - 2 x.c_j): one matmul, no (n, k, d) tensor.
        return torch.addmm((c * c).sum(1), x, c.T, alpha=-2.0).argmin(1)

    for _ in range(niter):
        labels = nearest(c)
        counts = torch.zeros(k, dtype=x.dtype, device=x.device).index_add_(0, labels, ones)
        sums = torch.zeros_like(c).index_add_(0, labels, x)
        c = torch.where(counts[:, None] > 0, sums / counts.clamp_min(1)[:, None], c)
    return c, nearest(c)


class BatchKMeans:
    """Per-batch k-means for L_SURE, seeded, with optional warm start from the previous batch's centroids."""

    def __init__(self, k: int, niter: int = 10, seed: int = 0, warm_start: bool = True, gpu: bool | None = None,
                 backend: str = "torch"):
        if backend not in ("torch", "faiss"):
            raise ValueError(f"unknown per-batch k-means backend {backend!r}: torch or faiss")
        self.k, self.niter, self.seed, self.warm_start, self.backend = k, niter, seed, warm_start, backend
        self.gpu = faiss_gpu_available() if gpu is None else gpu  # faiss backend: GPU index when there is one
        self._centroids: torch.Tensor | None = None  # kept on the device of the last batch
        self.calls = 0

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """x: (N, d) -> labels (N,) on x's device. k is capped at N; batches of < 2 rows get one cluster."""
        n = x.shape[0]
        if n < 2:
            return torch.zeros(n, dtype=torch.long, device=x.device)
        k = min(self.k, n)
        x = x.detach().float()
        if self.warm_start and self._centroids is not None and self._centroids.shape[0] == k:
            init = self._centroids
        else:
            # Fresh start: k-means++ seeding from this batch (seeded, reproducible); the only host copy.
            xn = _check(x.cpu().numpy(), k)
            init_np, _ = kmeans_plusplus(xn, k, random_state=self.seed + self.calls)
            init = torch.from_numpy(init_np.astype(np.float32))
        if self.backend == "faiss":  # FAISS Lloyd (GPU index with faiss-gpu): one host round-trip per step
            xn = _check(x.cpu().numpy(), k)
            c_np, _ = _lloyd(xn, k, self.niter, self.seed, np.ascontiguousarray(init.cpu().numpy()), self.gpu)
            c = torch.from_numpy(c_np).to(x.device)
            labels = torch.from_numpy(assign(xn, c_np)).to(x.device)
        else:  # Lloyd in torch on x's device: on CPU as fast as FAISS at batch sizes (measured), on a GPU no copies
            c, labels = torch_lloyd(x, init, self.niter)
        self.calls += 1
        if k == self.k:
            self._centroids = c
        return labels

    @property
    def centroids(self) -> np.ndarray | None:
        return None if self._centroids is None else self._centroids.detach().cpu().numpy()

    def state_dict(self) -> dict:
        return {"centroids": self.centroids, "calls": self.calls}

    def load_state_dict(self, state: dict) -> None:
        c = state.get("centroids")
        self._centroids = None if c is None else torch.as_tensor(np.asarray(c, dtype=np.float32))
        self.calls = int(state.get("calls", 0))
