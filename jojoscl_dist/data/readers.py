"""Readers: .h5ad (in memory or backed), scDeepCluster-style .h5 (X, Y), 10x .h5 / .mtx, AnnData Zarr.

Everything returns an ``AnnData``; nothing here writes to the input.
"""

from __future__ import annotations

import logging
from pathlib import Path

import anndata as ad
import h5py
import numpy as np
import pandas as pd

from jojoscl_dist.errors import JojoInputError

log = logging.getLogger(__name__)

SUPPORTED = ".h5ad, .h5 (scDeepCluster X/Y or 10x), .zarr (AnnData), .mtx or a 10x matrix folder"
BACKED_ABOVE_BYTES = 2 * 1024**3  # open larger .h5ad files backed instead of loading them


def read_input(path: str | Path, backed: bool | None = None) -> ad.AnnData:
    p = Path(path)
    if not p.exists():
        raise JojoInputError(f"input not found: {p} (check the path given to --data)")
    try:
        if p.suffix == ".zarr" or (p.is_dir() and ((p / "zarr.json").exists() or (p / ".zgroup").exists())):
            check_zarr_chunks(p)
            return ad.read_zarr(p)
        if p.is_dir():
            if any((p / f).exists() for f in ("matrix.mtx", "matrix.mtx.gz")):
                import scanpy as sc

                return sc.read_10x_mtx(p)
            raise JojoInputError(f"{p} is a folder but neither an AnnData Zarr store nor a 10x matrix folder "
                                 f"(supported: {SUPPORTED})")
        suffix = p.suffix.lower()
        if suffix == ".h5ad":
            if backed is None:
                backed = p.stat().st_size > BACKED_ABOVE_BYTES
            return ad.read_h5ad(p, backed="r" if backed else None)
        if suffix == ".h5":
            return _read_h5(p)
        if suffix in (".mtx",) or p.name.endswith(".mtx.gz"):
            return ad.io.read_mtx(p)
    except JojoInputError:
        raise
    except (OSError, KeyError, ValueError, TypeError) as e:
        raise JojoInputError(f"could not read {p} as {p.suffix or 'a folder'}: {e.__class__.__name__}: {e} "
                             f"(is the file complete and in a supported format: {SUPPORTED}?)") from e
    raise JojoInputError(f"unsupported input format {p.suffix!r} for {p} (supported: {SUPPORTED})")


def check_zarr_chunks(p: Path) -> None:
    """Refuse an AnnData Zarr store whose X lacks a chunk file.

    Zarr reads a missing chunk as the fill value (0): a store copied incompletely would silently turn cells into
    empty ones. Every stored key (chunk, or shard when sharded) of X (dense) or X/data, X/indices, X/indptr
    (sparse) must exist. Zarr also skips writing chunks that are entirely the fill value when
    ``array.write_empty_chunks`` is off (its default), so a dense X with an all-zero block needs rewriting with it on.
    """
    import zarr

    if not p.is_dir():
        raise JojoInputError(f"{p} is not a Zarr store folder (supported: {SUPPORTED})")
    try:
        group = zarr.open_group(p, mode="r")
        x = group["X"]
    except Exception as e:  # zarr raises several types for unreadable metadata
        raise JojoInputError(f"could not open {p} as an AnnData Zarr store with an X matrix: {e.__class__.__name__}: "
                             f"{e} (is the store complete? re-copy or re-write it)") from e
    arrays = [x] if isinstance(x, zarr.Array) else [x[k] for k in ("data", "indices", "indptr") if k in x]
    for arr in arrays:
        if arr.size == 0:
            continue
        base = p / arr.path
        for key in arr._iter_shard_keys():  # storage keys (shards, or chunks when unsharded)
            if not (base / key).is_file():
                raise JojoInputError(f"{p}: chunk {arr.path}/{key} is missing (Zarr would read it as zeros); the "
                                     f"store is incomplete: re-copy or re-write it (if that block is truly all "
                                     f"zeros, write with zarr.config array.write_empty_chunks=True)")


def _read_h5(p: Path) -> ad.AnnData:
    with h5py.File(p, "r") as f:
        keys = set(f.keys())
        if "matrix" in keys:  # 10x Cell Ranger v3 layout
            import scanpy as sc

            return sc.read_10x_h5(p)
        if "X" in keys:
            x = f["X"]
            if isinstance(x, h5py.Group):  # sparse stored as data/indices/indptr (+ shape attr)
                import scipy.sparse as sp

                shape = tuple(x.attrs.get("shape", x.attrs.get("h5sparse_shape")))
                mat = sp.csr_matrix((x["data"][...], x["indices"][...], x["indptr"][...]), shape=shape)
            else:
                mat = x[...]
            obs = pd.DataFrame(index=[f"cell{i}" for i in range(mat.shape[0])])
            if "Y" in keys:
                y = np.asarray(f["Y"][...]).ravel()
                if y.dtype.kind in "SO":
                    y = y.astype(str)
                obs["Y"] = pd.Categorical(y.astype(str) if y.dtype.kind != "f" else _float_labels(y))
            var = pd.DataFrame(index=[f"g{i}" for i in range(mat.shape[1])])
            return ad.AnnData(X=mat, obs=obs, var=var)
    raise JojoInputError(f"{p}: an .h5 file must hold datasets X (cells x genes) and optionally Y (labels), "
                         f"or a 10x 'matrix' group; found keys {sorted(keys)}")


def _float_labels(y: np.ndarray) -> np.ndarray:
    return np.array([str(int(v)) if float(v).is_integer() else str(v) for v in y])


def get_labels(adata: ad.AnnData, label_key: str | None) -> np.ndarray | None:
    """The truth as strings, or None. Unknown keys and missing values are errors."""
    if label_key is None:
        return None
    if label_key not in adata.obs.columns:
        raise JojoInputError(f"unknown --label-key {label_key!r}: obs has {list(adata.obs.columns)} "
                             f"(pick one of these, or drop --label-key and give --n-clusters)")
    col = adata.obs[label_key]
    if col.isna().any():
        raise JojoInputError(f"--label-key {label_key!r} has {int(col.isna().sum())} missing values "
                             f"(fill or drop those cells, or run without --label-key)")
    # Strings shared per category (one object per label, not per cell): an atlas of millions of cells would
    # otherwise hold a Python string for every cell.
    cat = pd.Categorical(col)
    names = np.array([str(v) for v in cat.categories], dtype=object)
    return names[cat.codes]
