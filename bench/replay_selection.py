"""Replay label-free selection rules on every evaluation of saved runs: which epoch each rule picks, and the final
labels' ARI there, without retraining.

    python -m bench.quality --datasets all --seed-list 0 --no-baselines --save-evals runs/evals
    python -m bench.replay_selection runs/evals [--rules silhouette,final_silhouette,...] [--weights 1.5,2]

Each saved run (``<set>-s<seed>.npz`` from ``bench.quality --save-evals``) holds z at every evaluation. A rule
scores every evaluation from z and the input alone and picks the best one at or after the warm-up (ties: the later
epoch), as the training loop's ``Selector`` does; the picked epoch's z then gets the product's final labels
(k-means on [z, w x input PCA], ``eval.kmeans_restarts`` restarts, consensus) at each weight w. Labels only score
the result, except in ``oracle``. ``silhouette`` is the product's rule: its pick is checked against the epoch the
run itself picked, so the replay is known to be the training loop's. Rules:

- ``silhouette``: cosine silhouette in z of k-means on z (3 restarts), the product's rule.
- ``final_silhouette``: euclidean silhouette, in the final space at the default weight, of k-means (3 restarts)
  in that space: the score of the clustering the user gets rather than of the one on z. (This and the next
  silhouette use a seeded sample of ``SCORE_CELLS`` cells.)
- ``final_ch``: Calinski-Harabasz index of the same clustering in the same space.
- ``final_input_silhouette``: euclidean silhouette of that clustering in PCA(50) of the input, a space the model
  does not shape (so a model that only tightens its own z does not score higher).
- ``knn_purity``: the fraction of each cell's 15 nearest neighbours (``bench.replay.KNN_NEIGHBOURS``) in the
  input's PCA (the reference's first ``eval.input_pca_components``) that share its cluster in the final space: a
  partition that cuts the input's neighbourhood graph least, whatever the cluster shapes.
- ``z_final_silhouette``: cosine silhouette, in z, of the final-space clustering: the product's score, but of the
  clusters the user gets.
- ``agreement``: ARI between the k-means clusterings on z and in the final space: an epoch whose own clusters the
  input's PCA confirms.
- ``final_medoid``: the mean ARI of this evaluation's final-space clustering to those of every other evaluation
  after the warm-up: the epoch whose clusters the rest of training agrees with most.
- ``final_restarts``: the mean ARI between ``STABILITY_RESTARTS`` single k-means++ runs in the final space: the
  epoch whose clustering the most restarts reproduce (clustering stability). Costlier than the others.
- ``silhouette_smooth``: ``silhouette`` averaged with its two neighbouring evaluations (less noise per pick).
- ``silhouette_from<f>``: ``silhouette`` with the warm-up at a fraction f of the epochs instead of
  ``eval.select_from`` (e.g. ``silhouette_from0.4``).
- ``<a>+<b>[+...]``: the sum of the named rules' ranks among the evaluations after the warm-up (e.g.
  ``silhouette+final_input_silhouette``): two scores that fail on different runs, combined without weights.
  The parts are rules of the list above other than ``silhouette_from<f>``.
- ``last``: the last evaluation.
- ``oracle``: the best final-space ARI of the 3-restart clustering against the truth (labels! comparison only):
  the table's "oracle epoch" column.
- ``oracle_final``: the epoch whose final labels (all restarts, consensus) score best against the truth (labels!):
  the real ceiling of epoch selection. Costly: the final k-means at every evaluation.
"""

from __future__ import annotations

import argparse
import warnings
from pathlib import Path

import numpy as np
from sklearn.metrics import adjusted_rand_score, calinski_harabasz_score, silhouette_score

from bench.defaults import pick_index
from bench.replay import knn_graph, knn_purity
from jojoscl_dist.cluster.kmeans import fit_kmeans
from jojoscl_dist.cluster.metrics import score_labels
from jojoscl_dist.cluster.selection import Selector
from jojoscl_dist.config import EvalConfig
from jojoscl_dist.train.loop import EVAL_KMEANS_RESTARTS

DEFAULTS = EvalConfig()
STABILITY_RESTARTS = 8  # single k-means runs per evaluation behind final_restarts
SCORE_CELLS = 5000  # cells (seeded sample) behind the new rules' silhouettes: O(n^2) each, at every evaluation
RULES = ("silhouette", "final_silhouette", "final_ch", "final_input_silhouette", "knn_purity", "z_final_silhouette",
         "agreement", "final_medoid", "final_restarts", "silhouette_smooth", "last", "oracle", "oracle_final")
COSTLY = ("final_restarts", "oracle_final")  # not run unless named in --rules


def load(path: Path) -> dict:
    d = np.load(path)
    run = {k: d[k] for k in d.files}
    for k in ("k", "seed", "min_epoch", "pick_epoch"):
        run[k] = int(run[k])
    return run


