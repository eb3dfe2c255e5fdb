"""Choosing the number of clusters K without labels (``--n-clusters auto``).

Everything works on PCA(50) of the preprocessed matrix (HVG, log, z-scored), before any training, so the choice
costs seconds and does not depend on the model. Rules:

- ``leiden``: Leiden community detection (RB-configuration / modularity, resolution r) on the symmetrised
  kNN graph (k=15, Euclidean) of PCA(50); K = number of communities holding at least ``min_size`` cells
  (tiny communities are outliers, not cell types). The scanpy-standard graph clustering, here only to count.
- ``silhouette``: k-means (k-means++ seeded, 3 restarts) for every K in [k_min, k_max]; K = the one with the
  highest mean silhouette (Euclidean, on a seeded subsample of at most ``max_cells`` cells).

bench/k_selection.py measures both on the 21 reference sets (docs/benchmarks.md, "K selection"); the default
rule in config.py is the one that measured best.
"""

from __future__ import annotations

import logging

import numpy as np
from sklearn.decomposition import PCA
from sklearn.metrics import silhouette_score
from sklearn.neighbors import NearestNeighbors

from jojoscl_dist.clustering.kmeans import fit_kmeans

log = logging.getLogger(__name__)

K_RULES = ("leiden", "silhouette")


def pca_embed(x: np.ndarray, n_comps: int = 50, seed: int = 0) -> np.ndarray:
    n_comps = max(1, min(n_comps, x.shape[0] - 1, x.shape[1]))
    return PCA(n_components=n_comps, svd_solver="randomized", random_state=seed).fit_transform(
        np.asarray(x, dtype=np.float32)).astype(np.float32)


def leiden_labels(xp: np.ndarray, resolution: float = 1.0, n_neighbors: int = 15, seed: int = 0) -> np.ndarray:
    import igraph as ig
    import leidenalg

    n = xp.shape[0]
    k = max(1, min(n_neighbors, n - 1))
    _, idx = NearestNeighbors(n_neighbors=k + 1).fit(xp).kneighbors(xp)
    src = np.repeat(np.arange(n), k)
    dst = idx[:, 1:].ravel()
    edges = {(min(a, b), max(a, b)) for a, b in zip(src.tolist(), dst.tolist()) if a != b}  # symmetrised
    g = ig.Graph(n=n, edges=sorted(edges))
    part = leidenalg.find_partition(g, leidenalg.RBConfigurationVertexPartition, resolution_parameter=resolution,
                                    seed=seed, n_iterations=-1)
    return np.asarray(part.membership, dtype=np.int64)


def count_clusters(labels: np.ndarray, min_size: int) -> int:
    _, sizes = np.unique(labels, return_counts=True)
    return max(1, int((sizes >= min_size).sum()))


def min_cluster_size(n_cells: int) -> int:
    """Communities smaller than this are not counted: 0.5% of the cells, at least 3."""
    return max(3, int(0.005 * n_cells))


def silhouette_scan(xp: np.ndarray, k_min: int = 2, k_max: int = 30, seed: int = 0,
                    max_cells: int = 3000) -> dict[int, float]:
    n = xp.shape[0]
    rng = np.random.default_rng(seed)
    sub = rng.choice(n, max_cells, replace=False) if n > max_cells else np.arange(n)
    scores: dict[int, float] = {}
    for k in range(k_min, min(k_max, n - 1) + 1):
        labels = fit_kmeans(xp, k, seed=seed, restarts=3)
        if len(np.unique(labels[sub])) < 2:
            continue
        scores[k] = float(silhouette_score(xp[sub], labels[sub]))
    return scores


def choose_k(x: np.ndarray, rule: str = "leiden", *, seed: int = 0, resolution: float = 1.0,
             k_max: int = 30, xp: np.ndarray | None = None) -> tuple[int, dict]:
    """(K, details) for preprocessed cells x genes ``x`` (or its PCA ``xp``). K is at least 2."""
    if rule not in K_RULES:
        raise ValueError(f"unknown K rule {rule!r}; choose one of {K_RULES}")
    if xp is None:
        xp = pca_embed(x, seed=seed)
    n = xp.shape[0]
    if n < 3:
        raise ValueError(f"{n} cells are too few to choose K")
    if rule == "leiden":
        labels = leiden_labels(xp, resolution, seed=seed)
        k = count_clusters(labels, min_cluster_size(n))
        info = {"rule": "leiden", "resolution": resolution, "n_communities": int(len(np.unique(labels))),
                "min_size": min_cluster_size(n)}
    else:
        scores = silhouette_scan(xp, k_max=k_max, seed=seed)
        k = max(scores, key=scores.get) if scores else 2
        info = {"rule": "silhouette", "scores": scores}
    k = int(min(max(k, 2), n - 1))
    info["k"] = k
    return k, info
