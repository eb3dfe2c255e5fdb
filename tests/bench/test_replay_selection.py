"""bench.replay_selection: the pick rule, a replay on saved evaluations, and the recorder behind --save-evals."""

from types import SimpleNamespace

import numpy as np
import pytest

from bench import quality
from bench.replay_selection import (RULES, final_space, load, main, pick, rank_sum, replay_run,
                                    restart_agreement)
from jojoscl_dist.cluster.selection import Selector
from jojoscl_dist.train import loop


def test_pick_skips_the_warm_up_and_breaks_ties_to_the_later_evaluation():
    epochs = np.array([4, 9, 14, 19])
    assert pick(np.array([9.0, 1.0, 3.0, 3.0]), epochs, min_epoch=5) == 3  # epoch 4 is warm-up; 3 = 3 -> later
    assert pick(np.array([9.0, 1.0, 3.0, 2.0]), epochs, min_epoch=5) == 2
    assert pick(np.array([9.0, 1.0]), np.array([1, 2]), min_epoch=10) == 1  # nothing eligible: the last one


def test_rank_sum_adds_ranks_among_the_eligible_evaluations_only():
    epochs = np.array([4, 9, 14, 19])
    scores = {"a": np.array([100.0, 0.1, 0.3, 0.2]), "b": np.array([100.0, 5.0, 1.0, 9.0])}
    # eligible: epochs 9, 14, 19; ranks a = (0, 2, 1), b = (1, 0, 2); the warm-up's huge scores do not count
    assert rank_sum(scores, ["a", "b"], epochs, min_epoch=5).tolist() == [-1.0, 1.0, 2.0, 3.0]
    assert pick(rank_sum(scores, ["a", "b"], epochs, 5), epochs, 5) == 3


def _run(tmp_path):
    """Three evaluations of 60 cells in 3 types: noise, clean clusters, and clusters with two types merged."""
    rng = np.random.default_rng(0)
    truth = np.repeat(np.arange(3), 20)
    centres = rng.normal(size=(3, 8)) * 5

    def unit(a):
        return (a / np.linalg.norm(a, axis=1, keepdims=True)).astype(np.float32)

    noise = unit(rng.normal(size=(60, 8)))
    clean = unit(centres[truth] + rng.normal(size=(60, 8)) * 0.2)
    merged = unit(centres[np.minimum(truth, 1)] + rng.normal(size=(60, 8)) * 0.2)
    p1 = rng.normal(size=(60, 4)).astype(np.float32) * 0.01  # an uninformative input PCA
    np.savez(tmp_path / "toy-s0.npz", epochs=np.array([4, 9, 14]), z=np.stack([noise, clean, merged]),
             reference=p1, p1=p1, truth=truth, k=3, seed=0, min_epoch=2, pick_epoch=9)
    return load(tmp_path / "toy-s0.npz")


def test_replay_picks_the_clean_evaluation_and_scores_it(tmp_path, capsys):
    run = _run(tmp_path)
    assert np.array_equal(final_space(run["z"][0], run["p1"], 0.0), run["z"][0])  # w = 0: z alone
    assert final_space(run["z"][0], run["p1"], 2.0).shape == (60, 12)
    res = replay_run(run, ["silhouette", "oracle", "last"], [1.5, 0.0])
    assert res["silhouette"]["epoch"] == 9 and res["oracle"]["epoch"] == 9 and res["last"]["epoch"] == 14
    assert res["silhouette"]["w1.5"][0] == pytest.approx(1.0) and res["silhouette"]["w0"][0] == pytest.approx(1.0)
    assert res["last"]["w0"][0] < 0.8  # two types merged: K-means splits the big blob, ARI below 1
    late = replay_run(run, ["silhouette_from0.8"], [1.5])  # warm-up to epoch 12: only epoch 14 is left
    assert late["silhouette_from0.8"]["epoch"] == 14
    every = replay_run(run, list(RULES), [1.5])
    assert set(every) == set(RULES) and every["final_silhouette"]["epoch"] == 9
    assert every["oracle_final"]["epoch"] == 9 and every["oracle_final"]["w1.5"][0] == pytest.approx(1.0)
    # An input whose PCA shows the three types: the final clusters of the clean epoch cut its kNN graph least.
    informed = replay_run({**run, "reference": run["z"][1]}, ["knn_purity", "z_final_silhouette",
                                                              "silhouette+knn_purity"], [1.5])
    assert {r: v["epoch"] for r, v in informed.items()} == dict.fromkeys(informed, 9)
    for bad in ("silhouette+nope", "silhouette+silhouette_from0.5"):  # rank sums of known base rules only
        with pytest.raises(SystemExit, match="unknown rules"):
            main([str(tmp_path), "--rules", bad])
    main([str(tmp_path), "--rules", "silhouette,last", "--weights", "1.5"])
    out = capsys.readouterr().out
    assert "WARNING" not in out  # the replayed default rule picks the epoch the run recorded
    assert "| `silhouette` | 1.5 | 1.000 |" in out


def test_record_evaluations_captures_z_and_restores_the_loop_selector():
    original = loop.Selector
    with quality._record_evaluations(True) as recorded:
        assert loop.Selector is not original
        sel = loop.Selector(rule="silhouette", seed=0)
        z = np.random.default_rng(0).normal(size=(10, 3)).astype(np.float32)
        sel.update(5, z, np.array([0, 1] * 5))
    assert loop.Selector is original is Selector
    assert len(recorded) == 1 and recorded[0][0] == 5 and np.array_equal(recorded[0][1], z)
    with quality._record_evaluations(False) as recorded:
        assert loop.Selector is original and recorded == []


def test_save_evaluations_refuses_subsampled_evaluations(tmp_path):
    cfg = quality.JojoConfig()
    cfg.eval.max_eval_cells = 5
    data = SimpleNamespace(x=np.zeros((6, 4), np.float32), labels=np.zeros(6), n_clusters=2)
    with pytest.raises(ValueError, match="every cell evaluated"):
        quality.save_evaluations(tmp_path / "a.npz", [], {"epochs": 10, "history": []}, cfg, data, 0)
    assert not (tmp_path / "a.npz").exists()


def test_restart_agreement_is_one_on_separated_clusters_and_lower_on_noise():
    rng = np.random.default_rng(0)
    blobs = (np.repeat(np.eye(3) * 20, 30, axis=0) + rng.normal(size=(90, 3))).astype(np.float32)
    noise = rng.uniform(size=(90, 3)).astype(np.float32)
    assert restart_agreement(blobs, 3, seed=0, n=4) == pytest.approx(1.0)
    assert restart_agreement(noise, 6, seed=0, n=4) < 0.9
