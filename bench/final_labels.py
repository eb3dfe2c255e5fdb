"""Final-label methods compared on saved runs, cross-validated over two folds of the shared sets.

    python -m bench.quality --datasets all --seed-list S --dump DIR > quality-sS.log   # train once per set, seed
    python -m bench.final_labels DIR/full --cache ROWS --quality-logs quality-s*.log

Each method labels the same picked model's embedding (and input PCA); a default is chosen on one fold by mean ARI
and reported on the other. Nothing here sees the labels except the scoring.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

import numpy as np

from jojoscl_dist.clustering.final import final_space
from jojoscl_dist.clustering.graph import leiden_to_k
from jojoscl_dist.clustering.kmeans import fit_kmeans
from jojoscl_dist.clustering.metrics import score_labels

# Two folds of mixed kinds: droplet and plate-based, balanced and very unequal type sizes in each; the two
# normalisations of the same cells (Yan, Yan_rpkm) stay in one fold.
FOLDS = {
    "A": ["10X_PBMC_top2000", "Baron_mouse", "CITE_CBMC_top2000", "CellBench_dropseq_3cl", "Mouse", "worm_neuron",
          "Pollen", "Yan", "Yan_rpkm", "Segerstolpe_subset", "CellBench_celseq2_3cl"],
    "B": ["Baron_human_subset", "Bladder_top2000", "CITE_PBMC_top2000", "Klein_subset", "human_kidney_top2000",
          "Goolam", "Human_brain", "Ting", "Deng", "CellBench_celseq2_5cl"],
}


def merge_on_graph(labels: np.ndarray, conn, k: int) -> np.ndarray:
    """Merge clusters pairwise until ``k`` remain: each time the pair with the most kNN-graph weight between them
    relative to the smaller one's total weight."""
    import scipy.sparse as sp

    lab = np.unique(labels, return_inverse=True)[1]
    while lab.max() + 1 > k:
        m = sp.csr_matrix((np.ones(len(lab)), (np.arange(len(lab)), lab)))
        between = (m.T @ conn @ m).toarray()
        vol = between.sum(axis=1)
        np.fill_diagonal(between, 0)
        rel = between / np.minimum.outer(vol, vol)
        i, j = np.unravel_index(np.argmax(rel), rel.shape)
        lab[lab == max(i, j)] = min(i, j)
        lab = np.unique(lab, return_inverse=True)[1]
    return lab


def medoid_partition(parts: dict[str, np.ndarray]) -> str:
    """The candidate that agrees most (mean ARI) with the others: a label-free choice per data set."""
    from sklearn.metrics import adjusted_rand_score

    names = list(parts)
    agree = {a: np.mean([adjusted_rand_score(parts[a], parts[b]) for b in names if b != a]) for a in names}
    return max(agree, key=agree.get)


def methods(d, seed: int) -> dict[str, np.ndarray]:
    from jojoscl_dist.clustering.graph import knn_graph

    z, k = d["z_pick"], int(d["k"])
    coords, scale = d["coords"], float(d["scale"])
    out = {}
    for w in (0.0, 1.0, 1.5):
        s = final_space(z, coords, w, scale)
        out[f"km_w{w:g}"] = fit_kmeans(s, k, seed=seed, restarts=40, select="consensus")
        out[f"leiden_w{w:g}"] = leiden_to_k(s, k, seed)
        conn = knn_graph(s, 15, seed).obsp["connectivities"]
        over = fit_kmeans(s, min(3 * k, s.shape[0] - 1), seed=seed, restarts=10, select="consensus")
        out[f"merge3_w{w:g}"] = merge_on_graph(over, conn, k)
    out["leiden_pca50"] = leiden_to_k(d["pca50"], k, seed)
    out["leiden_pca20"] = leiden_to_k(coords, k, seed)
    out["km_pca20"] = fit_kmeans(coords, k, seed=seed, restarts=40, select="consensus")
    pool = {m: out[m] for m in ("km_w0", "km_w1.5", "leiden_w0", "leiden_w1.5", "merge3_w0", "merge3_w1.5")}
    out["medoid"] = out[medoid_partition(pool)]
    return out


def score_dir(dump: Path, cache: Path | None = None) -> list[dict]:
    """Rows (dataset, seed, method, ari, nmi, n_found) of every saved run; with ``cache`` each run's rows are kept
    there and not scored again."""
    rows = []
    for f in sorted(dump.glob("*.npz")):
        name, seed = f.stem.rsplit("-s", 1)
        done = cache / f"{f.stem}.csv" if cache else None
        if done is not None and done.exists() and done.with_suffix(".npz").exists():
            rows += _read(done)
            continue
        d = np.load(f)
        mine = []
        parts = methods(d, int(seed))
        if done is not None:
            done.parent.mkdir(parents=True, exist_ok=True)
            np.savez_compressed(done.with_suffix(".npz"), **parts)
        for m, lab in parts.items():
            s = score_labels(d["truth"], lab)
            mine.append({"dataset": name, "seed": int(seed), "method": m, "ari": round(s["ari"], 4),
                         "nmi": round(s["nmi"], 4), "n_found": len(np.unique(lab))})
        print(name, seed, {r["method"]: r["ari"] for r in mine}, flush=True)
        if done is not None:
            _write(done, mine)
        rows += mine
    return rows


