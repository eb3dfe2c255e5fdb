"""`python -m tune.sweep`: Ray Tune over the JojoSCL loss weights, temperatures and training knobs.

Each trial is a Ray Train run (tune/trainable.py). ASHA stops weak trials early on a label-free score that compares
across configs (``--objective``, docs/tune.md); every trial is an MLflow child run of one parent run for the sweep.
Outputs in --output: best.yaml (the best trial as a full JojoConfig), trials.csv and trials.md (every trial),
best_run/ (the best config retrained as a normal run), trials/<id>/ (config.yaml, metrics.json), and the embedded
MLflow store mlflow.db, mlartifacts/ (unless --tracking-uri).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import os
import shutil
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from jojoscl_dist.config import JojoConfig, check_local_path
from jojoscl_dist.version import __version__
from jojoscl_dist.errors import JojoInputError
from jojoscl_dist.outputs import run_dir
from tune.space import DEFAULT_SPACE, apply_trial_config, load_space, to_tune

OBJECTIVES = {  # name -> (reported metric, mode, supervised?)
    # Silhouette of the trial's clusters in PCA(50) of the input: a space shared by every trial (selection.py).
    "input-silhouette": ("select_input_silhouette", "max", False),
    "embedding-silhouette": ("select_silhouette", "max", False),
    "ari": ("eval_ari", "max", True),
}
LABEL_FREE_SCORES = ("select_silhouette", "select_input_silhouette", "select_stability")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m tune.sweep", description="Ray Tune sweep of JojoSCL "
                                "hyper-parameters; every trial is tracked in MLflow.")
    p.add_argument("--version", action="version", version=f"jojoscl-dist {__version__}")
    p.add_argument("--data", required=True, help="input data set (.h5ad, .h5, 10x, .zarr)")
    p.add_argument("--num-samples", type=int, required=True, help="number of trials")
    p.add_argument("--scheduler", choices=("asha", "fifo"), default="asha", help="asha stops weak trials early")
    p.add_argument("--search", choices=("optuna", "random"), default="optuna")
    p.add_argument("--objective", choices=tuple(OBJECTIVES), default="input-silhouette",
                   help="input-silhouette (default, label-free): silhouette of a trial's clusters in PCA of the "
                   "input; embedding-silhouette (label-free): in the trial's own embedding, not comparable "
                   "across temperatures; ari: SUPERVISED, needs --label-key")
    p.add_argument("--space", help=f"search space YAML (default {DEFAULT_SPACE.name})")
    p.add_argument("--config", help="base JojoConfig YAML; the sampled values replace its fields")
    p.add_argument("--resources-per-trial", default="workers=1,cpu=1,gpu=0",
                   help="Ray Train workers per trial and CPU/GPU per worker, e.g. workers=1,cpu=1,gpu=0.5")
    p.add_argument("--max-concurrent", type=int, help="trials at once (default: what the CPU/GPU budget fits)")
    p.add_argument("--num-cpus", type=int, help="logical CPUs for a local Ray (default: physical + 1)")
    p.add_argument("--output", default="runs/sweep", help="sweep output directory")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier sweep in --output")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default: MLFLOW_TRACKING_URI, else sqlite under "
                   "--output)")
    p.add_argument("--experiment", default="jojoscl-sweep", help="MLflow experiment name")
    p.add_argument("--storage-path", help="Ray storage for trials/checkpoints (default: <output>/ray)")
    p.add_argument("--label-key", help="obs column with true labels (reported; needed by --objective ari)")
    p.add_argument("--n-clusters", type=int, help="number of clusters K")
    p.add_argument("--epochs", type=int, help="epochs per trial (ASHA's max_t)")
    p.add_argument("--batch-size", type=int, help="global batch size")
    p.add_argument("--eval-every", type=int, default=1, help="epochs between evaluations (ASHA sees only these)")
    p.add_argument("--grace-period", type=int, help="ASHA: epochs before a trial can be stopped (default epochs/10)")
    p.add_argument("--reduction-factor", type=float, default=3.0, help="ASHA reduction factor")
    p.add_argument("--seed", type=int, default=0, help="seed of the searcher and of every trial")
    p.add_argument("--no-default-trial", action="store_true",
                   help="do not evaluate the default config as the first trial")
    p.add_argument("--no-best-run", action="store_true", help="skip retraining the best config as a normal run")
    return p


def base_config(args: argparse.Namespace, workers: int) -> JojoConfig:
    base = JojoConfig.load(args.config) if args.config else JojoConfig()
    given = {"data.label_key": args.label_key, "data.n_clusters": args.n_clusters, "optim.epochs": args.epochs,
             "optim.batch_size": args.batch_size}
    return base.override({"data.path": str(Path(args.data).resolve()), "run.seed": args.seed,
                          "run.num_workers": workers, "eval.eval_every": args.eval_every, "run.tracking_uri": None,
                          "run.storage_path": None, "run.quiet": True,
                          **{k: v for k, v in given.items() if v is not None}})


def _init_ray(num_cpus: int | None) -> bool:
    """Start a local Ray unless one is running or RAY_ADDRESS names a cluster; True if we started it."""
    import socket

    import ray

    from jojoscl_dist.train.ray_session import RAY_ENV

    if ray.is_initialized():
        return False
    for k, v in RAY_ENV.items():
        os.environ.setdefault(k, v)
    if os.environ.get("RAY_ADDRESS"):
        ray.init(runtime_env={"env_vars": RAY_ENV}, logging_level=logging.WARNING)
        return True
    # Train's PlacementGroupCleaner asks the State API whether a trial's Train controller died (ASHA kills the
    # trial, also at max_t) before it frees the workers' bundles. Without a dashboard, or with several Ray
    # clusters on one host ("Found multiple active Ray instances"), that query fails, the bundles stay reserved
    # and later trials wait forever: pin the dashboard port and tell every process where it is.
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {**RAY_ENV, "RAY_API_SERVER_ADDRESS": f"http://127.0.0.1:{port}"}
    # Logical CPUs above physical: a Tune trial + its Train workers on all physical cores hung.
    ray.init(address="local", num_cpus=num_cpus or (os.cpu_count() or 1) + 1, runtime_env={"env_vars": env},
             include_dashboard=True, dashboard_host="127.0.0.1", dashboard_port=port,
             logging_level=logging.WARNING, log_to_driver=False)
    return True


def default_point(base: JojoConfig, space: dict[str, dict], nested: bool) -> dict | None:
    """The base config's values of the searched keys, if every one lies inside the space."""
    d = base.to_dict()
    point: dict[str, Any] = {}
    for key, spec in space.items():
        section, name = key.split(".", 1)
        v = d[section][name]
        inside = v in spec["values"] if spec["dist"] == "choice" else (
            isinstance(v, (int, float)) and spec["low"] <= v <= spec["high"])
        if not inside:
            return None
        if nested:
            point.setdefault(section, {})[name] = v
        else:
            point[f"{section}/{name}"] = v
    return point


