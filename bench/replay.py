"""Replay final clusterings on saved picked embeddings: evidence for the final-label rule without retraining.

    python -m bench.quality --datasets all --seed-list 0 --no-baselines --save-embeddings runs/emb
    python -m bench.replay runs/emb [--rules default,medoid,overmerge] [--restarts 40]
    python -m bench.replay runs/evals ...   # or bench.quality --save-evals runs (the picked evaluation's z)

Each saved run (``<set>-s<seed>.npz``: the picked model's z, the input's PCA(50) coordinates, the truth and K)
is reclustered by every rule, and the ARI of each rule is printed per run and averaged. Labels are used only to
score; no rule sees them. Rules:

- ``default``: the product's final labels at the current defaults: k-means on [z, w x PCA(n)] with the consensus
  restart (``eval.input_pca_weight`` 1.5, ``eval.input_pca_components`` 20, ``eval.kmeans_select``).
- ``w<x>``: the same at input-PCA weight x (``w0`` = z alone).
- ``medoid``: R k-means++ restarts in each of [z, w x PCA(20)] for w in 0, 0.75, 1.5, 3; keep the partition with
  the highest mean ARI to all the others, so the data, not a fixed w, chooses the space (session 16: rejected).
- ``zpca<n>``: the default space with z replaced by its top n principal components, scaled to unit mean squared
  norm like the input block: z without its minor directions (session 31: rejected).
- ``knnw``: the default at each weight w in 0, 0.5, 1, 1.5, 2, 3; keep the labels whose clusters cut the kNN
  graphs (15 neighbours) of the input block and of z least (the mean of the two purities: the fraction of a cell's
  neighbours in its cluster), so each run chooses its own weight (session 32: rejected).
- ``min<m>``: the consensus restart among the restarts whose smallest cluster holds at least m cells (m < 1: that
  fraction of the cells, at least 1); all restarts when none does. ``min1`` is their control: the same restarts
  (other seeds than ``default``'s), no floor.
  k-means++ seeds outlying cells, so the final labels often hold a cluster of one cell (session 34: rejected).
- ``absorb<m>``: when the default's labels hold s clusters under m cells, refit with K + s clusters, keep the K
  largest and give the other clusters' cells to the nearest kept centroid: spare clusters absorb the outliers
  (session 34: rejected).
- ``overmerge``: k-means with 2K clusters in the default space (consensus of R), then the clusters merged
  pairwise by the size-weighted Ward cost n_a n_b / (n_a + n_b) ||c_a - c_b||^2 down to K (session 17: rejected).
"""

from __future__ import annotations

import argparse
import warnings
from pathlib import Path

import numpy as np
from sklearn.metrics import adjusted_rand_score

from jojoscl_dist.cluster.input_pca import cluster_space, rms_norm
from jojoscl_dist.cluster.kmeans import assign, consensus_index, fit_kmeans, fit_kmeans_centroids
from jojoscl_dist.config import EvalConfig

DEFAULTS = EvalConfig()  # the final space and restart budget follow the product's defaults
N_COMPONENTS = DEFAULTS.input_pca_components
WEIGHT = DEFAULTS.input_pca_weight
MEDOID_WEIGHTS = (0.0, 0.75, 1.5, 3.0)
KNN_WEIGHTS = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0)
KNN_NEIGHBOURS = 15


def space(run: dict, weight: float) -> np.ndarray:
    """[z, w * PCA(n) scaled to unit mean squared norm] (the product's final space), or z alone at w = 0."""
    z = run["pick_z"]
    if weight == 0:
        return np.ascontiguousarray(z, dtype=np.float32)
    return np.ascontiguousarray(cluster_space(z, run["pca"][:, :N_COMPONENTS], weight), dtype=np.float32)


def restarts(x: np.ndarray, k: int, n: int, seed: int) -> list[np.ndarray]:
    """Labels of n single k-means++-seeded runs of the product's k-means, seeds seed, seed + 1, ..."""
    return [fit_kmeans(x, k, seed=seed + r, restarts=1) for r in range(n)]