def final_space(z: np.ndarray, p1: np.ndarray, weight: float) -> np.ndarray:
    """The final k-means space: [z, w * p1] (p1: the input PCA projected at weight 1), z alone at w = 0."""
    return z if weight == 0 else np.concatenate([z, weight * p1], axis=1).astype(np.float32)


def _subsample(n: int, seed: int) -> np.ndarray | slice:
    rng = np.random.default_rng(seed)
    return rng.choice(n, SCORE_CELLS, replace=False) if n > SCORE_CELLS else slice(None)


def restart_agreement(x: np.ndarray, k: int, seed: int, n: int = STABILITY_RESTARTS) -> float:
    """Mean pairwise ARI of n single k-means++ runs on x (seeds seed .. seed + n - 1)."""
    labels = [fit_kmeans(x, k, seed=seed + r, restarts=1) for r in range(n)]
    return float(np.mean([adjusted_rand_score(labels[i], labels[j]) for i in range(n) for j in range(i + 1, n)]))


def evaluation_scores(run: dict, weight: float = DEFAULTS.input_pca_weight,
                      rules: tuple[str, ...] = RULES) -> dict[str, np.ndarray]:
    """Every rule's score at every evaluation, (E,) each (higher is better). The costly scores (the silhouettes
    other than the product's, Calinski-Harabasz, kNN purity and ``final_restarts``) only for the rules asked;
    a constant otherwise."""
    k, seed = run["k"], run["seed"]
    sel = Selector(rule="silhouette", seed=seed, max_cells=DEFAULTS.max_eval_cells, min_epoch=run["min_epoch"])
    out: dict[str, list[float]] = {r: [] for r in RULES}
    finals = []
    neighbours = knn_graph(run["reference"][:, :DEFAULTS.input_pca_components]) if "knn_purity" in rules else None
    for epoch, z in zip(run["epochs"], run["z"]):
        epoch = int(epoch)
        labels = fit_kmeans(z, k, seed=seed, restarts=EVAL_KMEANS_RESTARTS)
        out["silhouette"].append(sel.update(epoch, z, labels)[0]["silhouette"])
        x = final_space(z, run["p1"], weight)
        final = fit_kmeans(x, k, seed=seed, restarts=EVAL_KMEANS_RESTARTS)
        idx = _subsample(len(final), seed + epoch)
        defined = 1 < len(np.unique(final)) < len(final)
        out["final_silhouette"].append(float(silhouette_score(x[idx], final[idx]))
                                       if defined and "final_silhouette" in rules else -1.0)
        out["final_ch"].append(float(calinski_harabasz_score(x, final)) if defined and "final_ch" in rules else 0.0)
        out["final_input_silhouette"].append(float(silhouette_score(run["reference"][idx], final[idx]))
                                             if defined and "final_input_silhouette" in rules else -1.0)
        out["knn_purity"].append(knn_purity(final, neighbours) if neighbours is not None else 0.0)
        out["z_final_silhouette"].append(float(silhouette_score(z[idx], final[idx], metric="cosine"))
                                         if defined and "z_final_silhouette" in rules else -1.0)
        out["agreement"].append(adjusted_rand_score(labels, final))
        finals.append(final)
        out["final_restarts"].append(restart_agreement(x, k, seed) if "final_restarts" in rules else 0.0)
        out["last"].append(float(epoch))
        out["oracle"].append(adjusted_rand_score(run["truth"], final))
    derived = ("silhouette_smooth", "final_medoid", "oracle_final")
    scores = {r: np.asarray(v, dtype=np.float64) for r, v in out.items() if r not in derived}
    late = eligible(run["epochs"], run["min_epoch"])
    scores["final_medoid"] = np.array([np.mean([adjusted_rand_score(finals[i], finals[j]) for j in late if j != i])
                                       if len(late) > 1 else 0.0 for i in range(len(finals))])
    s = scores["silhouette"]
    scores["silhouette_smooth"] = np.array([s[max(0, i - 1):i + 2].mean() for i in range(len(s))])
    return scores


def eligible(epochs: np.ndarray, min_epoch: int) -> np.ndarray:
    """Indices of the evaluations a rule may pick: those at or after ``min_epoch``, else the last one."""
    ok = np.flatnonzero(np.asarray(epochs) >= min_epoch)
    return ok if len(ok) else np.array([len(epochs) - 1])


def pick(score: np.ndarray, epochs: np.ndarray, min_epoch: int) -> int:
    """Index of the best score at or after ``min_epoch`` (ties: the later evaluation)."""
    return pick_index(score, eligible(epochs, min_epoch))


def rank_sum(scores: dict[str, np.ndarray], parts: list[str], epochs: np.ndarray, min_epoch: int) -> np.ndarray:
    """Sum over ``parts`` of each evaluation's rank (0 = worst) among the eligible ones; -1 elsewhere."""
    late = eligible(epochs, min_epoch)
    out = np.full(len(epochs), -1.0)
    out[late] = sum(np.argsort(np.argsort(scores[r][late], kind="stable"), kind="stable") for r in parts)
    return out


