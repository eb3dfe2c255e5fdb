"""Resuming under changed conditions: --epochs changed (the cosine schedule and the selection window follow the
new length) and a checkpoint written on another device type (the augmentation stream is reseeded, documented)."""

from __future__ import annotations

import logging
import math

import anndata as ad
import numpy as np
import pytest
import torch

from jojoscl_dist.config import JojoConfig
from jojoscl_dist.data.loader import ArraySource
from jojoscl_dist.data.preprocess import compute_stats, materialize
from jojoscl_dist.train.checkpoint import augment_seed, load_state, restore_generator, resume_scheduler, save_state
from jojoscl_dist.train.loop import WorkerData, make_scheduler, train_worker
from jojoscl_dist.train.session import LocalSession

STEPS = 13  # Human_brain, 420 cells at batch 32


@pytest.fixture(scope="module")
def brain(data_dir):
    a = ad.read_h5ad(data_dir / "Human_brain.h5ad")
    st = compute_stats(a.X, list(a.var_names))
    return materialize(a.X, st)


def cfg_for(epochs: int, schedule: str = "cosine") -> JojoConfig:
    cfg = JojoConfig()
    cfg.optim.epochs, cfg.optim.batch_size, cfg.optim.schedule = epochs, 32, schedule
    cfg.eval.eval_every = epochs
    return cfg


def train(cfg, x, session=None) -> LocalSession:
    session = session or LocalSession(device="cpu")
    train_worker(cfg, WorkerData(ArraySource(x), 8, None), session)
    return session


def test_resume_scheduler_rebuilds_a_cosine_schedule_for_the_new_length():
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=1.0)
    old = make_scheduler(opt, "cosine", 10)
    for _ in range(4):
        opt.step()
        old.step()
    saved = old.state_dict()
    opt2 = torch.optim.SGD([p], lr=1.0)
    new = make_scheduler(opt2, "cosine", 40)
    opt2.param_groups[0]["lr"] = opt.param_groups[0]["lr"]  # what loading the optimiser state does
    assert resume_scheduler(new, saved, step=4)
    lrs = []
    for _ in range(36):
        lrs.append(opt2.param_groups[0]["lr"])
        opt2.step()
        new.step()
    expected = [(1 + math.cos(math.pi * s / 40)) / 2 for s in range(4, 40)]  # the 40-step curve from step 4 on
    np.testing.assert_allclose(lrs, expected, atol=1e-12)
    # Same length: the saved state is loaded as it is (bit-identical resumes).
    same = make_scheduler(torch.optim.SGD([p], lr=1.0), "cosine", 10)
    assert not resume_scheduler(same, saved, step=4) and same.state_dict() == saved
    const = make_scheduler(torch.optim.SGD([p], lr=1.0), "constant", 40)
    assert not resume_scheduler(const, make_scheduler(torch.optim.SGD([p], lr=1.0), "constant", 10).state_dict(), 4)


def test_more_epochs_on_resume_follow_the_new_cosine_schedule(brain, capsys):
    x = brain
    full = train(cfg_for(4), x)  # uninterrupted 4 epochs
    part = train(cfg_for(2), x)  # 2 epochs planned, then resumed with --epochs 4
    n = len(part.metrics)
    train(cfg_for(4), x, session=part)
    resumed = [m["lr"] for m in part.metrics[n:]]
    assert [m["epoch"] for m in part.metrics[n:]] == [2, 3]
    # The learning rate at the end of epochs 3 and 4 is that of the 4-epoch schedule (the 2-epoch one would
    # restart its cosine from 0 upwards).
    np.testing.assert_allclose(resumed, [m["lr"] for m in full.metrics[2:]], rtol=1e-9)
    assert resumed[-1] < 1e-9  # annealed to 0 at the end of the new length
    assert load_state(part.checkpoint)["scheduler"]["T_max"] == 4 * STEPS


