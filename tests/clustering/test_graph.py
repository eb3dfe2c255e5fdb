"""Leiden brought to K (clustering/graph.py) and its use as the final labels (clustering/final.py)."""

import dask.array as da
import numpy as np

from jojoscl_dist.clustering.final import final_labels
from jojoscl_dist.clustering.graph import leiden_to_k
from jojoscl_dist.clustering.kmeans import assign, fit_kmeans
from jojoscl_dist.clustering.metrics import score_labels


def _unequal_blobs(sizes=(600, 25, 25), g=5, seed=0):
    """One large, wide type with two small tight ones at its edges: k-means with K=3 splits the large one."""
    rng = np.random.default_rng(seed)
    parts, truth = [], []
    for t, (n, centre, spread) in enumerate(zip(sizes, (0.0, 9.0, -9.0), (3.0, 0.5, 0.5))):
        p = rng.normal(0, spread, (n, g))
        p[:, 0] += centre
        parts.append(p)
        truth += [t] * n
    return np.concatenate(parts).astype(np.float32), np.array(truth)


def test_leiden_to_k_follows_unequal_types_where_kmeans_splits_the_large_one():
    x, truth = _unequal_blobs()
    labels = leiden_to_k(x, 3, seed=0)
    assert len(np.unique(labels)) == 3
    assert score_labels(truth, labels)["ari"] > 0.95
    assert score_labels(truth, fit_kmeans(x, 3, seed=0, restarts=10))["ari"] < 0.5


def test_leiden_to_k_is_seeded():
    x, _ = _unequal_blobs(seed=1)
    assert np.array_equal(leiden_to_k(x, 3, seed=4), leiden_to_k(x, 3, seed=4))


def test_leiden_final_labels_give_centroids_that_new_cells_are_assigned_to():
    x, truth = _unequal_blobs()
    fit = final_labels({"z": x}, 3, "leiden", seed=0)
    means = np.stack([x[fit.labels == c].mean(axis=0) for c in range(3)])
    np.testing.assert_allclose(fit.centroids, means, rtol=1e-5, atol=1e-5)
    new, _ = _unequal_blobs(seed=7)
    again = final_labels({"z": new}, 3, "leiden", centroids=fit.centroids).labels
    np.testing.assert_array_equal(again, assign(new, fit.centroids))


def test_leiden_final_labels_by_blocks_match_memory_and_a_sample_is_extended_by_centroid():
    x, _ = _unequal_blobs()
    mem = final_labels({"z": x}, 3, "leiden", seed=0)
    blocks = final_labels({"z": da.from_array(x, chunks=(128, -1))}, 3, "leiden", seed=0)
    np.testing.assert_array_equal(blocks.labels, mem.labels)
    sample = final_labels({"z": da.from_array(x, chunks=(128, -1))}, 3, "leiden", seed=0, fit_cells=300)
    np.testing.assert_array_equal(sample.labels, assign(x, sample.centroids))
