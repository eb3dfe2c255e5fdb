"""The final clustering of a trained model: the space it clusters in, its input PCA, and the labels.

The final space of a cell is ``[z, w * c / s]`` (``final_space``): z its instance embedding, c its coordinates on
the input's principal components (``InputPCA.coords``, or the in-training evaluations' own PCA of the evaluated
cells), w = ``eval.input_pca_weight`` and s the coordinates' root mean squared norm, so that the PCA part weighs
w^2 against ||z||^2 = 1 (clustering/input_pca.py says why both). With w = 0, or the head's labels, it is z alone.

``fit_input_pca`` fits that PCA once per run; the same fit gives the run's labels and goes into the model bundle.
``final_labels`` is the one labelling step: the run driver, ``predict`` (new cells, assigned to the saved
centroids) and the quality benchmark call it alike. It takes the embedding of ``embed`` (NumPy: k-means on every
cell) or ``embed_to_zarr`` (Dask: centroids fit on a seeded sample, then every cell assigned block by block).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from jojoscl_dist.clustering.graph import leiden_to_k
from jojoscl_dist.clustering.input_pca import InputPCA, rms_norm
from jojoscl_dist.clustering.kmeans import assign, fit_kmeans_centroids
from jojoscl_dist.config import EvalConfig

PCA_KEY = "x_pca"  # the embedding's entry for the cells' input PCA coordinates c (unweighted)


class FinalLabels(NamedTuple):
    labels: np.ndarray  # (n,) cluster ids
    # k-means: the centroids in the final space (K, d_z [+ n_components]); head: the mean z of each head cluster
    # (K, d_z), NaN for empty ones. New cells are assigned to these (predict).
    centroids: np.ndarray


def fit_input_pca(ev: EvalConfig, source, seed: int) -> InputPCA | None:
    """The run's input PCA, fitted on at most ``ev.max_eval_cells`` seeded cells of ``source`` (``.shape``,
    ``.rows(idx)``); None when the final space is z alone (weight 0, or the labels come from the cluster head)."""
    if ev.input_pca_weight <= 0 or ev.label_method == "head":
        return None
    return InputPCA.fit(source, ev.input_pca_weight, seed, ev.max_eval_cells, ev.input_pca_components)


def final_space(z: np.ndarray, coords: np.ndarray | None = None, weight: float = 0.0,
                scale: float | None = None) -> np.ndarray:
    """[z, weight * coords / scale] (float32), or z alone without coordinates or with weight 0. ``scale``: the
    fitted PCA's (``InputPCA.scale``), or None for the root mean squared norm of ``coords`` themselves."""
    if coords is None or weight <= 0:
        return z
    s = rms_norm(coords) if scale is None else scale
    return np.concatenate([z, (coords * (weight / s)).astype(np.float32)], axis=1)


def _space_of(emb: dict, input_pca: InputPCA | None, rows: slice | np.ndarray | None = None) -> np.ndarray:
    """The final space of the embedded cells (``rows`` of a Dask embedding, read one block or sample at a time)."""
    def part(a):
        return a if rows is None else (_take_rows(a, rows) if isinstance(rows, np.ndarray) else np.asarray(a[rows]))

    if input_pca is None:
        return part(emb["z"])
    if PCA_KEY not in emb:
        raise ValueError("the embedding holds no input PCA coordinates: embed with project=input_pca.coords")
    return final_space(part(emb["z"]), part(emb[PCA_KEY]), input_pca.weight, input_pca.scale)


