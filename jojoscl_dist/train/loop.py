"""The per-worker training loop, the same code under Ray Train and in-process (``session.py``).

A step: two augmented views -> query encoder (view a) and momentum key encoder (view b, no gradient) -> heads ->
gather across workers with gradient -> per-batch k-means on rank 0, broadcast -> objective -> Adam -> momentum
update. Rank 0 evaluates label-free every ``eval_every`` epochs and at the end; a NaN/Inf loss stops every worker,
which then report it and return normally (an exception would make Ray Train retry into the same divergence).
"""

from __future__ import annotations

import functools
import math
import random
import tempfile
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from jojoscl_dist.clustering.final import final_space
from jojoscl_dist.clustering.input_pca import InputPCA
from jojoscl_dist.clustering.kmeans import BatchKMeans, fit_kmeans
from jojoscl_dist.clustering.metrics import score_labels
from jojoscl_dist.clustering.selection import Selector, input_reference
from jojoscl_dist.config import JojoConfig
from jojoscl_dist.data.loader import SubsetSource, epoch_batch_count, eval_subset, iter_epoch
from jojoscl_dist.losses.objective import LossTerms, jojoscl_objective, needs_assignment, needs_key_prior
from jojoscl_dist.model import NoisePool, augment, build_model, momentum_update
from jojoscl_dist.model.jojoscl import make_key_encoder
from jojoscl_dist.train import distributed as D
from jojoscl_dist.train.checkpoint import TrainState, load_state, save_state
from jojoscl_dist.train.embed import embed
from jojoscl_dist.train.session import Session

EVAL_KMEANS_RESTARTS = 3  # in-loop evaluations; the final labels use cfg.eval.kmeans_restarts
LOSS_NAMES = ("loss", "l_ins", "l_clu", "l_sure")  # the reported names of the LossTerms fields, in their order


@dataclass
class WorkerData:
    source: Any  # .shape and .rows(idx) -> float32 (n, G)
    n_clusters: int
    labels: np.ndarray | None = None  # truth, for logged metrics only; never used for selection
    fingerprint: dict | None = None  # the input's identity, saved in every checkpoint (data/fingerprint.py)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def resolve_epochs(cfg: JojoConfig, n_cells: int) -> int:
    """cfg.optim.epochs, raised so that small data sets still get ``min_steps`` optimiser steps."""
    epochs = cfg.optim.epochs
    if cfg.optim.min_steps > 0:
        steps_per_epoch = max(1, n_cells // max(1, cfg.optim.batch_size))
        epochs = max(epochs, -(-cfg.optim.min_steps // steps_per_epoch))
    return epochs


def wants_gpu(cfg: JojoConfig) -> bool:
    return torch.cuda.is_available() if cfg.run.use_gpu is None else cfg.run.use_gpu


def make_adam(model: torch.nn.Module, lr: float, weight_decay: float, device: torch.device) -> torch.optim.Adam:
    """Fused Adam (on CPU ~3x faster than foreach here), foreach where the fused kernel does not run."""
    try:
        return torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay, fused=True)
    except (RuntimeError, ValueError):
        return torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay, foreach=True)


def make_scheduler(opt: torch.optim.Optimizer, schedule: str, total_steps: int):
    if schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, total_steps))
    return torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)


def new_state(cfg: JojoConfig, data: WorkerData, session: Session) -> TrainState:
    """A fresh state on the session's device; after ``seed_everything`` the weights are the same on every worker."""
    rank, seed = session.rank, cfg.run.seed
    mc, oc, lc = cfg.model, cfg.optim, cfg.loss
    n_cells, n_genes = data.source.shape
    epochs = resolve_epochs(cfg, n_cells)
    model = build_model(mc, n_genes, data.n_clusters)
    if mc.input_pcs > 0:  # fitted on the same seeded sample on every worker, before the key encoder copies it
        pca = InputPCA.fit(data.source, 1.0, seed, cfg.eval.max_eval_cells, n_components=mc.input_pcs)
        model.encoder.set_input_projection(pca.mean, pca.components, pca.scale)
    key_encoder = make_key_encoder(model.encoder).to(session.device)
    net = session.prepare_model(model)  # DDP when distributed
    model = model.to(session.device)
    opt = make_adam(model, oc.lr, oc.weight_decay, session.device)
    steps_per_epoch = epoch_batch_count(data.source, oc.batch_size, session.world_size, rank, seed)
    return TrainState(
        cfg=cfg, rank=rank, epochs=epochs, n_genes=n_genes, n_clusters=data.n_clusters,
        fingerprint=data.fingerprint, device=session.device, model=model, net=net, key_encoder=key_encoder,
        optimizer=opt, scheduler=make_scheduler(opt, oc.schedule, epochs * steps_per_epoch),
        kmeans=BatchKMeans(data.n_clusters, niter=lc.kmeans_iters, seed=seed, warm_start=lc.kmeans_warm_start,
                           backend=lc.kmeans_backend),
        selector=Selector(rule=cfg.eval.selection, seed=seed, max_cells=cfg.eval.max_eval_cells,
                          min_epoch=min(epochs - 1, int(cfg.eval.select_from * epochs))),
        generator=torch.Generator(device=session.device).manual_seed(seed * 1000 + rank + 1),  # per worker
    )