def test_more_epochs_on_resume_move_the_selection_window(brain, monkeypatch):
    """select_from 0.5: a 2-epoch run may pick epoch 1; resumed to 10 epochs, picks come from epoch 5 on, even
    when the earlier pick scores higher."""
    x = brain
    scores = iter(np.linspace(1.0, 0.0, 200))  # every later evaluation scores lower
    monkeypatch.setattr("jojoscl_dist.clustering.selection.silhouette_score", lambda *a, **k: next(scores))
    cfg = cfg_for(2, "constant")
    cfg.eval.selection, cfg.eval.select_from, cfg.eval.eval_every = "silhouette", 0.5, 1
    s = train(cfg, x)
    first = load_state(s.checkpoint)
    assert first["selector"]["best_epoch"] == 1
    cfg.optim.epochs = 10
    train(cfg, x, session=s)
    st = load_state(s.checkpoint)
    assert st["selector"]["best_epoch"] == 5  # the first evaluation in the new window (int(0.5 * 10))
    # ... with its weights, not epoch 1's
    assert not all(torch.equal(v, first["best_model"][k]) for k, v in st["best_model"].items())


def test_restore_generator_reseeds_a_state_from_another_device(caplog):
    gen = torch.Generator(device="cpu").manual_seed(1)
    cuda_state = torch.zeros(16, dtype=torch.uint8)  # a CUDA (Philox) generator state: seed and offset
    with caplog.at_level(logging.WARNING, logger="jojoscl_dist.train.checkpoint"):
        assert not restore_generator(gen, cuda_state, "cuda", seed=3, epoch=2, rank=1)
    ref = torch.Generator(device="cpu").manual_seed(augment_seed(3, 2, 1))
    assert torch.equal(gen.get_state(), ref.get_state())
    assert "written on cuda and this worker runs on cpu" in caplog.text and "reseeded" in caplog.text
    assert augment_seed(3, 2, 1) not in (augment_seed(3, 2, 0), augment_seed(3, 3, 1), augment_seed(4, 2, 1))
    # No recorded device (older checkpoints): a foreign state is detected by torch, reseeded the same way.
    assert not restore_generator(gen, cuda_state, None, seed=3, epoch=2, rank=1)
    assert torch.equal(gen.get_state(), ref.get_state())
    # Same device type: restored as saved.
    saved = torch.Generator(device="cpu").manual_seed(7).get_state()
    assert restore_generator(gen, saved, "cpu", seed=3, epoch=2, rank=1)
    assert torch.equal(gen.get_state(), saved)


def test_checkpoint_from_a_gpu_resumes_on_cpu(brain, tmp_path, caplog):
    """A checkpoint recording device 'cuda' with a CUDA generator state resumes on the CPU: no error, the stream
    reseeded as documented (so two such resumes agree), optimiser state on the model's device."""
    x = brain
    s = train(cfg_for(2, "constant"), x)
    st = load_state(s.checkpoint)
    assert st["device"] == "cpu"
    st["device"] = "cuda"
    st["rng"]["generators"] = [torch.tensor([7, 0, 0, 0, 0, 0, 0, 0, 9, 0, 0, 0, 0, 0, 0, 0], dtype=torch.uint8)]
    results = []
    for i in range(2):
        root = tmp_path / f"r{i}"
        (root / "checkpoint_000001").mkdir(parents=True)
        save_state(root / "checkpoint_000001", st)
        session = LocalSession(root, device="cpu")
        opt_devices = []
        real_load = torch.optim.Optimizer.load_state_dict

        def load_and_look(self, state_dict):
            real_load(self, state_dict)
            opt_devices.extend({t.device.type for s_ in self.state.values() for t in s_.values()
                                if isinstance(t, torch.Tensor)})

        with caplog.at_level(logging.WARNING, logger="jojoscl_dist.train.checkpoint"), \
                pytest.MonkeyPatch.context() as mp:
            mp.setattr(torch.optim.Optimizer, "load_state_dict", load_and_look)
            train(cfg_for(4, "constant"), x, session=session)
        assert [m["epoch"] for m in session.metrics] == [2, 3]
        assert set(opt_devices) == {"cpu"}
        assert f"seed 0, epoch 2 (seed {augment_seed(0, 2, 0)})" in caplog.text
        out = load_state(session.checkpoint)
        assert out["device"] == "cpu"
        results.append(out["model"])
    for k in results[0]:
        assert torch.equal(results[0][k], results[1][k]), k
