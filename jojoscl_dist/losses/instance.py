"""Instance-level contrastive loss L_INS (NT-Xent), as in SimCLR / Contrastive Clustering.

Given two views ``z_a, z_b`` of shape (N, D) (rows L2-normalised), stack them into ``z`` (2N, D) and let
``s_ij = z_i . z_j / tau_I``. For view i with positive p(i) (the other view of the same cell):

    l_i = -log( exp(s_{i,p(i)}) / sum_{j != i} exp(s_ij) )
    L_INS = (1 / 2N) * sum_i l_i

The 2N-2 other views are the negatives. Returns a scalar tensor.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def instance_contrastive_loss(z_a: torch.Tensor, z_b: torch.Tensor, temperature: float) -> torch.Tensor:
    if z_a.shape != z_b.shape or z_a.dim() != 2:
        raise ValueError(f"views must both be (N, D); got {tuple(z_a.shape)} and {tuple(z_b.shape)}")
    n = z_a.shape[0]
    z = torch.cat([z_a, z_b], dim=0)
    logits = z @ z.T / temperature
    # A view is never its own negative: -inf on the diagonal removes it from the softmax.
    logits = logits.masked_fill(torch.eye(2 * n, dtype=torch.bool, device=z.device), float("-inf"))
    targets = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(z.device)
    return F.cross_entropy(logits, targets)
