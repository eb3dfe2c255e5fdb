"""A small synthetic input for the tracking tests."""

from pathlib import Path

import anndata as ad
import numpy as np
import scipy.sparse as sp


def write_counts(path: Path, n_cells: int = 240, n_genes: int = 120, seed: int = 0) -> None:
    """Three well separated types of integer counts (a few seconds of training tells them apart)."""
    rng = np.random.default_rng(seed)
    types = rng.integers(0, 3, n_cells)
    x = rng.poisson(2 * rng.gamma(1.0, 1.0, (3, n_genes))[types]).astype(np.float32)
    x[:, 0] += 1  # no empty cells
    a = ad.AnnData(sp.csr_matrix(x), obs={"cell_type": np.array(list("abc"))[types]})
    a.obs_names = [f"c{i}" for i in range(n_cells)]
    a.var_names = [f"g{i}" for i in range(n_genes)]
    a.write_h5ad(path)
