"""K selection benchmark: how well the label-free rules of jojoscl_dist.clustering.k_select recover the true K.

For every .h5ad in the data folder: the package's preprocessing (2000 HVG, log, z-score) -> PCA(50) -> each rule's
K. Quality at a K is the ARI against obs['cell_type'] of k-means (k-means++, 10 restarts) on the same PCA(50):
cheap and model-free, so it compares "chosen K" with "true K" on equal terms (not the JojoSCL ARI).

    python bench/k_selection.py --data-dir /work/shared/data --out bench/results/k_selection.json
    python bench/k_selection.py --report bench/results/k_selection.json   # the tables in docs/benchmarks.md
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from bench.common import load_labelled, machine, md_table
from jojoscl_dist.clustering.k_select import choose_k, pca_embed
from jojoscl_dist.clustering.kmeans import fit_kmeans
from jojoscl_dist.clustering.metrics import score_labels

RULES = {"leiden_r0.5": ("leiden", 0.5), "leiden_r1.0": ("leiden", 1.0), "silhouette": ("silhouette", 1.0)}


def bench_one(path: Path, seed: int) -> dict:
    x, y = load_labelled(path)
    k_true = len(np.unique(y))
    xp = pca_embed(x, seed=seed)

    def ari(k: int) -> float:
        return score_labels(y, fit_kmeans(xp, k, seed=seed, restarts=10))["ari"]

    row = {"dataset": path.stem, "n_cells": int(x.shape[0]), "k_true": k_true, "ari_true_k": ari(k_true)}
    for name, (rule, res) in RULES.items():
        t0 = time.perf_counter()
        k, _ = choose_k(x, rule, seed=seed, resolution=res, xp=xp)
        row |= {f"{name}_time_s": time.perf_counter() - t0, f"{name}_k": k,
                f"{name}_within20": bool(abs(k - k_true) <= 0.2 * k_true), f"{name}_ari": ari(k)}
    return row


LABELS = {"leiden_r1.0": "Leiden, resolution 1.0 (default)", "leiden_r0.5": "Leiden, resolution 0.5",
          "silhouette": "silhouette scan, K = 2..30"}


def report(d: dict) -> str:
    """The summary and per-set tables of a results file, as markdown."""
    s, rows = d["summary"], d["rows"]
    summary = md_table(
        ["rule", "K within ±20%", "median \\|K−K_true\\|/K_true", "mean ARI at chosen K", "mean ARI at true K",
         "median time"],
        [[label, f"{s[n]['within20']} / {s[n]['n']}", f"{s[n]['median_abs_rel_err']:.2f}", f"{s[n]['mean_ari']:.3f}",
          f"{s['true_k_mean_ari']:.3f}", f"{np.median([r[f'{n}_time_s'] for r in rows]):.2f} s"]
         for n, label in LABELS.items()])
    per_set = md_table(
        ["data set", "cells", "true K", *(f"K {n}" for n in LABELS), "ARI at true K", *(f"ARI {n}" for n in LABELS)],
        [[r["dataset"], r["n_cells"], r["k_true"], *(f"{r[f'{n}_k']}{' ✓' if r[f'{n}_within20'] else ''}" for n in LABELS),
          f"{r['ari_true_k']:.3f}", *(f"{r[f'{n}_ari']:.3f}" for n in LABELS)] for r in rows])
    return "\n".join(summary + [""] + per_set) + "\n"


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--data-dir", default="/work/shared/data")
    p.add_argument("--out", default="bench/results/k_selection.json")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--report", metavar="JSON", help="print the markdown tables of a results file and exit")
    args = p.parse_args()
    if args.report:
        print(report(json.loads(Path(args.report).read_text())), end="")
        return
    rows = []
    for f in sorted(Path(args.data_dir).glob("*.h5ad")):
        t0 = time.perf_counter()
        rows.append(bench_one(f, args.seed))
        rows[-1]["time_s"] = time.perf_counter() - t0
        print(json.dumps(rows[-1]), flush=True)
    summary = {}
    for name in RULES:
        summary[name] = {
            "within20": int(sum(r[f"{name}_within20"] for r in rows)), "n": len(rows),
            "median_abs_rel_err": float(np.median([abs(r[f"{name}_k"] - r["k_true"]) / r["k_true"] for r in rows])),
            "mean_ari": float(np.mean([r[f"{name}_ari"] for r in rows])),
        }
    summary["true_k_mean_ari"] = float(np.mean([r["ari_true_k"] for r in rows]))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"machine": machine(), "rows": rows, "summary": summary}, indent=2))
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
