"""The run driver: data -> preprocessing -> Ray Train (or in-process) -> label-free pick -> outputs."""

from __future__ import annotations

import hashlib
import logging
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd
import torch

from jojoscl_dist import __version__
from jojoscl_dist.cluster.metrics import score_labels
from jojoscl_dist.config import JojoConfig
from jojoscl_dist.data.loader import ArraySource
from jojoscl_dist.data.zarr_store import ZarrSource, is_prepared_store
from jojoscl_dist.data.preprocess import PreprocessStats, compute_stats, materialize
from jojoscl_dist.data.readers import get_labels, read_input
from jojoscl_dist.data.synthetic import demo_atlas
from jojoscl_dist.errors import JojoInputError
from jojoscl_dist.model import JojoSCL
from jojoscl_dist.outputs import run_dir
from jojoscl_dist.train.checkpoint import load_state
from jojoscl_dist.train.embed import embed, final_labels
from jojoscl_dist.train.loop import WorkerData, resolve_epochs, train_worker
from jojoscl_dist.train.session import LocalSession

log = logging.getLogger(__name__)


@dataclass
class PreparedData:
    adata: ad.AnnData  # the input as read (never modified)
    x: np.ndarray | ZarrSource  # preprocessed (kept cells x HVG), float32: in memory, or a prepared store
    stats: PreprocessStats
    n_clusters: int
    labels: np.ndarray | None  # truth for kept cells (evaluation only)
    obs_names: np.ndarray  # kept cells
    source: str


@dataclass
class RunResult:
    output: Path
    labels: np.ndarray
    embedding: np.ndarray
    metrics: dict[str, Any]
    history: list[dict] = field(default_factory=list)


def as_source(x):
    return x if isinstance(x, ZarrSource) else ArraySource(x)


def prepare_data(cfg: JojoConfig) -> PreparedData:
    dc = cfg.data
    if dc.path is not None:
        from jojoscl_dist.prepare import needs_prepare, prepare

        if is_prepared_store(dc.path):  # stream it; never materialised
            return _from_store(cfg, Path(dc.path), str(dc.path))
        if needs_prepare(dc.path, dc):  # an atlas: prepare out of core into the run's storage, then stream
            store = default_storage(cfg) / "prepared.zarr"
            if not is_prepared_store(store):  # a resumed run reuses its store
                print(f"jojoscl: {dc.path} is large: preparing it out of core into {store}", flush=True)
                prepare(dc.path, store, n_top_genes=dc.n_top_genes, input_scale=dc.input_scale,
                        chunk_size=dc.chunk_size, chunk_rows=dc.store_chunk_rows, clip=dc.scale_clip,
                        overwrite=True, progress=not cfg.run.quiet)
            return _from_store(cfg, store, str(dc.path))
    if dc.path is None:
        adata = demo_atlas(dc.demo_cells, dc.demo_genes, dc.demo_types, seed=cfg.run.seed)
        source = f"synthetic demo atlas ({dc.demo_cells} cells, {dc.demo_genes} genes, {dc.demo_types} types)"
        label_key = dc.label_key or "cell_type"
    else:
        adata = read_input(dc.path)
        source = str(dc.path)
        label_key = dc.label_key
    if adata.n_obs == 0 or adata.n_vars == 0:
        raise JojoInputError(f"{source} has {adata.n_obs} cells x {adata.n_vars} genes: nothing to cluster")
    labels_all = get_labels(adata, label_key)
    k = _n_clusters(dc.n_clusters, labels_all)
    stats = compute_stats(adata.X, list(adata.var_names), n_top_genes=dc.n_top_genes, input_scale=dc.input_scale,
                          chunk_size=dc.chunk_size, clip=dc.scale_clip)
    n_kept = int(stats.cell_mask.sum())
    if k > n_kept:
        raise JojoInputError(f"--n-clusters {k} is larger than the number of usable cells ({n_kept}); "
                             f"choose K <= {n_kept}")
    x = materialize(adata.X, stats, chunk_size=dc.chunk_size)
    labels = labels_all[stats.cell_mask] if labels_all is not None else None
    return PreparedData(adata, x, stats, k, labels, np.asarray(adata.obs_names)[stats.cell_mask], source)