def components(rules: list[str]) -> tuple[str, ...]:
    """The base rules behind ``rules`` (a rank-sum rule names its parts)."""
    return tuple(part for r in rules for part in r.split("+"))


def replay_run(run: dict, rules: list[str], weights: list[float]) -> dict:
    """{rule: {"epoch": picked epoch, "w<x>": (ari, nmi) of the final labels there}} for one run."""
    scores = evaluation_scores(run, rules=components(rules))
    for rule in rules:
        if "+" in rule:
            scores[rule] = rank_sum(scores, rule.split("+"), run["epochs"], run["min_epoch"])
    cache: dict[tuple[int, float], tuple[float, float]] = {}

    def final(i: int, w: float) -> tuple[float, float]:
        if (i, w) not in cache:
            lab = fit_kmeans(final_space(run["z"][i], run["p1"], w), run["k"], seed=run["seed"],
                             restarts=DEFAULTS.kmeans_restarts, select=DEFAULTS.kmeans_select)
            m = score_labels(run["truth"], lab)
            cache[(i, w)] = (m["ari"], m["nmi"])
        return cache[(i, w)]

    out = {}
    for rule in rules:
        if rule == "oracle_final":  # per weight: the best evaluation at that weight
            out[rule] = {"epoch": -1}
            for w in weights:
                best = max(eligible(run["epochs"], run["min_epoch"]), key=lambda i: (final(i, w)[0], i))
                out[rule][f"w{w:g}"] = final(best, w)
                out[rule]["epoch"] = int(run["epochs"][best])
            continue
        if rule.startswith("silhouette_from"):  # the default score under another warm-up
            n_epochs = int(run["epochs"][-1]) + 1
            i = pick(scores["silhouette"], run["epochs"], min(n_epochs - 1, int(float(rule[15:]) * n_epochs)))
        else:
            i = pick(scores[rule], run["epochs"], run["min_epoch"])
        out[rule] = {"epoch": int(run["epochs"][i]), **{f"w{w:g}": final(i, w) for w in weights}}
    return out


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("dirs", nargs="+", help="folders of <set>-s<seed>.npz written by bench.quality --save-evals")
    p.add_argument("--rules", default=",".join(r for r in RULES if r not in COSTLY),
                   help=f"comma list of {','.join(RULES)} (default: all but the costly {' and '.join(COSTLY)})")
    p.add_argument("--weights", default=f"{DEFAULTS.input_pca_weight:g}", help="input-PCA weights of the final "
                   "labels, comma list (0 = z alone)")
    args = p.parse_args(argv)
    warnings.filterwarnings("ignore")
    files = sorted(f for d in args.dirs for f in Path(d).glob("*-s*.npz"))
    if not files:
        raise SystemExit(f"no <set>-s<seed>.npz in {args.dirs}: write them with bench.quality --save-evals")
    rules = args.rules.split(",")
    # A rule is a listed one, a warm-up variant of the default, or a rank sum of listed ones.
    unknown = {r for r in rules if any(p not in RULES for p in r.split("+"))
               and not (r.startswith("silhouette_from") and "+" not in r)}
    if unknown:
        raise SystemExit(f"unknown rules {sorted(unknown)}: choose from {','.join(RULES)}")
    weights = [float(w) for w in args.weights.split(",")]
    per_set: dict[str, dict[str, list[float]]] = {}
    for f in files:
        run = load(f)
        res = replay_run(run, rules, weights)
        if "silhouette" in res and res["silhouette"]["epoch"] != run["pick_epoch"]:
            print(f"WARNING {f.stem}: the replayed silhouette picks epoch {res['silhouette']['epoch']}, the run "
                  f"picked {run['pick_epoch']}")
        name = f.stem.rsplit("-s", 1)[0]
        cells = "  ".join(f"{r} e{res[r]['epoch']} " + " ".join(f"{res[r][f'w{w:g}'][0]:.3f}" for w in weights)
                          for r in rules)
        print(f"{f.stem:28s} {cells}", flush=True)
        for r in rules:
            for w in weights:
                per_set.setdefault(name, {}).setdefault(f"{r} w{w:g}", []).append(res[r][f"w{w:g}"][0])
    print(f"\nmean ARI over {len(per_set)} sets (each set: its runs' mean); wins / losses > 0.02 against "
          f"silhouette at the same weight")
    print("| rule | weight | mean ARI | sets > +0.02 | sets < -0.02 |\n|---|---|---|---|---|")
    for r in rules:
        for w in weights:
            key = f"{r} w{w:g}"
            mean = np.mean([np.mean(v[key]) for v in per_set.values()])
            ref = f"silhouette w{w:g}"
            d = [np.mean(v[key]) - np.mean(v[ref]) for v in per_set.values()] if ref in next(iter(per_set.values())) else []
            up, down = sum(x > 0.02 for x in d), sum(x < -0.02 for x in d)
            print(f"| `{r}` | {w:g} | {mean:.3f} | {up if d else '-'} | {down if d else '-'} |")


if __name__ == "__main__":
    main()
