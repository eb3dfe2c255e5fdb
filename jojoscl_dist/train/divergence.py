"""Stopping on a NaN/Inf loss: every worker at the same step, and a record under the run's checkpoint folder that
stops a relaunch of the same settings at once."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist

from jojoscl_dist.outputs.safe_files import write_durably
from jojoscl_dist.train import distributed as D

# Each read of the flag is a host sync (and an all-reduce): a diverged run stops at most this many steps late.
NONFINITE_CHECK_EVERY = 4
DIVERGED_FILE = "diverged.json"


@dataclass
class Divergence:
    step: int  # the first optimiser step whose loss was NaN/Inf
    value: float  # its loss (NaN on a worker that did not see it itself)


class NonFiniteWatch:
    """The first NaN/Inf step, recorded on the device (no host sync) and read every ``every`` steps with one MIN
    all-reduce, so every worker stops at the same step (DDP hangs when one leaves its collectives)."""

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
        """Collective: the first bad step once any worker saw one, else None."""
        first = self.step.clone()
        if D.is_distributed():
            dist.all_reduce(first, op=dist.ReduceOp.MIN)
        step, own, value = torch.stack([first, self.step, self.value]).tolist()
        return None if math.isinf(step) else Divergence(int(step), value if own == step else math.nan)


def divergence_message(value: float, epoch: int, epochs: int, step: int, lr: float) -> str:
    return (f"training diverged: the loss became {value} at epoch {epoch + 1}/{epochs}, step {step}, with --lr "
            f"{lr:g}: lower --lr (a relaunch with these settings stops here; --overwrite tries them again)")


def read_divergence(root: str | Path) -> dict | None:
    """{'message', 'config'} recorded under a run's checkpoint folder, or None."""
    path = Path(root) / DIVERGED_FILE
    return json.loads(path.read_text()) if path.is_file() else None


def record_divergence(root: str | Path, message: str, config: dict) -> None:
    Path(root).mkdir(parents=True, exist_ok=True)
    write_durably(Path(root) / DIVERGED_FILE, json.dumps({"message": message, "config": config}, indent=1))


def clear_divergence(root: str | Path) -> None:
    (Path(root) / DIVERGED_FILE).unlink(missing_ok=True)
