"""The input's PCA coordinates appended to z for the final k-means (clustering/input_pca.py)."""

import numpy as np
from sklearn.decomposition import PCA

from jojoscl_dist.clustering.final import final_space
from jojoscl_dist.clustering.input_pca import InputPCA
from jojoscl_dist.data.loader import ArraySource


def _x(n=300, g=40, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.normal(size=(n, 5)) @ rng.normal(size=(5, g)) + 0.1 * rng.normal(size=(n, g))).astype(np.float32)


def test_projection_is_weighted_pca_with_unit_mean_square_norm():
    x = _x()
    p = InputPCA.fit(ArraySource(x), weight=2.0, seed=0, n_components=10)
    assert p.components.shape == (10, 40) and p.mean.shape == (40,)
    coords = final_space(np.zeros((300, 0), np.float32), p.coords(x), p.weight, p.scale)  # the PCA part alone
    assert coords.shape == (300, 10) and coords.dtype == np.float32
    # mean squared row norm w^2 = 4: the same scale as ||z||^2 = 1 times w^2
    np.testing.assert_allclose((coords.astype(np.float64) ** 2).sum(1).mean(), 4.0, rtol=1e-5)
    # up to the scale, the coordinates are scikit-learn's PCA transform (same seed)
    ref = PCA(n_components=10, random_state=0).fit(x).transform(x)
    np.testing.assert_allclose(coords * p.scale / 2.0, ref, rtol=1e-3, atol=1e-3)


def test_fit_on_a_seeded_sample_of_a_large_source():
    x = _x(n=1000)
    a = InputPCA.fit(ArraySource(x), 1.0, seed=3, max_cells=200, n_components=5)
    b = InputPCA.fit(ArraySource(x), 1.0, seed=3, max_cells=200, n_components=5)
    full = InputPCA.fit(ArraySource(x), 1.0, seed=3, n_components=5)
    np.testing.assert_array_equal(a.components, b.components)  # reproducible from the seed
    idx = np.sort(np.random.default_rng(3).choice(1000, 200, replace=False))
    np.testing.assert_allclose(a.mean, x[idx].mean(0), rtol=1e-5, atol=1e-5)  # fitted on the sample only
    assert not np.allclose(a.mean, full.mean)


def test_components_are_capped_by_tiny_inputs_and_dict_round_trip():
    x = _x(n=8, g=6)
    p = InputPCA.fit(ArraySource(x), 0.5, seed=0)
    assert p.components.shape == (5, 6)  # min(50, n - 1, G - 1)
    q = InputPCA.from_dict(p.to_dict())
    np.testing.assert_array_equal(q.coords(x), p.coords(x))
    assert (q.scale, q.weight) == (p.scale, p.weight)
    assert InputPCA.from_dict(None) is None
