import math

import torch

from jojoscl_dist.losses.instance import instance_contrastive_loss


def test_nt_xent_hand_computed():
    # Two cells, 2-d unit vectors. Views: a0=(1,0), a1=(0,1), b0=(1,0), b1=(0,1); tau = 1.
    za = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    zb = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    # For every view: positive similarity 1, the two others 0 -> l = -log(e / (e + 1 + 1)).
    expected = -math.log(math.e / (math.e + 2))
    assert abs(instance_contrastive_loss(za, zb, 1.0).item() - expected) < 1e-6


def test_nt_xent_asymmetric_case():
    s = 1 / math.sqrt(2)
    za = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    zb = torch.tensor([[s, s], [0.0, 1.0]])
    tau = 0.5
    # view a0: pos b0 (cos s), negs a1 (0), b1 (0)
    l_a0 = -math.log(math.exp(s / tau) / (math.exp(s / tau) + 1 + 1))
    # view a1: pos b1 (1), negs a0 (0), b0 (s)
    l_a1 = -math.log(math.exp(1 / tau) / (math.exp(1 / tau) + 1 + math.exp(s / tau)))
    # view b0: pos a0 (s), negs a1 (s), b1 (s)
    l_b0 = -math.log(1 / 3)
    # view b1: pos a1 (1), negs a0 (0), b0 (s)
    l_b1 = l_a1
    expected = (l_a0 + l_a1 + l_b0 + l_b1) / 4
    assert abs(instance_contrastive_loss(za, zb, tau).item() - expected) < 1e-6


def test_nt_xent_prefers_aligned_views():
    g = torch.Generator().manual_seed(0)
    za = torch.nn.functional.normalize(torch.randn(16, 8, generator=g), dim=1)
    zr = torch.nn.functional.normalize(torch.randn(16, 8, generator=g), dim=1)
    assert instance_contrastive_loss(za, za, 0.5) < instance_contrastive_loss(za, zr, 0.5)
