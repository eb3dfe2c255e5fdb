"""The input's principal components, appended to the embedding for the final k-means (``eval.input_pca_weight``).

The final labels come from k-means on ``[z, p]`` per cell (``clustering/final.py``), where z (192,) is the
L2-normalised instance embedding and

    p = w * (x - mean) @ V^T / s        (n_components,)

is the cell's preprocessed expression x (G,) projected on the top principal components V (n_components, G) of a
seeded sample of the training cells (``InputPCA.coords``), divided by s = sqrt(mean over the sample of
||(x - mean) @ V^T||^2) so that its mean squared norm is w^2, the same scale as ||z||^2 = 1 when w = 1. With w = 0
the labels come from z alone.

Why: the contrastive embedding and the input's PCA fail on different data sets (the embedding splits large
cell types that PCA keeps whole; PCA merges types the embedding separates). k-means on both at once beat each
alone on the 21 benchmark sets (docs/benchmarks.md, "Quality"). The PCA is fitted once per run and kept in the
model bundle, so new cells are assigned in the same space (``jojoscl_dist.predict``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass
class InputPCA:
    mean: np.ndarray  # (G,)
    components: np.ndarray  # (n_components, G)
    scale: float  # root mean squared norm of the sample's projections
    weight: float

    @classmethod
    def fit(cls, source, weight: float, seed: int, max_cells: int = 20000, n_components: int = 50) -> "InputPCA":
        """Fit on every row of ``source`` (``.shape``, ``.rows(idx)``), or a seeded sample of ``max_cells``."""
        from sklearn.decomposition import PCA

        n, g = source.shape
        idx = (np.arange(n) if n <= max_cells else
               np.sort(np.random.default_rng(seed).choice(n, max_cells, replace=False)))
        x = np.asarray(source.rows(idx), dtype=np.float32)
        n_comp = max(1, min(n_components, x.shape[0] - 1, g - 1))
        pca = PCA(n_components=n_comp, random_state=seed).fit(x)
        scale = rms_norm((x - pca.mean_) @ pca.components_.T)
        return cls(pca.mean_.astype(np.float32), pca.components_.astype(np.float32), scale, float(weight))

    def coords(self, x: np.ndarray) -> np.ndarray:
        """(n, G) preprocessed expression -> (n, n_components) coordinates (x - mean) @ V^T, float32 (unweighted:
        ``cluster.final.final_space`` weighs them)."""
        x = np.asarray(x, dtype=np.float32)
        return (x - self.mean) @ self.components.T

    def to_dict(self) -> dict[str, Any]:
        return {"mean": self.mean, "components": self.components, "scale": self.scale, "weight": self.weight}

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> "InputPCA | None":
        if d is None:
            return None
        return cls(np.asarray(d["mean"], np.float32), np.asarray(d["components"], np.float32), float(d["scale"]),
                   float(d["weight"]))


def rms_norm(coords: np.ndarray) -> float:
    """s = sqrt(mean_i ||coords_i||^2); 1.0 for all-zero coordinates."""
    return float(np.sqrt((np.asarray(coords, np.float64) ** 2).sum(axis=1).mean())) or 1.0