# Everything a sweep may write into --output (run_dir.is_our_run: --overwrite replaces nothing else).
SWEEP_ENTRIES = ["space.yaml", "ray", "trials", "trials.csv", "trials.md", "best.yaml", "summary.json", "best_run",
                 "rerun", "mlflow.db", "mlartifacts"]


def run_sweep(argv: list[str] | None = None) -> dict[str, Any]:
    args = build_parser().parse_args(argv)
    import ray
    from mlflow import MlflowClient
    from mlflow.entities import Param

    from jojoscl_dist.data.dataset import prepare_data
    from jojoscl_dist.train.loop import resolve_epochs
    from jojoscl_dist.train.run import run_folder
    from tune.trainable import TrialResources
    from tune.tracking import ensure_experiment

    if args.num_samples < 1:
        raise JojoInputError(f"--num-samples must be at least 1, got {args.num_samples}")
    if args.eval_every < 1:
        raise JojoInputError(f"--eval-every must be at least 1, got {args.eval_every}")
    metric, _, supervised = OBJECTIVES[args.objective]
    if supervised and not args.label_key:
        raise JojoInputError("--objective ari compares with true labels: pass --label-key KEY (or use the "
                             "default label-free objective)")
    space = load_space(args.space)
    res = TrialResources.parse(args.resources_per_trial)
    for flag in ("data", "output", "storage_path"):
        check_local_path("--" + flag.replace("_", "-"), getattr(args, flag))
    base = base_config(args, res.workers)
    out = run_dir.check_output(args.output, args.overwrite, [args.data] if args.data else [])
    if out.exists():
        shutil.rmtree(out)  # an earlier sweep of ours (check_output refuses anything else)
    out.mkdir(parents=True)
    out = out.resolve()
    run_dir.write_marker(out, SWEEP_ENTRIES)  # from the start: an interrupted sweep is ours to replace too
    data = prepare_data(base, run_folder(base))
    max_t = resolve_epochs(base, data.x.shape[0])
    if max_t < 1:
        raise JojoInputError(f"--epochs must be at least 1, got {max_t}")

    started_ray = _init_ray(args.num_cpus)
    try:
        t0 = time.perf_counter()
        uri, artifacts = sweep_tracking(args.tracking_uri, out)
        client = MlflowClient(uri)
        exp_id = ensure_experiment(client, args.experiment, artifacts)
        pid = client.create_run(exp_id, run_name=f"sweep-{out.name}", tags={
            "jojoscl.kind": "sweep",
            "jojoscl.objective": f"{args.objective} ({metric}, {'SUPERVISED' if supervised else 'label-free'})",
        }).info.run_id
        client.log_batch(pid, params=[Param(k, str(v)) for k, v in {
            "data": base.data.path, "num_samples": args.num_samples, "scheduler": args.scheduler,
            "search": args.search, "objective": args.objective, "metric": metric, "epochs": max_t,
            "eval_every": args.eval_every, "resources_per_trial": args.resources_per_trial, "seed": args.seed,
            "n_clusters": data.n_clusters, "n_cells": data.x.shape[0]}.items()])
        (out / "space.yaml").write_text(Path(args.space or DEFAULT_SPACE).read_text())
        client.log_artifact(pid, str(out / "space.yaml"))
        try:
            summary = _sweep(args, base, data, space, res, out, max_t, (client, exp_id, pid, uri), t0)
        except BaseException:
            client.set_terminated(pid, status="FAILED")
            raise
        client.set_terminated(pid)
        return {**summary, "parent_run_id": pid, "tracking_uri": uri}
    finally:
        if started_ray:
            ray.shutdown()


