"""Embedding all cells with a trained model (evaluation, final labels, prediction).

In memory (``embed``: arrays of every cell), or for atlases on disk (``embed_to_zarr``: blocks written to a Zarr
group as they are computed and read back as Dask arrays), so the driver's memory does not grow with the number of
cells. ``final_clustering`` takes either: on Dask arrays, k-means fits its centroids on a seeded sample and then
assigns every cell block by block.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from jojoscl_dist.cluster.kmeans import assign, fit_kmeans, fit_kmeans_centroids
from jojoscl_dist.model.jojoscl import JojoSCL


@torch.no_grad()
def _blocks_out(model: JojoSCL, source, device, batch: int, project=None):
    """Eval-mode forward over ``source`` in row blocks: yields (start, {'h','z','y'} as NumPy float32), plus
    'p' = ``project(rows)`` (the input's weighted PCA coordinates, ``cluster.input_pca``) when given."""
    was_training = model.training
    model.eval()
    n = source.shape[0]
    try:
        for start in range(0, n, batch):
            rows = np.array(source.rows(slice(start, min(start + batch, n))), dtype=np.float32)
            out = {k: v.float().cpu().numpy() for k, v in zip(("h", "z", "y"), model(torch.as_tensor(rows, device=device)))}
            if project is not None:
                out["p"] = project(rows)
            yield start, out
    finally:
        model.train(was_training)


def embed(model: JojoSCL, source, device: torch.device | str = "cpu", batch: int = 8192,
          project=None) -> dict[str, np.ndarray]:
    """Eval-mode forward over every row of ``source`` -> {'h': (n,128), 'z': (n,192), 'y': (n,K)}, and
    'p': (n, n_components) with ``project`` (see ``_blocks_out``)."""
    outs: dict[str, list[np.ndarray]] = {"h": [], "z": [], "y": []} | ({"p": []} if project is not None else {})
    for _, block in _blocks_out(model, source, device, batch, project):
        for k, v in block.items():
            outs[k].append(v)
    return {k: np.concatenate(v) if v else np.zeros((0, 0), np.float32) for k, v in outs.items()}


def embed_to_zarr(model: JojoSCL, source, path: str | Path, device: torch.device | str = "cpu",
                  batch: int | None = None, project=None) -> dict:
    """``embed`` for atlases: each block of rows goes straight into a Zarr group at ``path`` (arrays h, z, y,
    chunked ``batch`` rows), so memory holds one block. Returns {'h','z','y'} (and 'p' with ``project``) as Dask
    arrays over that group.

    ``batch`` defaults to the source's chunk rows (one stored chunk per block; 2048 for a prepared store): an
    8192-row block held ~4 decoded chunks plus their activations, and raised the driver's peak by ~250 MB."""
    import dask.array as da
    import zarr

    n = source.shape[0]
    batch = batch or int(getattr(source, "chunk_rows", 0)) or 8192
    group = zarr.open_group(str(path), mode="w")
    arrays: dict = {}
    for start, block in _blocks_out(model, source, device, batch, project):
        for k, v in block.items():
            if k not in arrays:
                arrays[k] = group.create_array(k, shape=(n, v.shape[1]), chunks=(batch, v.shape[1]), dtype="float32")
            arrays[k][start:start + len(v)] = v
    return {k: da.from_zarr(a) for k, a in arrays.items()}


def _row_blocks(a) -> list[tuple[int, int]]:
    """(start, stop) of each row chunk of a Dask array."""
    step = a.chunks[0][0]
    return [(s, min(s + step, a.shape[0])) for s in range(0, a.shape[0], step)]


def _take_rows(a, take: np.ndarray) -> np.ndarray:
    """``a[take]`` (sorted row indices) read one row chunk at a time: Dask's own fancy indexing loads chunks
    in parallel and held ~130 MB more at 1M cells than at 100k."""
    out = np.empty((len(take), a.shape[1]), dtype=np.float32)
    pos = 0
    for s, e in _row_blocks(a):
        hi = int(np.searchsorted(take, e))
        if hi > pos:
            out[pos:hi] = np.asarray(a[s:e])[take[pos:hi] - s]
            pos = hi
    return out


def _final_clustering_blocks(emb: dict, n_clusters: int, method: str, seed: int, restarts: int, select: str,
                             fit_cells: int) -> tuple[np.ndarray, np.ndarray]:
    """final_clustering on Dask arrays, one block in memory at a time (plus the k-means sample)."""
    z = emb["z"]
    n = z.shape[0]
    if method == "head":
        labels = np.concatenate([np.asarray(emb["y"][s:e]).argmax(axis=1) for s, e in _row_blocks(emb["y"])])
        labels = labels.astype(np.int64)
        sums = np.zeros((n_clusters, z.shape[1]), np.float64)
        counts = np.zeros(n_clusters, np.int64)
        for s, e in _row_blocks(z):
            np.add.at(sums, labels[s:e], np.asarray(z[s:e], dtype=np.float64))
            counts += np.bincount(labels[s:e], minlength=n_clusters)
        with np.errstate(invalid="ignore", divide="ignore"):
            return labels, (sums / counts[:, None]).astype(np.float32)  # NaN rows for empty clusters
    # The centroids from a seeded sample (every cell when n <= fit_cells: then identical to the in-memory path).
    take = (np.arange(n) if n <= fit_cells else
            np.sort(np.random.default_rng(seed).choice(n, fit_cells, replace=False)))
    parts = [z] + ([emb["p"]] if "p" in emb else [])
    sample = np.concatenate([_take_rows(a, take) for a in parts], axis=1)
    _, centroids = fit_kmeans_centroids(sample, n_clusters, seed=seed, restarts=restarts, select=select)
    del sample
    labels = np.concatenate([assign(np.concatenate([np.asarray(a[s:e]) for a in parts], axis=1), centroids)
                             for s, e in _row_blocks(z)])
    return labels, centroids


def cluster_features(emb: dict[str, np.ndarray]) -> np.ndarray:
    """What the final k-means clusters: z, or [z, p] when the input's PCA coordinates were added
    (``eval.input_pca_weight`` > 0, see ``cluster.input_pca``)."""
    return np.concatenate([emb["z"], emb["p"]], axis=1) if "p" in emb else emb["z"]


def final_labels(emb: dict[str, np.ndarray], n_clusters: int, method: str, seed: int, restarts: int,
                 select: str = "inertia") -> np.ndarray:
    """Cluster ids from k-means on the instance embedding z (with the input's PCA coordinates appended when
    ``emb`` holds them: ``cluster_features``), or the cluster head's argmax."""
    if method == "head":
        return emb["y"].argmax(axis=1).astype(np.int64)
    return fit_kmeans(cluster_features(emb), n_clusters, seed=seed, restarts=restarts, select=select)


def final_clustering(emb: dict, n_clusters: int, method: str, seed: int, restarts: int,
                     fit_cells: int = 100_000, select: str = "inertia") -> tuple[np.ndarray, np.ndarray]:
    """(labels, centroids): the labels of ``final_labels`` and the centroids new cells are assigned to (k-means:
    its final centroids in ``cluster_features``' space, (K, d_z [+ n_components]); head: the mean z of each head
    cluster, (K, d_z), NaN for empty ones).

    ``emb`` from ``embed`` (NumPy: k-means on every cell) or ``embed_to_zarr`` (Dask: centroids fit on at most
    ``fit_cells`` cells, then every cell assigned to its nearest centroid, block by block)."""
    if not isinstance(emb["z"], np.ndarray):
        return _final_clustering_blocks(emb, n_clusters, method, seed, restarts, select, fit_cells)
    if method == "head":
        labels = final_labels(emb, n_clusters, method, seed, restarts)
        return labels, cluster_means(emb["z"], labels, n_clusters)
    return fit_kmeans_centroids(cluster_features(emb), n_clusters, seed=seed, restarts=restarts, select=select)


def cluster_means(z: np.ndarray, labels: np.ndarray, n_clusters: int) -> np.ndarray:
    out = np.full((n_clusters, z.shape[1]), np.nan, dtype=np.float32)
    for c in range(n_clusters):
        m = labels == c
        if m.any():
            out[c] = z[m].mean(axis=0)
    return out
