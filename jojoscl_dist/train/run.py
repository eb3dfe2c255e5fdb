"""The run driver: data -> preprocessing -> Ray Train (or in-process) -> label-free pick -> outputs."""

from __future__ import annotations

import contextlib
import hashlib
import logging
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anndata as ad
import numpy as np
import torch

from jojoscl_dist.cluster.input_pca import InputPCA
from jojoscl_dist.cluster.metrics import score_labels
from jojoscl_dist.config import JojoConfig
from jojoscl_dist.data.fingerprint import describe_change, fingerprint, same_data
from jojoscl_dist.data.loader import ArraySource
from jojoscl_dist.data.zarr_store import ZarrSource, is_prepared_store
from jojoscl_dist.data.preprocess import PreprocessStats, compute_stats, materialize
from jojoscl_dist.data.readers import get_labels, read_input
from jojoscl_dist.data.synthetic import demo_atlas
from jojoscl_dist.errors import JojoInputError, TrackingError, TrainingDiverged
from jojoscl_dist.model import build_model
from jojoscl_dist.model.augment import effective_keep
from jojoscl_dist.outputs import run_dir
from jojoscl_dist.outputs.lock import RunLock
from jojoscl_dist.outputs.write_run import history_clean, write_run  # noqa: F401 - history_clean re-exported
from jojoscl_dist.train.checkpoint import config_differences, latest_loadable, load_state
from jojoscl_dist.train.embed import embed, embed_to_zarr, final_clustering
from jojoscl_dist.train.loop import (WorkerData, clear_divergence, read_divergence, record_divergence,
                                     resolve_epochs, train_worker)
from jojoscl_dist.train.progress import EpochProgress
from jojoscl_dist.train.session import LocalSession

log = logging.getLogger(__name__)

AUTO_K_MAX_CELLS = 50_000  # --n-clusters auto on a prepared store looks at this many cells (seeded sample)


@dataclass
class PreparedData:
    adata: ad.AnnData  # the input as read (never modified)
    x: np.ndarray | ZarrSource  # preprocessed (kept cells x HVG), float32: in memory, or a prepared store
    stats: PreprocessStats
    n_clusters: int
    labels: np.ndarray | None  # truth for kept cells (evaluation only)
    obs_names: np.ndarray  # kept cells
    source: str
    k_info: dict | None = None  # how K was chosen when --n-clusters auto
    fingerprint: dict | None = None  # the input file's identity (data/fingerprint.py); None for the demo atlas

    @property
    def kept_mask(self) -> np.ndarray:
        """Rows of ``adata`` that were trained on; a prepared store's adata holds only kept cells (no X)."""
        return np.ones(self.adata.n_obs, dtype=bool) if isinstance(self.x, ZarrSource) else self.stats.cell_mask


@dataclass
class RunResult:
    output: Path
    labels: np.ndarray
    embedding: np.ndarray | None  # z of every cell; None for a prepared store (read results.h5ad obsm instead)
    metrics: dict[str, Any]
    history: list[dict] = field(default_factory=list)


def as_source(x):
    return x if isinstance(x, ZarrSource) else ArraySource(x)


def prepare_data(cfg: JojoConfig) -> PreparedData:
    dc = cfg.data
    if dc.path is not None:
        from jojoscl_dist.prepare import needs_prepare, prepare

        if is_prepared_store(dc.path):  # stream it; never materialised
            return _from_store(cfg, Path(dc.path), str(dc.path), fingerprint(dc.path))
        if needs_prepare(dc.path, dc):  # an atlas: prepare out of core into the run's storage, then stream
            raw_fp = fingerprint(dc.path)
            store = prepared_store_path(cfg)
            if not _store_matches(store, raw_fp):  # a resumed run reuses its store, never another input's
                print(f"jojoscl: {dc.path} is large: preparing it out of core into {store}", flush=True)
                prepare(dc.path, store, n_top_genes=dc.n_top_genes, input_scale=dc.input_scale,
                        hvg_flavor=dc.hvg_flavor, chunk_size=dc.chunk_size, chunk_rows=dc.store_chunk_rows,
                        clip=dc.scale_clip, target_sum=dc.target_sum, overwrite=True, progress=not cfg.run.quiet)
            return _from_store(cfg, store, str(dc.path), raw_fp)
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
    make_names_unique(adata)
    labels_all = get_labels(adata, label_key)
    k = _n_clusters(dc.n_clusters, labels_all)
    auto = k == "auto"
    stats = compute_stats(adata.X, list(adata.var_names), n_top_genes=dc.n_top_genes, input_scale=dc.input_scale,
                          chunk_size=dc.chunk_size, clip=dc.scale_clip, hvg_flavor=dc.hvg_flavor,
                          target_sum=dc.target_sum)
    n_kept = int(stats.cell_mask.sum())
    if not auto and k > n_kept:
        raise JojoInputError(f"--n-clusters {k} is larger than the number of usable cells ({n_kept}); "
                             f"choose K <= {n_kept}")
    x = materialize(adata.X, stats, chunk_size=dc.chunk_size)
    k_info = None
    if auto:
        if n_kept < 3:
            raise JojoInputError(f"{n_kept} usable cells are too few to choose K: give --n-clusters K")
        k, k_info = _auto_k(cfg, x)
    labels = labels_all[stats.cell_mask] if labels_all is not None else None
    fp = fingerprint(dc.path) if dc.path is not None else None
    return PreparedData(adata, x, stats, k, labels, np.asarray(adata.obs_names)[stats.cell_mask], source, k_info,
                        fp)


