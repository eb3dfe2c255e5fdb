"""torch.distributed helpers (no Ray). Every worker computes the loss on the gathered global batch: the gather's
backward sums the gradients over workers and keeps this worker's slice, and DDP then averages, so N workers at
local batch b get exactly the gradient of one worker at batch N*b."""

from __future__ import annotations

import torch
import torch.distributed as dist


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


class _GatherWithGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        ctx.rank, ctx.n = dist.get_rank(), x.shape[0]
        out = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(out, x.contiguous())
        return torch.cat(out, dim=0)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad[ctx.rank * ctx.n:(ctx.rank + 1) * ctx.n]


def gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """x (n, ...) of every worker in rank order, gradients flowing back to each worker's slice (equal n on all)."""
    return _GatherWithGrad.apply(x) if is_distributed() else x


gather = torch.no_grad()(gather_with_grad)


def broadcast(x: torch.Tensor, src: int = 0) -> torch.Tensor:
    if is_distributed():
        dist.broadcast(x, src=src)
    return x


def all_mean(values: dict[str, float]) -> dict[str, float]:
    """Scalar metrics averaged over workers."""
    if not is_distributed() or not values:
        return values
    keys = sorted(values)
    t = torch.tensor([values[k] for k in keys], dtype=torch.float64)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return dict(zip(keys, (t / dist.get_world_size()).tolist()))


def all_gather_object(obj) -> list:
    if not is_distributed():
        return [obj]
    out: list = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out