def _read(path: Path) -> list[dict]:
    with open(path) as f:
        return [dict(r, seed=int(r["seed"]), ari=float(r["ari"]), nmi=float(r["nmi"]), n_found=int(r["n_found"]))
                for r in csv.DictReader(f)]


def _write(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


# Baselines without the model: k-means on PCA(50) and Leiden at resolution 1 (bench.quality's rows), Leiden to K
# on PCA(50), and the default final k-means on the input PCA alone.
BASELINES = ("kmeans_pca", "leiden_1.0", "leiden_pca50", "km_pca20")
NO_MODEL = ("km_pca20", "leiden_pca20")


def baseline_rows(logs: list[Path]) -> list[dict]:
    """k-means PCA(50) and Leiden r=1 from bench.quality's printed rows (one dict per line)."""
    import ast

    rows = []
    for log in logs:
        for line in log.read_text().splitlines():
            if line.startswith("{") and "kmeans_pca_ari" in line:
                r = ast.literal_eval(line)
                rows += [{"dataset": r["dataset"], "seed": r["seed"], "method": m, "ari": r[f"{m}_ari"]}
                         for m in ("kmeans_pca", "leiden_1.0")]
    return rows


def type_ratio(dump: Path) -> dict[str, float]:
    """Largest over smallest annotated type, per set."""
    out = {}
    for f in sorted(dump.glob("*.npz")):
        _, sizes = np.unique(np.load(f)["truth"], return_counts=True)
        out[f.stem.rsplit("-s", 1)[0]] = sizes.max() / sizes.min()
    return out


def cross_validate(rows: list[dict], ratio: dict[str, float]) -> str:
    """The method with the best mean ARI on one fold, reported on the other: a markdown table per set."""
    import pandas as pd

    per_set = pd.DataFrame(rows).groupby(["dataset", "method"]).ari.mean().unstack()
    fold = pd.Series({s: f for f, sets in FOLDS.items() for s in sets}).reindex(per_set.index)
    candidates = [m for m in per_set.columns if m not in BASELINES + NO_MODEL]
    chosen = {f: per_set.loc[fold == f, candidates].mean().idxmax() for f in FOLDS}
    other = {"A": "B", "B": "A"}
    oof = pd.Series({s: per_set.loc[s, chosen[other[f]]] for s, f in fold.items()})
    best = per_set[[m for m in BASELINES if m in per_set]].max(axis=1)
    lines = [f"Chosen on fold A: `{chosen['A']}` (reported on B); on fold B: `{chosen['B']}` (reported on A).", "",
             "| set | fold | largest / smallest type | out of fold | default (`km_w1.5`) | no model (`km_pca20`) | "
             "Leiden to K | best baseline | regret |", "|---" * 9 + "|"]
    for s in per_set.index:
        r = per_set.loc[s]
        lines.append(f"| {s} | {fold[s]} | {ratio.get(s, np.nan):.1f} | {oof[s]:.3f} | {r['km_w1.5']:.3f} | "
                     f"{r['km_pca20']:.3f} | {r['leiden_pca50']:.3f} | {best[s]:.3f} | {oof[s] - best[s]:+.3f} |")
    m = per_set.mean()
    lines.append(f"| **mean** | | | {oof.mean():.3f} | {m['km_w1.5']:.3f} | {m['km_pca20']:.3f} | "
                 f"{m['leiden_pca50']:.3f} | {best.mean():.3f} | {(oof - best).mean():+.3f} |")
    lines += ["", "Every candidate, mean ARI over the sets: " +
              ", ".join(f"`{c}` {per_set[c].mean():.3f}" for c in sorted(per_set.columns))]
    return "\n".join(lines)


def main(argv=None) -> None:
    p = argparse.ArgumentParser()
    p.add_argument("dump", type=Path, nargs="?", help="folder of saved runs (bench.quality --dump)")
    p.add_argument("--cache", type=Path, default=None, help="folder of scored rows, one csv per saved run")
    p.add_argument("--quality-logs", type=Path, nargs="*", default=[],
                   help="bench.quality's printed rows of the same runs: the k-means PCA(50) and Leiden r=1 columns")
    p.add_argument("--save", type=Path, default=None, help="folder: write rows.csv and type_ratio.json there")
    p.add_argument("--from-rows", type=Path, default=None, help="folder written by --save: print its table")
    a = p.parse_args(argv)
    if a.from_rows:
        print(report(a.from_rows))
        return
    rows = score_dir(a.dump, a.cache) + baseline_rows(a.quality_logs)
    ratio = type_ratio(a.dump)
    if a.save:
        a.save.mkdir(parents=True, exist_ok=True)
        _write(a.save / "rows.csv", [{k: r.get(k, "") for k in ("dataset", "seed", "method", "ari")} for r in rows])
        (a.save / "type_ratio.json").write_text(json.dumps({k: round(float(v), 2) for k, v in ratio.items()}))
    print(cross_validate(rows, ratio))


def report(folder: Path) -> str:
    """The table of stored rows (``--save``)."""
    rows = [dict(r, ari=float(r["ari"])) for r in csv.DictReader((folder / "rows.csv").read_text().splitlines())]
    return cross_validate(rows, json.loads((folder / "type_ratio.json").read_text()))


if __name__ == "__main__":
    sys.exit(main())