def prepared_store_path(cfg: JojoConfig) -> Path:
    """Where a large raw input is prepared on the fly: inside this run's own storage folder, never shared."""
    return default_storage(cfg) / default_run_name(cfg) / "prepared.zarr"


def _store_matches(store: Path, raw_fp: dict) -> bool:
    """The store exists, is complete and was prepared from exactly this input (else it is rebuilt)."""
    from jojoscl_dist.data.zarr_store import read_prepared_meta

    if not is_prepared_store(store):
        return False
    recorded = read_prepared_meta(store).get("source_fingerprint")
    if same_data(recorded, raw_fp):
        return True
    print(f"jojoscl: {store} was prepared from other data ({describe_change(recorded or {}, raw_fp)}): "
          f"preparing it again", flush=True)
    return False


def make_names_unique(adata: ad.AnnData) -> None:
    """Duplicate cell or gene names are suffixed (-1, -2, ...) with a warning, in memory only (never the file).

    Repeated gene symbols are common in 10x exports, so refusing them would block ordinary data; cell names must
    be unique for labels.csv and results.h5ad to be joined back to the input.
    """
    for axis, names in (("cell", adata.obs_names), ("gene", adata.var_names)):
        if not names.is_unique:
            n_dup = int(names.duplicated().sum())
            example = names[names.duplicated()][0]
            log.warning("%d duplicate %s names (e.g. %r): made unique by suffixing -1, -2, ... (outputs use the "
                        "new names)", n_dup, axis, example)
            (adata.obs_names_make_unique if axis == "cell" else adata.var_names_make_unique)()


def _n_clusters(k: int | str | None, labels: np.ndarray | None) -> int | str:
    """K as given, 'auto' (chosen later from the data), or the number of distinct labels."""
    if isinstance(k, str) and k != "auto":
        raise JojoInputError(f"--n-clusters must be an integer or 'auto', got {k!r}")
    if k == "auto":
        return k
    if k is None:
        if labels is None:
            raise JojoInputError("the number of clusters is unknown: pass --n-clusters K, or --label-key KEY to take "
                                 "K from the labels")
        k = len(np.unique(labels))
    if k < 2:
        raise JojoInputError(f"--n-clusters must be at least 2, got {k}")
    return k


def _auto_k(cfg: JojoConfig, x: np.ndarray) -> tuple[int, dict]:
    from jojoscl_dist.cluster.k_select import choose_k

    dc = cfg.data
    k, k_info = choose_k(x, dc.k_rule, seed=cfg.run.seed, resolution=dc.k_resolution)
    k_info = {key: v for key, v in k_info.items() if key != "scores"} | (
        {"scores": {str(a): b for a, b in k_info["scores"].items()}} if "scores" in k_info else {})
    if not cfg.run.quiet:
        print(f"jojoscl: --n-clusters auto: K = {k} (rule '{dc.k_rule}', label-free)", flush=True)
    return k, k_info


