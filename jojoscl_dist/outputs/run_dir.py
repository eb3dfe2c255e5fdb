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

from jojoscl_dist.data.zarr_store import refuse_unsafe_target
from jojoscl_dist.errors import JojoInputError

RUN_MARKER = ".jojoscl-run"  # written last into a finished run: lists what the run wrote (see is_our_run)
# Present while the committed outputs still wait for their MLflow logging: a run directory holding it is not
# finished, so the same command may replace it without --overwrite (a failed tracking step never blocks a retry).
PENDING_MARKER = ".tracking-pending"
# Written into the run folder after the commit (the default sqlite MLflow store under --output).
LATE_ENTRIES = ("mlflow.db", "mlartifacts", PENDING_MARKER, RUN_MARKER)

log = logging.getLogger(__name__)


def is_our_run(out: Path) -> tuple[bool, list[str]]:
    """(True, []) when ``out`` holds a run this tool wrote and nothing else; else (False, names not ours)."""
    marker = out / RUN_MARKER
    try:
        written = set(json.loads(marker.read_text())["entries"])
    except (OSError, ValueError, KeyError, TypeError):
        return False, sorted(p.name for p in out.iterdir())[:3]
    foreign = sorted(p.name for p in out.iterdir() if p.name not in written | set(LATE_ENTRIES))
    return not foreign, foreign[:3]


def check_output(output: str | Path, overwrite: bool, inputs: list[str | Path] = ()) -> Path:
    out = Path(output)
    if out.exists() and not out.is_dir():
        raise JojoInputError(f"--output {out} exists and is a file (choose a directory path)")
    refuse_unsafe_target(out, list(inputs))
    if not out.exists() or not any(out.iterdir()):
        return out
    ours, foreign = is_our_run(out)
    if not ours:
        raise JojoInputError(f"--output {out} holds files jojoscl did not write (e.g. {', '.join(foreign)}): "
                             f"choose another --output (only a finished jojoscl run is ever replaced)")
    if (out / PENDING_MARKER).exists() and not overwrite:
        log.warning("%s holds a run whose tracking step did not finish: replacing it", out)
        return out
    if not overwrite:
        raise JojoInputError(f"--output {out} already holds an earlier run (pass --overwrite to replace it, "
                             f"or choose another --output)")
    return out


def staging_dir(output: str | Path) -> Path:
    out = Path(output)
    stage = out.parent / f".{out.name}.partial-{os.getpid()}"
    if stage.exists():  # our own pid's leftover
        shutil.rmtree(stage)
    stage.mkdir(parents=True)
    return stage


def write_marker(stage: Path, entries: list[str] | None = None) -> None:
    """The last file staged: what this run wrote (or, for a sweep, may write), so --overwrite can tell our folder
    from a user's."""
    from jojoscl_dist import __version__

    entries = sorted(entries if entries is not None else (p.name for p in stage.iterdir())) + [RUN_MARKER]
    (stage / RUN_MARKER).write_text(json.dumps({"tool": "jojoscl-dist", "version": __version__,
                                                "entries": entries}, indent=1))


def commit(stage: Path, output: str | Path) -> Path:
    """Move the staged run into place; an earlier run there (checked again to be ours) is moved aside first and
    deleted only once the new one is in place."""
    out = Path(output)
    old = None
    if out.exists() and any(out.iterdir()):
        ours, foreign = is_our_run(out)
        if not ours:
            raise JojoInputError(f"--output {out} now holds files jojoscl did not write (e.g. "
                                 f"{', '.join(foreign)}): the new run stays in {stage}")
        old = out.parent / f".{out.name}.replaced-{os.getpid()}"
        out.rename(old)
    elif out.exists():
        out.rmdir()  # empty
    stage.rename(out)
    if old is not None:
        shutil.rmtree(old)
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
