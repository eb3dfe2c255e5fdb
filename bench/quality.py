"""Quality benchmark: JojoSCL (label-free pick, last epoch, oracle epoch) and two baselines on the shared sets.

    python -m bench.quality [--datasets A,B,...] [--seeds 3] [--ablations] [--out docs/quality]
    python -m bench.quality --datasets all --seed-list 5,6 --baselines-only   # the baselines alone, more seeds
    python -m bench.quality --set KEY=VALUE [--set-as-full]   # a changed default; as the table's 'full' rows

Every method sees the same preprocessed matrix (jojoscl_dist.data.preprocess). Baselines: k-means (10 restarts)
on PCA(50); scanpy Leiden on the 15-NN graph of PCA(50) at resolution 1.0 and with the resolution bisected to
give K clusters. The "oracle" column picks the evaluation epoch with the best ARI against the truth: it is shown
only to compare with the paper's protocol and is never used by the method. Training runs in-process (the same
per-worker loop as Ray Train, --num-workers 0) to keep the table affordable on 2 cores.
"""

from __future__ import annotations

import argparse
import csv
import logging
import shutil
import tempfile
import time
import warnings
import zlib
from pathlib import Path

import numpy as np
import torch

from bench.defaults import parse_value, pick_index
from jojoscl_dist.clustering.final import PCA_KEY, fit_input_pca, final_labels
from jojoscl_dist.clustering.input_pca import InputPCA
from jojoscl_dist.clustering.metrics import score_labels
from jojoscl_dist.clustering.selection import input_reference
from jojoscl_dist.clustering.kmeans import fit_kmeans
from jojoscl_dist.config import EvalConfig, JojoConfig
from jojoscl_dist.data.dataset import prepare_data
from jojoscl_dist.data.loader import ArraySource
from jojoscl_dist.train.run import chosen_weights, default_storage, label_cells, oracle, run_folder, train

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
# Table II of the paper (ARI, NMI): JojoSCL and ScCCL, for the sets that are theirs.
PAPER = {
    "10X_PBMC_top2000": ((.8080, .8025), (.7866, .7782)),
    "Bladder_top2000": ((.6079, .7507), (.5798, .7332)),
    "Human_brain": ((.8905, .8510), (.8565, .8340)),
    "Mouse": ((.6631, .6995), (.6400, .7033)),
    "Yan": ((.8662, .8793), (.8744, .8813)),
    "Klein_subset": ((.8892, .8547), (.7835, .7745)),
}
PAPER_SETS = ["10X_PBMC_top2000", "Bladder_top2000", "Human_brain", "Mouse", "Yan"]
# Variants are absolute (they do not follow the defaults): "full" is the default config (the main table); the
# others fix w_sure so that they mean the same thing whatever the default.
ABLATIONS = {
    "full": {},
    "all_losses": {"loss.w_sure": 1.0},  # L_INS + L_CLU + L_SURE, the paper's objective
    "no_sure": {"loss.w_sure": 0.0},
    "no_clu": {"loss.beta": 0.0, "loss.w_sure": 1.0},
    "ins_only": {"loss.beta": 0.0, "loss.w_sure": 0.0},
    "sure_same_view": {"loss.sure_variant": "same", "loss.w_sure": 1.0},
    # The reference's fixed 10% mask, and its final labels: k-means on z alone, best of 10 restarts by inertia.
    "reference_compatible": {"loss.reference_compatible": True, "loss.tau_instance": 0.07, "loss.w_sure": 1.0,
                             "model.mask_min_nonzero": 0.0, "eval.input_pca_weight": 0.0,
                             "eval.kmeans_restarts": 10, "eval.kmeans_select": "inertia"},
}