def _sweep(args, base: JojoConfig, data, space: dict, res, out: Path, max_t: int, mlflow_run: tuple,
           t0: float) -> dict[str, Any]:
    """Run the trials, write the tables and best.yaml, retrain the best config; log all of it to the parent run."""
    import ray
    from mlflow.entities import Metric
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
    from ray.tune.search.basic_variant import BasicVariantGenerator

    from jojoscl_dist.data.zarr_store import ZarrSource
    from jojoscl_dist.train.ray_session import TrainInputs
    from tune.trainable import TRIAL_HEAD_CPU, train_trial
    from tune.tracking import MlflowTrialCallback

    client, exp_id, pid, uri = mlflow_run
    metric, mode, supervised = OBJECTIVES[args.objective]
    cluster = ray.cluster_resources()
    concurrency = args.max_concurrent or res.concurrency(cluster)
    if res.gpu > 0 and cluster.get("GPU", 0) < res.gpu * res.workers:
        raise JojoInputError(f"--resources-per-trial asks for {res.gpu * res.workers} GPU per trial but Ray sees "
                             f"{cluster.get('GPU', 0)}; set gpu=0 or run where a GPU is visible")
    # Optuna takes the default point flat ("loss/alpha"), the random search nested like the param space.
    point = None if args.no_default_trial else default_point(base, space, nested=args.search != "optuna")
    if args.search == "optuna":
        from ray.tune.search.optuna import OptunaSearch

        searcher = OptunaSearch(seed=args.seed, points_to_evaluate=[point] if point else None)
    else:
        searcher = BasicVariantGenerator(random_state=args.seed, points_to_evaluate=[point] if point else None)
    scheduler = FIFOScheduler() if args.scheduler == "fifo" else ASHAScheduler(
        time_attr="training_iteration", max_t=max_t, grace_period=min(args.grace_period or max(1, max_t // 10), max_t),
        reduction_factor=args.reduction_factor)

    storage = Path(args.storage_path).resolve() if args.storage_path else out / "ray"
    inputs = TrainInputs.of(data)
    if not isinstance(data.x, ZarrSource):  # one copy in the object store for every trial (a store goes by path)
        inputs = dataclasses.replace(inputs, x=ray.put(data.x))
    shared = {"base": base.to_dict(), "inputs": inputs, "resources": res, "storage": str(storage / "train")}
    callback = MlflowTrialCallback(client, exp_id, pid, base, out / "trials", max_t)
    tuner = tune.Tuner(
        tune.with_resources(tune.with_parameters(train_trial, shared=shared), {"CPU": TRIAL_HEAD_CPU}),
        param_space=to_tune(space),
        tune_config=tune.TuneConfig(metric=metric, mode=mode, num_samples=args.num_samples, scheduler=scheduler,
                                    search_alg=searcher, max_concurrent_trials=concurrency),
        run_config=tune.RunConfig(name="tune", storage_path=str(storage), callbacks=[callback], verbose=0,
                                  failure_config=tune.FailureConfig(max_failures=0)),
    )
    print(f"jojoscl-sweep: {args.num_samples} trials x {max_t} epochs on {data.x.shape[0]} cells, "
          f"{concurrency} at a time, {args.scheduler}/{args.search}, objective {metric} "
          f"({'SUPERVISED' if supervised else 'label-free'})", flush=True)
    grid = tuner.fit()
    t_sweep = time.perf_counter() - t0

    table, configs = trial_table(grid, callback.history, space, metric, max_t, base)
    table.to_csv(out / "trials.csv", index=False)
    (out / "trials.md").write_text(markdown_table(table, metric, supervised))
    done = table[(table["status"] == "TERMINATED") & (table["epochs_done"] >= max_t) & table[metric].notna()]
    pool = done if len(done) else table[table[metric].notna()]
    if not len(pool):
        raise RuntimeError(f"no trial reported {metric}; see {out / 'trials.csv'} and the Ray logs in {storage}")
    best = pool.sort_values(metric, ascending=(mode == "min")).iloc[0]
    best_cfg = apply_trial_config(base, configs[best["trial_id"]])
    best_cfg.override({"run.output": str(out / "rerun"), "run.quiet": False}).save(out / "best.yaml")

    summary: dict[str, Any] = {
        "best_trial": best["trial_id"], "objective": args.objective, "metric": metric,
        "supervised_objective": supervised, f"best_{metric}": float(best[metric]), "n_trials": len(table),
        "n_completed": int((table["epochs_done"] >= max_t).sum()), "n_stopped_early": int(table["stopped_early"].sum()),
        "n_errors": int((table["status"] == "ERROR").sum()), "time_sweep_s": t_sweep, "concurrency": concurrency}
    if pd.notna(best["eval_ari"]):
        summary["best_trial_eval_ari"] = float(best["eval_ari"])
    if table["is_default"].any():
        d = table[table["is_default"]].iloc[0]
        summary |= {"default_trial": d["trial_id"], f"default_{metric}": _float(d[metric]),
                    "default_trial_eval_ari": _float(d["eval_ari"])}
    if not args.no_best_run:
        # Rerun with the trials' CPUs per worker (= torch threads): with another thread count the float
        # results drift apart (1 vs 2 threads moved Yan's input silhouette by 0.004 after 4 epochs at lr 7e-3).
        summary |= best_run(best_cfg.override({"run.cpus_per_worker": max(1, int(res.cpu))}), out, uri,
                            args.experiment, pid)
    run_dir.write_json(out / "summary.json", summary)
    for name in ("best.yaml", "trials.csv", "trials.md", "summary.json", "best_run/umap.png"):
        if (out / name).exists():
            client.log_artifact(pid, str(out / name))
    now = int(time.time() * 1000)
    client.log_batch(pid, metrics=[Metric(k, float(v), now, 0) for k, v in summary.items()
                                   if isinstance(v, (int, float)) and not isinstance(v, bool)])
    client.set_tag(pid, "jojoscl.best_trial", best["trial_id"])
    return summary


def _float(v) -> float | None:
    return None if pd.isna(v) else float(v)


def _last(hist: list[dict], key: str, default: Any = np.nan) -> Any:
    """The latest value of ``key`` in a trial's per-epoch history."""
    return next((h[key] for h in reversed(hist) if key in h), default)


def trial_table(grid, history: dict[str, list[dict]], space: dict, metric: str, max_t: int,
                base: JojoConfig) -> tuple[pd.DataFrame, dict[str, dict]]:
    """One row per trial (from the metrics the MLflow callback saw) and each trial's sampled config."""
    rows, configs = [], {}
    for r in grid:
        trial_id = (r.metrics or {}).get("trial_id") or next(
            (t for t in history if t in Path(r.path).name), Path(r.path).name)
        hist = history.get(trial_id, [])
        configs[trial_id] = r.config or {}
        flat = {f"{s}.{k}": v for s, sub in configs[trial_id].items() if isinstance(sub, dict) for k, v in sub.items()}
        scores = [h[metric] for h in hist if metric in h]
        rows.append({
            "trial_id": trial_id, **{key: flat.get(key) for key in space},
            "status": "ERROR" if r.error else "TERMINATED", "epochs_done": len(hist),
            "stopped_early": bool(r.error is None and len(hist) < max_t),
            metric: _last(hist, metric),  # the trial's final score (what the scheduler saw last)
            f"max_{metric}": max(scores) if scores else np.nan,
            # every label-free score side by side, whichever one is the objective
            **{other: _last(hist, other) for other in LABEL_FREE_SCORES if other != metric},
            "eval_ari": _last(hist, "eval_ari"),  # reported only; never used unless --objective ari
            "loss": hist[-1]["loss"] if hist else np.nan,
            "error": str(r.error).splitlines()[0][:200] if r.error else ""})
    table = pd.DataFrame(rows)
    b = base.to_dict()
    defaults = {k: b[k.split(".")[0]][k.split(".", 1)[1]] for k in space}  # the base config's own values
    table["is_default"] = table.apply(lambda row: all(_close(row[k], v) for k, v in defaults.items()), axis=1)
    return table.sort_values(metric, ascending=False, na_position="last").reset_index(drop=True), configs


def _close(a, b) -> bool:
    try:
        return math.isclose(float(a), float(b), rel_tol=1e-9)
    except (TypeError, ValueError):
        return a == b


def markdown_table(table: pd.DataFrame, metric: str, supervised: bool) -> str:
    head = (f"Sweep trials, best first by `{metric}` ({'SUPERVISED objective' if supervised else 'label-free objective'}); "
            "`eval_ari` is reported for reference only" + ("" if supervised else " and never used to choose") + ".\n\n")
    cells = table.astype(object).map(lambda v: "" if pd.isna(v) else f"{v:.4g}" if isinstance(v, float) else str(v))
    lines = ["| " + " | ".join(table.columns) + " |", "|" + "---|" * len(table.columns)]
    return head + "\n".join(lines + ["| " + " | ".join(row) + " |" for row in cells.itertuples(index=False)]) + "\n"


def best_run(cfg: JojoConfig, out: Path, uri: str, experiment: str, parent_id: str) -> dict[str, Any]:
    """Retrain the best config as a normal run (same code path as a trial; it writes umap.png and summary.md),
    logged as a child run."""
    from mlflow import MlflowClient

    from jojoscl_dist.tracking.mlflow_log import log_run
    from jojoscl_dist.train.run import run

    cfg = cfg.override({"run.output": str(out / "best_run"), "run.tracking": False, "run.tracking_uri": uri,
                        "run.experiment": experiment, "run.run_name": "best-rerun", "run.plots": True})
    result = run(cfg)
    rid = log_run(cfg, result.metrics, result.history, result.output, parent_run_id=parent_id)
    MlflowClient(uri).set_tag(rid, "jojoscl.kind", "best")
    return {**{f"best_run_{s}": _last(result.history, s, None) for s in LABEL_FREE_SCORES},
            **{f"best_run_{k}": result.metrics[k] for k in ("ari", "nmi", "acc", "n_clusters_found")
               if k in result.metrics}}


def sweep_tracking(given: str | None, out: Path) -> tuple[str, Path | None]:
    """(tracking URI, artifact folder): --tracking-uri, else MLFLOW_TRACKING_URI (a k8s job's server), else an
    embedded sqlite store with its artifacts under the sweep folder; a server keeps its own artifact store."""
    uri = given or os.environ.get("MLFLOW_TRACKING_URI")
    return (uri, None) if uri else (f"sqlite:///{out / 'mlflow.db'}", out / "mlartifacts")


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="jojoscl-sweep: %(levelname)s: %(message)s")
    warnings.filterwarnings("ignore", category=FutureWarning)
    try:
        summary = run_sweep(argv)
    except (JojoInputError, KeyError, ValueError) as e:
        msg = e.args[0] if isinstance(e, KeyError) and e.args else e
        print(f"jojoscl: error: {msg}", file=sys.stderr)
        return 2
    print("jojoscl-sweep: " + json.dumps(summary, default=str), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
