"""The run driver: data -> preprocessing -> Ray Train (or in-process) -> label-free pick -> outputs."""

from __future__ import annotations

import contextlib
import hashlib
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from jojoscl_dist.clustering.final import fit_input_pca, final_labels
from jojoscl_dist.clustering.input_pca import InputPCA
from jojoscl_dist.clustering.metrics import score_labels
from jojoscl_dist.config import JojoConfig
from jojoscl_dist.data.dataset import PreparedData, as_source, prepare_data, resolve_for_data
from jojoscl_dist.data.fingerprint import describe_change, same_data
from jojoscl_dist.data.zarr_store import ZarrSource
from jojoscl_dist.errors import JojoInputError, TrackingError, TrainingDiverged
from jojoscl_dist.model import build_model
from jojoscl_dist.outputs import run_dir
from jojoscl_dist.outputs.write_run import write_run
from jojoscl_dist.tracking.live import LiveRun
from jojoscl_dist.train.checkpoint import (clear_divergence, config_differences, latest_loadable, load_state,
                                           read_divergence, record_divergence)
from jojoscl_dist.train.embed import embed, embed_to_zarr
from jojoscl_dist.train.loop import WorkerData, resolve_epochs, train_worker, wants_gpu
from jojoscl_dist.train.session import EpochProgress, LocalSession


@dataclass
class RunResult:
    output: Path
    labels: np.ndarray
    embedding: np.ndarray | None  # z of every cell; None for a prepared store (read results.h5ad obsm instead)
    metrics: dict[str, Any]
    history: list[dict] = field(default_factory=list)


def default_run_name(cfg: JojoConfig) -> str:
    """Deterministic in the output path, so relaunching the same command resumes the same Ray run."""
    digest = hashlib.sha1(str(Path(cfg.run.output).resolve()).encode()).hexdigest()[:10]
    return cfg.run.run_name or f"jojoscl-{digest}"


def default_storage(cfg: JojoConfig) -> Path:
    if cfg.run.storage_path:
        return Path(cfg.run.storage_path).resolve()
    out = Path(cfg.run.output).resolve()
    return out.parent / f".{out.name}.ray"


def run_folder(cfg: JojoConfig) -> Path:
    """This run's own folder on the storage: its checkpoints and, for a large raw input, its prepared store."""
    return default_storage(cfg) / default_run_name(cfg)


@dataclass
class TrainResult:
    state: dict  # the final checkpoint's state (see checkpoint.py)
    checkpoint: Path  # where that state was loaded from
    epochs_run: int  # epochs trained by this call: 0 when an earlier launch had finished them all
    resumed: bool  # started from an earlier launch's checkpoint


def train(cfg: JojoConfig, data: PreparedData, tracking: LiveRun | None = None) -> TrainResult:
    """Train in-process (num_workers 0) or on Ray, resuming from this run's newest complete checkpoint; rank 0 logs
    each epoch to the MLflow run ``tracking`` while it trains. Raises
    TrainingDiverged on a NaN/Inf loss (recorded: a relaunch stops at once), TrainingFailed when Ray Train gave up,
    JojoInputError when the checkpoints found belong to another config or other data."""
    cfg = resolve_for_data(cfg, data)
    root = run_folder(cfg)
    resume = check_resume(cfg, root, data.fingerprint)
    start = resume[1]["epoch"] + 1 if resume else 0
    epochs = resolve_epochs(cfg, data.x.shape[0])
    if resume and resume[1]["epoch"] >= epochs - 1:  # finished earlier (e.g. its tracking step failed)
        return TrainResult(resume[1], resume[0], 0, True)
    if cfg.run.num_workers > 0 and data.x.shape[0] < cfg.run.num_workers:
        raise JojoInputError(f"{data.x.shape[0]} cells cannot be shared among {cfg.run.num_workers} workers")
    try:
        if cfg.run.num_workers <= 0:  # in-process, no Ray (tests, benchmarks, debugging); same checkpoint layout
            progress = EpochProgress(epochs, mode="off" if cfg.run.quiet else "auto")
            session = LocalSession(root, "cuda" if wants_gpu(cfg) else "cpu", progress,
                                   resume[0] if resume else None, discover=False)
            with contextlib.ExitStack() as stack:
                stack.callback(progress.close)
                if tracking is not None:
                    session.observers.append(stack.enter_context(tracking.epoch_logger()))
                train_worker(cfg, WorkerData(as_source(data.x), data.n_clusters, data.labels, data.fingerprint),
                             session)
            if session.metrics and session.metrics[-1].get("diverged"):
                raise TrainingDiverged(session.metrics[-1]["diverged"])
            ckpt = session.checkpoint
        else:
            from jojoscl_dist.train.ray_session import TrainInputs, fit_ray

            ckpt = fit_ray(cfg, TrainInputs.of(data, tracking), str(root.parent), root.name,
                           resume_from=str(resume[0]) if resume else None)
    except TrainingDiverged as e:
        record_divergence(root, str(e), cfg.to_dict())  # a relaunch stops in check_resume
        raise
    state = load_state(ckpt)
    return TrainResult(state, Path(ckpt), state["epoch"] + 1 - start, resume is not None)


