"""Checkpoints: one ``state.pt`` (keys: ``TrainState.state_dict`` in state.py, plus a schema version), written and
read by ``outputs/safe_files.py`` (no pickle, a sha256 beside it), and the rules for resuming from one."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from jojoscl_dist.errors import JojoInputError
from jojoscl_dist.outputs import safe_files

SCHEMA_VERSION = 2
READABLE_SCHEMAS = (1, 2)  # 1: the same fields with plain numpy arrays
STATE_FILE = "state.pt"

# What a resumed run may change: where things go and how often/how long it trains; the rest must match.
RESUMABLE_CHANGES = {"optim.epochs", "optim.min_steps", "eval.eval_every", "run.num_workers", "run.use_gpu",
                     "run.output", "run.storage_path", "run.max_failures", "run.overwrite", "run.tracking",
                     "run.tracking_uri", "run.experiment", "run.quiet", "run.run_name"}


def save_state(directory: str | Path, state: dict[str, Any]) -> Path:
    return safe_files.save({"schema": SCHEMA_VERSION, **state}, Path(directory) / STATE_FILE)


def load_state(directory: str | Path) -> dict[str, Any]:
    path = Path(directory) / STATE_FILE
    state = safe_files.load(path, "checkpoint")
    if not isinstance(state, dict) or state.get("schema") not in READABLE_SCHEMAS:
        raise JojoInputError(f"checkpoint {path} has schema {state.get('schema') if isinstance(state, dict) else None}"
                             f", this version reads {READABLE_SCHEMAS}: start the run under another --run-name")
    return state


def checkpoints(root: str | Path) -> list[Path]:
    """Checkpoint folders under ``root``, newest first: Ray Train's checkpoint_<timestamp> and LocalSession's
    checkpoint_<counter> both sort by name in time order."""
    root = Path(root)
    found = (p for p in root.glob("checkpoint_*") if p.is_dir()) if root.is_dir() else ()
    return sorted(found, key=lambda p: p.name, reverse=True)


def latest_checkpoint(root: str | Path) -> Path | None:
    return next((d for d in checkpoints(root) if (d / STATE_FILE).is_file()), None)


def latest_loadable(root: str | Path) -> tuple[Path, dict[str, Any]] | None:
    """The newest checkpoint whose state.pt loads, with that state. A driver killed mid-upload can leave the newest
    one truncated: it is skipped with a note."""
    for d in checkpoints(root):
        if (d / STATE_FILE).is_file():
            try:
                return d, load_state(d)
            except JojoInputError as e:
                print(f"jojoscl: skipping checkpoint {d}: {e}", flush=True)
    return None


def config_differences(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """'key: old -> new' for each config value that differs, except RESUMABLE_CHANGES (tuples equal lists)."""
    norm, out = (lambda v: list(v) if isinstance(v, tuple) else v), []
    for section, fields in current.items():
        for name, value in fields.items():
            old = saved.get(section, {}).get(name)
            if f"{section}.{name}" not in RESUMABLE_CHANGES and norm(old) != norm(value):
                out.append(f"{section}.{name}: {old!r} -> {value!r}")
    return out
