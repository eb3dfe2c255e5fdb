import torch

from jojoscl_dist.losses.sure import sure_loss


def toy():
    # Cluster 0: three 2-d points; cluster 1: two points; cluster 2: a singleton (contributes 0).
    h = torch.tensor([[0.0, 0.0], [2.0, 0.0], [1.0, 3.0], [5.0, 5.0], [7.0, 5.0], [9.0, 9.0]])
    assign = torch.tensor([0, 0, 0, 1, 1, 2])
    return h, assign


def test_same_view_value_is_zero():
    h, a = toy()
    assert abs(sure_loss(h, a).item()) < 1e-6  # the plug-in identity: sum_i ||mu_k - h_i||^2 = (N_k - 1) P s2_k


def test_cross_view_hand_computed():
    h, a = toy()
    prior = h + torch.tensor([[1.0, 0.0]] * 6)  # key view shifted by (1, 0)
    # Cluster 0: mu = (2, 1); per-dim unbiased var: x: var(1,3,2)=1, y: var(0,0,3)=3 -> s2 = 2; N=3
    # t2 = 2/3, w = 2 / (2/3 + 2) = 0.75; P(t2 - s2) = 2 * (2/3 - 2) = -8/3
    # ||mu - h_i||^2: (2,1)-(0,0)=5; (2,1)-(2,0)=1; (2,1)-(1,3)=1+4=5 -> sum 11
    c0 = 0.75 * (11 + 3 * (-8 / 3))
    # Cluster 1: prior points (6,5),(8,5): mu=(7,5), var x = 2, y = 0 -> s2 = 1; N=2: t2=.5, w=1/1.5
    # dists: (7,5)-(5,5)=4, (7,5)-(7,5)=0 -> 4; P(t2-s2) = 2*(-.5) = -1 per cell
    c1 = (1 / 1.5) * (4 + 2 * (-1))
    expected = (c0 + c1) / 6
    assert abs(sure_loss(h, a, prior).item() - expected) < 1e-5


def test_gradient_is_shrinkage_pull():
    h, a = toy()
    h = h.clone().requires_grad_(True)
    sure_loss(h, a).backward()
    n = h.shape[0]
    mu0 = torch.tensor([1.0, 1.0])
    w0 = 0.75  # N_k / (N_k + 1) whenever s2 > 0
    for i in range(3):
        expected = 2 * w0 * (h[i].detach() - mu0) / n
        assert torch.allclose(h.grad[i], expected, atol=1e-6)
    assert h.grad.abs().sum() > 0
    assert torch.allclose(h.grad[5], torch.zeros(2))  # singleton cluster: no pull


def test_prior_is_stop_gradient():
    h, a = toy()
    prior = (h + 0.5).clone().requires_grad_(True)
    hq = h.clone().requires_grad_(True)
    sure_loss(hq, a, prior).backward()
    assert prior.grad is None
    assert hq.grad.abs().sum() > 0
