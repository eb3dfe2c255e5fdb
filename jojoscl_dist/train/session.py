"""What the per-worker loop needs from its runtime. ``LocalSession`` runs it in this process (tests, benchmarks,
debugging); ``RaySession`` (ray_session.py) adapts Ray Train."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch

from jojoscl_dist.outputs.safe_files import fsync_dir
from jojoscl_dist.train.checkpoint import checkpoints, latest_checkpoint


class Session:
    rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")

    def prepare_model(self, model: torch.nn.Module) -> torch.nn.Module:
        return model.to(self.device)

    def report(self, metrics: dict, checkpoint_dir: str | None = None) -> None:
        raise NotImplementedError

    @contextlib.contextmanager
    def resume_dir(self) -> Iterator[str | None]:
        yield None

    def on_evaluation(self, epoch: int, embedding: dict[str, np.ndarray], labels: np.ndarray,
                      scores: dict[str, float]) -> None:
        """Rank 0, after each in-training evaluation (a hook for tests and benchmarks): the evaluated cells'
        {'h','z','y'}, their k-means labels on z and the label-free selection scores."""


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
        self.on_report = on_report

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
        if self.on_report:
            self.on_report(metrics)

    @contextlib.contextmanager
    def resume_dir(self) -> Iterator[str | None]:
        yield str(self.checkpoint) if self.checkpoint else None
