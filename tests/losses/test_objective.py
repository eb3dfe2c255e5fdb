"""The JojoSCL objective: hand-computed on a tiny batch, and equal to its three losses weighed by hand."""

import math

import pytest
import torch

from jojoscl_dist.config import LossConfig
from jojoscl_dist.losses import (cluster_contrastive_loss, instance_contrastive_loss, jojoscl_objective,
                                 needs_assignment, needs_key_prior, sure_loss)


def tiny():
    """Two cells, one cluster. z and y: the two cells are orthonormal and both views agree; h_b = h_a + (1, 0)."""
    eye = torch.eye(2)
    h_a = torch.tensor([[0.0, 0.0], [2.0, 0.0]], requires_grad=True)
    h_b = h_a.detach() + torch.tensor([1.0, 0.0])
    return eye, eye.clone(), eye.clone(), eye.clone(), h_a, h_b, torch.tensor([0, 0])


def test_hand_computed_value():
    cfg = LossConfig(alpha=0.5, beta=2.0, w_sure=3.0, tau_instance=0.5, tau_cluster=1.0, sure_variant="cross")
    terms = jojoscl_objective(*tiny(), cfg)
    # Each view's row of logits is [-inf, 0, 1/tau, 0] (self, other cell, positive, other cell's positive):
    # -log(e^(1/tau) / (e^(1/tau) + 2)) = log(1 + 2 e^(-1/tau)). L_CLU's entropy terms are 0 (uniform mass).
    l_ins, l_clu = math.log(1 + 2 * math.exp(-2.0)), math.log(1 + 2 * math.exp(-1.0))
    # L_SURE: prior points (1,0), (3,0): mu = (2,0), s2 = (2 + 0)/2 = 1, t2 = 1/2, w = 2/3;
    # ||mu - h_i||^2 = 4, 0; P (t2 - s2) = -1 per cell -> (2/3) (4 - 2) / 2 = 2/3.
    l_sure = 2 / 3
    assert terms.l_ins.item() == pytest.approx(l_ins, rel=1e-6)
    assert terms.l_clu.item() == pytest.approx(l_clu, rel=1e-6)
    assert terms.l_sure.item() == pytest.approx(l_sure, rel=1e-6)
    assert terms.total.item() == pytest.approx(0.5 * l_ins + 2.0 * l_clu + 3.0 * l_sure, rel=1e-6)


def test_hand_computed_reference_compatible():
    """The authors' variant: L_CLU at the instance temperature, a same-view L_SURE (0) that never trains."""
    cfg = LossConfig(alpha=0.5, beta=2.0, w_sure=3.0, tau_instance=0.5, tau_cluster=1.0, reference_compatible=True)
    z_a, z_b, y_a, y_b, h_a, h_b, assign = tiny()
    terms = jojoscl_objective(z_a, z_b, y_a, y_b, h_a, None, assign, cfg)  # no key view needed
    both = math.log(1 + 2 * math.exp(-2.0))
    assert terms.l_clu.item() == pytest.approx(both, rel=1e-6)
    assert terms.l_sure.item() == pytest.approx(0.0, abs=1e-7)
    assert terms.total.item() == pytest.approx(2.5 * both, rel=1e-6)
    assert h_a.requires_grad and not terms.l_sure.requires_grad  # detached embeddings: no gradient reaches h


def random_batch(n=24, d=8, k=3, p=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    z_a, z_b = (torch.nn.functional.normalize(torch.randn(n, d, generator=g), dim=1) for _ in range(2))
    y_a, y_b = (torch.softmax(torch.randn(n, k, generator=g), dim=1) for _ in range(2))
    h_a, h_b = torch.randn(n, p, generator=g).requires_grad_(True), torch.randn(n, p, generator=g)
    assign = torch.randint(0, k, (n,), generator=g)
    return z_a, z_b, y_a, y_b, h_a, h_b, assign


@pytest.mark.parametrize("variant", ["cross", "same"])
def test_equals_the_three_losses_weighed_by_hand(variant):
    cfg = LossConfig(alpha=0.7, beta=1.3, w_sure=0.4, tau_instance=0.2, tau_cluster=0.9, sure_variant=variant)
    z_a, z_b, y_a, y_b, h_a, h_b, assign = random_batch()
    terms = jojoscl_objective(z_a, z_b, y_a, y_b, h_a, h_b, assign, cfg)
    l_ins = instance_contrastive_loss(z_a, z_b, 0.2)
    l_clu = cluster_contrastive_loss(y_a, y_b, 0.9)
    l_sure = sure_loss(h_a, assign, h_b if variant == "cross" else None)
    for got, want in zip(terms, (0.7 * l_ins + 1.3 * l_clu + 0.4 * l_sure, l_ins, l_clu, l_sure)):
        assert torch.equal(got, want)
    assert needs_key_prior(cfg) == (variant == "cross")
    terms.total.backward()
    assert h_a.grad is not None and h_a.grad.abs().sum() > 0  # L_SURE trains the query embeddings


def test_reference_compatible_equals_its_losses_weighed_by_hand():
    cfg = LossConfig(alpha=0.7, beta=1.3, w_sure=0.4, tau_instance=0.2, tau_cluster=0.9, reference_compatible=True)
    z_a, z_b, y_a, y_b, h_a, h_b, assign = random_batch(seed=1)
    terms = jojoscl_objective(z_a, z_b, y_a, y_b, h_a, h_b, assign, cfg)
    l_ins = instance_contrastive_loss(z_a, z_b, 0.2)
    l_clu = cluster_contrastive_loss(y_a, y_b, 0.2, reference_compatible=True)  # instance temperature
    l_sure = sure_loss(h_a.detach(), assign)  # same view, whatever the prior passed
    assert torch.equal(terms.total, 0.7 * l_ins + 1.3 * l_clu + 0.4 * l_sure)
    assert torch.equal(terms.l_clu, l_clu) and torch.equal(terms.l_sure, l_sure)
    assert not needs_key_prior(cfg)


def test_without_sure_no_assignment_is_needed():
    cfg = LossConfig(w_sure=0.0)
    z_a, z_b, y_a, y_b, h_a, _, _ = random_batch(seed=2)
    terms = jojoscl_objective(z_a, z_b, y_a, y_b, h_a, None, None, cfg)
    assert not needs_assignment(cfg) and terms.l_sure.item() == 0.0
    assert torch.equal(terms.total, instance_contrastive_loss(z_a, z_b, cfg.tau_instance)
                       + cluster_contrastive_loss(y_a, y_b, cfg.tau_cluster))


def test_missing_inputs_are_named():
    z_a, z_b, y_a, y_b, h_a, h_b, assign = random_batch(seed=3)
    with pytest.raises(ValueError, match="k-means assignment"):
        jojoscl_objective(z_a, z_b, y_a, y_b, h_a, h_b, None, LossConfig())
    with pytest.raises(ValueError, match="key view h_b"):
        jojoscl_objective(z_a, z_b, y_a, y_b, h_a, None, assign, LossConfig(sure_variant="cross"))
