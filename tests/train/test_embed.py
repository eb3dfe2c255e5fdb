"""Embedding every cell: in memory, and on disk for atlases (blocks to Zarr, read back as Dask)."""

import numpy as np
import pytest
import torch

from jojoscl_dist.clustering.final import PCA_KEY
from jojoscl_dist.clustering.input_pca import InputPCA
from jojoscl_dist.data.loader import ArraySource
from jojoscl_dist.model import JojoSCL
from jojoscl_dist.train.embed import embed, embed_to_zarr


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
    assert PCA_KEY not in mem and PCA_KEY not in disk


def test_input_pca_coordinates_come_with_the_embedding(model_and_data, tmp_path):
    """With ``project`` each block's rows are projected as they are read: the same coordinates as projecting the
    whole matrix, in memory and on disk."""
    model, x, _ = model_and_data
    pca = InputPCA.fit(ArraySource(x), 1.5, seed=0, n_components=6)
    mem = embed(model, ArraySource(x), batch=700, project=pca.coords)
    disk = embed_to_zarr(model, ArraySource(x), tmp_path / "e.zarr", batch=700, project=pca.coords)
    assert mem[PCA_KEY].shape == (3000, 6) and mem[PCA_KEY].dtype == np.float32
    np.testing.assert_allclose(mem[PCA_KEY], pca.coords(x), rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(np.asarray(disk[PCA_KEY]), mem[PCA_KEY])
