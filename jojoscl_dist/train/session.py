"""What the per-worker loop needs from its runtime: ``LocalSession`` runs it in this process (tests, benchmarks,
debugging), ``RaySession`` (ray_session.py) adapts Ray Train; ``EpochProgress`` shows the reported epochs."""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator, TextIO

import numpy as np
import torch

from jojoscl_dist.outputs.safe_files import fsync_dir
from jojoscl_dist.train.checkpoint import checkpoints, latest_checkpoint


class Session:
    rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")
    # Rank 0: called with each reported epoch's metrics (progress lines, live MLflow logging).
    observers: list[Callable[[dict], None]]

    def notify(self, metrics: dict) -> None:
        for observe in self.observers:
            observe(metrics)

    def prepare_model(self, model: torch.nn.Module) -> torch.nn.Module:
        return model.to(self.device)

    def report(self, metrics: dict, checkpoint_dir: str | None = None) -> None:
        raise NotImplementedError

    @contextlib.contextmanager
    def resume_dir(self) -> Iterator[str | None]:
        yield None

    def on_evaluation(self, epoch: int, embedding: dict[str, np.ndarray], labels: np.ndarray,
                      scores: dict[str, float]) -> None:
        """Rank 0, after each evaluation (a hook for tests and benchmarks): the embedding, labels and scores."""


class LocalSession(Session):
    """Single process; keeps every reported metrics dict and the last checkpoint, checkpoint_<counter> under
    ``checkpoint_root``. It resumes from ``resume_from``, else (``discover``) from the newest one there."""

    def __init__(self, checkpoint_root: str | Path | None = None, device: str | None = None,
                 on_report: Callable[[dict], None] | None = None, resume_from: str | Path | None = None,
                 discover: bool = True):
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.root = Path(checkpoint_root or tempfile.mkdtemp(prefix="jojoscl-local-"))
        self.root.mkdir(parents=True, exist_ok=True)
        self.metrics: list[dict] = []
        found = latest_checkpoint(self.root) if discover else None
        self.checkpoint: Path | None = Path(resume_from) if resume_from else found
        existing = [int(p.name.split("_")[-1]) for p in checkpoints(self.root) if p.name.split("_")[-1].isdigit()]
        self._count = max(existing, default=0)
        self.observers = [on_report] if on_report else []

    def report(self, metrics: dict, checkpoint_dir: str | None = None) -> None:
        self.metrics.append(dict(metrics))
        if checkpoint_dir is not None:
            self._count += 1
            dest = self.root / f"checkpoint_{self._count:06d}"
            part = self.root / f".{dest.name}.partial"  # copied, fsynced, then renamed: never half a checkpoint
            shutil.rmtree(part, ignore_errors=True)
            shutil.copytree(checkpoint_dir, part)
            for f in part.iterdir():
                with open(f, "rb") as fh:
                    os.fsync(fh.fileno())
            part.rename(dest)
            fsync_dir(self.root)
            if self.checkpoint is not None:
                shutil.rmtree(self.checkpoint, ignore_errors=True)
            self.checkpoint = dest
        self.notify(metrics)

    @contextlib.contextmanager
    def resume_dir(self) -> Iterator[str | None]:
        yield str(self.checkpoint) if self.checkpoint else None


def epoch_line(m: dict[str, Any], total: int | None) -> str:
    """``epoch 12/100 loss 7.91 (ins 5.10 clu 2.41 sure 0.40) 4800 cells/s``, plus evaluation scores."""
    ep = int(m.get("epoch", 0)) + 1
    parts = [f"epoch {ep}/{total}" if total else f"epoch {ep}", f"loss {m.get('loss', float('nan')):.4g}"]
    if "l_ins" in m:
        parts.append(f"(ins {m['l_ins']:.3g} clu {m.get('l_clu', 0.0):.3g} sure {m.get('l_sure', 0.0):.3g})")
    if "select_silhouette" in m:
        parts.append(f"sil {m['select_silhouette']:.3f}")
    if "eval_ari" in m:
        parts.append(f"ari {m['eval_ari']:.3f}")
    if "cells_per_s" in m:
        parts.append(f"{m['cells_per_s']:.0f} cells/s")
    return " ".join(parts)


class EpochProgress:
    """A session observer: a tqdm bar on a terminal, else one plain line per epoch (logs, Ray worker output).
    ``mode``: 'auto' (a bar on a TTY, lines otherwise), 'bar', 'lines'
    or 'off'."""

    def __init__(self, total: int | None, mode: str = "auto", stream: TextIO | None = None, prefix: str = "jojoscl: "):
        self.total, self.stream, self.prefix = total, stream or sys.stderr, prefix
        if mode == "auto":
            mode = "bar" if getattr(self.stream, "isatty", lambda: False)() else "lines"
        self.mode, self.bar = mode, None
        if mode == "bar":
            from tqdm import tqdm

            self.bar = tqdm(total=total, unit="epoch", file=self.stream, desc="jojoscl", dynamic_ncols=True)

    def __call__(self, metrics: dict[str, Any]) -> None:
        if self.mode == "off":
            return
        line = epoch_line(metrics, self.total)
        if self.bar is not None:
            self.bar.n = int(metrics.get("epoch", 0)) + 1  # resumed runs start past 0
            self.bar.set_postfix_str(line.split(" ", 2)[2], refresh=False)
            self.bar.refresh()
        else:
            # write(), not print(): a Ray Train worker's print() also logs to stderr, so lines arrived twice.
            self.stream.write(self.prefix + line + "\n")
            self.stream.flush()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