def baselines(x: np.ndarray, truth: np.ndarray, k: int, seed: int) -> dict[str, dict]:
    import anndata as ad
    import scanpy as sc
    from sklearn.cluster import KMeans
    from sklearn.neighbors import KNeighborsTransformer

    pcs = input_reference(x, seed)  # PCA(50), the same space the input-space silhouette scores in
    out = {"kmeans_pca": score_labels(truth, KMeans(k, n_init=10, random_state=seed).fit_predict(pcs))}
    # Not one of the baselines: our final k-means (the default restarts and rule) on the input PCA part
    # of the final space alone, i.e. the default pipeline without the model. What the embedding adds is the
    # pick's margin over this column.
    ev = EvalConfig()
    p = pcs[:, :ev.input_pca_components]
    out["kmeans_pca_ours"] = score_labels(truth, fit_kmeans(p, k, seed=seed, restarts=ev.kmeans_restarts,
                                                            select=ev.kmeans_select))
    a = ad.AnnData(X=x)
    a.obsm["X_pca"] = pcs
    # Exact 15-NN (what scanpy itself uses below 8,192 cells). Above that scanpy switches to pynndescent, whose
    # 0.7 release returns a csr_array that scanpy 1.11.5 cannot read (.getnnz): it crashed on CITE_CBMC.
    knn = KNeighborsTransformer(algorithm="brute", n_neighbors=min(15, x.shape[0] - 1))
    sc.pp.neighbors(a, n_neighbors=15, use_rep="X_pca", random_state=seed, transformer=knn)

    def leiden(res: float) -> np.ndarray:
        sc.tl.leiden(a, resolution=res, random_state=seed, flavor="igraph", n_iterations=2, key_added="l")
        return a.obs["l"].to_numpy()

    out["leiden_1.0"] = score_labels(truth, leiden(1.0))
    lo, hi, lab = 0.01, 5.0, None
    for _ in range(20):  # bisect the resolution towards K clusters
        mid = (lo + hi) / 2
        lab = leiden(mid)
        n = len(np.unique(lab))
        if n == k:
            break
        lo, hi = (mid, hi) if n < k else (lo, mid)
    out["leiden_K"] = score_labels(truth, lab)
    return out


# Input-PCA weights replayed on each picked model (eval.input_pca_weight; 0 = z alone).
PCA_WEIGHTS = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0)

# The thread count this process was started with (OMP_NUM_THREADS). scanpy's neighbours (the Leiden baselines)
# raise torch's OpenMP pool to every core as a side effect, so without re-pinning, every run after a process's
# first one trained with 2 threads instead of 1: different numerics (so a (set, seed) row depended on what ran
# before it in the process) and oversubscribed cores when processes run side by side.
THREADS = torch.get_num_threads()


def _set_config(name: str, seed: int) -> JojoConfig:
    cfg = JojoConfig()
    cfg.data.path = str(SHARED / f"{name}.h5ad")
    cfg.data.label_key = "cell_type"
    cfg.run.seed = seed
    return cfg


def baseline_row(name: str, seed: int) -> dict:
    """The baselines alone on one set and seed (same preprocessing as run_one), without training a model."""
    cfg = _set_config(name, seed)
    data = prepare_data(cfg, run_folder(cfg))
    r: dict = {"dataset": name, "seed": seed, "n_cells": data.x.shape[0], "k": data.n_clusters, "variant": "baselines"}
    _add_baselines(r, data, seed)
    return r


def _add_baselines(r: dict, data, seed: int) -> None:
    for b, m in baselines(data.x, data.labels, data.n_clusters, seed).items():
        r[f"{b}_ari"], r[f"{b}_nmi"] = m["ari"], m["nmi"]


