"""Per-batch k-means in torch (BatchKMeans): same answers as FAISS on easy data, fresh or warm start, device-generic."""

import numpy as np
import torch

from jojoscl_dist.clustering.kmeans import BatchKMeans, _lloyd, torch_lloyd
from jojoscl_dist.clustering.metrics import score_labels


def blobs(n_per=40, k=5, d=16, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 5, size=(k, d))
    x = np.concatenate([c + rng.normal(0, 1.0, size=(n_per, d)) for c in centres]).astype(np.float32)
    return x, np.repeat(np.arange(k), n_per)


def test_torch_lloyd_matches_faiss_from_the_same_init():
    x, y = blobs()
    init = x[[0, 40, 80, 120, 160]] + 0.5  # one point per blob, perturbed
    c_faiss, _ = _lloyd(x, 5, 10, 0, init.copy(), gpu=False)
    c_torch, labels = torch_lloyd(torch.from_numpy(x), torch.from_numpy(init), 10)
    np.testing.assert_allclose(c_torch.numpy(), c_faiss, atol=1e-4)
    assert score_labels(y, labels.numpy())["ari"] == 1.0


def test_empty_cluster_keeps_its_centroid():
    x = torch.tensor([[0.0, 0.0], [0.1, 0.0], [5.0, 5.0]])
    init = torch.tensor([[0.0, 0.0], [5.0, 5.0], [100.0, 100.0]])
    c, labels = torch_lloyd(x, init, 3)
    assert torch.equal(c[2], init[2]) and labels.tolist() == [0, 0, 1]


def test_kmeanspp_only_on_first_call_with_warm_start_and_state_round_trip(monkeypatch):
    import jojoscl_dist.clustering.kmeans as K

    calls = []
    real = K.kmeans_plusplus
    monkeypatch.setattr(K, "kmeans_plusplus", lambda *a, **kw: (calls.append(1), real(*a, **kw))[1])
    x, y = blobs()
    km = BatchKMeans(5, niter=5, seed=0, warm_start=True)
    for _ in range(3):
        lab = km(torch.from_numpy(x))
    assert len(calls) == 1 and km.calls == 3
    assert score_labels(y, lab.numpy())["ari"] == 1.0
    km2 = BatchKMeans(5, niter=5, seed=0, warm_start=True)
    km2.load_state_dict(km.state_dict())
    assert isinstance(km.state_dict()["centroids"], np.ndarray)
    assert torch.equal(km2(torch.from_numpy(x)), km(torch.from_numpy(x))) and len(calls) == 1


def test_fresh_start_seeds_every_batch_and_resumes_the_same(monkeypatch):
    import jojoscl_dist.clustering.kmeans as K

    seeds = []
    real = K.kmeans_plusplus
    monkeypatch.setattr(K, "kmeans_plusplus",
                        lambda *a, **kw: (seeds.append(kw["random_state"]), real(*a, **kw))[1])
    x, y = blobs()
    km = BatchKMeans(5, niter=5, seed=7, warm_start=False)  # loss.kmeans_warm_start=false (the reference's)
    labels = [km(torch.from_numpy(x)) for _ in range(3)]
    assert seeds == [7, 8, 9]  # one k-means++ per batch, each with its own seed
    assert all(score_labels(y, lab.numpy())["ari"] == 1.0 for lab in labels)
    # A restored state (the call count) continues the same seed sequence: a resumed run repeats the batches.
    km2 = BatchKMeans(5, niter=5, seed=7, warm_start=False)
    km2.load_state_dict(km.state_dict())
    x2 = blobs(seed=1)[0]
    assert torch.equal(km2(torch.from_numpy(x2)), km(torch.from_numpy(x2))) and seeds[-2:] == [10, 10]


def test_faiss_backend_gives_the_same_batches_as_torch():
    x, y = blobs()
    runs = {}
    for backend in ("torch", "faiss"):
        km = BatchKMeans(5, niter=10, seed=0, warm_start=True, backend=backend, gpu=False)
        runs[backend] = [km(torch.from_numpy(x)).numpy() for _ in range(2)]  # k-means++ once, then warm start
        assert score_labels(y, runs[backend][1])["ari"] == 1.0 and km.centroids.shape == (5, 16)
    assert all(score_labels(a, b)["ari"] == 1.0 for a, b in zip(runs["torch"], runs["faiss"]))


def test_unknown_backend_is_refused():
    import pytest

    with pytest.raises(ValueError, match="torch or faiss"):
        BatchKMeans(3, backend="sklearn")
