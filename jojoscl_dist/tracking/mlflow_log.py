"""MLflow tracking of a run. The driver opens the run when training starts (``start_run``: params, tags, the input
as a dataset), rank 0 logs each epoch while it trains (live.py) and ``log_run`` ends it: final metrics, artifacts,
the model as an MLflow pyfunc model (jojoscl_dist/pyfunc.py). Default store: ``sqlite:///<output>/mlflow.db``
with artifacts beside it; ``--tracking-uri`` or MLFLOW_TRACKING_URI for a server."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jojoscl_dist.config import JojoConfig
from jojoscl_dist.errors import TrackingError
from jojoscl_dist.outputs import bundle
from jojoscl_dist.tracking.live import LiveRun, numeric
from jojoscl_dist.version import __version__

log = logging.getLogger(__name__)
RUN_RECORD = "mlflow_run.json"  # in the run's checkpoint folder: the MLflow run a relaunch continues
PYFUNC_LOADER = "jojoscl_dist.pyfunc"  # the installed module that loads the logged model: it stores no code
MAX_DIGEST = 36  # characters MLflow keeps of a dataset digest
def tracking_uri(cfg: JojoConfig, output: Path) -> str:
    return cfg.run.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path(output).resolve() / 'mlflow.db'}"


HEALTH_TIMEOUT_S = 5.0  # seconds for /health before a tracking server counts as unreachable


def check_tracking(cfg: JojoConfig, output: Path) -> None:
    """Fail before any training when the MLflow store cannot be reached: an http(s) server must answer 'OK' on
    /health; a sqlite database's folder must be creatable. Other schemes are left to MLflow."""
    from urllib.error import HTTPError, URLError
    from urllib.request import urlopen

    from jojoscl_dist.errors import JojoInputError

    uri = tracking_uri(cfg, output)
    fix = "start the server, fix --tracking-uri / MLFLOW_TRACKING_URI, or pass --no-tracking"
    if uri.startswith(("http://", "https://")):
        try:
            with urlopen(uri.rstrip("/") + "/health", timeout=HEALTH_TIMEOUT_S) as resp:
                status = resp.status
        except HTTPError as e:
            status = e.code
        except (URLError, OSError, ValueError) as e:
            reason = getattr(e, "reason", e)
            raise JojoInputError(f"MLflow tracking server {uri} is unreachable ({reason}); {fix}") from e
        if status != 200:
            raise JojoInputError(f"MLflow tracking server {uri} answered HTTP {status} on /health ({fix})")
    elif uri.startswith("sqlite:///"):
        folder = probe = Path(uri[len("sqlite:///"):]).parent
        while not probe.exists() and probe != probe.parent:
            probe = probe.parent
        if not probe.is_dir() or not os.access(probe, os.W_OK):
            raise JojoInputError(f"MLflow store {uri}: folder {folder} cannot be created or written ({fix})")


def flat_params(d: dict[str, Any], prefix: str = "") -> dict[str, str]:
    out: dict[str, str] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flat_params(v, key + "."))
        else:
            out[key] = str(v)
    return out


def experiment_id(client, cfg: JojoConfig, uri: str, output: Path) -> str:
    exp = client.get_experiment_by_name(cfg.run.experiment)
    if exp is not None:
        return exp.experiment_id
    artifact_location = (Path(output).resolve() / "mlartifacts").as_uri() if uri.startswith("sqlite") else None
    return client.create_experiment(cfg.run.experiment, artifact_location=artifact_location)


def git_commit() -> str | None:
    """The commit of the source checkout this package runs from (an editable install), else None."""
    from mlflow.utils.git_utils import get_git_commit

    src = Path(__file__).resolve().parents[2]
    return get_git_commit(str(src)) if (src / "pyproject.toml").is_file() else None