class Views:
    """Augmented views from this worker's stream; the noise pool is redrawn at each epoch start (so on resume)."""

    def __init__(self, cfg: JojoConfig, generator: torch.Generator, n_genes: int, session: Session):
        mc = cfg.model
        self.keep, self.noise_std, self.generator = mc.mask_keep, mc.noise_std, generator
        local_batch = -(-cfg.optim.batch_size // session.world_size)
        self.pool = (NoisePool(local_batch * n_genes, mc.noise_std, generator, session.device)
                     if mc.noise_std > 0 else None)

    def start_epoch(self) -> None:
        if self.pool is not None:
            self.pool.refill()

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return augment(x, self.keep, self.noise_std, self.generator, self.pool)


def global_batch_objective(state: TrainState, h_a, z_a, y_a, z_b, y_b, h_b) -> LossTerms:
    """The objective on every worker's batch gathered with gradient (each worker's backward then yields its share
    of the global-batch gradient); the per-batch k-means runs on rank 0 and is broadcast."""
    lc = state.cfg.loss
    H_a, Z_a, Y_a, Z_b, Y_b = (D.gather_with_grad(t) for t in (h_a, z_a, y_a, z_b, y_b))
    assign = None
    if needs_assignment(lc):
        assign = torch.empty(H_a.shape[0], dtype=torch.long, device=H_a.device)
        if state.rank == 0:
            assign = state.kmeans(H_a.detach())
        D.broadcast(assign)
    H_b = D.gather(h_b) if needs_key_prior(lc) else None
    return jojoscl_objective(Z_a, Z_b, Y_a, Y_b, H_a, H_b, assign, lc)


# Each read of the NaN/Inf flag is a host sync (and an all-reduce): a diverged run stops at most this many steps late.
NONFINITE_CHECK_EVERY = 4


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


def train_step(state: TrainState, x: torch.Tensor, views: Views, amp) -> LossTerms:
    """One optimiser step on this worker's batch x (n, G)."""
    xa = views(x)
    xb = views(x)
    with amp:
        with torch.no_grad():
            h_b = state.key_encoder(xb)
        h_a, z_a, y_a, z_b, y_b = state.net(xa, h_b)
    # Losses and k-means in fp32 (no-op casts unless precision is bf16).
    terms = global_batch_objective(state, *(t.float() for t in (h_a, z_a, y_a, z_b, y_b, h_b)))
    state.optimizer.zero_grad(set_to_none=True)
    terms.total.backward()
    state.optimizer.step()
    state.scheduler.step()
    momentum_update(state.key_encoder, state.model.encoder, state.cfg.model.momentum)
    state.step += 1
    return terms


def train_epoch(state: TrainState, source, session: Session, views: Views, watch: NonFiniteWatch,
                epoch: int) -> dict[str, Any] | Divergence:
    """One pass over this worker's share: the epoch's metrics (averaged over workers), or the divergence."""
    cfg = state.cfg
    t0 = time.perf_counter()
    state.net.train()
    state.key_encoder.train()
    amp = torch.autocast(device_type=session.device.type, dtype=torch.bfloat16, enabled=cfg.optim.precision == "bf16")
    sums = torch.zeros(len(LOSS_NAMES), dtype=torch.float64, device=session.device)
    n_seen, n_steps, polled = 0, 0, 0
    diverged: Divergence | None = None
    views.start_epoch()
    # Prepared stores are read ahead in a background thread (closed on a stop).
    batches = iter_epoch(source, cfg.optim.batch_size, session.world_size, session.rank, cfg.run.seed, epoch,
                         cfg.data.shuffle_buffer_chunks, cfg.data.prefetch_batches)
    for rows in batches:
        x = torch.as_tensor(rows, device=session.device)
        terms = train_step(state, x, views, amp)
        n_seen += len(x)
        n_steps += 1
        sums += torch.stack([t.detach() for t in terms]).double()  # on the device: one host sync per epoch
        watch.update(terms.total, state.step)
        if n_steps % watch.every == 0:
            polled = n_steps
            if (diverged := watch.poll()) is not None:
                break
    batches.close()
    if diverged is None and polled != n_steps:  # the epoch's last steps
        diverged = watch.poll()
    if diverged is not None:
        return diverged
    metrics: dict[str, Any] = D.all_mean(dict(zip(LOSS_NAMES, (sums / n_steps).tolist())))
    train_time = time.perf_counter() - t0
    metrics.update(epoch=epoch, step=state.step, epoch_time_s=train_time, torch_threads=torch.get_num_threads(),
                   cells_per_s=n_seen * session.world_size / max(train_time, 1e-9),
                   lr=state.optimizer.param_groups[0]["lr"])
    return metrics


class EvalCells:
    """The cells in-training evaluations embed: every cell, or a seeded sample of a large atlas."""

    def __init__(self, cfg: JojoConfig, data: WorkerData):
        idx = eval_subset(data.source, cfg.eval.max_eval_cells, cfg.run.seed)
        self.source = data.source if idx is None else SubsetSource(data.source, idx)
        self.truth = data.labels if (idx is None or data.labels is None) else data.labels[idx]
        self.seed = cfg.run.seed

    @functools.cached_property
    def reference(self) -> np.ndarray:
        """PCA of these cells' input: model-independent coordinates for the selection."""
        return input_reference(self.source.rows(slice(0, self.source.shape[0])), self.seed)


def evaluate(state: TrainState, cells: EvalCells, session: Session, epoch: int) -> dict[str, float]:
    """Rank 0: cluster z of the evaluated cells and score it label-free (the selection keeps its best weights);
    scores against the truth are logged only."""
    t1 = time.perf_counter()
    cfg, k = state.cfg, state.n_clusters
    emb = embed(state.model, cells.source, session.device)
    labels = fit_kmeans(emb["z"], k, seed=cfg.run.seed, restarts=EVAL_KMEANS_RESTARTS)
    scores, is_best = state.selector.update(epoch, emb["z"], labels, cells.reference)
    metrics = {f"select_{n}": v for n, v in scores.items()}
    if is_best:
        state.keep_best()
    if cells.truth is not None:
        metrics.update({f"eval_{n}": v for n, v in score_labels(cells.truth, labels).items()})
        metrics["eval_head_ari"] = score_labels(cells.truth, emb["y"].argmax(1))["ari"]
        if cfg.eval.input_pca_weight > 0 and cfg.eval.label_method == "kmeans":  # what the final labels would be
            space = final_space(emb["z"], cells.reference[:, :cfg.eval.input_pca_components],
                                cfg.eval.input_pca_weight)
            final = fit_kmeans(space, k, seed=cfg.run.seed, restarts=EVAL_KMEANS_RESTARTS)
            metrics.update({f"eval_final_{n}": v for n, v in score_labels(cells.truth, final).items()})
    metrics["eval_time_s"] = time.perf_counter() - t1
    session.on_evaluation(epoch, emb, labels, scores)
    return metrics


def report_epoch(state: TrainState, session: Session, metrics: dict[str, Any]) -> None:
    """Report the epoch, with a checkpoint (written by rank 0) every ``checkpoint_every`` epochs and at the end."""
    due = (state.epoch + 1) % max(1, state.cfg.run.checkpoint_every) == 0 or state.epoch == state.epochs - 1
    checkpoint = state.state_dict() if due else None  # every worker: it gathers the RNG streams
    if checkpoint is None or state.rank != 0:
        session.report(metrics)
        return
    with tempfile.TemporaryDirectory(prefix="jojoscl-ckpt-") as tmp:
        save_state(tmp, checkpoint)
        session.report(metrics, checkpoint_dir=tmp)


def train_worker(cfg: JojoConfig, data: WorkerData, session: Session) -> None:
    seed_everything(cfg.run.seed)  # identical model initialisation on every worker
    state = new_state(cfg, data, session)
    views = Views(cfg, state.generator, state.n_genes, session)
    cells = EvalCells(cfg, data)
    with session.resume_dir() as ckpt:
        if ckpt:
            state.load_state_dict(load_state(ckpt))
    # The faiss per-batch k-means reads every batch on the host (and refuses NaN): check at each of its syncs.
    watch = NonFiniteWatch(session.device, 1 if cfg.loss.kmeans_backend == "faiss" else NONFINITE_CHECK_EVERY)
    for epoch in range(state.epoch + 1, state.epochs):
        metrics = train_epoch(state, data.source, session, views, watch, epoch)
        if isinstance(metrics, Divergence):  # the driver raises TrainingDiverged from this report
            session.report({"epoch": epoch, "step": metrics.step, "loss": metrics.value, "diverged": (
                f"training diverged: the loss became {metrics.value} at epoch {epoch + 1}/{state.epochs}, step "
                f"{metrics.step}, with --lr {cfg.optim.lr:g}: lower --lr (a relaunch with these settings stops here; "
                f"--overwrite tries them again)")})
            return
        if session.rank == 0 and ((epoch + 1) % cfg.eval.eval_every == 0 or epoch == state.epochs - 1):
            metrics.update(evaluate(state, cells, session, epoch))
        metrics["best_epoch"] = state.selector.best_epoch
        state.history.append(metrics)
        state.epoch = epoch
        report_epoch(state, session, metrics)
