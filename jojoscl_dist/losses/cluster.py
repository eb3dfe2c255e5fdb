"""Cluster-level contrastive loss L_CLU of Contrastive Clustering (Li et al., AAAI 2021).

Inputs: soft assignments ``y_a, y_b`` of shape (N, K) (rows sum to one). The K columns of each view are the
"instances": ``c = [y_a^T; y_b^T]`` has shape (2K, N); column k of view a and column k of view b are positives.
With cosine similarity ``s_kl = cos(c_k, c_l) / tau_C``:

    l_k = -log( exp(s_{k,p(k)}) / sum_{l != k} exp(s_kl) )
    contrast = (1 / 2K) * sum_k l_k

An entropy term keeps the batch from collapsing into one cluster. With the batch's cluster mass per view
``p_k = sum_i y_ik / sum_ik y_ik`` and ``H(p) = -sum_k p_k log p_k``:

    L_CLU = contrast + (log K - H(p_a)) + (log K - H(p_b))

(``log K - H`` is >= 0 and 0 exactly for a uniform mass, as in CC). Returns a scalar tensor.

``reference_compatible=True`` reproduces the authors' code for comparison only: raw dot products of the
columns instead of cosine, and an entropy term that is identically zero (it sums over the wrong axis).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def cluster_entropy_penalty(y: torch.Tensor) -> torch.Tensor:
    """log K - H(p) for the batch cluster mass p of soft assignments y (N, K)."""
    p = y.sum(dim=0)
    p = p / p.sum()
    entropy = -(p * torch.log(p.clamp_min(1e-12))).sum()
    return math.log(y.shape[1]) - entropy


def cluster_contrastive_loss(
    y_a: torch.Tensor,
    y_b: torch.Tensor,
    temperature: float,
    reference_compatible: bool = False,
) -> torch.Tensor:
    if y_a.shape != y_b.shape or y_a.dim() != 2:
        raise ValueError(f"assignments must both be (N, K); got {tuple(y_a.shape)} and {tuple(y_b.shape)}")
    k = y_a.shape[1]
    c = torch.cat([y_a.T, y_b.T], dim=0)
    if not reference_compatible:
        c = F.normalize(c, dim=1)
    logits = c @ c.T / temperature
    logits = logits.masked_fill(torch.eye(2 * k, dtype=torch.bool, device=c.device), float("-inf"))
    targets = torch.cat([torch.arange(k, 2 * k), torch.arange(0, k)]).to(c.device)
    contrast = F.cross_entropy(logits, targets)
    if reference_compatible:
        return contrast
    return contrast + cluster_entropy_penalty(y_a) + cluster_entropy_penalty(y_b)
