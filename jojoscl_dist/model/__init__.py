"""JojoSCL network: augmentation, encoder, heads, momentum key encoder (pure torch, no Ray)."""

from jojoscl_dist.model.augment import NoisePool, augment
from jojoscl_dist.model.jojoscl import JojoSCL, build_model, momentum_update

__all__ = ["NoisePool", "augment", "JojoSCL", "build_model", "momentum_update"]