def final_labels(emb: dict, n_clusters: int, method: str, seed: int = 0, restarts: int = 1,
                 select: str = "inertia", *, input_pca: InputPCA | None = None, fit_cells: int = 100_000,
                 centroids: np.ndarray | None = None) -> FinalLabels:
    """The cells' cluster ids and the centroids they belong to.

    method 'kmeans': k-means (``restarts``, the kept one by ``select``, seeded) in the final space (with
    ``input_pca``: the embedding must hold its coordinates, see ``PCA_KEY``); 'leiden': Leiden on the final
    space's kNN graph, resolution searched for K (``cluster.graph``); 'head': the cluster head's argmax.
    With ``centroids`` (a trained run's, for new cells) nothing is fitted: each cell goes to its nearest centroid
    among those that held training cells (k-means), or to its head argmax. A Dask embedding fits the k-means on at
    most ``fit_cells`` seeded cells (all of them below that: then the same labels as in memory)."""
    blocks = not isinstance(emb["z"], np.ndarray)
    if method == "head":
        labels = (np.concatenate([np.asarray(emb["y"][s:e]).argmax(axis=1) for s, e in _row_blocks(emb["y"])])
                  if blocks else emb["y"].argmax(axis=1)).astype(np.int64)
        return FinalLabels(labels, cluster_means(emb["z"], labels, n_clusters) if centroids is None else centroids)
    if centroids is not None:
        ok = np.flatnonzero(np.isfinite(centroids).all(axis=1))  # clusters that held training cells
        return FinalLabels(ok[_assign_all(emb, input_pca, centroids[ok])], centroids)
    if not blocks:
        return FinalLabels(*_fit(_space_of(emb, input_pca), n_clusters, method, seed, restarts, select))
    n = emb["z"].shape[0]
    # The centroids from a seeded sample (every cell when n <= fit_cells: then identical to the in-memory path).
    take = (np.arange(n) if n <= fit_cells else
            np.sort(np.random.default_rng(seed).choice(n, fit_cells, replace=False)))
    labels, fitted = _fit(_space_of(emb, input_pca, take), n_clusters, method, seed, restarts, select)
    # A graph partition of every cell is kept as it is; a sample's is extended by nearest centroid.
    keep = method == "leiden" and n <= fit_cells
    return FinalLabels(labels if keep else _assign_all(emb, input_pca, fitted), fitted)


def _fit(space: np.ndarray, n_clusters: int, method: str, seed: int, restarts: int,
         select: str) -> tuple[np.ndarray, np.ndarray]:
    """(labels, centroids) of the cells of ``space``: k-means, or Leiden brought to K with its clusters' means as
    the centroids new cells are assigned to."""
    if method == "leiden":
        labels = leiden_to_k(space, n_clusters, seed)
        return labels, cluster_means(space, labels, int(labels.max()) + 1)
    return fit_kmeans_centroids(space, n_clusters, seed=seed, restarts=restarts, select=select)


def _assign_all(emb: dict, input_pca: InputPCA | None, centroids: np.ndarray) -> np.ndarray:
    """Each cell's nearest centroid in the final space (a Dask embedding one block at a time)."""
    if isinstance(emb["z"], np.ndarray):
        return assign(_space_of(emb, input_pca), centroids)
    return np.concatenate([assign(_space_of(emb, input_pca, slice(s, e)), centroids)
                           for s, e in _row_blocks(emb["z"])])


def cluster_means(z, labels: np.ndarray, n_clusters: int) -> np.ndarray:
    """(K, d_z) mean z of each cluster, NaN rows for empty ones; z in memory or a Dask array (by blocks)."""
    if isinstance(z, np.ndarray):
        out = np.full((n_clusters, z.shape[1]), np.nan, dtype=np.float32)
        for c in range(n_clusters):
            m = labels == c
            if m.any():
                out[c] = z[m].mean(axis=0)
        return out
    sums = np.zeros((n_clusters, z.shape[1]), np.float64)
    counts = np.zeros(n_clusters, np.int64)
    for s, e in _row_blocks(z):
        np.add.at(sums, labels[s:e], np.asarray(z[s:e], dtype=np.float64))
        counts += np.bincount(labels[s:e], minlength=n_clusters)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (sums / counts[:, None]).astype(np.float32)  # NaN rows for empty clusters


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