@dataclass
class Tracker:
    """The MLflow run of a training run, open from the start of training. As a context manager it marks the run
    FAILED (KILLED on Ctrl-C) when the run ends in an exception before ``log_run`` ended it."""

    client: Any
    live: LiveRun
    input_genes: list[str]  # every input gene: predictions normalise by a cell's total over them all

    @property
    def run_id(self) -> str:
        return self.live.run_id

    def __enter__(self) -> Tracker:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            return
        status = "KILLED" if issubclass(exc_type, KeyboardInterrupt) else "FAILED"
        try:
            if self.client.get_run(self.run_id).info.status == "RUNNING":
                self.client.set_tag(self.run_id, "jojoscl.error", f"{exc_type.__name__}: {exc}"[:5000])
                self.client.set_terminated(self.run_id, status)
        except Exception as e:  # the run's own exception is the one to report
            log.warning("could not mark MLflow run %s %s: %s", self.run_id, status, e)


def continued_run(client, uri: str, run_folder: Path) -> str | None:
    """The MLflow run an earlier launch of this run recorded in its checkpoint folder, if it is still there."""
    try:
        saved = json.loads((run_folder / RUN_RECORD).read_text())
        run = client.get_run(saved["run_id"]) if saved["tracking_uri"] == uri else None
    except Exception:  # no record, or its run deleted
        return None
    return run.info.run_id if run is not None and run.info.lifecycle_stage == "active" else None


def start_run(cfg: JojoConfig, output: Path, data, run_folder: Path) -> Tracker:
    """Open (or, for a relaunch of a killed run, continue) the MLflow run of ``data`` (a PreparedData) before
    training: params, tags (dataset, K, workers, git commit) and the input file as an MLflow dataset."""
    try:
        return _start_run(cfg, output, data, run_folder)
    except Exception as e:
        raise TrackingError(f"could not open the MLflow run at {tracking_uri(cfg, output)}: "
                            f"{e.__class__.__name__}: {e}; rerun, or add --no-tracking") from e


def _start_run(cfg: JojoConfig, output: Path, data, run_folder: Path) -> Tracker:
    from mlflow import MlflowClient
    from mlflow.entities import Param, RunTag

    uri = tracking_uri(cfg, output)
    client = MlflowClient(uri)
    params = {k: v[:6000] for k, v in flat_params(cfg.to_dict()).items()}
    tags = {"dataset": Path(cfg.data.path).name if cfg.data.path else "demo", "K": str(data.n_clusters),
            "workers": str(cfg.run.num_workers)}
    if commit := git_commit():
        tags["mlflow.source.git.commit"] = commit
    rid = continued_run(client, uri, run_folder)
    if rid is None:
        rid = client.create_run(experiment_id(client, cfg, uri, output),
                                run_name=cfg.run.run_name or Path(output).name).info.run_id
        run_folder.mkdir(parents=True, exist_ok=True)
        (run_folder / RUN_RECORD).write_text(json.dumps({"tracking_uri": uri, "run_id": rid}))
        log_dataset(client, rid, data.fingerprint)
        old = {}
    else:
        client.update_run(rid, status="RUNNING")
        old = client.get_run(rid).data.params
        # MLflow params never change: what a relaunch may change (run.*, epochs) is noted in a tag instead
        changed = [f"{k}: {old[k]} -> {v}" for k, v in params.items() if k in old and old[k] != v]
        if changed:
            tags["jojoscl.resumed_with"] = "; ".join(changed)[:5000]
    client.log_batch(rid, params=[Param(k, v) for k, v in params.items() if k not in old],
                     tags=[RunTag(k, v) for k, v in tags.items()])
    return Tracker(client, LiveRun(uri, rid, resumed=bool(old)), list(data.adata.var_names))


def log_dataset(client, run_id: str, fingerprint: dict | None) -> None:
    """The input file as an MLflow dataset: source its path, digest our fingerprint's content hash."""
    if not fingerprint:  # the synthetic demo
        return
    from mlflow.data.meta_dataset import MetaDataset
    from mlflow.data.sources import LocalArtifactDatasetSource
    from mlflow.entities import DatasetInput, InputTag
    from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

    path = fingerprint["path"]
    ds = MetaDataset(LocalArtifactDatasetSource(path), name=Path(path).name, digest=fingerprint["sha256"][:MAX_DIGEST])
    client.log_inputs(run_id, [DatasetInput(ds._to_mlflow_entity(), [InputTag(MLFLOW_DATASET_CONTEXT, "training")])])


