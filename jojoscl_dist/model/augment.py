"""Two-view augmentation of a batch of preprocessed expression rows.

view = mask(x) * (1 / keep) + N(0, noise_std^2): random gene masking as inverted dropout (the reference keeps
~10% of entries and scales survivors x10) plus Gaussian noise on every entry.

Speed (docs/benchmarks.md, "Speed"): on CPU torch's generator is a serial Mersenne Twister and ``torch.rand``
costs one 32-bit draw per entry, which made augmentation ~28% of a training step. The mask therefore takes
16-bit uniforms, four per 64-bit draw (the keep rate is rounded to a multiple of 1/65536, e.g. 0.1 -> 0.100006;
survivors are still scaled by 1/keep as in the reference), and mask, scale and noise are fused into one pass.
The Gaussian noise, the other serial draw (~1.8 ms per 256 x 2000 view), comes from a ``NoisePool``.
"""

from __future__ import annotations

import math
import random

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


class NoisePool:
    """N(0, std^2) values that the views read as windows at random offsets, instead of one fresh draw per entry.

    The pool holds ``reads * numel`` values. ``refill`` redraws all of them (the loop calls it at every epoch
    start, so a run resumed from an epoch checkpoint reads the same values); every ``take`` first redraws the next
    1/``refresh`` of the pool in turn, so the whole pool is renewed every ``refresh`` reads, then returns the
    ``numel`` consecutive values at a uniform random offset, shaped (N, G). Every entry is N(0, std^2); the
    window's alignment to cells and genes changes from read to read, and two views share values only where their
    windows overlap, then at shifted (cell, gene) positions. Cost per read: 1/``refresh`` of the pool's draws
    (measured 2.9 -> ~1.1 ms per 256 x 2000 view on 2 CPU cores). The offsets come from a Python RNG seeded from
    ``generator`` at each refill, so reading them never waits on the device.
    """

    def __init__(self, numel: int, std: float, generator: torch.Generator, device: torch.device | str,
                 dtype: torch.dtype = torch.float32, reads: int = 4, refresh: int = 32) -> None:
        self.std, self.gen = std, generator
        self.buf = torch.empty(max(1, reads) * numel, device=device, dtype=dtype)
        self.chunk = -(-self.buf.numel() // max(1, refresh))
        self.cursor = 0
        self.offsets: random.Random | None = None  # set by refill; drawing nothing here keeps resumes exact

    def refill(self) -> None:
        self.buf.normal_(0.0, self.std, generator=self.gen)
        self.cursor = 0
        seed = torch.randint(0, 2**62, (1,), generator=self.gen, device=self.buf.device)
        self.offsets = random.Random(int(seed))

    def take(self, shape: torch.Size | tuple[int, ...]) -> torch.Tensor:
        if self.offsets is None:
            self.refill()
        n = math.prod(shape)
        size = self.buf.numel()
        if n > size:  # a batch larger than the pool was sized for: draw it fresh
            return torch.randn(shape, generator=self.gen, device=self.buf.device, dtype=self.buf.dtype).mul_(self.std)
        end = min(self.cursor + self.chunk, size)
        self.buf[self.cursor:end].normal_(0.0, self.std, generator=self.gen)
        self.cursor = 0 if end == size else end
        off = self.offsets.randrange(size - n + 1)
        return self.buf[off:off + n].view(shape)


def augment(x: torch.Tensor, keep: float, noise_std: float, generator: torch.Generator | None = None,
            noise: NoisePool | None = None) -> torch.Tensor:
    """x: (N, G) -> one augmented view (N, G). Pass a seeded generator for reproducibility.

    ``noise``: read the N(0, noise_std^2) noise from this pool (its own std; ``noise_std`` is then not used)
    instead of drawing it fresh. The training loop does; tests and one-off callers need not.
    """
    if not 0.0 < keep <= 1.0:
        raise ValueError(f"mask keep rate must be in (0, 1], got {keep}")
    if noise is not None:
        base = noise.take(x.shape)  # a view into the pool: never written in place
    elif noise_std > 0:
        base = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype).mul_(noise_std)
    else:
        base = torch.zeros_like(x)
    if keep < 1.0:
        mask, _ = keep_mask(x.shape, keep, generator, x.device)
        # base + x * mask / keep in one fused pass (the bool mask is promoted inside addcmul).
        return torch.addcmul(base, x, mask, value=1.0 / keep)
    return torch.add(base, x)
