"""The final clustering (clustering/final.py): its space, the run's input PCA, and the labels in memory, by blocks
and for new cells."""

import dataclasses

import numpy as np
import pytest
import torch

from jojoscl_dist.clustering.final import PCA_KEY, _take_rows, final_labels, final_space, fit_input_pca
from jojoscl_dist.clustering.input_pca import InputPCA, rms_norm
from jojoscl_dist.clustering.kmeans import assign
from jojoscl_dist.clustering.metrics import score_labels
from jojoscl_dist.config import EvalConfig
from jojoscl_dist.data.loader import ArraySource
from jojoscl_dist.model import JojoSCL
from jojoscl_dist.train.embed import embed, embed_to_zarr


def _blobs(n=3000, g=40, k=4, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 4, (k, g))
    truth = rng.integers(0, k, n)
    return (centres[truth] + rng.normal(0, 1, (n, g))).astype(np.float32), truth


def _unit_rows(n, d=192, seed=0):
    z = np.random.default_rng(seed).normal(size=(n, d)).astype(np.float32)
    return z / np.linalg.norm(z, axis=1, keepdims=True)


@pytest.fixture(scope="module")
def model_and_data():
    torch.manual_seed(0)
    x, truth = _blobs()
    return JojoSCL(x.shape[1], 4), x, truth


def test_final_space_is_z_then_the_weighted_coordinates():
    z, c = _unit_rows(50), np.random.default_rng(1).normal(size=(50, 7)).astype(np.float32) * 3
    space = final_space(z, c, 2.0, scale=4.0)
    assert space.shape == (50, 199) and space.dtype == np.float32
    np.testing.assert_array_equal(space[:, :192], z)
    np.testing.assert_allclose(space[:, 192:], c * 0.5, rtol=1e-6)
    # without a scale: the coordinates' own root mean squared norm, so the PCA part has mean square norm w^2
    own = final_space(z, c, 2.0)
    np.testing.assert_allclose((own[:, 192:].astype(np.float64) ** 2).sum(1).mean(), 4.0, rtol=1e-5)
    assert final_space(z, c, 0.0) is z and final_space(z) is z  # weight 0 or no coordinates: z alone


def test_the_fitted_scale_is_the_coordinates_own_when_every_cell_is_fitted():
    """The in-training evaluations scale their reference PCA by its own norm, the run by the fitted PCA's: on
    the cells it was fitted on, that is the same number."""
    x, _ = _blobs(n=400)
    pca = InputPCA.fit(ArraySource(x), 1.5, seed=0, n_components=5)
    c, z = pca.coords(x), _unit_rows(400)
    assert pca.scale == rms_norm(c)
    np.testing.assert_array_equal(final_space(z, c, 1.5, pca.scale), final_space(z, c, 1.5))


def test_fit_input_pca_follows_the_eval_config():
    x, _ = _blobs(n=300)
    ev = EvalConfig(input_pca_weight=0.7, input_pca_components=6, max_eval_cells=100)
    pca = fit_input_pca(ev, ArraySource(x), seed=2)
    assert pca.weight == 0.7 and pca.components.shape == (6, 40)
    same = InputPCA.fit(ArraySource(x), 0.7, 2, 100, 6)  # a seeded sample of max_eval_cells cells
    np.testing.assert_array_equal(pca.components, same.components)
    assert fit_input_pca(dataclasses.replace(ev, input_pca_weight=0.0), ArraySource(x), 2) is None
    assert fit_input_pca(dataclasses.replace(ev, label_method="head"), ArraySource(x), 2) is None


@pytest.mark.parametrize("method,pca,select", [("kmeans", False, "inertia"), ("head", False, "inertia"),
                                               ("kmeans", True, "inertia"), ("kmeans", True, "consensus")])
def test_blockwise_final_labels_equal_in_memory_when_the_sample_is_everything(model_and_data, tmp_path,
                                                                                method, pca, select):
    model, x, _ = model_and_data
    input_pca = InputPCA.fit(ArraySource(x), 1.0, seed=0, n_components=8) if pca else None
    project = input_pca.coords if pca else None
    mem = embed(model, ArraySource(x), project=project)
    disk = embed_to_zarr(model, ArraySource(x), tmp_path / "e.zarr", batch=512, project=project)
    lab_m, c_m = final_labels(mem, 4, method, seed=1, restarts=3, select=select, input_pca=input_pca)
    lab_d, c_d = final_labels(disk, 4, method, seed=1, restarts=3, select=select, input_pca=input_pca,
                              fit_cells=len(x))
    np.testing.assert_array_equal(lab_d, lab_m)
    np.testing.assert_allclose(c_d, c_m, rtol=1e-4, atol=1e-5, equal_nan=True)
    # k-means centroids live in [z, p]; head centroids are mean z
    assert c_m.shape == (4, 192 + (8 if pca and method == "kmeans" else 0))


def test_input_pca_coordinates_enter_the_final_kmeans():
    """z carries no structure here, the input does: with the PCA part appended the clusters follow the input."""
    x, truth = _blobs(n=600, g=30, k=3, seed=4)
    z = _unit_rows(600)
    pca = InputPCA.fit(ArraySource(x), 2.0, seed=0)
    emb = {"z": z, PCA_KEY: pca.coords(x)}
    assert score_labels(truth, final_labels(emb, 3, "kmeans", seed=0, restarts=3).labels)["ari"] < 0.1
    assert score_labels(truth, final_labels(emb, 3, "kmeans", seed=0, restarts=3, input_pca=pca).labels)["ari"] > 0.95
    with pytest.raises(ValueError, match="no input PCA coordinates"):
        final_labels({"z": z}, 3, "kmeans", input_pca=pca)


def test_new_cells_go_to_the_nearest_saved_centroid_that_held_cells():
    x, truth = _blobs(n=800, g=30, k=3, seed=5)
    z = _unit_rows(800)
    pca = InputPCA.fit(ArraySource(x), 2.0, seed=0)
    emb = {"z": z, PCA_KEY: pca.coords(x)}
    labels, centroids = final_labels(emb, 3, "kmeans", seed=0, restarts=3, input_pca=pca)
    again = final_labels(emb, 3, "kmeans", input_pca=pca, centroids=centroids)
    np.testing.assert_array_equal(again.labels, labels)  # the training cells keep their labels
    assert again.centroids is centroids
    empty = np.vstack([np.full((1, centroids.shape[1]), np.nan, np.float32), centroids])  # a cluster with no cells
    np.testing.assert_array_equal(final_labels(emb, 4, "kmeans", input_pca=pca, centroids=empty).labels, labels + 1)
    y = np.random.default_rng(0).normal(size=(800, 4)).astype(np.float32)
    head = final_labels({"z": z, "y": y}, 4, "head", centroids=empty).labels
    np.testing.assert_array_equal(head, y.argmax(1))


def test_blockwise_kmeans_fits_a_sample_then_assigns_every_cell(tmp_path):
    x, truth = _blobs(n=4000, g=192, k=5, seed=2)  # the "embedding" itself: well separated
    import dask.array as da

    emb = {"z": da.from_array(x, chunks=(333, 192))}
    labels, centroids = final_labels(emb, 5, "kmeans", seed=0, restarts=2, fit_cells=500)
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
