"""Label-free model selection: the scores, the rules, and the warm-up window that cannot be picked."""

import numpy as np

from jojoscl_dist.clustering.selection import Selector, input_reference


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


def test_input_silhouette_sees_a_wrong_grouping_that_a_collapsed_embedding_hides():
    # Input: two far-apart cell types. A model that maps cells to two tight balls has a silhouette ~1 in its own
    # z whatever it groups; in PCA of the input, a grouping that mixes the types scores far below the right one.
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal(0, 1, (40, 20)), rng.normal(0, 1, (40, 20)) + 6]).astype(np.float32)
    ref = input_reference(x, seed=0)
    assert ref.shape == (80, 19)  # min(50, n - 1, G - 1) components
    right = np.repeat([0, 1], 40)
    wrong = np.tile([0, 1], 40)  # half of each type in each cluster
    collapsed = lambda lab: np.eye(2)[lab] + rng.normal(0, 1e-3, (80, 2))  # noqa: E731
    s_right, _ = Selector().update(0, collapsed(right), right, ref)
    s_wrong, _ = Selector().update(0, collapsed(wrong), wrong, ref)
    assert s_right["silhouette"] > 0.99 and s_wrong["silhouette"] > 0.99  # z cannot tell them apart
    assert s_right["input_silhouette"] > 0.5 > 0.05 > s_wrong["input_silhouette"]


def test_input_reference_is_seeded_pca():
    x = np.random.default_rng(1).normal(size=(100, 300)).astype(np.float32)
    a, b = input_reference(x, seed=3), input_reference(x, seed=3)
    assert a.shape == (100, 50) and np.array_equal(a, b)
