"""A NaN/Inf loss stops the run once: within a few steps, with the epoch and step in one line (exit 2 from the
CLI), without Ray Train retrying it, and a relaunch of the same settings stops at once until --overwrite or a
changed config. NaN is injected by patching the instance loss (in-process) or in the Ray workers (inject_faults)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from jojoscl_dist.config import JojoConfig
from jojoscl_dist.errors import TrainingDiverged
from jojoscl_dist.losses import objective
from jojoscl_dist.train.__main__ import main as train_main
from jojoscl_dist.train.checkpoint import DIVERGED_FILE, latest_checkpoint, load_state
from jojoscl_dist.train.loop import NONFINITE_CHECK_EVERY
from jojoscl_dist.train.run import default_run_name, default_storage, run

BATCH = 32  # Human_brain: 420 cells -> 13 steps per epoch


def argv(data_dir, out: Path, *extra: str) -> list[str]:
    return ["--data", str(data_dir / "Human_brain.h5ad"), "--label-key", "cell_type", "--epochs", "3",
            "--batch-size", str(BATCH), "--eval-every", "3", "--num-workers", "0", "--cpu", "--no-tracking",
            "--no-plots", "-q", "--output", str(out), *extra]


def inject_nan(monkeypatch, from_call: int) -> list[int]:
    """The instance loss is NaN from its ``from_call``-th call (one call per step) on; returns the call counter."""
    real, calls = objective.instance_contrastive_loss, [0]

    def nan_loss(*a, **k):
        calls[0] += 1
        out = real(*a, **k)
        return out * float("nan") if calls[0] >= from_call else out

    monkeypatch.setattr(objective, "instance_contrastive_loss", nan_loss)
    return calls


def error_line(capsys) -> str:
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.startswith("jojoscl: error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0][len("jojoscl: error: "):]


def ckpt_root(out: Path) -> Path:
    cfg = JojoConfig()
    cfg.run.output = str(out)
    return default_storage(cfg) / default_run_name(cfg)


def test_nan_loss_stops_within_a_few_steps_and_a_relaunch_stops_at_once(data_dir, tmp_path, monkeypatch, capsys):
    out = tmp_path / "out"
    calls = inject_nan(monkeypatch, 17)  # step 17: the 4th step of the second epoch (13 steps each)
    assert train_main(argv(data_dir, out)) == 2
    msg = error_line(capsys)
    assert msg == ("training diverged: the loss became nan at epoch 2/3, step 17, with --lr 0.0003: lower --lr (a "
                   "relaunch with these settings stops here; --overwrite tries them again)")
    assert 17 <= calls[0] < 17 + NONFINITE_CHECK_EVERY  # stopped within a few steps, not at the epoch end
    assert not out.exists()  # nothing written
    root = ckpt_root(out)
    assert load_state(latest_checkpoint(root))["epoch"] == 0  # the last good checkpoint is kept
    assert (root / DIVERGED_FILE).is_file()

    # The same command again (e.g. a job's backoff retry) stops before training, with the same line.
    def no_training(*a, **k):
        raise AssertionError("a relaunch of diverged settings must not train")

    monkeypatch.setattr("jojoscl_dist.train.run.train_worker", no_training)
    assert train_main(argv(data_dir, out)) == 2
    assert error_line(capsys) == msg
    monkeypatch.undo()

    # --overwrite clears the record: the run resumes from its last good checkpoint (no NaN injected now).
    assert train_main(argv(data_dir, out, "--overwrite")) == 0
    assert (out / "metrics.json").exists() and not root.exists()


def test_a_changed_config_clears_the_record(data_dir, tmp_path, monkeypatch, capsys):
    out = tmp_path / "out"
    inject_nan(monkeypatch, 2)  # in the first epoch: no checkpoint yet
    assert train_main(argv(data_dir, out)) == 2
    assert "at epoch 1/3, step 2," in error_line(capsys)
    monkeypatch.undo()
    assert train_main(argv(data_dir, out, "--lr", "1e-4")) == 0  # the fix the message names
    assert (out / "metrics.json").exists()


def test_a_real_learning_rate_too_high_diverges(data_dir, tmp_path):
    cfg = JojoConfig()
    cfg.data.path, cfg.data.label_key = str(data_dir / "Human_brain.h5ad"), "cell_type"
    cfg.optim.epochs, cfg.optim.batch_size, cfg.optim.lr = 2, BATCH, 1e12  # measured: NaN at step 2
    cfg.run.num_workers, cfg.run.use_gpu, cfg.run.tracking, cfg.run.quiet = 0, False, False, True
    cfg.run.output = str(tmp_path / "out")
    with pytest.raises(TrainingDiverged, match=r"the loss became (nan|inf|-inf) at epoch 1/2, step \d+, with --lr "
                                               r"1e\+12: lower --lr") as e:
        run(cfg)
    assert int(re.search(r"step (\d+)", str(e.value)).group(1)) <= NONFINITE_CHECK_EVERY


@pytest.fixture(scope="module")
def ray_cluster():
    import ray

    yield
    ray.shutdown()


@pytest.mark.ray
@pytest.mark.timeout(600)
def test_ray_stops_once_without_retrying(data_dir, tmp_path, ray_cluster, inject_faults):
    """Two workers, max_failures 2: a NaN loss at step 5 starts each worker once (a retry would start them again
    and diverge again), and the driver raises TrainingDiverged."""
    cfg = JojoConfig()
    cfg.data.path, cfg.data.label_key = str(data_dir / "Human_brain.h5ad"), "cell_type"
    cfg.optim.epochs, cfg.optim.batch_size = 3, 64  # 6 steps per epoch
    cfg.eval.eval_every = 3
    cfg.run.num_workers, cfg.run.max_failures = 2, 2
    cfg.run.use_gpu, cfg.run.tracking, cfg.run.quiet = False, False, True
    cfg.run.output = str(tmp_path / "out")
    starts = tmp_path / "starts.txt"
    inject_faults(nan_step=9, starts=str(starts))  # the 3rd step of the second epoch
    with pytest.raises(TrainingDiverged, match=r"the loss became nan at epoch 2/3, step 9, with --lr 0.0003") as e:
        run(cfg)
    assert sorted(starts.read_text().split()) == ["0", "1"]  # one attempt: each worker started once
    root = default_storage(cfg) / default_run_name(cfg)
    assert (root / DIVERGED_FILE).is_file()
    assert load_state(latest_checkpoint(root))["epoch"] == 0  # the marker-only checkpoint is skipped
    assert not (tmp_path / "out").exists()
    # A relaunch stops before starting any worker.
    with pytest.raises(TrainingDiverged) as again:
        run(cfg)
    assert str(again.value) == str(e.value)
    assert sorted(starts.read_text().split()) == ["0", "1"]
    # --overwrite: the workers skip Ray's marker-only checkpoint and resume from the last good one (no NaN now).
    good = load_state(latest_checkpoint(root))
    cfg.run.overwrite = True
    inject_faults(starts=str(starts))
    res = run(cfg)
    assert sorted(starts.read_text().split()) == ["0", "0", "1", "1"]
    assert [h["epoch"] for h in res.history] == [0, 1, 2]
    assert res.history[0]["epoch_time_s"] == good["history"][0]["epoch_time_s"]  # epoch 0 not retrained