@contextlib.contextmanager
def fluent_run(uri: str, run_id: str):
    """``run_id`` as MLflow's active run on ``uri``, for this block only: the model logging and registration read
    both from process-wide state (set_tracking_uri also exports MLFLOW_TRACKING_URI, restored after). Leaving the
    block ends the run, FINISHED, or FAILED on an exception."""
    import mlflow

    before = os.environ.get("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(uri)
    try:
        with mlflow.start_run(run_id=run_id, log_system_metrics=False):
            yield
    finally:
        mlflow.set_tracking_uri(before)


def model_signature(b: bundle.ModelBundle, input_genes: list[str] | None):
    """Cells x genes in (values as in training, optional columns: missing genes get the training mean); a cluster
    id (-1 for a cell with zero total) and the embedding z out."""
    import pandas as pd
    from anndata.utils import make_index_unique
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema

    genes = make_index_unique(pd.Index(input_genes or b.gene_names).astype(str))
    z_dim = b.config.model.instance_dim
    return ModelSignature(Schema([ColSpec("double", g, required=False) for g in genes]),
                          Schema([ColSpec("long", "cluster")] + [ColSpec("float", f"z_{i}") for i in range(z_dim)]))


def log_model(cfg: JojoConfig, uri: str, run_id: str, output: Path, input_genes: list[str] | None) -> None:
    """The bundle as a pyfunc model (loader_module form: data only), registered under run.register_model if set."""
    import mlflow
    from mlflow.models import Model

    model_dir = Path(output) / "model"
    with fluent_run(uri, run_id), warnings.catch_warnings():
        # An input example would be a copy of cells; the signature says what the model takes.
        warnings.filterwarnings("ignore", message=".*input example was not provided")
        Model.log(None, name="model", flavor=mlflow.pyfunc, run_id=run_id, loader_module=PYFUNC_LOADER,
                  data_path=str(model_dir), signature=model_signature(bundle.load(model_dir), input_genes),
                  pip_requirements=[f"jojoscl-dist=={__version__}"], registered_model_name=cfg.run.register_model)


def log_run(cfg: JojoConfig, final: dict[str, Any], history: list[dict], output: Path,
            parent_run_id: str | None = None, run_id: str | None = None,
            input_genes: list[str] | None = None) -> str:
    """End the run ``run_id`` opened by start_run (without one, log a finished run as a new MLflow run): final_*
    metrics, any epoch the live logging missed, artifacts, the model; the run ends FINISHED."""
    from mlflow import MlflowClient
    from mlflow.entities import Metric, Param

    uri = tracking_uri(cfg, output)
    client = MlflowClient(uri)
    params = []
    if run_id is None:
        tags = {"mlflow.parentRunId": parent_run_id} if parent_run_id else {}
        run_id = client.create_run(experiment_id(client, cfg, uri, output),
                                   run_name=cfg.run.run_name or Path(output).name, tags=tags).info.run_id
        params = [Param(k, v[:6000]) for k, v in flat_params(cfg.to_dict()).items()]
    now = int(time.time() * 1000)
    logged = {m.step for m in client.get_metric_history(run_id, "loss")}
    metrics = [Metric(k, v, now, int(h.get("epoch", i))) for i, h in enumerate(history)
               if int(h.get("epoch", i)) not in logged for k, v in numeric(h).items()]
    metrics += [Metric(f"final_{k}", v, now, 0) for k, v in numeric(final).items()]
    client.log_batch(run_id, metrics=metrics, params=params)  # MLflow splits it into batches within its limits
    for name in ("config.yaml", "metrics.json", "labels.csv", "model/model.pt", "umap.png", "curves.png", "summary.md"):
        p = Path(output) / name
        if p.exists():
            client.log_artifact(run_id, str(p), artifact_path=str(Path(name).parent) if "/" in name else None)
    if (Path(output) / "model" / bundle.FILENAME).is_file():
        log_model(cfg, uri, run_id, output, input_genes)  # its fluent run ends the run
    else:
        client.set_terminated(run_id)
    return run_id
