"""Stein's-unbiased-risk-estimate shrinkage loss L_SURE (the JojoSCL term), as a trainable torch loss.

Inputs: ``h`` (N, P) embeddings that receive the gradient (the query view), ``assign`` (N,) hard cluster ids from
the per-batch k-means, and ``h_prior`` (N, P) from which the empirical-Bayes prior is estimated (``h`` itself for
the same-view variant, the key/momentum view for the cross-view variant). The prior is held fixed
(stop-gradient). For every cluster k with N_k >= 2 members:

    mu_k  = mean_{i in k} h_prior_i                                  (P,)
    s2_k  = (1/P) * sum_d var_{i in k}(h_prior_id)   (unbiased var)   scalar
    t2_k  = s2_k / N_k ;   w_k = s2_k / (t2_k + s2_k)
    SURE_i = w_k * ( ||mu_k - h_i||^2 + P * (t2_k - s2_k) )          for i in k

Cells of clusters with N_k < 2 contribute 0. L_SURE = (1/N) * sum_i SURE_i, so dL/dh_i = 2 w_k (h_i - mu_k) / N:
a shrinkage pull towards the cluster centroid. With the same-view prior the value is exactly 0 by algebra
(sum_i ||mu_k - h_i||^2 = (N_k - 1) P s2_k); only the gradient is informative (docs/method.md, L_SURE).
"""

from __future__ import annotations

import torch


def sure_loss(h: torch.Tensor, assign: torch.Tensor, h_prior: torch.Tensor | None = None) -> torch.Tensor:
    if h.dim() != 2:
        raise ValueError(f"h must be (N, P); got {tuple(h.shape)}")
    prior = (h if h_prior is None else h_prior).detach()
    if prior.shape != h.shape or assign.shape != (h.shape[0],):
        raise ValueError("h, h_prior and assign must agree on N (and P)")
    n, p = h.shape
    assign = assign.to(device=h.device, dtype=torch.long)
    k = int(assign.max().item()) + 1 if n else 0
    counts = torch.bincount(assign, minlength=k).to(prior.dtype)  # (K,)
    sums = torch.zeros(k, p, dtype=prior.dtype, device=h.device).index_add_(0, assign, prior)
    sq_sums = torch.zeros(k, p, dtype=prior.dtype, device=h.device).index_add_(0, assign, prior * prior)
    safe = counts.clamp_min(2.0)
    mu = sums / counts.clamp_min(1.0).unsqueeze(1)  # (K, P)
    var = (sq_sums - counts.unsqueeze(1) * mu * mu) / (safe - 1.0).unsqueeze(1)  # unbiased, per dim
    s2 = var.clamp_min(0.0).mean(dim=1)  # (K,)
    t2 = s2 / safe
    w = torch.where(s2 + t2 > 0, s2 / (s2 + t2).clamp_min(1e-30), torch.zeros_like(s2))
    valid = (counts >= 2).to(prior.dtype)
    w = w * valid
    dist = ((mu[assign] - h) ** 2).sum(dim=1)  # (N,)
    per_cell = w[assign] * (dist + p * (t2 - s2)[assign])
    return per_cell.sum() / n
