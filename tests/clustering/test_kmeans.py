import numpy as np
import pytest
import torch

from jojoscl_dist.clustering.kmeans import BatchKMeans, consensus_index, fit_kmeans
from jojoscl_dist.clustering.metrics import clustering_accuracy, score_labels


def blobs(n_per=50, k=4, d=8, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 10, size=(k, d))
    x = np.concatenate([c + rng.normal(0, 0.5, size=(n_per, d)) for c in centres]).astype(np.float32)
    return x, np.repeat(np.arange(k), n_per)


def test_fit_kmeans_recovers_blobs_and_is_seeded():
    x, y = blobs()
    lab = fit_kmeans(x, 4, seed=0, restarts=3)
    assert score_labels(y, lab)["ari"] == 1.0
    assert np.array_equal(lab, fit_kmeans(x, 4, seed=0, restarts=3))


def test_k_larger_than_batch_is_capped():
    km = BatchKMeans(k=10, niter=5, seed=0)
    lab = km(torch.randn(6, 4))
    assert lab.shape == (6,) and lab.max() < 6
    assert km(torch.randn(1, 4)).tolist() == [0]


def test_batch_kmeans_warm_start_keeps_centroids():
    x, y = blobs(n_per=30)
    km = BatchKMeans(k=4, niter=5, seed=0, warm_start=True)
    first = km(torch.from_numpy(x))
    c1 = km.centroids.copy()
    second = km(torch.from_numpy(x))
    assert score_labels(y, first.numpy())["ari"] == 1.0
    assert np.array_equal(first.numpy(), second.numpy())
    assert np.allclose(c1, km.centroids, atol=1e-4)


def test_no_subsampling_on_large_input():
    # 20 points per centroid with k=2 at n=20k would subsample under FAISS defaults (256 per centroid);
    # a tiny far-away group must still get its own centroid.
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal(0, 1, size=(20000, 2)), rng.normal(100, 1, size=(5, 2))]).astype(np.float32)
    lab = fit_kmeans(x, 2, seed=0, restarts=1)
    assert len(set(lab[-5:])) == 1 and lab[-1] != np.bincount(lab[:-5]).argmax()


def test_accuracy_hungarian():
    truth = np.array([0, 0, 1, 1, 2, 2])
    pred = np.array([1, 1, 0, 0, 0, 2])
    assert abs(clustering_accuracy(truth, pred) - 5 / 6) < 1e-9


def test_consensus_index_picks_the_medoid_partition():
    a = np.array([0, 0, 0, 1, 1, 1])
    b = np.array([1, 1, 1, 0, 0, 0])  # a relabelled: ARI(a, b) = 1
    # An outlier crossing both: every contingency cell holds 1 cell, so sum C(n_ij, 2) = 0; row pairs 2 C(3,2) = 6,
    # column pairs 3 C(2,2) = 3, expected 6 * 3 / C(6,2) = 1.2, max (6 + 3) / 2 = 4.5: ARI = -1.2 / 3.3 = -4/11.
    c = np.array([0, 1, 2, 0, 1, 2])
    from sklearn.metrics import adjusted_rand_score

    assert adjusted_rand_score(a, c) == pytest.approx(-4 / 11)
    # agreement sums: a 1 - 4/11, b the same, c -8/11; a and b tie, the lower objective wins
    assert consensus_index([c, a, b], objs=[1.0, 5.0, 4.0]) == 2
    assert consensus_index([c, a, b], objs=[1.0, 4.0, 5.0]) == 1
    assert consensus_index([a], objs=[3.0]) == 0


def test_consensus_select_keeps_an_agreed_restart_not_the_lowest_inertia(monkeypatch):
    # Three restarts: two land on partition A (higher objective), one on partition B (lowest objective).
    import jojoscl_dist.clustering.kmeans as km

    x, _ = blobs(n_per=20, k=2)
    ca, cb = np.array([[10.0] * 8, [-10.0] * 8], np.float32), np.array([[0.0] * 8, [50.0] * 8], np.float32)
    results = iter([(ca, 9.0), (cb, 1.0), (ca, 9.0)])
    monkeypatch.setattr(km, "_lloyd", lambda *a, **k: next(results))
    _, c = km.fit_kmeans_centroids(x, 2, seed=0, restarts=3, select="consensus")
    np.testing.assert_array_equal(c, ca)
    results = iter([(ca, 9.0), (cb, 1.0), (ca, 9.0)])
    _, c = km.fit_kmeans_centroids(x, 2, seed=0, restarts=3, select="inertia")
    np.testing.assert_array_equal(c, cb)


def test_consensus_fit_is_seeded_and_recovers_blobs():
    x, y = blobs(k=5, seed=3)
    lab = fit_kmeans(x, 5, seed=2, restarts=6, select="consensus")
    assert score_labels(y, lab)["ari"] == 1.0
    assert np.array_equal(lab, fit_kmeans(x, 5, seed=2, restarts=6, select="consensus"))


def test_unknown_select_is_refused():
    with pytest.raises(ValueError, match="inertia, consensus"):
        fit_kmeans(blobs()[0], 4, select="best")
