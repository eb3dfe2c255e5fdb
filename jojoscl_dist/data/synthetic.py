"""Synthetic single-cell atlases: negative-binomial counts, K cell types with distinct gene programmes, generated
chunk by chunk from one seed, so an atlas of any size streams to disk (``write_raw_zarr``); ``demo_atlas`` is the
small in-memory demo used when no data is given."""

from __future__ import annotations

import argparse
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp
import zarr
from tqdm import tqdm

from jojoscl_dist.data.zarr_store import staged_store
from jojoscl_dist.errors import JojoInputError


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


def sample_nb(mu: np.ndarray, r: float, rng: np.random.Generator) -> sp.csr_matrix:
    """Negative-binomial counts (mean ``mu``, var = mu + mu^2 / r) for a (cells, genes) array, as CSR float32.

    Inverse-CDF sampling, one float32 uniform per entry: most entries are zero (u < P(X = 0)), so the pmf recursion
    runs only on the few others; ~20x faster than gamma-Poisson draws, which makes million-cell atlases affordable.
    """
    u = rng.random(mu.shape, dtype=np.float32)
    # zero iff u * (1 + mu/r)^r < 1: for the usual r = 2 plain arithmetic, in place in one scratch array.
    t = np.multiply(mu, 1.0 / r, dtype=np.float32)
    t += 1.0
    if r == 2.0:
        t *= t
    else:
        np.power(t, r, out=t)
    t *= u
    rows, cols = np.nonzero(t >= 1.0)
    del t
    uu = u[rows, cols].astype(np.float64)
    m = mu[rows, cols].astype(np.float64)
    q = m / (r + m)
    pmf = np.exp(-r * np.log1p(m / r))  # P(X = 0) of the non-zero entries only
    cdf = pmf.copy()
    out = np.zeros(len(rows), dtype=np.float32)
    active = np.arange(len(rows))
    k = 0
    while active.size:
        k += 1
        pmf = pmf * ((k - 1 + r) / k) * q
        cdf = cdf + pmf
        done = (cdf > uu) | (pmf < 1e-300)  # second term: float rounding left cdf just below u
        out[active[done]] = k
        keep = ~done
        active, pmf, cdf, uu, q = active[keep], pmf[keep], cdf[keep], uu[keep], q[keep]
    counts = sp.csr_matrix((out, (rows, cols)), shape=mu.shape, dtype=np.float32)
    counts.sort_indices()
    return counts


def iter_chunks(spec: AtlasSpec, chunk_size: int = 10_000) -> Iterator[tuple[sp.csr_matrix, np.ndarray]]:
    """Yield (counts CSR float32 (rows, genes), type ids (rows,)) chunk by chunk; deterministic in spec.seed."""
    profiles = _base_profile(spec).astype(np.float32)
    for i, start in enumerate(range(0, spec.n_cells, chunk_size)):
        rng = np.random.default_rng([spec.seed, i])  # one stream per chunk: any chunk is reproducible alone
        n = min(chunk_size, spec.n_cells - start)
        types = rng.integers(0, spec.n_types, size=n)
        lib = rng.lognormal(np.log(spec.mean_library), 0.3, size=n).astype(np.float32)
        mu = np.take(profiles, types, axis=0)
        mu *= lib[:, None]
        yield sample_nb(mu, 1.0 / spec.dispersion, rng), types


def demo_atlas(n_cells: int = 3000, n_genes: int = 3000, n_types: int = 6, seed: int = 0) -> ad.AnnData:
    spec = AtlasSpec(n_cells=n_cells, n_genes=n_genes, n_types=n_types, seed=seed)
    mats, types = zip(*iter_chunks(spec))
    obs = pd.DataFrame({"cell_type": pd.Categorical([f"type{t}" for t in np.concatenate(types)])},
                       index=[f"cell{i}" for i in range(n_cells)])
    var = pd.DataFrame(index=[f"gene{j}" for j in range(n_genes)])
    a = ad.AnnData(X=sp.vstack(mats).tocsr(), obs=obs, var=var)
    a.uns["source"] = "jojoscl_dist synthetic demo atlas (negative-binomial, %d types)" % n_types
    return a


SYNTHETIC_SOURCE = "jojoscl_dist synthetic atlas"


