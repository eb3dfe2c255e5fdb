"""The per-worker training loop (runtime-agnostic: see ``session.py``).

One step: two augmented views -> query encoder (view a, with gradient) and momentum key encoder (view b, no
gradient) -> heads on both -> gather across workers with gradient -> per-batch k-means on the gathered h_a (rank
0, broadcast) -> the objective (``losses/objective.py``) -> backward, Adam step -> momentum update.
Per epoch: mean losses reported; every ``eval_every`` epochs and at the end, rank 0 embeds all cells and scores
them label-free (the selection rule keeps the best weights); a checkpoint with the full state every epoch.
A NaN/Inf loss stops every worker within a few steps (``divergence.py``); the loop then reports a 'diverged'
message and returns normally, so that Ray Train does not retry a run that cannot succeed.
"""

from __future__ import annotations

import copy
import logging
import math
import random
import tempfile
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from jojoscl_dist.cluster.final import final_space
from jojoscl_dist.cluster.input_pca import InputPCA
from jojoscl_dist.cluster.kmeans import BatchKMeans, fit_kmeans
from jojoscl_dist.cluster.metrics import score_labels
from jojoscl_dist.cluster.selection import Selector, input_reference
from jojoscl_dist.config import JojoConfig
from jojoscl_dist.data.loader import SubsetSource, epoch_batch_count, eval_subset, iter_epoch
from jojoscl_dist.losses.objective import jojoscl_objective, needs_assignment, needs_key_prior
from jojoscl_dist.model import NoisePool, augment, build_model, momentum_update
from jojoscl_dist.model.jojoscl import make_key_encoder
from jojoscl_dist.train import distributed as D
from jojoscl_dist.train.checkpoint import global_rng_state, load_state, save_state, set_global_rng_state
from jojoscl_dist.train.divergence import NONFINITE_CHECK_EVERY, Divergence, NonFiniteWatch, divergence_message
from jojoscl_dist.train.embed import embed
from jojoscl_dist.train.session import Session

log = logging.getLogger(__name__)

EVAL_KMEANS_RESTARTS = 3  # in-loop evaluations; the final labels use cfg.eval.kmeans_restarts


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


def make_adam(model: torch.nn.Module, lr: float, weight_decay: float, device: torch.device) -> torch.optim.Adam:
    """Fused Adam (one kernel over all parameters; on CPU ~3x faster than foreach here), foreach as fallback."""
    try:
        return torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay, fused=True)
    except (RuntimeError, ValueError):  # a device/dtype the fused kernel does not support
        return torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay, foreach=True)


def autocast(device: torch.device, precision: str):
    """bf16 autocast of the forward passes when asked (GPU speed option); a no-op context for fp32."""
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=precision == "bf16")


def make_scheduler(opt: torch.optim.Optimizer, schedule: str, total_steps: int):
    if schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, total_steps))
    return torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)


def resume_scheduler(sched, saved: dict, step: int) -> bool:
    """Load a saved scheduler state. A cosine schedule saved for another length (--epochs changed on resume) is
    set to this run's length instead, at the saved step (lr = its closed form there); True when that happened."""
    t_max = getattr(sched, "T_max", None)
    sched.load_state_dict(saved)
    if t_max is None or sched.T_max == t_max:
        return False
    sched.T_max, sched.last_epoch = t_max, step
    for group, base in zip(sched.optimizer.param_groups, sched.base_lrs):
        # CosineAnnealingLR.step() continues recursively from the current lr: it must sit on the new curve.
        group["lr"] = sched.eta_min + (base - sched.eta_min) * (1 + math.cos(math.pi * step / t_max)) / 2
    sched._last_lr = [g["lr"] for g in sched.optimizer.param_groups]
    return True


def augment_seed(seed: int, epoch: int, rank: int) -> int:
    """Seed of a worker's augmentation stream when a checkpoint's stream cannot be restored (another device)."""
    return int(np.random.SeedSequence([seed, epoch, rank]).generate_state(1, np.uint64)[0] >> 1)


