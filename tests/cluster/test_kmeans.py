import numpy as np
import torch

from jojoscl_dist.cluster.kmeans import BatchKMeans, fit_kmeans
from jojoscl_dist.cluster.metrics import clustering_accuracy, score_labels


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
