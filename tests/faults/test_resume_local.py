"""Resume without Ray (num_workers=0): the checkpoint carries every RNG state, an interrupted run resumes from
its last epoch with the same result as an uninterrupted one, a changed config is refused, and a failed MLflow
step leaves valid outputs that the same call retries without retraining."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from jojoscl_dist.config import JojoConfig
from jojoscl_dist.errors import JojoInputError, TrackingError
from jojoscl_dist.outputs import run_dir
from jojoscl_dist.train.checkpoint import latest_checkpoint, load_state
from jojoscl_dist.data.dataset import prepare_data
from jojoscl_dist.train.run import default_run_name, default_storage, run, run_folder, train
from tests.faults.crash import Crash, crash_training_after


def cfg_for(data_dir, out, epochs=3) -> JojoConfig:
    cfg = JojoConfig()
    cfg.data.path = str(data_dir / "Human_brain.h5ad")
    cfg.data.label_key = "cell_type"
    cfg.optim.epochs = epochs
    cfg.optim.batch_size = 128
    cfg.eval.eval_every = epochs
    cfg.eval.kmeans_restarts = 2
    cfg.loss.w_sure = 1.0  # the per-batch k-means warm start is part of the resumed state
    cfg.run.num_workers = 0
    cfg.run.use_gpu = False
    cfg.run.tracking = False
    cfg.run.output = str(out)
    return cfg


def test_interrupted_run_resumes_to_the_same_result(data_dir, tmp_path, monkeypatch):
    ref = run(cfg_for(data_dir, tmp_path / "ref"))
    cfg = cfg_for(data_dir, tmp_path / "cut")
    crash_training_after(monkeypatch, epoch=1)
    with pytest.raises(Crash):
        run(cfg)
    root = default_storage(cfg) / default_run_name(cfg)
    st = load_state(latest_checkpoint(root))
    assert st["epoch"] == 1
    g = st["rng"]["global"][0]  # the process-wide RNG states travel with the checkpoint
    assert set(g) == {"torch", "numpy", "python"} and isinstance(g["torch"], torch.Tensor)
    assert not (tmp_path / "cut").exists()
    monkeypatch.undo()
    # Global RNGs are restored on resume: draw on them now to prove a resumed run does not depend on them.
    random.random(), np.random.rand(), torch.rand(1)
    res = run(cfg)
    assert [h["epoch"] for h in res.history] == [0, 1, 2]
    assert res.history[1]["epoch_time_s"] == st["history"][1]["epoch_time_s"]  # epoch 1 not retrained
    np.testing.assert_array_equal(res.embedding, ref.embedding)  # same result as the uninterrupted run
    assert np.array_equal(res.labels, ref.labels)
    assert not root.parent.exists()


def test_train_result_says_whether_it_resumed_and_what_it_trained(data_dir, tmp_path, monkeypatch):
    cfg = cfg_for(data_dir, tmp_path / "out", epochs=4)
    data = prepare_data(cfg, run_folder(cfg))
    crash_training_after(monkeypatch, epoch=0)
    with pytest.raises(Crash):
        train(cfg, data)  # epoch 0 checkpointed, then the crash
    monkeypatch.undo()
    res = train(cfg, data)
    assert res.resumed and res.epochs_run == 3  # epochs 1-3
    assert res.state["epoch"] == 3 and [h["epoch"] for h in res.state["history"]] == [0, 1, 2, 3]
    assert res.checkpoint == latest_checkpoint(default_storage(cfg) / default_run_name(cfg))
    again = train(cfg, data)  # everything trained already: nothing to run
    assert again.resumed and again.epochs_run == 0 and again.checkpoint == res.checkpoint
    assert again.state["history"] == res.state["history"]
    fresh = train(cfg.override({"run.output": str(tmp_path / "fresh")}), data)
    assert not fresh.resumed and fresh.epochs_run == 4


def test_resume_refuses_a_changed_config(data_dir, tmp_path, monkeypatch):
    cfg = cfg_for(data_dir, tmp_path / "out")
    crash_training_after(monkeypatch, epoch=0)
    with pytest.raises(Crash):
        run(cfg)
    monkeypatch.undo()
    before = cfg.optim.lr
    cfg.optim.lr = 1e-2
    with pytest.raises(JojoInputError, match=rf"holds checkpoints of a different run \(optim.lr: {before} -> 0.01\)"):
        run(cfg)


def test_failed_tracking_keeps_outputs_and_retries(data_dir, tmp_path, monkeypatch):
    cfg = cfg_for(data_dir, tmp_path / "out", epochs=2)
    cfg.run.tracking = True

    def broken(*a, **k):
        raise ConnectionError("server went away")

    monkeypatch.setattr("jojoscl_dist.tracking.mlflow_log.log_run", broken)
    with pytest.raises(TrackingError, match="outputs are in .*server went away.*rerun the same command"):
        run(cfg)
    out = tmp_path / "out"
    assert (out / "metrics.json").exists() and (out / run_dir.PENDING_MARKER).exists()
    first = load_state(latest_checkpoint(default_storage(cfg) / default_run_name(cfg)))
    monkeypatch.undo()
    res = run(cfg)  # same config, no --overwrite: allowed because the earlier run is marked pending
    assert res.history[0]["epoch_time_s"] == first["history"][0]["epoch_time_s"]  # not retrained
    assert (out / "mlflow.db").exists() and not (out / run_dir.PENDING_MARKER).exists()
    with pytest.raises(JojoInputError, match="already holds an earlier run"):  # now finished: protected again
        run(cfg)
