import pytest
import torch

from jojoscl_dist.model import JojoSCL, NoisePool, augment, momentum_update
from jojoscl_dist.model.jojoscl import make_key_encoder


def test_shapes_and_normalisation():
    torch.manual_seed(0)
    m = JojoSCL(n_genes=50, n_clusters=4)
    x = torch.randn(8, 50)
    h, z, y = m(x)
    assert h.shape == (8, 128) and z.shape == (8, 192) and y.shape == (8, 4)
    assert torch.allclose(h.norm(dim=1), torch.ones(8), atol=1e-5)
    assert torch.allclose(z.norm(dim=1), torch.ones(8), atol=1e-5)
    assert torch.allclose(y.sum(dim=1), torch.ones(8), atol=1e-5)
    hk = torch.randn(8, 128)
    out = m(x, hk)
    assert len(out) == 5 and out[3].shape == (8, 192) and out[4].shape == (8, 4)


def test_encoder_layout_matches_paper():
    m = JojoSCL(n_genes=2000, n_clusters=8)
    linears = [mod for mod in m.encoder.net if isinstance(mod, torch.nn.Linear)]
    assert [(l.in_features, l.out_features) for l in linears] == [(2000, 512), (512, 256), (256, 128)]
    assert sum(isinstance(mod, torch.nn.BatchNorm1d) for mod in m.encoder.net) == 3


def test_momentum_update_formula():
    torch.manual_seed(0)
    m = JojoSCL(n_genes=10, n_clusters=3)
    key = make_key_encoder(m.encoder)
    assert all(not p.requires_grad for p in key.parameters())
    with torch.no_grad():
        for p in m.encoder.parameters():
            p.add_(1.0)
    before = [p.clone() for p in key.parameters()]
    momentum_update(key, m.encoder, 0.5)
    for kb, kp, qp in zip(before, key.parameters(), m.encoder.parameters()):
        assert torch.allclose(kp, 0.5 * kb + 0.5 * qp)


def test_augment_keep_rate_noise_and_seed():
    x = torch.ones(200, 100)
    g1 = torch.Generator().manual_seed(3)
    g2 = torch.Generator().manual_seed(3)
    a = augment(x, keep=0.1, noise_std=0.0, generator=g1)
    kept = (a != 0).float().mean().item()
    assert 0.08 < kept < 0.12
    assert torch.allclose(a[a != 0], torch.full_like(a[a != 0], 10.0))  # inverted dropout scaling
    assert torch.equal(a, augment(x, keep=0.1, noise_std=0.0, generator=g2))
    n = augment(torch.zeros(200, 100), keep=1.0, noise_std=0.1, generator=g1)
    assert abs(n.std().item() - 0.1) < 0.005


def test_noise_pool_values_windows_and_refresh():
    g = torch.Generator().manual_seed(5)
    pool = NoisePool(numel=6 * 50, std=0.1, generator=g, device="cpu", reads=4, refresh=8)
    a = pool.take((6, 50))
    assert a.shape == (6, 50) and pool.buf.numel() == 4 * 300
    assert abs(pool.buf.std().item() - 0.1) < 0.01 and abs(pool.buf.mean().item()) < 0.01
    # A window is consecutive pool values.
    flat = pool.buf.tolist()
    vals = a.flatten().tolist()
    starts = [i for i in range(len(flat) - 299) if flat[i] == vals[0] and flat[i:i + 300] == vals]
    assert len(starts) == 1
    # Reads land at different offsets.
    offs = {pool.offsets.randrange(pool.buf.numel() - 299) for _ in range(20)}
    assert len(offs) > 10
    # `refresh` reads redraw every value of the pool once.
    before = pool.buf.clone()
    pool.cursor = 0
    for _ in range(8):
        pool.take((6, 50))
    assert (pool.buf != before).all()
    # A batch larger than the pool is drawn fresh, with the right scale.
    big = pool.take((40, 50))
    assert big.shape == (40, 50) and abs(big.std().item() - 0.1) < 0.01


