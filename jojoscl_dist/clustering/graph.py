"""Leiden on a cell kNN graph with its resolution searched for K clusters.

k-means with K centroids splits large types and merges small ones when type sizes are very unequal; a graph
partition follows the data's density instead, and the resolution search keeps the user's K (docs/decisions.md).
"""

from __future__ import annotations

import numpy as np


def knn_graph(space: np.ndarray, n_neighbors: int, seed: int):
    """scanpy's connectivities of the exact ``n_neighbors``-NN graph of ``space`` (rows are cells)."""
    import anndata as ad
    import scanpy as sc
    from sklearn.neighbors import KNeighborsTransformer

    k = max(2, min(n_neighbors, space.shape[0] - 1))
    a = ad.AnnData(X=np.zeros((space.shape[0], 1), np.float32))
    a.obsm["rep"] = np.asarray(space, np.float32)
    # Exact neighbours: scanpy's approximate path (pynndescent) returns a sparse type this scanpy cannot read.
    sc.pp.neighbors(a, n_neighbors=k, use_rep="rep", random_state=seed,
                    transformer=KNeighborsTransformer(algorithm="brute", n_neighbors=k))
    return a


def leiden_to_k(space: np.ndarray, k: int, seed: int = 0, n_neighbors: int = 15, steps: int = 20) -> np.ndarray:
    """Cluster ids (n,) from Leiden on the kNN graph, the resolution bisected on [0.01, 5] towards ``k``
    clusters; the partition whose count is nearest ``k`` when none hits it exactly (ties: the first found)."""
    import scanpy as sc

    a = knn_graph(space, n_neighbors, seed)
    lo, hi, best = 0.01, 5.0, None
    for _ in range(steps):
        mid = (lo + hi) / 2
        sc.tl.leiden(a, resolution=mid, random_state=seed, flavor="igraph", n_iterations=2, key_added="leiden")
        labels = a.obs["leiden"].to_numpy().astype(np.int64)
        n = int(labels.max()) + 1
        if best is None or abs(n - k) < abs(int(best.max()) + 1 - k):
            best = labels
        if n == k:
            break
        lo, hi = (mid, hi) if n < k else (lo, mid)
    return best