def run_one(name: str, seed: int, overrides: dict, epochs: int | None, workdir: Path,
            dump: Path | None = None) -> dict:
    torch.set_num_threads(THREADS)
    cfg = _set_config(name, seed)
    # Own output path per run: train() resumes from (or refuses) checkpoints it finds under the output's storage.
    cfg.run.output = str(workdir / f"{name}-s{seed}-{zlib.crc32(repr(sorted(overrides.items())).encode()):08x}")
    cfg.run.num_workers = 0
    cfg.run.tracking = False
    if epochs:
        cfg.optim.epochs = epochs
    cfg = cfg.override(overrides)
    t0 = time.perf_counter()
    data = prepare_data(cfg, run_folder(cfg))
    state = train(cfg, data).state
    shutil.rmtree(default_storage(cfg), ignore_errors=True)
    res: dict = {"dataset": name, "seed": seed, "n_cells": data.x.shape[0], "k": data.n_clusters,
                 "mask_keep": state["config"]["model"]["mask_keep"]}  # after the sparsity rule
    picks = {"last": state["model"]}
    if state.get("best_model") is not None:
        picks["pick"] = chosen_weights(cfg, state)
    ev = cfg.eval
    pca = fit_input_pca(ev, ArraySource(data.x), seed)  # the run's one fit, as the CLI driver's
    zs = {}
    for tag, weights in picks.items():
        emb, lab, _ = label_cells(cfg, data, state, weights, pca)
        zs[tag] = emb["z"]
        m = score_labels(data.labels, lab)
        res[f"{tag}_ari"], res[f"{tag}_nmi"] = m["ari"], m["nmi"]
        if tag == "pick" and ev.label_method == "kmeans":
            # The final k-means of the same picked model at other input-PCA weights (evidence for the default);
            # a run with weight 0 fits the PCA it would have used.
            base = pca or InputPCA.fit(ArraySource(data.x), 1.0, seed, ev.max_eval_cells, ev.input_pca_components)
            e = {"z": emb["z"], PCA_KEY: base.coords(data.x)}  # projected here whether or not the run used them
            for w in PCA_WEIGHTS:
                lab_w = final_labels(e, data.n_clusters, "kmeans", seed, ev.kmeans_restarts, ev.kmeans_select,
                                     input_pca=InputPCA(base.mean, base.components, base.scale, w))
                m = score_labels(data.labels, lab_w.labels)
                res[f"pick_w{w:g}_ari"], res[f"pick_w{w:g}_nmi"] = m["ari"], m["nmi"]
    evals = [h for h in state["history"] if "eval_ari" in h]
    res.update(oracle(state["history"]))
    res["oracle_z_ari"] = max(h["eval_ari"] for h in evals)  # k-means on z alone (the selection's clustering)
    # Selection rules replayed on this run's own evaluations (evaluation-time ARI at the epoch each label-free
    # score would pick after the warm-up; ties -> later epoch): compares the scores on the same footing.
    min_epoch = min(state["epochs"] - 1, int(cfg.eval.select_from * state["epochs"]))
    ari = np.array([h["eval_ari"] for h in evals])
    ok = np.flatnonzero(np.array([h["epoch"] for h in evals]) >= min_epoch)
    res["hist_last_ari"] = float(ari[-1])
    for score in ("silhouette", "input_silhouette", "stability"):
        if len(ok) and all(f"select_{score}" in h for h in evals):
            res[f"hist_{score}_ari"] = float(ari[pick_index(np.array([h[f"select_{score}"] for h in evals]), ok)])
    res["train_s"] = time.perf_counter() - t0
    res["torch_threads"] = torch.get_num_threads()
    if dump is not None:
        _dump_embeddings(dump / f"{name}-s{seed}.npz", data, zs, seed, ev, pca)
    return res, data


def _dump_embeddings(path: Path, data, zs: dict, seed: int, ev: EvalConfig, pca: InputPCA | None) -> None:
    """The run's embeddings, input PCA and truth, so that final-label methods can be compared without training
    again (bench.final_labels). The run's own PCA fit is reused: its coordinates do not depend on the weight."""
    base = pca or InputPCA.fit(ArraySource(data.x), 1.0, seed, ev.max_eval_cells, ev.input_pca_components)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, truth=np.asarray(data.labels).astype(str), k=data.n_clusters,
                        pca50=input_reference(data.x, seed).astype(np.float32),
                        coords=base.coords(data.x).astype(np.float32), scale=base.scale,
                        **{f"z_{t}": np.asarray(z, np.float32) for t, z in zs.items()})