def _n_clusters(k: int | None, labels: np.ndarray | None) -> int:
    if k is None:
        if labels is None:
            raise JojoInputError("the number of clusters is unknown: pass --n-clusters K, or --label-key KEY to take "
                                 "K from the labels")
        k = len(np.unique(labels))
    if k < 2:
        raise JojoInputError(f"--n-clusters must be at least 2, got {k}")
    return k


def _from_store(cfg: JojoConfig, path: Path, source: str) -> PreparedData:
    """A prepared store: obs/var/statistics from its metadata; X stays on disk (ZarrSource)."""
    import zarr

    from jojoscl_dist.data.zarr_store import read_prepared_meta

    x = ZarrSource(path)  # checks every chunk is present
    stats = PreprocessStats.from_dict(read_prepared_meta(path)["stats"])
    g = zarr.open_group(str(path), mode="r")
    adata = ad.AnnData(obs=ad.io.read_elem(g["obs"]), var=ad.io.read_elem(g["var"]))
    labels = get_labels(adata, cfg.data.label_key)
    k = _n_clusters(cfg.data.n_clusters, labels)
    if k > x.shape[0]:
        raise JojoInputError(f"--n-clusters {k} is larger than the number of cells ({x.shape[0]}); choose K <= "
                             f"{x.shape[0]}")
    return PreparedData(adata, x, stats, k, labels, np.asarray(adata.obs_names), source)


def default_run_name(cfg: JojoConfig) -> str:
    """Deterministic in the output path, so relaunching the same command resumes the same Ray run."""
    digest = hashlib.sha1(str(Path(cfg.run.output).resolve()).encode()).hexdigest()[:10]
    return cfg.run.run_name or f"jojoscl-{digest}"


def default_storage(cfg: JojoConfig) -> Path:
    if cfg.run.storage_path:
        return Path(cfg.run.storage_path).resolve()
    out = Path(cfg.run.output).resolve()
    return out.parent / f".{out.name}.ray"


def train(cfg: JojoConfig, data: PreparedData, fault_hook: dict | None = None) -> dict:
    """Train and return the final checkpoint state (a dict, see checkpoint.py)."""
    if cfg.run.num_workers <= 0:  # in-process, no Ray (tests, benchmarks, debugging)
        session = LocalSession(device=("cuda" if (cfg.run.use_gpu or (cfg.run.use_gpu is None and torch.cuda.is_available())) else "cpu"))
        train_worker(cfg, WorkerData(as_source(data.x), data.n_clusters, data.labels), session)
        return load_state(session.checkpoint)
    from jojoscl_dist.train.ray_session import fit_ray

    if data.x.shape[0] < cfg.run.num_workers:
        raise JojoInputError(f"{data.x.shape[0]} cells cannot be shared among {cfg.run.num_workers} workers")
    storage = default_storage(cfg)
    name = default_run_name(cfg)
    if (storage / name).exists():
        log.warning("resuming the earlier run %s in %s", name, storage)
    try:
        path, error = fit_ray(cfg, data.x, data.n_clusters, data.labels, str(storage), name, fault_hook)
    except Exception as e:  # TrainingFailedError wraps the worker's exception
        raise RuntimeError(f"training failed: {e}") from e
    if error is not None or path is None:
        raise RuntimeError(f"training failed: {error}")
    return load_state(path)