def _from_store(cfg: JojoConfig, path: Path, source: str, fp: dict | None) -> PreparedData:
    """A prepared store: obs/var/statistics from its metadata; X stays on disk (ZarrSource)."""
    import zarr

    from jojoscl_dist.data.zarr_store import read_prepared_meta

    x = ZarrSource(path)  # checks every chunk is present
    stats = PreprocessStats.from_dict(read_prepared_meta(path)["stats"])
    g = zarr.open_group(str(path), mode="r")
    adata = ad.AnnData(obs=ad.io.read_elem(g["obs"]), var=ad.io.read_elem(g["var"]))
    labels = get_labels(adata, cfg.data.label_key)
    k = _n_clusters(cfg.data.n_clusters, labels)
    k_info = None
    if k == "auto":  # chosen on a seeded sample of the store: the Leiden rule needs cells in memory
        n = x.shape[0]
        take = np.sort(np.random.default_rng(cfg.run.seed).choice(n, min(n, AUTO_K_MAX_CELLS), replace=False))
        k, k_info = _auto_k(cfg, x.rows(take))
        k_info["n_cells_used"] = int(len(take))
    if k > x.shape[0]:
        raise JojoInputError(f"--n-clusters {k} is larger than the number of cells ({x.shape[0]}); choose K <= "
                             f"{x.shape[0]}")
    return PreparedData(adata, x, stats, k, labels, np.asarray(adata.obs_names), source, k_info, fp)


def default_run_name(cfg: JojoConfig) -> str:
    """Deterministic in the output path, so relaunching the same command resumes the same Ray run."""
    digest = hashlib.sha1(str(Path(cfg.run.output).resolve()).encode()).hexdigest()[:10]
    return cfg.run.run_name or f"jojoscl-{digest}"


def default_storage(cfg: JojoConfig) -> Path:
    if cfg.run.storage_path:
        return Path(cfg.run.storage_path).resolve()
    out = Path(cfg.run.output).resolve()
    return out.parent / f".{out.name}.ray"


def resolve_for_data(cfg: JojoConfig, data: PreparedData) -> JojoConfig:
    """Settings that depend on the data, fixed before training (so checkpoints and config.yaml hold them): the
    mask keep rate on sparse data (``effective_keep``)."""
    keep = effective_keep(cfg.model.mask_keep, cfg.model.mask_min_nonzero, data.stats.mean_nonzero)
    if keep == cfg.model.mask_keep:
        return cfg
    if not cfg.run.quiet:
        print(f"jojoscl: sparse data ({data.stats.mean_nonzero:.0f} non-zero genes per cell on average): mask keep "
              f"rate {cfg.model.mask_keep:g} -> {keep:.3g} (model.mask_min_nonzero = {cfg.model.mask_min_nonzero:g})",
              flush=True)
    return cfg.override({"model.mask_keep": keep})


def train(cfg: JojoConfig, data: PreparedData, fault_hook: dict | None = None) -> dict:
    """Train and return the final checkpoint state (a dict, see checkpoint.py)."""
    cfg = resolve_for_data(cfg, data)
    storage = default_storage(cfg)
    name = default_run_name(cfg)
    resume = check_resume(cfg, storage / name, data.fingerprint)
    done = resume[1] if resume else None
    if done is not None and done["epoch"] >= resolve_epochs(cfg, data.x.shape[0]) - 1:
        return done  # finished earlier (e.g. its tracking step failed): nothing to train, no workers to start
    if cfg.run.num_workers <= 0:  # in-process, no Ray (tests, benchmarks, debugging); same checkpoint layout
        progress = EpochProgress(resolve_epochs(cfg, data.x.shape[0]), mode="off" if cfg.run.quiet else "auto")
        session = LocalSession(storage / name, on_report=progress, resume_from=resume[0] if resume else None,
                               discover=False,
                               device=("cuda" if (cfg.run.use_gpu or (cfg.run.use_gpu is None and torch.cuda.is_available())) else "cpu"))
        try:
            train_worker(cfg, WorkerData(as_source(data.x), data.n_clusters, data.labels, data.fingerprint), session)
        finally:
            progress.close()
        diverged = session.metrics[-1].get("diverged") if session.metrics else None
        if diverged:
            record_divergence(storage / name, diverged, cfg.to_dict())  # a relaunch stops in check_resume
            raise TrainingDiverged(diverged)
        return load_state(session.checkpoint)
    from jojoscl_dist.train.ray_session import fit_ray

    if data.x.shape[0] < cfg.run.num_workers:
        raise JojoInputError(f"{data.x.shape[0]} cells cannot be shared among {cfg.run.num_workers} workers")
    try:
        path, error = fit_ray(cfg, data.x, data.n_clusters, data.labels, str(storage), name, fault_hook,
                              resume_from=str(resume[0]) if resume else None, fingerprint=data.fingerprint)
    except TrainingDiverged as e:
        record_divergence(storage / name, str(e), cfg.to_dict())
        raise
    except Exception as e:  # TrainingFailedError wraps the worker's exception
        raise RuntimeError(f"training failed: {e}") from e
    if error is not None or path is None:
        raise RuntimeError(f"training failed: {error}")
    return load_state(path)