def oracle(history: list[dict]) -> dict[str, float]:
    """The evaluation with the best ARI against the truth (the paper's figure), of the final labels where logged."""
    evals = [h for h in history if "eval_ari" in h]
    if not evals:
        return {}
    key = "eval_final" if all("eval_final_ari" in h for h in evals) else "eval"
    best = max(evals, key=lambda h: h[f"{key}_ari"])
    return {"oracle_epoch": int(best["epoch"]), "oracle_ari": float(best[f"{key}_ari"]),
            "oracle_nmi": float(best[f"{key}_nmi"])}


def chosen_weights(cfg: JojoConfig, state: dict) -> dict:
    """The weights the selection rule kept (the last epoch's for rule 'last', or when no evaluation was kept)."""
    if state.get("best_model") is not None and cfg.eval.selection != "last":
        return state["best_model"]
    return state["model"]


def label_cells(cfg: JojoConfig, data: PreparedData, state: dict, weights: dict, input_pca: InputPCA | None,
                scratch: Path | None = None) -> tuple[dict, np.ndarray, np.ndarray]:
    """Every cell embedded with ``weights`` (and projected on ``input_pca``) and given its final label ->
    (embedding, labels, centroids). With ``scratch`` a prepared store is embedded into a Zarr group there."""
    model = build_model(cfg.model, state["n_genes"], state["n_clusters"])
    model.load_state_dict(weights)
    project = input_pca.coords if input_pca is not None else None
    if scratch is not None and isinstance(data.x, ZarrSource):
        emb = embed_to_zarr(model, data.x, scratch / "embedding.zarr", project=project)
    else:
        emb = embed(model, as_source(data.x), project=project)
    ev = cfg.eval
    labels, centroids = final_labels(emb, data.n_clusters, ev.label_method, cfg.run.seed, ev.kmeans_restarts,
                                     ev.kmeans_select, input_pca=input_pca, fit_cells=ev.final_fit_cells)
    return emb, labels, centroids


def check_resume(cfg: JojoConfig, root: Path, data_fp: dict | None = None) -> tuple[Path, dict] | None:
    """Stop a relaunch of settings that diverged (until --overwrite or a changed config); return the checkpoint to
    resume from, with its state; refuse one of another config or of other data."""
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


def run(cfg: JojoConfig) -> RunResult:
    t_start = time.perf_counter()
    cfg.validate()  # refused before any output or hours of training
    out = Path(cfg.run.output).resolve()
    with contextlib.ExitStack() as locks:  # one run per output folder and per run name on a --storage-path
        locks.enter_context(run_dir.RunLock(out.parent / f".{out.name}.lock", f"--output {cfg.run.output}"))
        if cfg.run.storage_path:
            name = default_run_name(cfg)
            locks.enter_context(run_dir.RunLock(default_storage(cfg) / f".{name}.lock",
                                        f"run {name} on --storage-path {cfg.run.storage_path}"))
        return _run_locked(cfg, t_start, locks)


