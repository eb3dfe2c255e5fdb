"""MLflow logging of a finished run: params (flattened config), per-epoch and final metrics, artifacts. Default
store: ``sqlite:///<output>/mlflow.db`` with artifacts beside it; ``--tracking-uri`` or MLFLOW_TRACKING_URI for a
server."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from jojoscl_dist.config import JojoConfig

NUMERIC = (int, float)


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


def log_run(cfg: JojoConfig, final: dict[str, Any], history: list[dict], output: Path,
            parent_run_id: str | None = None) -> str:
    import mlflow
    from mlflow.entities import Metric, Param

    uri = tracking_uri(cfg, output)
    client = mlflow.MlflowClient(uri)
    exp = client.get_experiment_by_name(cfg.run.experiment)
    if exp is None:
        artifact_location = (Path(output).resolve() / "mlartifacts").as_uri() if uri.startswith("sqlite") else None
        exp_id = client.create_experiment(cfg.run.experiment, artifact_location=artifact_location)
    else:
        exp_id = exp.experiment_id
    tags = {"mlflow.parentRunId": parent_run_id} if parent_run_id else {}
    run = client.create_run(exp_id, run_name=cfg.run.run_name or Path(output).name, tags=tags)
    rid = run.info.run_id
    now = int(time.time() * 1000)
    params = [Param(k, v[:6000]) for k, v in flat_params(cfg.to_dict()).items()]
    metrics = [Metric(k, float(v), now, int(h.get("epoch", i)))
               for i, h in enumerate(history) for k, v in h.items() if isinstance(v, NUMERIC) and k != "epoch"]
    metrics += [Metric(f"final_{k}", float(v), now, 0) for k, v in final.items()
                if isinstance(v, NUMERIC) and not isinstance(v, bool)]
    client.log_batch(rid, metrics=metrics, params=params)  # MLflow splits it into batches within its limits
    for name in ("config.yaml", "metrics.json", "labels.csv", "model/model.pt", "umap.png", "curves.png", "summary.md"):
        p = Path(output) / name
        if p.exists():
            client.log_artifact(rid, str(p), artifact_path=str(Path(name).parent) if "/" in name else None)
    client.set_terminated(rid)
    return rid
