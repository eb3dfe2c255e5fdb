"""bench.replay: the merge rule on a hand-checked example, and a save -> replay round trip."""

from types import SimpleNamespace

import numpy as np
from sklearn.metrics import adjusted_rand_score

from bench.quality import save_embedding
import bench.replay as replay
from bench.replay import knn_purity, load, main, min_cells, run_rule, ward_merge


def test_ward_merge_joins_the_cheapest_pair_by_size_weighted_cost():
    # Clusters: a = 2 points at 0, b = 2 points at 1, c = 1 point at 1.6.
    # Costs n_a n_b / (n_a + n_b) * d^2: a-b 1 * 1 = 1.0; b-c 2/3 * 0.36 = 0.24; a-c 2/3 * 2.56 = 1.71.
    x = np.array([[0.0], [0.0], [1.0], [1.0], [1.6]], dtype=np.float32)
    labels = np.array([0, 0, 1, 1, 2])
    merged = ward_merge(x, labels, 2)
    assert merged[2] == merged[3] == merged[4] != merged[0] == merged[1]
    # The sizes weigh in: a = 50 points at 0, b = 1 at 1, c = 1 at 2.2. b is nearer to a (1.0) than to c (1.2),
    # but the costs are a-b 50/51 * 1 = 0.98 and b-c 1/2 * 1.44 = 0.72, so b joins c.
    x2 = np.concatenate([np.zeros((50, 1)), [[1.0]], [[2.2]]]).astype(np.float32)
    l2 = np.array([0] * 50 + [1, 2])
    m2 = ward_merge(x2, l2, 2)
    assert m2[50] == m2[51] != m2[0]


def test_save_then_replay_recovers_separated_clusters(tmp_path, capsys):
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(3, 40)) * 6
    truth = np.repeat(np.arange(3), 30)
    x = (centres[truth] + rng.normal(size=(90, 40))).astype(np.float32)
    z = x[:, :16] / np.linalg.norm(x[:, :16], axis=1, keepdims=True)
    data = SimpleNamespace(x=x, labels=np.array(["t0", "t1", "t2"])[truth], n_clusters=3)
    save_embedding(tmp_path / "toy-s0.npz", z.astype(np.float32), data, seed=0)
    run = load(tmp_path / "toy-s0.npz")
    assert run["k"] == 3 and run["pca"].shape == (90, 39) and run["truth"].dtype.kind == "i"
    for rule in ("default", "w0", "zpca5", "medoid", "overmerge", "knnw"):
        labels = run_rule(rule, run, seed=0, n=8)
        assert len(np.unique(labels)) == 3
    main([str(tmp_path), "--rules", "default,overmerge", "--restarts", "8"])
    out = capsys.readouterr().out
    assert "toy-s0" in out and "mean over 1 runs: default 1.0000 overmerge 1.0000" in out


def test_load_takes_the_picked_evaluation_of_a_save_evals_dump(tmp_path):
    z = np.arange(3 * 4 * 2, dtype=np.float32).reshape(3, 4, 2)  # 3 evaluations of 4 cells
    np.savez(tmp_path / "toy-s0.npz", epochs=np.array([4, 9, 14]), z=z, reference=np.zeros((4, 5)),
             p1=np.ones((4, 3)), truth=np.array([0, 0, 1, 1]), k=2, seed=0, min_epoch=2, pick_epoch=9)
    run = load(tmp_path / "toy-s0.npz")
    assert np.array_equal(run["pick_z"], z[1]) and run["k"] == 2
    assert np.array_equal(run["pca"], np.ones((4, 3)))  # the product's own input block, not the selector's PCA


def test_knn_purity_counts_neighbour_pairs_in_the_same_cluster():
    labels = np.array([0, 0, 1, 1])
    neighbours = np.array([[1, 2], [0, 3], [3, 0], [2, 1]])  # pairs: same, cross, same, cross, same, cross, same, cross
    assert knn_purity(labels, neighbours) == 0.5
    assert knn_purity(np.zeros(4, int), neighbours) == 1.0


def test_min_cells_reads_counts_and_fractions():
    assert min_cells(3, 10) == 3
    assert min_cells(0.005, 1000) == 5 and min_cells(0.005, 1001) == 6  # ceil
    assert min_cells(0.001, 10) == 1  # never below one cell


def toy_run(seed=0, outlier=None):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(3, 8)) * 10
    truth = np.repeat(np.arange(3), 30)
    x = centres[truth] + rng.normal(size=(90, 8))
    if outlier is not None:
        x = np.vstack([x, centres[0] + outlier])
        truth = np.append(truth, 0)
    x = x.astype(np.float32)
    return {"pick_z": x, "pca": x, "truth": truth, "k": 3}


def test_min_size_keeps_the_restarts_without_tiny_clusters(monkeypatch):
    run = toy_run()
    tiny = np.array([0] * 88 + [1, 2])  # clusters of 88, 1 and 1 cells
    fair = np.repeat(np.arange(3), 30)
    monkeypatch.setattr(replay, "restarts", lambda x, k, n, seed: [tiny, tiny, fair])
    # The consensus of all three restarts is `tiny` (two agree); with the floor only `fair` is left.
    assert np.array_equal(run_rule("min1", run, seed=0, n=3), tiny)
    assert np.array_equal(run_rule("min2", run, seed=0, n=3), fair)
    monkeypatch.setattr(replay, "restarts", lambda x, k, n, seed: [tiny, tiny])
    assert np.array_equal(run_rule("min2", run, seed=0, n=2), tiny)  # none passes: all restarts are kept


def test_absorb_gives_a_far_outlier_to_the_nearest_real_cluster():
    run = toy_run(outlier=np.full(8, 200.0))  # one cell far off the first cluster
    default = run_rule("default", run, seed=0, n=4)
    assert np.bincount(default).min() == 1  # the outlier takes a cluster of its own and two real ones merge
    labels = run_rule("absorb2", run, seed=0, n=4)
    assert len(np.unique(labels)) == 3 and np.bincount(labels).min() >= 30
    assert adjusted_rand_score(run["truth"], labels) == 1.0  # the outlier joins the cluster it came from