def rule_default(run: dict, seed: int, n: int, weight: float = WEIGHT) -> np.ndarray:
    return fit_kmeans(space(run, weight), run["k"], seed=seed, restarts=n, select=DEFAULTS.kmeans_select)


def rule_medoid(run: dict, seed: int, n: int) -> np.ndarray:
    per = max(2, n // len(MEDOID_WEIGHTS))
    labels = [lab for i, w in enumerate(MEDOID_WEIGHTS)
              for lab in restarts(space(run, w), run["k"], per, 1000 * seed + per * i)]
    return labels[consensus_index(labels, [0.0] * len(labels))]


def knn_graph(x: np.ndarray, k: int = KNN_NEIGHBOURS) -> np.ndarray:
    """(n, k) indices of each row's k nearest other rows (Euclidean)."""
    from sklearn.neighbors import NearestNeighbors

    return NearestNeighbors(n_neighbors=min(k + 1, len(x))).fit(x).kneighbors(x, return_distance=False)[:, 1:]


def knn_purity(labels: np.ndarray, neighbours: np.ndarray) -> float:
    """Fraction of (cell, neighbour) pairs in the same cluster; ``neighbours`` (n, k) indices."""
    return float((labels[neighbours] == labels[:, None]).mean())


def rule_knn_weight(run: dict, seed: int, n: int) -> np.ndarray:
    graphs = [knn_graph(run["pca"][:, :N_COMPONENTS]), knn_graph(run["pick_z"])]
    labels = [rule_default(run, seed, n, w) for w in KNN_WEIGHTS]
    return max(labels, key=lambda lab: np.mean([knn_purity(lab, g) for g in graphs]))


def ward_merge(x: np.ndarray, labels: np.ndarray, k: int) -> np.ndarray:
    """Merge clusters greedily by the size-weighted Ward cost until k remain; returns the merged labels."""
    ids = [int(i) for i in np.unique(labels)]
    size = {i: float((labels == i).sum()) for i in ids}
    cent = {i: x[labels == i].mean(axis=0) for i in ids}
    root = {i: i for i in ids}
    while len(ids) > k:
        _, a, b = min((size[a] * size[b] / (size[a] + size[b]) * float(((cent[a] - cent[b]) ** 2).sum()), a, b)
                      for ai, a in enumerate(ids) for b in ids[ai + 1:])
        cent[a] = (size[a] * cent[a] + size[b] * cent[b]) / (size[a] + size[b])
        size[a] += size[b]
        ids.remove(b)
        root = {i: (a if r == b else r) for i, r in root.items()}
    codes = {r: c for c, r in enumerate(ids)}
    return np.array([codes[root[int(i)]] for i in labels])


def rule_overmerge(run: dict, seed: int, n: int, factor: float = 2.0) -> np.ndarray:
    x = space(run, WEIGHT)
    k = run["k"]
    fine = fit_kmeans(x, min(len(x) - 1, int(round(factor * k))), seed=seed, restarts=max(2, n // 2),
                      select="consensus")
    return ward_merge(x, fine, k)


def rule_zpca(run: dict, seed: int, n: int, n_components: int) -> np.ndarray:
    from sklearn.decomposition import PCA

    z = run["pick_z"]
    c = PCA(n_components=min(n_components, z.shape[0] - 1, z.shape[1]), random_state=seed).fit_transform(z)
    reduced = {**run, "pick_z": (c / rms_norm(c)).astype(np.float32)}
    return rule_default(reduced, seed, n)


def min_cells(m: float, n_cells: int) -> int:
    """A cluster-size floor: m cells, or for m < 1 that fraction of n_cells (at least 1)."""
    return int(m) if m >= 1 else max(1, int(np.ceil(m * n_cells)))


def rule_min_size(run: dict, seed: int, n: int, m: float) -> np.ndarray:
    x = space(run, WEIGHT)
    floor = min_cells(m, len(x))
    labels = restarts(x, run["k"], n, seed)
    kept = [lab for lab in labels if np.bincount(lab, minlength=run["k"]).min() >= floor] or labels
    return kept[consensus_index(kept, [0.0] * len(kept))]


def rule_absorb(run: dict, seed: int, n: int, m: float) -> np.ndarray:
    x = space(run, WEIGHT)
    k = run["k"]
    floor = min_cells(m, len(x))
    labels = rule_default(run, seed, n)
    spare = int((np.bincount(labels, minlength=k) < floor).sum())
    if spare == 0:
        return labels
    fine, cents = fit_kmeans_centroids(x, min(len(x), k + spare), seed=seed, restarts=n,
                                       select=DEFAULTS.kmeans_select)
    keep = np.argsort(-np.bincount(fine, minlength=len(cents)), kind="stable")[:k]
    return assign(x, cents[keep])


def run_rule(rule: str, run: dict, seed: int, n: int) -> np.ndarray:
    if rule == "default":
        return rule_default(run, seed, n)
    if rule == "medoid":
        return rule_medoid(run, seed, n)
    if rule == "overmerge":
        return rule_overmerge(run, seed, n)
    if rule == "knnw":
        return rule_knn_weight(run, seed, n)
    if rule.startswith("min"):
        return rule_min_size(run, seed, n, float(rule[3:]))
    if rule.startswith("absorb"):
        return rule_absorb(run, seed, n, float(rule[6:]))
    if rule.startswith("w"):
        return rule_default(run, seed, n, float(rule[1:]))
    if rule.startswith("zpca"):
        return rule_zpca(run, seed, n, int(rule[4:]))
    raise ValueError(f"unknown rule {rule!r}: default, w<weight>, zpca<n>, min<m>, absorb<m>, "
                     "medoid, knnw or overmerge")


def load(path: Path) -> dict:
    """A --save-embeddings dump, or a --save-evals one: its picked evaluation's z, and as "pca" the product's own
    input block (``p1``, the final space's PCA(20)), so ``default`` is then exactly the product's final labels.
    (--save-embeddings dumps keep the selector's PCA(50), whose first 20 columns come from another randomised
    SVD: on the 42 runs of session 31 their ``default`` averaged 0.738 against the product's 0.745.)"""
    d = np.load(path, allow_pickle=True)  # allow_pickle: older dumps kept string truth labels
    if "pick_z" not in d.files:
        at = list(d["epochs"]).index(int(d["pick_epoch"]))
        return {"pick_z": d["z"][at], "pca": d["p1"], "truth": d["truth"], "k": int(d["k"])}
    return {"pick_z": d["pick_z"], "pca": d["pca"], "truth": d["truth"], "k": int(d["k"])}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("dir", help="folder of <set>-s<seed>.npz written by bench.quality --save-embeddings")
    p.add_argument("--rules", default="default,medoid,overmerge")
    p.add_argument("--restarts", type=int, default=DEFAULTS.kmeans_restarts, help="k-means restarts per rule (its "
                   "budget; default: the product's)")
    args = p.parse_args(argv)
    warnings.filterwarnings("ignore")
    files = sorted(Path(args.dir).glob("*-s*.npz"))
    if not files:
        raise SystemExit(f"no <set>-s<seed>.npz in {args.dir}: write them with bench.quality --save-embeddings")
    rules = args.rules.split(",")
    scores: dict[str, list[float]] = {r: [] for r in rules}
    for f in files:
        run = load(f)
        seed = int(f.stem.rsplit("-s", 1)[1])
        row = {r: adjusted_rand_score(run["truth"], run_rule(r, run, seed, args.restarts)) for r in rules}
        for r, v in row.items():
            scores[r].append(v)
        print(f"{f.stem:30s} K={run['k']:3d} " + " ".join(f"{r} {v:.3f}" for r, v in row.items()), flush=True)
    print(f"mean over {len(files)} runs: " + " ".join(f"{r} {np.mean(v):.4f}" for r, v in scores.items()))


if __name__ == "__main__":
    main()
