"""Two-view augmentation of a batch of preprocessed expression rows.

view = mask(x) * (1 / keep) + N(0, noise_std^2): random gene masking as inverted dropout (the reference keeps
~10% of entries and scales survivors x10) plus Gaussian noise on every entry.

Speed (docs/benchmarks.md, "Speed"): on CPU torch's generator is a serial Mersenne Twister and ``torch.rand``
costs one 32-bit draw per entry, which made augmentation ~28% of a training step. The mask therefore takes
16-bit uniforms, four per 64-bit draw (the keep rate is rounded to a multiple of 1/65536, e.g. 0.1 -> 0.100006;
survivors are still scaled by 1/keep as in the reference), and mask, scale and noise are fused into one pass.
"""

from __future__ import annotations

import torch

_LANES = 4  # 16-bit uniforms per 64-bit draw


def _mask_threshold(keep: float) -> tuple[int, float]:
    """int16 threshold t with P(u < t) = keep_eff for u uniform on int16, and keep_eff itself."""
    units = min(65536, max(1, round(keep * 65536)))
    return units - 32768, units / 65536


def keep_mask(shape: torch.Size | tuple[int, ...], keep: float, generator: torch.Generator | None,
              device: torch.device | str) -> tuple[torch.Tensor, float]:
    """Boolean mask with P(True) = keep_eff (keep rounded to 1/65536); returns (mask, keep_eff)."""
    n = 1
    for s in shape:
        n *= s
    thr, keep_eff = _mask_threshold(keep)
    words = -(-n // _LANES)
    bits = torch.randint(-2**63, 2**63 - 1, (words,), generator=generator, device=device, dtype=torch.int64)
    u16 = bits.view(torch.int16)[:n].view(shape)
    return u16 < thr, keep_eff


MAX_SPARSE_KEEP = 0.5  # the sparsity rule never keeps more than half the entries (measured on worm_neuron)


def effective_keep(keep: float, min_nonzero: float, mean_nonzero: float | None) -> float:
    """The mask keep rate for a data set: ``max(keep, min(0.5, min_nonzero / mean_nonzero))``.

    With a fixed 10% keep, a cell with ~20 non-zero genes (sci-RNA-seq, worm_neuron) keeps ~2 of them per view and
    the views carry no signal; denser data (>= min_nonzero / keep non-zeros per cell) keeps the configured rate.
    ``mean_nonzero``: mean non-zero input genes per cell (``PreprocessStats.mean_nonzero``); None or
    ``min_nonzero`` <= 0 leaves ``keep`` as it is. Idempotent.
    """
    if not min_nonzero or min_nonzero <= 0 or not mean_nonzero or mean_nonzero <= 0:
        return keep
    return max(keep, min(MAX_SPARSE_KEEP, min_nonzero / mean_nonzero))


def augment(x: torch.Tensor, keep: float, noise_std: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """x: (N, G) -> one augmented view (N, G). Pass a seeded generator for reproducibility."""
    if not 0.0 < keep <= 1.0:
        raise ValueError(f"mask keep rate must be in (0, 1], got {keep}")
    if noise_std > 0:
        out = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype).mul_(noise_std)
    else:
        out = torch.zeros_like(x)
    if keep < 1.0:
        mask, _ = keep_mask(x.shape, keep, generator, x.device)
        # out += x * mask / keep in one fused pass (the bool mask is promoted inside addcmul).
        return out.addcmul_(x, mask, value=1.0 / keep)
    return out.add_(x)