def main(argv=None) -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--datasets", default=",".join(PAPER_SETS), help="comma list, or 'all'")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--seed-list", default=None, help="comma list of seeds (overrides --seeds), e.g. to split the "
                   "table over processes: one per seed")
    p.add_argument("--skip", default="", help="comma list of dataset:seed already measured (not rerun)")
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--ablations", action="store_true", help="run every ablation variant too")
    p.add_argument("--variants", default=None, help="comma list of ablation variants to run (default: full only, "
                   f"or all with --ablations): {','.join(ABLATIONS)}")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="dotted config override (repeatable): runs one extra variant named 'set:KEY=VALUE,...' "
                   "with all of them, e.g. --set model.momentum=0.9 (evidence for a default)")
    p.add_argument("--set-as-full", action="store_true",
                   help="run the --set overrides as the 'full' variant (baselines included), each row recording them "
                   "under 'overrides': the table a changed default would give, without changing it first")
    p.add_argument("--no-baselines", action="store_true")
    p.add_argument("--baselines-only", action="store_true",
                   help="no training: print the baselines' rows (variant 'baselines') for more seeds of the bar")
    p.add_argument("--dump", default=None, help="folder: save each run's embeddings, input PCA and truth (npz)")
    p.add_argument("--out", default="docs/quality")
    args = p.parse_args(argv)
    if args.set_as_full and (not args.set or args.variants or args.ablations):
        # The ablation variants fix their own overrides only: beside a changed 'full' they would compare two configs.
        p.error("--set-as-full needs --set, and runs without --variants / --ablations")
    logging.basicConfig(level=logging.ERROR)
    warnings.filterwarnings("ignore")
    names = sorted(f.stem for f in SHARED.glob("*.h5ad")) if args.datasets == "all" else args.datasets.split(",")
    variants = ABLATIONS if args.ablations else {"full": {}}
    if args.variants:
        variants = {v: ABLATIONS[v] for v in args.variants.split(",")}
    if args.set:
        ov = dict(kv.split("=", 1) for kv in args.set)
        name = "full" if args.set_as_full else f"set:{','.join(args.set)}"
        extra = {name: {k: parse_value(v) for k, v in ov.items()}}
        variants = {**variants, **extra} if (args.variants or args.ablations) else extra
    rows = []
    workdir = Path(tempfile.mkdtemp(prefix="jojoscl-quality-"))
    seeds = [int(v) for v in args.seed_list.split(",")] if args.seed_list else list(range(args.seeds))
    skip = set(args.skip.split(",")) if args.skip else set()
    # Seed-major: a table cut short still covers every data set.
    for seed in seeds:
        for name in names:
            if f"{name}:{seed}" in skip:
                continue
            if args.baselines_only:
                rows.append(baseline_row(name, seed))
                _print_row(rows[-1])
                continue
            for variant, ov in variants.items():
                r, data = run_one(name, seed, ov, args.epochs, workdir,
                                  dump=Path(args.dump) / variant if args.dump else None)
                r["variant"] = variant
                if variant == "full" and ov:
                    r["overrides"] = ",".join(args.set)
                if variant == "full" and not args.no_baselines:
                    _add_baselines(r, data, seed)
                rows.append(r)
                _print_row(r)
    write_tables(rows, Path(args.out))


def _print_row(r: dict) -> None:
    """One dict per run on stdout: the .log form that bench.quality_report reads."""
    print({k: (round(v, 3) if isinstance(v, float) else v) for k, v in r.items()}, flush=True)


def _mean_s(rows: list[dict]) -> str:
    t = [r["train_s"] for r in rows if "train_s" in r]  # baseline-only rows train nothing
    return f"{np.mean(t):.0f}" if t else "-"


def write_tables(rows: list[dict], out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    keys = sorted({k for r in rows for k in r})
    with open(out.with_suffix(".csv"), "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        w.writerows(rows)
    cols = ["pick", "last", "oracle", "kmeans_pca", "leiden_1.0", "leiden_K"]
    lines = []
    for variant in dict.fromkeys(r["variant"] for r in rows):
        lines += [f"### variant: {variant}", "",
                  "| dataset | K | " + " | ".join(f"{c} ARI / NMI" for c in cols) + " | paper JojoSCL | paper ScCCL | s/run |",
                  "|---|---|" + "---|" * (len(cols) + 3)]
        vrows = [r for r in rows if r["variant"] == variant]
        means = {c: [] for c in cols}
        for name in dict.fromkeys(r["dataset"] for r in vrows):
            rs = [r for r in vrows if r["dataset"] == name]
            cells = []
            for c in cols:
                a = [r[f"{c}_ari"] for r in rs if f"{c}_ari" in r]
                n = [r[f"{c}_nmi"] for r in rs if f"{c}_nmi" in r]
                if a:
                    means[c].append(np.mean(a))
                    cells.append(f"{np.mean(a):.3f}±{np.std(a):.3f} / {np.mean(n):.3f}")
                else:
                    cells.append("-")
            paper = PAPER.get(name)
            pj = f"{paper[0][0]:.3f} / {paper[0][1]:.3f}" if paper else "-"
            ps = f"{paper[1][0]:.3f} / {paper[1][1]:.3f}" if paper else "-"
            lines.append(f"| {name} | {rs[0]['k']} | " + " | ".join(cells) + f" | {pj} | {ps} | {_mean_s(rs)} |")
        lines.append("| **mean ARI** | | " + " | ".join(f"{np.mean(v):.3f}" if v else "-" for v in means.values()) + " | | | |")
        lines.append("")
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