def test_noise_pool_is_reproducible_from_the_generator_state():
    def reads(g):
        pool = NoisePool(numel=300, std=0.1, generator=g, device="cpu")
        pool.refill()
        return torch.stack([pool.take((6, 50)).clone() for _ in range(5)])

    g1, g2 = torch.Generator().manual_seed(9), torch.Generator().manual_seed(9)
    assert torch.equal(reads(g1), reads(g2))
    state = g1.get_state()  # an epoch start: refill from a saved state reads the same noise
    first = reads(g1)
    g1.set_state(state)
    assert torch.equal(first, reads(g1))
    assert not torch.equal(first, reads(g1))  # and the stream moves on


def test_augment_with_pool_adds_the_pool_window_and_leaves_the_pool_alone():
    g = torch.Generator().manual_seed(2)
    pool = NoisePool(numel=200 * 100, std=0.1, generator=g, device="cpu")
    x = torch.ones(200, 100)
    a = augment(x, keep=0.1, noise_std=0.1, generator=g, noise=pool)
    snapshot = pool.buf.clone()
    dropped = a[(a - 10.0).abs() > 1.0]  # entries far from 10 were masked: pure noise
    assert 0.85 < dropped.numel() / a.numel() < 0.95 and abs(dropped.std().item() - 0.1) < 0.01
    kept = a[(a - 10.0).abs() <= 1.0]
    assert abs((kept - 10.0).std().item() - 0.1) < 0.02  # survivors x 1/keep plus noise
    assert torch.equal(pool.buf, snapshot)  # the view was not written into the pool
    full = augment(x, keep=1.0, noise_std=0.1, generator=g, noise=pool)
    assert abs((full - 1.0).std().item() - 0.1) < 0.01


def test_effective_keep_rises_only_on_sparse_data():
    from jojoscl_dist.model.augment import effective_keep

    assert effective_keep(0.1, 10.0, 180.0) == 0.1  # PBMC-like: 18 non-zeros kept per view already
    assert effective_keep(0.1, 10.0, 69.0) == pytest.approx(10 / 69)  # Mouse-like: keep 10 of 69
    assert effective_keep(0.1, 10.0, 20.0) == 0.5  # worm_neuron-like: capped at half the entries
    assert effective_keep(0.1, 0.0, 20.0) == 0.1 and effective_keep(0.1, 10.0, None) == 0.1  # off / unknown
    assert effective_keep(effective_keep(0.1, 10.0, 69.0), 10.0, 69.0) == pytest.approx(10 / 69)  # idempotent


def test_encoder_on_input_pcs_reads_the_fixed_projection():
    """With input_pcs = P the encoder's first layer reads (x - mean) @ (V / s)^T, kept as saved buffers."""
    from jojoscl_dist.config import ModelConfig
    from jojoscl_dist.model import build_model

    torch.manual_seed(0)
    m = build_model(ModelConfig(input_pcs=4), n_genes=12, n_clusters=3)
    first = next(mod for mod in m.encoder.net if isinstance(mod, torch.nn.Linear))
    assert first.in_features == 4
    mean, comps = torch.randn(12), torch.randn(3, 12)  # fewer components than P: the last row stays zero
    m.encoder.set_input_projection(mean.numpy(), comps.numpy(), scale=2.0)
    assert torch.equal(m.encoder.in_components[3], torch.zeros(12))
    m.eval()
    x = torch.randn(5, 12)
    proj = torch.cat([(x - mean) @ comps.T / 2.0, torch.zeros(5, 1)], dim=1)
    expected = torch.nn.functional.normalize(m.encoder.net(proj), dim=1)
    assert torch.allclose(m.encoder(x), expected, atol=1e-6)
    # The projection travels in the state dict, so a model rebuilt from the same config reads the same input.
    again = build_model(ModelConfig(input_pcs=4), n_genes=12, n_clusters=3)
    again.load_state_dict(m.state_dict())
    assert torch.allclose(again.eval().encoder(x), m.encoder(x))
    assert "encoder.in_mean" not in build_model(ModelConfig(), 12, 3).state_dict()  # off by default
