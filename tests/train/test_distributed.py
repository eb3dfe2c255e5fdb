"""Two gloo processes at local batch b give the same loss and gradients as one process at batch 2b."""

import multiprocessing as mp
import os
import socket

import torch
import torch.distributed as dist

from jojoscl_dist.losses import cluster_contrastive_loss, instance_contrastive_loss, sure_loss
from jojoscl_dist.train import distributed as D


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _setup():
    torch.manual_seed(0)
    lin = torch.nn.Linear(6, 4)
    x = torch.randn(8, 6)
    assign = torch.tensor([0, 0, 1, 1, 1, 2, 2, 0])
    return lin, x, assign


def _loss(lin, x, assign):
    h = torch.nn.functional.normalize(lin(x), dim=1)
    H = D.gather_with_grad(h)
    y = torch.softmax(H, dim=1)
    return instance_contrastive_loss(H, H.flip(0), 0.5) + cluster_contrastive_loss(y, y.flip(0), 1.0) + sure_loss(H, assign, H.detach() * 0.9)


def _worker(rank, port, q):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    lin, x, assign = _setup()
    loss = _loss(lin, x[rank * 4:(rank + 1) * 4], assign)
    loss.backward()
    for p in lin.parameters():  # what DDP does: average gradients over workers
        dist.all_reduce(p.grad)
        p.grad /= 2
    # numpy, not tensors: a tensor on the queue is shared by file descriptor, which a worker that has already
    # exited can no longer hand over
    q.put((rank, loss.item(), [p.grad.numpy().copy() for p in lin.parameters()]))
    dist.destroy_process_group()


def test_two_workers_equal_one_worker_at_double_batch():
    lin, x, assign = _setup()
    loss = _loss(lin, x, assign)
    loss.backward()
    ref = [p.grad for p in lin.parameters()]
    ctx = mp.get_context("spawn")  # fork after torch threads start can deadlock
    q = ctx.Queue()
    port = _free_port()
    procs = [ctx.Process(target=_worker, args=(r, port, q)) for r in range(2)]
    for p in procs:
        p.start()
    results = [q.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(timeout=30)
    for rank, l, grads in results:
        assert abs(l - loss.item()) < 1e-5
        for g, r in zip(grads, ref):
            assert torch.allclose(torch.as_tensor(g), r, atol=1e-5), (rank, g, r)