def run(cfg: JojoConfig, fault_hook: dict | None = None) -> RunResult:
    t_start = time.perf_counter()
    out = run_dir.check_output(cfg.run.output, cfg.run.overwrite)
    data = prepare_data(cfg)
    t_prep = time.perf_counter() - t_start
    if cfg.data.path is None:
        print(f"jojoscl: no --data given: training on the {data.source}", flush=True)
    state = train(cfg, data, fault_hook)
    t_train = time.perf_counter() - t_start - t_prep

    # Label-free pick: the weights the selection rule kept (the last epoch for rule 'last').
    chosen = state["best_model"] if (state.get("best_model") is not None and cfg.eval.selection != "last") else state["model"]
    model = JojoSCL(state["n_genes"], state["n_clusters"], cfg.model.hidden_dims, cfg.model.latent_dim,
                    cfg.model.instance_dim, cfg.model.cluster_hidden)
    model.load_state_dict(chosen)
    emb = embed(model, as_source(data.x))
    labels = final_labels(emb, data.n_clusters, cfg.eval.label_method, cfg.run.seed, cfg.eval.kmeans_restarts)
    history = state["history"]
    metrics: dict[str, Any] = {
        "n_cells": int(data.x.shape[0]), "n_genes": int(data.x.shape[1]), "n_clusters": data.n_clusters,
        "n_clusters_found": int(len(np.unique(labels))), "epochs": int(state["epochs"]),
        "selected_epoch": int(state["selector"]["best_epoch"]) if cfg.eval.selection != "last" else int(state["epoch"]),
        "selection_rule": cfg.eval.selection, "label_method": cfg.eval.label_method,
        "num_workers": cfg.run.num_workers, "seed": cfg.run.seed,
        "time_prepare_s": t_prep, "time_train_s": t_train,
    }
    if data.labels is not None:
        metrics.update(score_labels(data.labels, labels))
        evals = [h for h in history if "eval_ari" in h]
        if evals:  # reported for comparison with the paper only; never used to pick anything
            best = max(evals, key=lambda h: h["eval_ari"])
            metrics["oracle_epoch"] = int(best["epoch"])
            metrics["oracle_ari"] = float(best["eval_ari"])
            metrics["oracle_nmi"] = float(best["eval_nmi"])
    metrics["time_total_s"] = time.perf_counter() - t_start
    _write_outputs(cfg, data, state, chosen, emb, labels, metrics, out)
    storage = default_storage(cfg) / default_run_name(cfg)
    if not cfg.run.storage_path:  # Ray checkpoints and an on-the-fly prepared store
        shutil.rmtree(storage.parent, ignore_errors=True)  # finished: nothing left to resume
    if cfg.run.tracking:
        from jojoscl_dist.tracking.mlflow_log import log_run

        log_run(cfg, metrics, history, out)
    return RunResult(out, labels, emb["z"], metrics, history)


def _write_outputs(cfg, data: PreparedData, state, chosen, emb, labels, metrics, out: Path) -> None:
    stage = run_dir.staging_dir(out)
    try:
        obs = data.adata.obs.loc[data.obs_names].copy() if data.adata.obs.index.is_unique else pd.DataFrame(index=data.obs_names)
        obs["jojoscl_cluster"] = pd.Categorical(labels.astype(str))
        res = ad.AnnData(obs=obs, obsm={"X_jojoscl": emb["z"], "X_jojoscl_h": emb["h"]})
        res.uns["jojoscl"] = {"metrics": {k: v for k, v in metrics.items() if isinstance(v, (int, float, str))},
                              "source": data.source}
        res.write_h5ad(stage / "results.h5ad")
        pd.DataFrame({"cell": data.obs_names, "cluster": labels}).to_csv(stage / "labels.csv", index=False)
        (stage / "model").mkdir()
        torch.save({"schema": 1, "weights": chosen, "n_genes": state["n_genes"], "n_clusters": state["n_clusters"],
                    "preprocess": data.stats.to_dict(), "config": cfg.to_dict(),
                    "versions": {"jojoscl_dist": __version__, "torch": torch.__version__,
                                 "python": sys.version.split()[0]}},
                   stage / "model" / "model.pt")
        cfg.save(stage / "config.yaml")
        run_dir.write_json(stage / "metrics.json", {"final": metrics, "history": history_clean(state["history"])})
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    run_dir.commit(stage, out)


def history_clean(history: list[dict]) -> list[dict]:
    return [{k: (float(v) if isinstance(v, (np.floating, float)) else v) for k, v in h.items()} for h in history]
