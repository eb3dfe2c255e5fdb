"""The JojoSCL objective on one (gathered) batch: L = alpha * L_INS + beta * L_CLU + w_sure * L_SURE.

Pure torch: the caller gathers the views across workers and runs the per-batch k-means (its assignment is an
input here), so the same function serves one process or many. ``reference_compatible`` reproduces the authors'
code: the cluster loss at the instance temperature with raw dot products, and a same-view L_SURE on detached
embeddings (it then never trains).
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from jojoscl_dist.config import LossConfig
from jojoscl_dist.losses.cluster import cluster_contrastive_loss
from jojoscl_dist.losses.instance import instance_contrastive_loss
from jojoscl_dist.losses.sure import sure_loss


class LossTerms(NamedTuple):
    total: torch.Tensor
    l_ins: torch.Tensor
    l_clu: torch.Tensor
    l_sure: torch.Tensor  # 0 when w_sure is 0


def needs_assignment(cfg: LossConfig) -> bool:
    """Whether the objective reads a k-means assignment of h_a (the caller skips the k-means otherwise)."""
    return cfg.w_sure > 0


def needs_key_prior(cfg: LossConfig) -> bool:
    """Whether L_SURE estimates its prior from the key view h_b (the caller gathers h_b only then)."""
    return needs_assignment(cfg) and not cfg.reference_compatible and cfg.sure_variant == "cross"


def jojoscl_objective(z_a: torch.Tensor, z_b: torch.Tensor, y_a: torch.Tensor, y_b: torch.Tensor,
                      h_a: torch.Tensor, h_b: torch.Tensor | None, assign: torch.Tensor | None,
                      cfg: LossConfig) -> LossTerms:
    """Loss terms of a batch of N cells.

    z_a, z_b: (N, D) instance projections of the query and key views; y_a, y_b: (N, K) soft cluster assignments;
    h_a: (N, P) query embeddings (L_SURE's gradient flows into them); h_b: (N, P) key embeddings, the L_SURE prior
    when ``needs_key_prior(cfg)`` (else unused, may be None); assign: (N,) k-means cluster ids of h_a when
    ``needs_assignment(cfg)`` (else unused, may be None).
    """
    tau_c = cfg.tau_instance if cfg.reference_compatible else cfg.tau_cluster
    l_ins = instance_contrastive_loss(z_a, z_b, cfg.tau_instance)
    l_clu = cluster_contrastive_loss(y_a, y_b, tau_c, reference_compatible=cfg.reference_compatible)
    total = cfg.alpha * l_ins + cfg.beta * l_clu
    l_sure = torch.zeros((), device=h_a.device)
    if needs_assignment(cfg):
        if assign is None:
            raise ValueError("w_sure > 0: the objective needs the k-means assignment of h_a")
        if cfg.reference_compatible:  # the authors' SURE: same view, detached, never trains
            l_sure = sure_loss(h_a.detach(), assign)
        else:
            if needs_key_prior(cfg) and h_b is None:
                raise ValueError("sure_variant 'cross': the objective needs the key view h_b")
            l_sure = sure_loss(h_a, assign, h_b if needs_key_prior(cfg) else None)
        total = total + cfg.w_sure * l_sure
    return LossTerms(total, l_ins, l_clu, l_sure)
