"""Encoder, heads and the momentum key encoder of JojoSCL (docs/method.md).

Shapes: x (N, G) -> encoder f -> h (N, 128), L2-normalised -> instance head g_I -> z (N, 192), L2-normalised;
h -> cluster head g_C -> y (N, K), softmax.
"""

from __future__ import annotations

import copy

import torch
import torch.nn as nn
import torch.nn.functional as F


def _mlp_block(d_in: int, d_out: int) -> list[nn.Module]:
    return [nn.Linear(d_in, d_out), nn.BatchNorm1d(d_out), nn.ReLU(inplace=True)]


class Encoder(nn.Module):
    """f: G -> 512 -> 256 -> 128, each Linear + BatchNorm1d + ReLU; output L2-normalised.

    With ``input_pcs`` = P > 0 the (augmented) expression is first projected on the input's top P principal
    components, a fixed linear map (x - mean) @ V^T / s with V (P, G), set once by ``set_input_projection`` and
    kept as buffers (saved with the model): f then reads P -> 512 -> 256 -> 128.
    """

    def __init__(self, n_genes: int, hidden_dims: tuple[int, ...], latent_dim: int, input_pcs: int = 0):
        super().__init__()
        self.input_pcs = input_pcs
        if input_pcs > 0:
            self.register_buffer("in_mean", torch.zeros(n_genes))
            self.register_buffer("in_components", torch.zeros(input_pcs, n_genes))
        dims = (input_pcs or n_genes, *hidden_dims, latent_dim)
        layers: list[nn.Module] = []
        for d_in, d_out in zip(dims[:-1], dims[1:]):
            layers += _mlp_block(d_in, d_out)
        self.net = nn.Sequential(*layers)

    @torch.no_grad()
    def set_input_projection(self, mean, components, scale: float) -> None:
        """mean (G,), components (P', G) with P' <= P (fewer cells than P): rows beyond P' stay zero."""
        comps = torch.as_tensor(components, dtype=torch.float32) / scale
        self.in_mean.copy_(torch.as_tensor(mean, dtype=torch.float32))
        self.in_components.zero_()
        self.in_components[: comps.shape[0]].copy_(comps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.input_pcs > 0:
            x = (x - self.in_mean) @ self.in_components.T
        return F.normalize(self.net(x), dim=1)


class InstanceHead(nn.Module):
    """g_I: 128 -> 192 (ReLU) -> 192, L2-normalised."""

    def __init__(self, latent_dim: int, instance_dim: int):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(latent_dim, instance_dim), nn.ReLU(inplace=True),
                                 nn.Linear(instance_dim, instance_dim))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.net(h), dim=1)


class ClusterHead(nn.Module):
    """g_C: 128 -> 64 (ReLU) -> K, softmax."""

    def __init__(self, latent_dim: int, hidden: int, n_clusters: int):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(latent_dim, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, n_clusters))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.net(h), dim=1)


class JojoSCL(nn.Module):
    """Query encoder + heads (trainable). The key encoder lives outside this module (see ``make_key_encoder``)
    so that DDP wraps only what receives gradients."""

    def __init__(self, n_genes: int, n_clusters: int, hidden_dims=(512, 256), latent_dim=128, instance_dim=192,
                 cluster_hidden=64, input_pcs: int = 0):
        super().__init__()
        self.encoder = Encoder(n_genes, tuple(hidden_dims), latent_dim, input_pcs)
        self.instance_head = InstanceHead(latent_dim, instance_dim)
        self.cluster_head = ClusterHead(latent_dim, cluster_hidden, n_clusters)

    def forward(self, x: torch.Tensor, h_key: torch.Tensor | None = None):
        """x (N, G) -> (h, z, y); with ``h_key`` (N, 128) from the key encoder also (z_key, y_key).

        Both views go through the heads in one call so that DDP sees every use of the head parameters.
        """
        h = self.encoder(x)
        out = (h, self.instance_head(h), self.cluster_head(h))
        if h_key is None:
            return out
        return out + (self.instance_head(h_key), self.cluster_head(h_key))


def make_key_encoder(encoder: Encoder) -> Encoder:
    """A frozen copy of the query encoder, updated only by ``momentum_update``."""
    key = copy.deepcopy(encoder)
    for p in key.parameters():
        p.requires_grad_(False)
    return key


@torch.no_grad()
def momentum_update(key: nn.Module, query: nn.Module, m: float) -> None:
    """theta_k <- m * theta_k + (1 - m) * theta_q for parameters; BatchNorm buffers are copied from the query."""
    k_params = list(key.parameters())
    q_params = list(query.parameters())
    torch._foreach_mul_(k_params, m)
    torch._foreach_add_(k_params, q_params, alpha=1.0 - m)
    for kb, qb in zip(key.buffers(), query.buffers()):
        kb.copy_(qb)


def build_model(mc, n_genes: int, n_clusters: int) -> JojoSCL:
    """The model a ``ModelConfig`` describes (training, resume, bundles and the bench build it the same way)."""
    return JojoSCL(n_genes, n_clusters, mc.hidden_dims, mc.latent_dim, mc.instance_dim, mc.cluster_hidden,
                   mc.input_pcs)
