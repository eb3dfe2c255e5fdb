"""TrainState: it writes exactly the checkpoint dict ``checkpoint.py`` documents and reads it back unchanged; one
epoch and one evaluation of the loop, each on its own."""

import numpy as np
import pytest
import torch

from jojoscl_dist.config import JojoConfig
from jojoscl_dist.data.loader import ArraySource, epoch_batch_count
from jojoscl_dist.train.checkpoint import load_state
from jojoscl_dist.train.loop import (LOSS_NAMES, EvalCells, NonFiniteWatch, Views, WorkerData, evaluate, new_state,
                                     seed_everything, train_epoch, train_worker)
from jojoscl_dist.train.session import LocalSession

CHECKPOINT_KEYS = {"schema", "epoch", "step", "epochs", "model", "key_encoder", "optimizer", "scheduler", "rng",
                   "device", "kmeans", "selector", "best_model", "history", "n_genes", "n_clusters", "config",
                   "data_fingerprint"}


@pytest.fixture(scope="module")
def blobs():
    """Three separated groups of 60 cells in 40 genes."""
    rng = np.random.default_rng(0)
    centres = rng.normal(0, 3, (3, 40))
    y = np.repeat(np.arange(3), 60)
    return (centres[y] + rng.normal(0, 1, (180, 40))).astype(np.float32), y


def small_cfg(epochs=3, schedule="constant") -> JojoConfig:
    cfg = JojoConfig()
    cfg.optim.epochs, cfg.optim.batch_size, cfg.optim.lr = epochs, 64, 1e-3
    cfg.optim.schedule = schedule
    cfg.eval.eval_every = 1
    return cfg


def worker_data(blobs):
    x, y = blobs
    return WorkerData(ArraySource(x), 3, y, {"n_obs": len(x), "probe": "blobs"})


def assert_same(a, b, where="state"):
    """Nested checkpoint values equal: dicts, lists, tensors, arrays, numbers (NaN equal to NaN)."""
    if isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), where
        for k in a:
            assert_same(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert isinstance(b, (list, tuple)) and len(a) == len(b), where
        for i, (u, v) in enumerate(zip(a, b)):
            assert_same(u, v, f"{where}[{i}]")
    elif isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and torch.equal(a.cpu(), b.cpu()), where
    elif isinstance(a, np.ndarray):
        assert np.array_equal(a, np.asarray(b), equal_nan=a.dtype.kind == "f"), where
    elif isinstance(a, float) and np.isnan(a):
        assert np.isnan(b), where
    else:
        assert a == b, where


def test_state_dict_is_the_checkpoint_and_reads_back_unchanged(blobs, tmp_path):
    cfg, data = small_cfg(schedule="cosine"), worker_data(blobs)
    session = LocalSession(tmp_path, device="cpu")
    train_worker(cfg, data, session)
    saved = load_state(session.checkpoint)
    assert set(saved) == CHECKPOINT_KEYS
    assert saved["epoch"] == 2 and saved["data_fingerprint"] == data.fingerprint and saved["device"] == "cpu"

    seed_everything(cfg.run.seed)
    state = new_state(cfg, data, LocalSession(tmp_path / "other", device="cpu"))
    state.load_state_dict(saved)
    again = state.state_dict()
    assert set(again) == CHECKPOINT_KEYS - {"schema"}  # save_state adds the schema
    assert_same({k: v for k, v in saved.items() if k != "schema"}, again)


def test_a_fresh_state_resumes_at_the_next_epoch(blobs, tmp_path):
    """Two epochs, then the third from the checkpoint: the same weights as three epochs in one go."""
    data = worker_data(blobs)
    whole = LocalSession(tmp_path / "whole", device="cpu")
    train_worker(small_cfg(3), data, whole)
    part = LocalSession(tmp_path / "part", device="cpu")
    train_worker(small_cfg(2), data, part)
    train_worker(small_cfg(3), data, part)
    assert [m["epoch"] for m in part.metrics] == [0, 1, 2]
    a, b = load_state(whole.checkpoint), load_state(part.checkpoint)
    assert_same(a["model"], b["model"])
    assert a["step"] == b["step"] and a["history"][-1]["loss"] == b["history"][-1]["loss"]


def test_train_epoch_and_evaluate(blobs):
    cfg, data = small_cfg(), worker_data(blobs)
    session = LocalSession(device="cpu")
    seed_everything(cfg.run.seed)
    state = new_state(cfg, data, session)
    before = {n: t.clone() for n, t in state.key_encoder.state_dict().items()}
    metrics = train_epoch(state, data.source, session, Views(cfg, state.generator, 40, session),
                          NonFiniteWatch(session.device, 4), epoch=0)
    steps = epoch_batch_count(data.source, 64, 1, 0, cfg.run.seed)
    assert state.step == steps == metrics["step"] and metrics["epoch"] == 0
    assert all(np.isfinite(metrics[n]) for n in LOSS_NAMES)
    assert any(not torch.equal(before[n], t) for n, t in state.key_encoder.state_dict().items())  # momentum update
    assert state.best_model is None
    scores = evaluate(state, EvalCells(cfg, data), session, epoch=0)
    assert state.selector.best_epoch == 0 and state.best_model is not None  # the only evaluation is the pick
    assert {"select_silhouette", "eval_ari", "eval_head_ari", "eval_time_s"} <= set(scores)