def oracle(history: list[dict]) -> dict[str, float]:
    """The evaluation with the best ARI against the truth (what the paper reports): {'oracle_epoch',
    'oracle_ari', 'oracle_nmi'} of the final label method when it was logged (``eval_final_*``: input PCA
    appended), else of k-means on z; {} without labelled evaluations."""
    evals = [h for h in history if "eval_ari" in h]
    if not evals:
        return {}
    key = "eval_final" if all("eval_final_ari" in h for h in evals) else "eval"
    best = max(evals, key=lambda h: h[f"{key}_ari"])
    return {"oracle_epoch": int(best["epoch"]), "oracle_ari": float(best[f"{key}_ari"]),
            "oracle_nmi": float(best[f"{key}_nmi"])}


def fit_input_pca(cfg: JojoConfig, x) -> InputPCA | None:
    """The input PCA whose coordinates the final k-means sees beside z (cluster/input_pca.py), fitted once per
    run on at most ``eval.max_eval_cells`` seeded cells and kept in the model bundle for predict; None when the
    weight is 0 or the labels come from the cluster head."""
    if cfg.eval.input_pca_weight <= 0 or cfg.eval.label_method != "kmeans":
        return None
    return InputPCA.fit(as_source(x), cfg.eval.input_pca_weight, cfg.run.seed, cfg.eval.max_eval_cells,
                        cfg.eval.input_pca_components)


def check_resume(cfg: JojoConfig, root: Path, data_fp: dict | None = None) -> tuple[Path, dict] | None:
    """Before training: stop a relaunch of settings that diverged (until --overwrite or a changed config), say when
    a run resumes from a checkpoint (returned with its state), refuse one of a different config or of other data."""
    diverged = read_divergence(root)
    if diverged is not None:
        if not cfg.run.overwrite and not config_differences(diverged.get("config", {}), cfg.to_dict()):
            raise TrainingDiverged(diverged["message"])
        clear_divergence(root)
    found = latest_loadable(root)
    if found is None:
        return None
    ckpt, st = found
    saved_fp = st.get("data_fingerprint")
    if data_fp is not None and not same_data(saved_fp, data_fp):
        raise JojoInputError(f"{root} holds checkpoints trained on other data than {data_fp['path']} "
                             f"({describe_change(saved_fp or {}, data_fp)}): give this run another --run-name or "
                             f"--output, or delete that folder to start over")
    diffs = config_differences(st.get("config", {}), cfg.to_dict())
    if diffs:
        raise JojoInputError(f"{root} holds checkpoints of a different run ({'; '.join(diffs[:3])}): delete that "
                             f"folder to start over, or give this run another --run-name")
    print(f"jojoscl: resuming {root.name} from its checkpoint at epoch {st['epoch']} ({ckpt})", flush=True)
    old_epochs = st.get("config", {}).get("optim", {}).get("epochs")
    if old_epochs is not None and old_epochs != cfg.optim.epochs:
        print(f"jojoscl: --epochs {old_epochs} -> {cfg.optim.epochs}: the learning-rate schedule "
              f"({cfg.optim.schedule}) and the selection window (eval.select_from) follow the new length", flush=True)
    return ckpt, st


def run(cfg: JojoConfig, fault_hook: dict | None = None) -> RunResult:
    t_start = time.perf_counter()
    cfg.validate()  # refused before any output or hours of training
    with contextlib.ExitStack() as locks:
        for lock in run_locks(cfg):
            locks.enter_context(lock)
        return _run_locked(cfg, fault_hook, t_start)


def run_locks(cfg: JojoConfig) -> list[RunLock]:
    """One run at a time per output folder and, with --storage-path, per run name on that storage."""
    out = Path(cfg.run.output).resolve()
    locks = [RunLock(out.parent / f".{out.name}.lock", f"--output {cfg.run.output}")]
    if cfg.run.storage_path:
        name = default_run_name(cfg)
        locks.append(RunLock(default_storage(cfg) / f".{name}.lock", f"run {name} on --storage-path "
                                                                      f"{cfg.run.storage_path}"))
    return locks


