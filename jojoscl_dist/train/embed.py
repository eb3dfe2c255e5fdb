"""Embedding all cells with a trained model (evaluation, final labels, prediction)."""

from __future__ import annotations

import numpy as np
import torch

from jojoscl_dist.cluster.kmeans import fit_kmeans, fit_kmeans_centroids
from jojoscl_dist.model.jojoscl import JojoSCL


@torch.no_grad()
def embed(model: JojoSCL, source, device: torch.device | str = "cpu", batch: int = 8192) -> dict[str, np.ndarray]:
    """Eval-mode forward over every row of ``source`` -> {'h': (n,128), 'z': (n,192), 'y': (n,K)}."""
    was_training = model.training
    model.eval()
    n = source.shape[0]
    outs: dict[str, list[np.ndarray]] = {"h": [], "z": [], "y": []}
    for start in range(0, n, batch):
        x = torch.as_tensor(np.array(source.rows(slice(start, min(start + batch, n))), dtype=np.float32), device=device)
        h, z, y = model(x)
        for k, v in zip(("h", "z", "y"), (h, z, y)):
            outs[k].append(v.float().cpu().numpy())
    model.train(was_training)
    return {k: np.concatenate(v) if v else np.zeros((0, 0), np.float32) for k, v in outs.items()}


def final_labels(emb: dict[str, np.ndarray], n_clusters: int, method: str, seed: int, restarts: int) -> np.ndarray:
    """Cluster ids from k-means on the instance embedding z, or the cluster head's argmax."""
    if method == "head":
        return emb["y"].argmax(axis=1).astype(np.int64)
    return fit_kmeans(emb["z"], n_clusters, seed=seed, restarts=restarts)


def final_clustering(emb: dict[str, np.ndarray], n_clusters: int, method: str, seed: int,
                     restarts: int) -> tuple[np.ndarray, np.ndarray]:
    """(labels, centroids (K, d_z)): the labels of ``final_labels`` and the centroids in z that new cells are
    assigned to (k-means: its final centroids; head: the mean z of each head cluster, NaN for empty ones)."""
    if method == "head":
        labels = final_labels(emb, n_clusters, method, seed, restarts)
        return labels, cluster_means(emb["z"], labels, n_clusters)
    return fit_kmeans_centroids(emb["z"], n_clusters, seed=seed, restarts=restarts)


def cluster_means(z: np.ndarray, labels: np.ndarray, n_clusters: int) -> np.ndarray:
    out = np.full((n_clusters, z.shape[1]), np.nan, dtype=np.float32)
    for c in range(n_clusters):
        m = labels == c
        if m.any():
            out[c] = z[m].mean(axis=0)
    return out