def is_synthetic_store(path: str | Path) -> bool:
    """A raw store written by ``write_raw_zarr`` (the only kind its --overwrite replaces)."""
    try:
        uns = zarr.open_group(str(path), mode="r")["uns"]
        return str(ad.io.read_elem(uns).get("source", "")).startswith(SYNTHETIC_SOURCE)
    except Exception:  # not a readable AnnData group: not ours
        return False


def write_raw_zarr(spec: AtlasSpec, path: str | Path, chunk_size: int = 1000, progress: bool = True,
                   overwrite: bool = False) -> Path:
    """Stream the atlas to a raw AnnData Zarr store (format 3, CSR counts, int64 indptr for any size): the CSR
    arrays grow chunk by chunk, so memory holds one chunk, never the matrix; ``staged_store`` renames it into place."""
    out = Path(path).resolve()
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} exists (pass --overwrite to replace it)")
    with staged_store(out, replaceable=is_synthetic_store) as tmp:
        root = zarr.open_group(str(tmp), mode="w", zarr_format=3)
        root.attrs.update({"encoding-type": "anndata", "encoding-version": "0.1.0"})
        xg = root.create_group("X")
        xg.attrs.update({"encoding-type": "csr_matrix", "encoding-version": "0.1.0",
                         "shape": [spec.n_cells, spec.n_genes]})
        with warnings.catch_warnings(action="ignore", category=UserWarning):  # zarr's note on future auto-sharding
            data = xg.create_array("data", shape=(0,), chunks=(1 << 20,), dtype="float32")
            indices = xg.create_array("indices", shape=(0,), chunks=(1 << 20,), dtype="int32")
            indptr = xg.create_array("indptr", shape=(1,), chunks=(1 << 20,), dtype="int64", fill_value=0)
        types = np.empty(spec.n_cells, dtype=np.int16)
        nnz, row = 0, 0
        with tqdm(total=spec.n_cells, unit="cells", unit_scale=True, desc="generating", disable=not progress,
                  mininterval=1.0) as bar:
            for m, t in iter_chunks(spec, chunk_size):
                data.append(m.data.astype(np.float32))
                indices.append(m.indices.astype(np.int32))
                indptr.append(m.indptr[1:].astype(np.int64) + nnz)
                nnz += m.nnz
                types[row:row + len(t)] = t
                row += len(t)
                bar.update(len(t))
        obs = pd.DataFrame({"cell_type": pd.Categorical.from_codes(types, [f"type{k}" for k in range(spec.n_types)])},
                           index=pd.Index([f"cell{i}" for i in range(spec.n_cells)]))
        var = pd.DataFrame(index=pd.Index([f"gene{j}" for j in range(spec.n_genes)]))
        with warnings.catch_warnings(action="ignore", category=UserWarning):  # the same zarr note, once per element
            ad.io.write_elem(root, "obs", obs)
            ad.io.write_elem(root, "var", var)
            ad.io.write_elem(root, "uns", {"source": f"{SYNTHETIC_SOURCE} {spec}"})
            for empty in ("obsm", "varm", "obsp", "varp", "layers"):
                ad.io.write_elem(root, empty, {})
    return out


def main(argv: list[str] | None = None) -> int:
    d = AtlasSpec()
    p = argparse.ArgumentParser(prog="python -m jojoscl_dist.data.synthetic",
                                description="Write a synthetic negative-binomial atlas to a raw AnnData Zarr store.")
    p.add_argument("--cells", type=int, required=True)
    p.add_argument("--genes", type=int, default=d.n_genes)
    p.add_argument("--types", type=int, default=d.n_types)
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--chunk-size", type=int, default=1000, help="cells generated (and held dense) at a time")
    p.add_argument("--output", required=True, help="raw.zarr")
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("-q", "--quiet", action="store_true")
    a = p.parse_args(argv)
    spec = AtlasSpec(n_cells=a.cells, n_genes=a.genes, n_types=a.types, seed=a.seed)
    try:
        out = write_raw_zarr(spec, a.output, a.chunk_size, progress=not a.quiet, overwrite=a.overwrite)
    except (FileExistsError, JojoInputError) as e:
        print(f"jojoscl: error: {e}", file=sys.stderr)
        return 2
    print(f"jojoscl: wrote {a.cells} cells x {a.genes} genes ({a.types} types) to {out}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
