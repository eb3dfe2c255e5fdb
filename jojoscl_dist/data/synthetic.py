"""Synthetic single-cell atlases: negative-binomial counts, K cell types with distinct gene programmes.

Generated chunk by chunk from one seed, so an atlas of any size can be streamed to disk without holding the
matrix (see ``jojoscl_dist.data.prepare``); ``demo_atlas`` builds the small in-memory demo used when no data is
given.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp


@dataclass
class AtlasSpec:
    n_cells: int = 3000
    n_genes: int = 3000
    n_types: int = 6
    genes_per_programme: int = 60  # marker genes up-regulated per type
    fold_change: float = 4.0
    dispersion: float = 0.5  # NB: var = mu + mu^2 * dispersion
    mean_library: float = 2000.0
    seed: int = 0


def _base_profile(spec: AtlasSpec) -> np.ndarray:
    rng = np.random.default_rng(spec.seed)
    base = rng.lognormal(mean=0.0, sigma=1.5, size=spec.n_genes)
    base /= base.sum()
    programmes = np.ones((spec.n_types, spec.n_genes))
    for t in range(spec.n_types):
        genes = rng.choice(spec.n_genes, spec.genes_per_programme, replace=False)
        programmes[t, genes] = spec.fold_change
    profiles = base * programmes
    profiles /= profiles.sum(axis=1, keepdims=True)
    return profiles


def iter_chunks(spec: AtlasSpec, chunk_size: int = 10_000) -> Iterator[tuple[sp.csr_matrix, np.ndarray]]:
    """Yield (counts CSR float32 (rows, genes), type ids (rows,)) chunk by chunk; deterministic in spec.seed."""
    profiles = _base_profile(spec)
    for i, start in enumerate(range(0, spec.n_cells, chunk_size)):
        rng = np.random.default_rng([spec.seed, i])  # one stream per chunk: any chunk is reproducible alone
        n = min(chunk_size, spec.n_cells - start)
        types = rng.integers(0, spec.n_types, size=n)
        lib = rng.lognormal(np.log(spec.mean_library), 0.3, size=n)
        mu = profiles[types] * lib[:, None]
        r = 1.0 / spec.dispersion
        lam = rng.gamma(shape=r, scale=mu / r)  # gamma-Poisson mixture == negative binomial
        counts = rng.poisson(lam).astype(np.float32)
        yield sp.csr_matrix(counts), types


def demo_atlas(n_cells: int = 3000, n_genes: int = 3000, n_types: int = 6, seed: int = 0) -> ad.AnnData:
    spec = AtlasSpec(n_cells=n_cells, n_genes=n_genes, n_types=n_types, seed=seed)
    mats, types = zip(*iter_chunks(spec))
    obs = pd.DataFrame({"cell_type": pd.Categorical([f"type{t}" for t in np.concatenate(types)])},
                       index=[f"cell{i}" for i in range(n_cells)])
    var = pd.DataFrame(index=[f"gene{j}" for j in range(n_genes)])
    a = ad.AnnData(X=sp.vstack(mats).tocsr(), obs=obs, var=var)
    a.uns["source"] = "jojoscl_dist synthetic demo atlas (negative-binomial, %d types)" % n_types
    return a