def _run_locked(cfg: JojoConfig, fault_hook: dict | None, t_start: float) -> RunResult:
    out = run_dir.check_output(cfg.run.output, cfg.run.overwrite, [cfg.data.path] if cfg.data.path else [])
    if cfg.run.tracking:  # an unreachable MLflow store fails here, not after hours of training
        from jojoscl_dist.tracking.mlflow_log import check_tracking

        check_tracking(cfg, out)
    data = prepare_data(cfg)
    cfg = resolve_for_data(cfg, data)
    t_prep = time.perf_counter() - t_start
    if cfg.data.path is None:
        print(f"jojoscl: no --data given: training on the {data.source}", flush=True)
    state = train(cfg, data, fault_hook)
    t_train = time.perf_counter() - t_start - t_prep

    # Label-free pick: the weights the selection rule kept (the last epoch for rule 'last').
    chosen = state["best_model"] if (state.get("best_model") is not None and cfg.eval.selection != "last") else state["model"]
    model = build_model(cfg.model, state["n_genes"], state["n_clusters"])
    model.load_state_dict(chosen)
    input_pca = fit_input_pca(cfg, data.x)
    project = input_pca.project if input_pca is not None else None
    scratch = None
    try:
        if isinstance(data.x, ZarrSource):  # an atlas: embeddings go to disk, so memory stays flat in cells
            scratch = Path(tempfile.mkdtemp(prefix=f".{out.name}.embedding-", dir=out.parent))
            emb = embed_to_zarr(model, data.x, scratch / "embedding.zarr", project=project)
        else:
            emb = embed(model, as_source(data.x), project=project)
        return _finish(cfg, data, state, chosen, emb, metrics_base={"time_prepare_s": t_prep, "time_train_s": t_train},
                       out=out, t_start=t_start, input_pca=input_pca)
    finally:
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)


def _finish(cfg: JojoConfig, data: PreparedData, state: dict, chosen: dict, emb: dict, metrics_base: dict,
            out: Path, t_start: float, input_pca: InputPCA | None = None) -> RunResult:
    """Final labels, metrics, outputs and tracking of a trained run."""
    labels, centroids = final_clustering(emb, data.n_clusters, cfg.eval.label_method, cfg.run.seed,
                                         cfg.eval.kmeans_restarts, cfg.eval.final_fit_cells,
                                         cfg.eval.kmeans_select)
    history = state["history"]
    metrics: dict[str, Any] = {
        "n_cells": int(data.x.shape[0]), "n_genes": int(data.x.shape[1]), "n_clusters": data.n_clusters,
        "n_clusters_found": int(len(np.unique(labels))), "epochs": int(state["epochs"]),
        "selected_epoch": int(state["selector"]["best_epoch"]) if cfg.eval.selection != "last" else int(state["epoch"]),
        "selection_rule": cfg.eval.selection, "label_method": cfg.eval.label_method,
        "kmeans_restarts": cfg.eval.kmeans_restarts, "kmeans_select": cfg.eval.kmeans_select,
        "input_pca_weight": float(input_pca.weight) if input_pca is not None else 0.0,
        "input_pca_components": int(input_pca.components.shape[0]) if input_pca is not None else 0,
        "num_workers": cfg.run.num_workers, "seed": cfg.run.seed,
        "k_rule": data.k_info["rule"] if data.k_info else "given", **metrics_base,
    }
    if data.labels is not None:
        metrics.update(score_labels(data.labels, labels))
        metrics.update(oracle(history))  # reported for comparison with the paper only; never used to pick
    metrics["time_total_s"] = time.perf_counter() - t_start
    write_run(cfg, data, state, chosen, emb, labels, centroids, metrics, out, input_pca)
    if cfg.run.tracking:
        from jojoscl_dist.tracking.mlflow_log import log_run, tracking_uri

        try:
            log_run(cfg, metrics, history, out)
        except Exception as e:
            # The outputs stay valid and marked pending, the checkpoints stay: the same command retries the
            # logging without retraining (it resumes from the final checkpoint).
            raise TrackingError(f"training finished and outputs are in {out}, but MLflow logging to "
                               f"{tracking_uri(cfg, out)} failed: {e.__class__.__name__}: {e}; rerun the same "
                               f"command to retry (no retraining), or add --no-tracking") from e
    run_dir.mark_finished(out)
    if not cfg.run.storage_path:
        shutil.rmtree(default_storage(cfg), ignore_errors=True)  # finished: nothing left to resume
    return RunResult(out, labels, emb["z"] if isinstance(emb["z"], np.ndarray) else None, metrics, history)
