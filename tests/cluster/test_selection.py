"""Label-free model selection: the scores, the rules, and the warm-up window that cannot be picked."""

import numpy as np

from jojoscl_dist.cluster.selection import Selector


def blobs(spread, seed=0):
    rng = np.random.default_rng(seed)
    centres = np.eye(3, 8) * 5
    z = np.concatenate([c + rng.normal(0, spread, size=(30, 8)) for c in centres])
    return z, np.repeat(np.arange(3), 30)


def test_silhouette_rule_keeps_the_best_separated_epoch():
    sel = Selector(rule="silhouette")
    picks = [sel.update(e, *blobs(s))[1] for e, s in enumerate((2.0, 0.3, 1.0))]
    assert picks == [True, True, False] and sel.best_epoch == 1
    assert sel.history[1]["silhouette"] > sel.history[0]["silhouette"] > 0


def test_stability_is_the_ari_to_the_previous_evaluation():
    sel = Selector(rule="stability")
    z, y = blobs(0.3)
    scores0, _ = sel.update(0, z, y)
    scores1, _ = sel.update(1, z, (y + 1) % 3)  # same partition, renamed: ARI 1
    flipped = y.copy()
    flipped[:10] = 1
    scores2, best2 = sel.update(2, z, flipped)
    assert scores0["stability"] == 0.0 and scores1["stability"] == 1.0
    assert scores2["stability"] < 1.0 and not best2 and sel.best_epoch == 1


def test_epochs_before_min_epoch_are_never_picked():
    sel = Selector(rule="silhouette", min_epoch=2)
    results = [sel.update(e, *blobs(s)) for e, s in enumerate((0.1, 0.2, 1.5, 2.0))]
    assert [r[1] for r in results] == [False, False, True, False]
    assert sel.best_epoch == 2  # the sharpest embeddings (epochs 0, 1) fell in the warm-up window
    assert results[0][0]["silhouette"] > results[2][0]["silhouette"]  # still scored and logged


def test_last_rule_picks_the_final_evaluation():
    sel = Selector(rule="last")
    for e, s in enumerate((0.1, 2.0)):
        sel.update(e, *blobs(s))
    assert sel.best_epoch == 1
