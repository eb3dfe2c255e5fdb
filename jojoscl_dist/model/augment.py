"""Two-view augmentation of a batch of preprocessed expression rows.

view = mask(x) * (1 / keep) + N(0, noise_std^2): random gene masking as inverted dropout (the reference keeps
~10% of entries and scales survivors x10) plus Gaussian noise on every entry.
"""

from __future__ import annotations

import torch


def augment(x: torch.Tensor, keep: float, noise_std: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """x: (N, G) -> one augmented view (N, G). Pass a seeded generator for reproducibility."""
    if not 0.0 < keep <= 1.0:
        raise ValueError(f"mask keep rate must be in (0, 1], got {keep}")
    out = x
    if keep < 1.0:
        mask = torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype) < keep
        out = out * mask / keep
    if noise_std > 0:
        out = out + noise_std * torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    return out
