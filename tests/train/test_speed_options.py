"""Speed options of the loop: checkpoint cadence, bf16 autocast (runs on CPU), fused Adam, k-means warm start."""

import copy

import numpy as np
import torch

from jojoscl_dist.config import JojoConfig
from jojoscl_dist.data.loader import ArraySource
from jojoscl_dist.train.checkpoint import load_state
from jojoscl_dist.train.loop import WorkerData, make_adam, train_worker
from jojoscl_dist.train.session import LocalSession


def tiny(seed=0, n=240, g=50, k=3):
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 2, size=(k, g))
    y = np.repeat(np.arange(k), n // k)
    return (centres[y] + rng.normal(0, 0.5, size=(n, g))).astype(np.float32), y


class CountingSession(LocalSession):
    def __init__(self):
        super().__init__()
        self.ckpt_epochs = []

    def report(self, metrics, checkpoint_dir=None):
        if checkpoint_dir is not None:
            self.ckpt_epochs.append(metrics["epoch"])
        super().report(metrics, checkpoint_dir)


def cfg_for(epochs, **over):
    cfg = JojoConfig()
    cfg.optim.epochs, cfg.optim.batch_size, cfg.eval.eval_every = epochs, 64, 100
    cfg.optim.lr = 1e-3  # a few epochs must show learning: the faster rate (the default 3e-4 suits 100 epochs)
    return cfg.override(over) if over else cfg


def test_checkpoint_every_n_epochs_and_always_the_last():
    x, y = tiny()
    s = CountingSession()
    train_worker(cfg_for(5, **{"run.checkpoint_every": 2}), WorkerData(ArraySource(x), 3, y), s)
    assert [m["epoch"] for m in s.metrics] == [0, 1, 2, 3, 4]
    assert s.ckpt_epochs == [1, 3, 4]
    assert load_state(s.checkpoint)["epoch"] == 4


def test_bf16_precision_trains_on_cpu():
    x, y = tiny()
    s = LocalSession(device="cpu")
    train_worker(cfg_for(3, **{"optim.precision": "bf16"}), WorkerData(ArraySource(x), 3, y), s)
    losses = [m["loss"] for m in s.metrics]
    assert all(np.isfinite(losses)) and losses[-1] < losses[0]
    assert all(v.dtype == torch.float32 for v in load_state(s.checkpoint)["model"].values() if v.is_floating_point())


def test_fused_adam_matches_foreach():
    # A plain MLP: biases before BatchNorm get ~0 gradients, which Adam turns into noise-sized steps.
    torch.manual_seed(0)
    m1 = torch.nn.Sequential(torch.nn.Linear(20, 32), torch.nn.ReLU(), torch.nn.Linear(32, 4))
    m2 = copy.deepcopy(m1)
    o1 = make_adam(m1, 1e-2, 0.0, torch.device("cpu"))
    o2 = torch.optim.Adam(m2.parameters(), lr=1e-2, foreach=True)
    assert o1.defaults.get("fused") is True
    x, w = torch.randn(16, 20), torch.randn(16, 4)
    for _ in range(3):
        for m, o in ((m1, o1), (m2, o2)):
            o.zero_grad()
            (m(x) * w).sum().backward()
            o.step()
    for a, b in zip(m1.parameters(), m2.parameters()):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def test_kmeans_warm_start_seeds_once_and_a_fresh_start_every_step(monkeypatch):
    import jojoscl_dist.clustering.kmeans as K

    seeds, in_batch = [], []  # k-means++ calls made inside BatchKMeans (the evaluations' k-means use it too)
    real_pp, real_call = K.kmeans_plusplus, K.BatchKMeans.__call__
    monkeypatch.setattr(K, "kmeans_plusplus", lambda *a, **kw: (
        seeds.append(kw["random_state"]) if in_batch else None, real_pp(*a, **kw))[1])
    monkeypatch.setattr(K.BatchKMeans, "__call__", lambda self, x: (
        in_batch.append(1), real_call(self, x), in_batch.clear())[1])
    x, y = tiny()  # 240 cells, batch 64: 3 steps per epoch (the short remainder is not a batch)
    for warm, expected in ((True, [0]), (False, list(range(6)))):  # fresh: seed + step, 2 epochs x 3 steps
        seeds.clear()
        s = LocalSession(device="cpu")
        train_worker(cfg_for(2, **{"loss.kmeans_warm_start": warm}), WorkerData(ArraySource(x), 3, y), s)
        assert seeds == expected, (warm, seeds)
