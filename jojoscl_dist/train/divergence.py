"""Stopping on a NaN/Inf loss: every worker at the same step, once, and a record that stops a relaunch.

``NonFiniteWatch`` finds the first bad step without a host sync per step; the loop then reports a 'diverged'
message and returns normally (Ray Train would retry an exception into the same divergence). The driver records
it under the run's checkpoint folder, so a relaunch of the same settings stops at once.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist

from jojoscl_dist.train import distributed as D

# Steps between reads of the non-finite-loss flag: each read is a host sync (and an all-reduce when distributed),
# which on a GPU stalls the queue; a diverged run then stops at most this many steps late.
NONFINITE_CHECK_EVERY = 4
DIVERGED_FILE = "diverged.json"  # under the run's checkpoint folder: a relaunch of the same settings stops at once


@dataclass
class Divergence:
    step: int  # the first optimiser step whose loss was NaN/Inf
    value: float  # its loss (NaN on a worker that did not see it itself)


class NonFiniteWatch:
    """The first optimiser step whose loss is NaN/Inf, recorded on the device every step (no host sync) and read
    every ``every`` steps: one MIN all-reduce then, so that every worker stops at the same step (DDP hangs when one
    worker leaves its collectives)."""

    def __init__(self, device: torch.device, every: int):
        self.every = every
        self.step = torch.full((), math.inf, dtype=torch.float64, device=device)  # inf: none yet
        self.value = torch.zeros((), dtype=torch.float64, device=device)

    def update(self, loss: torch.Tensor, step: int) -> None:
        loss = loss.detach().double()
        new = ~torch.isfinite(loss) & torch.isinf(self.step)
        self.step = torch.where(new, float(step), self.step)
        self.value = torch.where(new, loss, self.value)

    def poll(self) -> Divergence | None:
        """The first bad step (with its loss) once any worker saw one, else None. Every worker must call it
        together."""
        first = self.step.clone()
        if D.is_distributed():
            dist.all_reduce(first, op=dist.ReduceOp.MIN)
        step, own, value = torch.stack([first, self.step, self.value]).tolist()
        return None if math.isinf(step) else Divergence(int(step), value if own == step else math.nan)


def divergence_message(value: float, epoch: int, epochs: int, step: int, lr: float) -> str:
    return (f"training diverged: the loss became {value} at epoch {epoch + 1}/{epochs}, step {step}, with --lr "
            f"{lr:g}: lower --lr (a relaunch with these settings stops here; --overwrite tries them again)")


def read_divergence(root: str | Path) -> dict | None:
    """The divergence recorded under a run's checkpoint folder ({'message', 'config'}), or None."""
    path = Path(root) / DIVERGED_FILE
    return json.loads(path.read_text()) if path.is_file() else None


def record_divergence(root: str | Path, message: str, config: dict) -> None:
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    tmp = root / f".{DIVERGED_FILE}.tmp"
    tmp.write_text(json.dumps({"message": message, "config": config}, indent=1))
    tmp.replace(root / DIVERGED_FILE)


def clear_divergence(root: str | Path) -> None:
    (Path(root) / DIVERGED_FILE).unlink(missing_ok=True)