def restore_generator(gen: torch.Generator, state: torch.Tensor, saved_device: str | None, seed: int, epoch: int,
                      rank: int) -> bool:
    """Restore a worker's augmentation stream; False when it was reseeded instead.

    A CUDA generator state cannot be set on a CPU generator nor the reverse: a checkpoint written on another device
    type reseeds the stream from (seed, epoch, rank), so the resumed run is reproducible but not identical to an
    uninterrupted one. Checkpoints without a recorded device are tried as they are.
    """
    if saved_device in (None, gen.device.type):
        try:
            gen.set_state(state)
            return True
        except RuntimeError:  # a state of the other device type
            pass
    new_seed = augment_seed(seed, epoch, rank)
    gen.manual_seed(new_seed)
    log.warning("the checkpoint was written on %s and this worker runs on %s: augmentation stream of rank %d "
                "reseeded from seed %d, epoch %d (seed %d)", saved_device or "another device", gen.device.type,
                rank, seed, epoch, new_seed)
    return False


def train_worker(cfg: JojoConfig, data: WorkerData, session: Session) -> None:
    rank, world = session.rank, session.world_size
    seed = cfg.run.seed
    seed_everything(seed)  # identical model initialisation on every worker
    n_cells, n_genes = data.source.shape
    k = data.n_clusters
    epochs = resolve_epochs(cfg, n_cells)
    lc, mc, oc = cfg.loss, cfg.model, cfg.optim

    model = build_model(mc, n_genes, k)
    if mc.input_pcs > 0:  # fitted on the same seeded sample on every worker, before the key encoder copies it
        pca = InputPCA.fit(data.source, 1.0, seed, cfg.eval.max_eval_cells, n_components=mc.input_pcs)
        model.encoder.set_input_projection(pca.mean, pca.components, pca.scale)
    key_encoder = make_key_encoder(model.encoder).to(session.device)
    net = session.prepare_model(model)  # DDP when distributed
    model = model.to(session.device)
    opt = make_adam(model, oc.lr, oc.weight_decay, session.device)
    steps_per_epoch = epoch_batch_count(data.source, oc.batch_size, world, rank, seed)
    sched = make_scheduler(opt, oc.schedule, epochs * steps_per_epoch)
    gen = torch.Generator(device=session.device).manual_seed(seed * 1000 + rank + 1)  # augmentation, per worker
    local_batch = -(-oc.batch_size // world)
    pool = NoisePool(local_batch * n_genes, mc.noise_std, gen, session.device) if mc.noise_std > 0 else None
    kmeans = BatchKMeans(k, niter=lc.kmeans_iters, seed=seed, warm_start=lc.kmeans_warm_start,
                         backend=lc.kmeans_backend)
    amp = autocast(session.device, oc.precision)
    ckpt_every = max(1, cfg.run.checkpoint_every)
    selector = Selector(rule=cfg.eval.selection, seed=seed, max_cells=cfg.eval.max_eval_cells,
                        min_epoch=min(epochs - 1, int(cfg.eval.select_from * epochs)))
    # Large atlases: evaluations embed a fixed seeded sample (the final labels still cover every cell).
    eval_idx = eval_subset(data.source, cfg.eval.max_eval_cells, seed)
    eval_source = data.source if eval_idx is None else SubsetSource(data.source, eval_idx)
    eval_truth = data.labels if (eval_idx is None or data.labels is None) else data.labels[eval_idx]
    best_model: dict | None = None
    reference: np.ndarray | None = None
    history: list[dict] = []
    start_epoch, step = 0, 0

    with session.resume_dir() as ckpt:
        if ckpt:
            st = load_state(ckpt)  # tensors on the CPU, whatever device wrote them
            model.load_state_dict(st["model"])
            key_encoder.load_state_dict(st["key_encoder"])
            opt.load_state_dict(st["optimizer"])  # torch moves each state tensor to its parameter's device
            start_epoch, step = st["epoch"] + 1, st["step"]
            if resume_scheduler(sched, st["scheduler"], step):
                log.info("cosine schedule rebuilt for %d epochs at step %d", epochs, step)
            kmeans.load_state_dict(st["kmeans"])
            selector.load_state_dict(st["selector"])
            best_model, history = st["best_model"], st["history"]
            if 0 <= selector.best_epoch < selector.min_epoch:
                # --epochs grew on resume: the pick so far lies before the new selection window (eval.select_from
                # of the new length); the window's first evaluation replaces it.
                selector.best_epoch, selector.best_value, best_model = -1, -np.inf, None
            gen_states = st["rng"]["generators"]
            if rank < len(gen_states):  # a rank beyond the saved world size keeps its fresh seeded stream
                restore_generator(gen, gen_states[rank], st.get("device"), seed, start_epoch, rank)
            global_states = st["rng"].get("global", [])
            if rank < len(global_states):
                set_global_rng_state(global_states[rank])
            log.info("resumed from epoch %d", st["epoch"])

    # The faiss per-batch k-means reads every batch on the host (and refuses NaN): check at each of its syncs.
    watch = NonFiniteWatch(session.device, 1 if lc.kmeans_backend == "faiss" else NONFINITE_CHECK_EVERY)
    diverged: Divergence | None = None
    for epoch in range(start_epoch, epochs):
        t0 = time.perf_counter()
        net.train()
        key_encoder.train()
        sums = torch.zeros(4, dtype=torch.float64, device=session.device)  # loss, l_ins, l_clu, l_sure
        n_seen, n_steps = 0, 0
        if pool is not None:
            pool.refill()  # from the generator's state at the epoch start: a resumed epoch reads the same noise
        # Streamed sources (prepared Zarr stores) read whole chunks ahead in a background thread (closed on a stop).
        batches = iter_epoch(data.source, oc.batch_size, world, rank, seed, epoch, cfg.data.shuffle_buffer_chunks,
                             cfg.data.prefetch_batches)
        polled = 0
        for rows in batches:
            x = torch.as_tensor(rows, device=session.device)
            xa = augment(x, mc.mask_keep, mc.noise_std, gen, pool)
            xb = augment(x, mc.mask_keep, mc.noise_std, gen, pool)
            with amp:
                with torch.no_grad():
                    h_b = key_encoder(xb)
                h_a, z_a, y_a, z_b, y_b = net(xa, h_b)
            # Losses and k-means in fp32 (no-op casts unless precision is bf16).
            h_a, z_a, y_a, z_b, y_b, h_b = (t.float() for t in (h_a, z_a, y_a, z_b, y_b, h_b))
            H_a, Z_a, Y_a = (D.gather_with_grad(t) for t in (h_a, z_a, y_a))
            Z_b, Y_b = D.gather_with_grad(z_b), D.gather_with_grad(y_b)
            assign = None
            if needs_assignment(lc):  # per-batch k-means on rank 0, broadcast: every worker uses the same clusters
                assign = torch.empty(H_a.shape[0], dtype=torch.long, device=session.device)
                if rank == 0:
                    assign = kmeans(H_a.detach())
                D.broadcast(assign)
            H_b = D.gather(h_b) if needs_key_prior(lc) else None
            loss, l_ins, l_clu, l_sure = jojoscl_objective(Z_a, Z_b, Y_a, Y_b, H_a, H_b, assign, lc)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            momentum_update(key_encoder, model.encoder, mc.momentum)
            step += 1
            n_seen += len(x)
            n_steps += 1
            # Accumulated on the device: one host sync per epoch instead of four per step.
            sums += torch.stack([loss.detach(), l_ins.detach(), l_clu.detach(), l_sure.detach()]).double()
            watch.update(loss, step)
            if n_steps % watch.every == 0:
                polled = n_steps
                if (diverged := watch.poll()) is not None:
                    break
        batches.close()
        if diverged is None and polled != n_steps:  # the epoch's last steps
            diverged = watch.poll()
        if diverged is not None:
            break
        metrics: dict[str, Any] = dict(zip(("loss", "l_ins", "l_clu", "l_sure"), (sums / n_steps).tolist()))
        metrics = D.all_mean(metrics)
        train_time = time.perf_counter() - t0
        metrics.update(epoch=epoch, step=step, epoch_time_s=train_time, torch_threads=torch.get_num_threads(),
                       cells_per_s=n_seen * world / max(train_time, 1e-9), lr=opt.param_groups[0]["lr"])

        last = epoch == epochs - 1
        if rank == 0 and ((epoch + 1) % cfg.eval.eval_every == 0 or last):
            t1 = time.perf_counter()
            emb = embed(model, eval_source, session.device)
            labels = fit_kmeans(emb["z"], k, seed=seed, restarts=EVAL_KMEANS_RESTARTS)
            if reference is None:  # once per run: PCA of the evaluated cells' input (fixed across epochs)
                reference = input_reference(eval_source.rows(slice(0, eval_source.shape[0])), seed)
            scores, is_best = selector.update(epoch, emb["z"], labels, reference)
            metrics.update({f"select_{n}": v for n, v in scores.items()})
            if is_best:
                best_model = copy.deepcopy({n: t.cpu() for n, t in model.state_dict().items()})
            if data.labels is not None:
                metrics.update({f"eval_{n}": v for n, v in score_labels(eval_truth, labels).items()})
                head = emb["y"].argmax(1)
                metrics["eval_head_ari"] = score_labels(eval_truth, head)["ari"]
                if cfg.eval.input_pca_weight > 0 and cfg.eval.label_method == "kmeans":
                    # What the final labels would be at this epoch (k-means on [z, PCA of the input]); logged
                    # for the oracle column only: selection scores the z clustering above.
                    space = final_space(emb["z"], reference[:, :cfg.eval.input_pca_components],
                                        cfg.eval.input_pca_weight)
                    final = fit_kmeans(space, k, seed=seed, restarts=EVAL_KMEANS_RESTARTS)
                    metrics.update({f"eval_final_{n}": v for n, v in score_labels(eval_truth, final).items()})
            metrics["eval_time_s"] = time.perf_counter() - t1
        metrics["best_epoch"] = selector.best_epoch
        history.append(metrics)

        if (epoch + 1) % ckpt_every != 0 and not last:
            session.report(metrics)
            continue
        # Every worker's augmentation stream and global RNG states, so a resumed run continues the same streams.
        gen_states = D.all_gather_object(gen.get_state())
        global_states = D.all_gather_object(global_rng_state())
        if rank == 0:
            with tempfile.TemporaryDirectory(prefix="jojoscl-ckpt-") as tmp:
                save_state(tmp, {
                    "epoch": epoch, "step": step, "epochs": epochs,
                    "model": model.state_dict(), "key_encoder": key_encoder.state_dict(),
                    "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                    "rng": {"generators": gen_states, "global": global_states}, "device": session.device.type,
                    "kmeans": kmeans.state_dict(), "selector": selector.state_dict(),
                    "best_model": best_model, "history": history,
                    "n_genes": n_genes, "n_clusters": k, "config": cfg.to_dict(),
                    "data_fingerprint": data.fingerprint,
                })
                session.report(metrics, checkpoint_dir=tmp)
        else:
            session.report(metrics)

    if diverged is not None:
        # Returned, not raised: Ray Train would retry an exception (FailureConfig) into the same divergence. The
        # driver raises TrainingDiverged from this report and records it for relaunches.
        session.report({"epoch": epoch, "step": diverged.step, "loss": diverged.value,
                        "diverged": divergence_message(diverged.value, epoch, epochs, diverged.step, oc.lr)})
