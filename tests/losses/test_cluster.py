import math

import torch

from jojoscl_dist.losses.cluster import cluster_contrastive_loss, cluster_entropy_penalty


def test_cluster_loss_hand_computed():
    # N=2 cells, K=2 clusters, both views identical one-hot: columns (1,0) and (0,1).
    y = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    # Cosine of column k with its positive = 1, with the other two columns 0 (tau = 1).
    contrast = -math.log(math.e / (math.e + 2))
    # Batch mass is uniform -> log K - H = 0 for both views.
    assert abs(cluster_contrastive_loss(y, y, 1.0).item() - contrast) < 1e-6


def test_entropy_term_value_and_collapse_penalty():
    uniform = torch.full((4, 2), 0.5)
    collapsed = torch.tensor([[0.9, 0.1]] * 4)
    assert abs(cluster_entropy_penalty(uniform).item()) < 1e-7
    # p = (0.9, 0.1): log 2 - H = log 2 + 0.9 log 0.9 + 0.1 log 0.1
    expected = math.log(2) + 0.9 * math.log(0.9) + 0.1 * math.log(0.1)
    assert abs(cluster_entropy_penalty(collapsed).item() - expected) < 1e-6
    # The full loss is higher for a collapsed assignment than for a balanced one of the same sharpness.
    balanced = torch.tensor([[0.9, 0.1], [0.1, 0.9]] * 2)
    assert cluster_contrastive_loss(collapsed, collapsed, 1.0) > cluster_contrastive_loss(balanced, balanced, 1.0)


def test_reference_compatible_drops_entropy_and_cosine():
    y = torch.tensor([[0.9, 0.1], [0.9, 0.1], [0.8, 0.2]])
    ref = cluster_contrastive_loss(y, y, 0.07, reference_compatible=True)
    ours = cluster_contrastive_loss(y, y, 0.07)
    assert not torch.isclose(ref, ours)
    c = torch.cat([y.T, y.T])  # raw dot products / tau
    logits = c @ c.T / 0.07
    logits.fill_diagonal_(float("-inf"))
    expected = torch.nn.functional.cross_entropy(logits, torch.tensor([2, 3, 0, 1]))
    assert torch.isclose(ref, expected)
