"""bench.final_labels: the two-fold choice, the graph merge and the saved-run round trip."""

import numpy as np
import scipy.sparse as sp

from bench import final_labels as fl


def _rows(method_ari: dict[str, dict[str, float]]) -> list[dict]:
    return [{"dataset": s, "seed": 0, "method": m, "ari": a} for m, per in method_ari.items() for s, a in per.items()]


def test_each_fold_is_reported_with_the_method_chosen_on_the_other():
    a, b = fl.FOLDS["A"][0], fl.FOLDS["B"][0]
    # "x" wins on fold A, "y" on fold B: each set must be reported with the other fold's winner.
    rows = _rows({"x": {a: 0.9, b: 0.1}, "y": {a: 0.2, b: 0.8}, "km_w1.5": {a: 0.5, b: 0.5},
                  "km_pca20": {a: 0.4, b: 0.4}, "leiden_pca50": {a: 0.3, b: 0.95}})
    table = fl.cross_validate(rows, {a: 2.0, b: 3.0})
    assert "Chosen on fold A: `x`" in table and "on fold B: `y`" in table
    line = {r.split(" | ")[0].strip("| "): r.split(" | ") for r in table.splitlines() if r.startswith(f"| {a}") or
            r.startswith(f"| {b}")}
    assert line[a][3] == "0.200" and line[b][3] == "0.100"  # out of fold
    assert line[b][-1].strip(" |") == "-0.850"  # regret against the best baseline (Leiden to K, 0.95)


def test_merge_on_graph_joins_the_most_connected_pair_first():
    # Clusters 0 and 1 share 3 edges, 1 and 2 one: with k=2, 0 and 1 merge.
    edges = [(0, 2), (1, 3), (0, 3), (3, 4), (4, 5)]
    conn = sp.coo_matrix((np.ones(len(edges)), tuple(zip(*edges))), shape=(6, 6)).tocsr()
    conn = conn + conn.T
    merged = fl.merge_on_graph(np.array([0, 0, 1, 1, 2, 2]), conn, 2)
    assert merged[0] == merged[2] and merged[4] != merged[0] and len(np.unique(merged)) == 2


def test_saved_runs_are_scored_once_and_cached(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    truth = np.repeat(["a", "b"], 30)
    z = np.where(truth[:, None] == "a", 1.0, -1.0) + rng.normal(0, 0.1, (60, 4))
    np.savez(tmp_path / "toy-s0.npz", truth=truth, k=2, z_pick=z.astype(np.float32), pca50=z.astype(np.float32),
             coords=z[:, :2].astype(np.float32), scale=1.0)
    calls = []
    monkeypatch.setattr(fl, "methods", lambda d, seed: calls.append(seed) or {"km_w0": (truth == "a").astype(int)})
    rows = fl.score_dir(tmp_path, tmp_path / "cache")
    assert rows[0]["ari"] == 1.0 and rows[0]["dataset"] == "toy" and rows[0]["seed"] == 0
    assert fl.score_dir(tmp_path, tmp_path / "cache") == rows and calls == [0]  # the second pass reads the cache