def _run_locked(cfg: JojoConfig, t_start: float, stack: contextlib.ExitStack) -> RunResult:
    out = run_dir.check_output(cfg.run.output, cfg.run.overwrite, [cfg.data.path] if cfg.data.path else [])
    if cfg.run.tracking:  # an unreachable MLflow store fails here, not after hours of training
        from jojoscl_dist.tracking.mlflow_log import check_tracking, log_run, start_run, tracking_uri

        check_tracking(cfg, out)
    data = prepare_data(cfg, run_folder(cfg))
    cfg = resolve_for_data(cfg, data)
    if cfg.data.path is None:
        print(f"jojoscl: no --data given: training on the {data.source}", flush=True)
    # The MLflow run, open while training; an exception from here on marks it FAILED.
    tracker = stack.enter_context(start_run(cfg, out, data, run_folder(cfg))) if cfg.run.tracking else None
    # An atlas: embeddings go to disk, so memory stays flat in cells.
    scratch = (Path(tempfile.mkdtemp(prefix=f".{out.name}.embedding-", dir=out.parent))
               if isinstance(data.x, ZarrSource) else None)
    try:
        f = fit(cfg, data, t_start, scratch, tracker.live if tracker else None)
        write_run(cfg, data, f.state, f.chosen, f.emb, f.labels, f.centroids, f.metrics, out, f.input_pca)
    finally:
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)
    if cfg.run.tracking:
        try:
            log_run(cfg, f.metrics, f.history, out, run_id=tracker.run_id, input_genes=tracker.input_genes)
        except Exception as e:
            # The outputs stay valid and marked pending, the checkpoints stay: the same command retries the
            # logging without retraining (it resumes from the final checkpoint).
            raise TrackingError(f"training finished and outputs are in {out}, but MLflow logging to "
                                f"{tracking_uri(cfg, out)} failed: {e.__class__.__name__}: {e}; rerun the same "
                                f"command to retry (no retraining), or add --no-tracking") from e
    run_dir.mark_finished(out)
    if not cfg.run.storage_path:
        shutil.rmtree(default_storage(cfg), ignore_errors=True)  # finished: nothing left to resume
    return RunResult(out, f.labels, f.emb["z"] if isinstance(f.emb["z"], np.ndarray) else None, f.metrics,
                     f.history)


@dataclass
class Fit:
    """A trained data set: what the CLI writes and the Python API (api.py) keeps."""

    cfg: JojoConfig  # with the settings that depend on the data
    state: dict  # the final checkpoint's
    chosen: dict  # the weights the selection rule kept
    input_pca: InputPCA | None
    emb: dict  # embedding of the kept cells
    labels: np.ndarray  # cluster of each kept cell
    centroids: np.ndarray
    metrics: dict[str, Any]

    @property
    def history(self) -> list[dict]:
        return self.state["history"]


def fit(cfg: JojoConfig, data: PreparedData, t_start: float, scratch: Path | None = None,
        tracking: LiveRun | None = None) -> Fit:
    """Train on ``data`` (prepared since ``t_start``), pick the weights label-free and label every kept cell;
    ``tracking``: the MLflow run the epochs go to while training."""
    cfg = resolve_for_data(cfg, data)
    t_prep = time.perf_counter() - t_start
    state = train(cfg, data, tracking).state
    t_train = time.perf_counter() - t_start - t_prep
    chosen = chosen_weights(cfg, state)
    input_pca = fit_input_pca(cfg.eval, as_source(data.x), cfg.run.seed)  # the run's one fit: labels and bundle
    emb, labels, centroids = label_cells(cfg, data, state, chosen, input_pca, scratch)
    metrics: dict[str, Any] = {
        "n_cells": int(data.x.shape[0]), "n_genes": int(data.x.shape[1]), "n_clusters": data.n_clusters,
        "n_clusters_found": int(len(np.unique(labels))), "epochs": int(state["epochs"]),
        "selected_epoch": int(state["selector"]["best_epoch"] if cfg.eval.selection != "last" else state["epoch"]),
        "selection_rule": cfg.eval.selection, "label_method": cfg.eval.label_method,
        "kmeans_restarts": cfg.eval.kmeans_restarts, "kmeans_select": cfg.eval.kmeans_select,
        "input_pca_weight": float(input_pca.weight) if input_pca is not None else 0.0,
        "input_pca_components": int(input_pca.components.shape[0]) if input_pca is not None else 0,
        "num_workers": cfg.run.num_workers, "seed": cfg.run.seed,
        "k_rule": data.k_info["rule"] if data.k_info else "given", "time_prepare_s": t_prep,
        "time_train_s": t_train,
    }
    if data.labels is not None:
        metrics.update(score_labels(data.labels, labels))
        metrics.update(oracle(state["history"]))  # reported for comparison with the paper only; never used to pick
    metrics["time_total_s"] = time.perf_counter() - t_start
    return Fit(cfg, state, chosen, input_pca, emb, labels, centroids, metrics)
