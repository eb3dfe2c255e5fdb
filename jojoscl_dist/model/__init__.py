"""JojoSCL network: augmentation, encoder, heads, momentum key encoder (pure torch, no Ray)."""

from jojoscl_dist.model.augment import augment
from jojoscl_dist.model.jojoscl import JojoSCL, momentum_update

__all__ = ["augment", "JojoSCL", "momentum_update"]
