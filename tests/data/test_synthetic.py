"""The synthetic atlas sampler: negative-binomial moments and zero fraction, seeded chunks."""

import numpy as np
import pytest

from jojoscl_dist.data.synthetic import AtlasSpec, iter_chunks, sample_nb


@pytest.mark.parametrize("r", [2.0, 1.5])
def test_sample_nb_matches_the_negative_binomial(r):
    mu = np.zeros((4000, 3), dtype=np.float32)
    mu[:, 0], mu[:, 1], mu[:, 2] = 0.1, 3.0, 60.0
    x = sample_nb(mu, r, np.random.default_rng(0)).toarray()
    for j, m in enumerate((0.1, 3.0, 60.0)):
        col = x[:, j]
        p0 = (r / (r + m)) ** r  # NB(r, mean m): P(X = 0)
        var = m + m * m / r
        assert abs(col.mean() - m) < 4 * np.sqrt(var / len(col))
        assert abs((col == 0).mean() - p0) < 4 * np.sqrt(p0 * (1 - p0) / len(col)) + 1e-3
        assert abs(col.var() / var - 1) < 0.15
    assert (x >= 0).all() and np.array_equal(x, np.round(x))


def test_chunks_are_seeded_and_independent_of_chunk_order():
    spec = AtlasSpec(n_cells=300, n_genes=500, n_types=3, seed=5)
    a = [m.toarray() for m, _ in iter_chunks(spec, 100)]
    b = [m.toarray() for m, _ in iter_chunks(spec, 100)]
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not np.array_equal(a[0], a[1])
    other = [m.toarray() for m, _ in iter_chunks(AtlasSpec(n_cells=300, n_genes=500, n_types=3, seed=6), 100)]
    assert not np.array_equal(a[0], other[0])
