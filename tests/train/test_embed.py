"""Embedding every cell: in memory, and on disk for atlases (blocks to Zarr, Dask back, k-means by blocks)."""

import numpy as np
import pytest
import torch

from jojoscl_dist.cluster.input_pca import InputPCA
from jojoscl_dist.cluster.kmeans import assign
from jojoscl_dist.cluster.metrics import score_labels
from jojoscl_dist.data.loader import ArraySource
from jojoscl_dist.model import JojoSCL
from jojoscl_dist.train.embed import _take_rows, embed, embed_to_zarr, final_clustering


def _blobs(n=3000, g=40, k=4, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 4, (k, g))
    truth = rng.integers(0, k, n)
    return (centres[truth] + rng.normal(0, 1, (n, g))).astype(np.float32), truth


@pytest.fixture(scope="module")
def model_and_data():
    torch.manual_seed(0)
    x, truth = _blobs()
    return JojoSCL(x.shape[1], 4), x, truth


def test_embed_to_zarr_matches_in_memory(model_and_data, tmp_path):
    model, x, _ = model_and_data
    mem = embed(model, ArraySource(x), batch=700)
    disk = embed_to_zarr(model, ArraySource(x), tmp_path / "e.zarr", batch=700)
    assert disk["z"].chunks[0][0] == 700 and disk["z"].shape == (3000, 192)  # written block by block
    for k in ("h", "z", "y"):
        np.testing.assert_array_equal(np.asarray(disk[k]), mem[k])


@pytest.mark.parametrize("method,pca,select", [("kmeans", False, "inertia"), ("head", False, "inertia"),
                                               ("kmeans", True, "inertia"), ("kmeans", True, "consensus")])
def test_blockwise_final_clustering_equals_in_memory_when_the_sample_is_everything(model_and_data, tmp_path,
                                                                                     method, pca, select):
    model, x, _ = model_and_data
    project = InputPCA.fit(ArraySource(x), 1.0, seed=0, n_components=8).project if pca else None
    mem = embed(model, ArraySource(x), project=project)
    disk = embed_to_zarr(model, ArraySource(x), tmp_path / "e.zarr", batch=512, project=project)
    lab_m, c_m = final_clustering(mem, 4, method, seed=1, restarts=3, select=select)
    lab_d, c_d = final_clustering(disk, 4, method, seed=1, restarts=3, fit_cells=len(x), select=select)
    np.testing.assert_array_equal(lab_d, lab_m)
    np.testing.assert_allclose(c_d, c_m, rtol=1e-4, atol=1e-5, equal_nan=True)
    # k-means centroids live in [z, p]; head centroids are mean z
    assert c_m.shape == (4, 192 + (8 if pca and method == "kmeans" else 0))


def test_input_pca_coordinates_enter_the_final_kmeans():
    """z carries no structure here, the input does: with the PCA part appended the clusters follow the input."""
    x, truth = _blobs(n=600, g=30, k=3, seed=4)
    rng = np.random.default_rng(0)
    z = rng.normal(size=(600, 192)).astype(np.float32)
    z /= np.linalg.norm(z, axis=1, keepdims=True)
    p = InputPCA.fit(ArraySource(x), 2.0, seed=0).project(x)
    assert score_labels(truth, final_clustering({"z": z}, 3, "kmeans", seed=0, restarts=3)[0])["ari"] < 0.1
    assert score_labels(truth, final_clustering({"z": z, "p": p}, 3, "kmeans", seed=0, restarts=3)[0])["ari"] > 0.95


def test_blockwise_kmeans_fits_a_sample_then_assigns_every_cell(tmp_path):
    x, truth = _blobs(n=4000, g=192, k=5, seed=2)  # the "embedding" itself: well separated
    import dask.array as da

    emb = {"z": da.from_array(x, chunks=(333, 192))}
    labels, centroids = final_clustering(emb, 5, "kmeans", seed=0, restarts=2, fit_cells=500)
    assert labels.shape == (4000,) and centroids.shape == (5, 192)
    np.testing.assert_array_equal(labels, assign(x, centroids))  # every cell: its nearest centroid
    assert score_labels(truth, labels)["ari"] > 0.99


def test_take_rows_reads_a_sorted_sample_chunk_by_chunk():
    import dask.array as da


    a = np.arange(1000 * 3, dtype=np.float32).reshape(1000, 3)
    d = da.from_array(a, chunks=(64, 3))
    take = np.sort(np.random.default_rng(0).choice(1000, 137, replace=False))
    assert np.array_equal(_take_rows(d, take), a[take])
    assert np.array_equal(_take_rows(d, np.array([0, 63, 64, 999])), a[[0, 63, 64, 999]])  # chunk edges
    assert _take_rows(d, np.array([], dtype=np.int64)).shape == (0, 3)
