"""Writing a run directory atomically: everything goes to ``<output>.partial-<pid>`` and is renamed at the end,
so a crash never leaves a directory that looks like a finished run.

Layout:
  results.h5ad     obs['jojoscl_cluster'] (categorical), obsm['X_jojoscl'] (instance embedding z),
                   obsm['X_jojoscl_h'] (encoder embedding h), uns['jojoscl'] (params, metrics)
  labels.csv       cell id, cluster
  model/model.pt   weights, preprocessing statistics, gene list, config, schema version, package versions
  metrics.json     final metrics, selection, timings, per-epoch history
  config.yaml      the resolved configuration
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

from jojoscl_dist.errors import JojoInputError

DONE_MARKER = "metrics.json"
# Present while the committed outputs still wait for their MLflow logging: a run directory holding it is not
# finished, so the same command may replace it without --overwrite (a failed tracking step never blocks a retry).
PENDING_MARKER = ".tracking-pending"

log = logging.getLogger(__name__)


def check_output(output: str | Path, overwrite: bool) -> Path:
    out = Path(output)
    if out.exists() and not out.is_dir():
        raise JojoInputError(f"--output {out} exists and is a file (choose a directory path)")
    if (out / PENDING_MARKER).exists() and not overwrite:
        log.warning("%s holds a run whose tracking step did not finish: replacing it", out)
        return out
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise JojoInputError(f"--output {out} already holds an earlier run (pass --overwrite to replace it, "
                             f"or choose another --output)")
    return out


def staging_dir(output: str | Path) -> Path:
    out = Path(output)
    stage = out.parent / f".{out.name}.partial-{os.getpid()}"
    if stage.exists():
        shutil.rmtree(stage)
    stage.mkdir(parents=True)
    return stage


def commit(stage: Path, output: str | Path) -> Path:
    out = Path(output)
    if out.exists():
        shutil.rmtree(out)
    stage.rename(out)
    return out


def write_json(path: Path, obj) -> None:
    path.write_text(json.dumps(obj, indent=2, default=_default))


def _default(o):
    import numpy as np

    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)


def mark_finished(output: str | Path) -> None:
    (Path(output) / PENDING_MARKER).unlink(missing_ok=True)
