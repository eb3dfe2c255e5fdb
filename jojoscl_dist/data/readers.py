"""Readers: .h5ad (in memory or backed), scDeepCluster-style .h5 (X, Y), 10x .h5 / .mtx, AnnData Zarr. Nothing here
writes to the input."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anndata as ad
import h5py
import numpy as np
import pandas as pd
import scipy.sparse as sp
import zarr

from jojoscl_dist.errors import JojoInputError

SUPPORTED = ".h5ad, .h5 (scDeepCluster X/Y or 10x), .zarr (AnnData), .mtx or a 10x matrix folder"
BACKED_ABOVE_BYTES = 2 * 1024**3  # open larger .h5ad files backed instead of loading them


def is_zarr_group(path: str | Path) -> bool:
    p = Path(path)
    return p.is_dir() and ((p / "zarr.json").exists() or (p / ".zgroup").exists())


def read_input(path: str | Path, backed: bool | None = None) -> ad.AnnData:
    p = Path(path)
    if not p.exists():
        raise JojoInputError(f"input not found: {p} (check the path given to --data)")
    try:
        if p.suffix == ".zarr" or is_zarr_group(p):
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
        if suffix == ".mtx" or p.name.endswith(".mtx.gz"):
            return ad.io.read_mtx(p)
    except JojoInputError:
        raise
    except (OSError, KeyError, ValueError, TypeError) as e:
        raise JojoInputError(f"could not read {p} as {p.suffix or 'a folder'}: {e.__class__.__name__}: {e} "
                             f"(is the file complete and in a supported format: {SUPPORTED}?)") from e
    raise JojoInputError(f"unsupported input format {p.suffix!r} for {p} (supported: {SUPPORTED})")


def open_raw(p: Path) -> tuple[Any, pd.DataFrame, list[str]]:
    """(X, obs, gene names) of a raw input; X is row-sliceable (x[i:j] -> CSR or ndarray) and stays on disk where
    the format allows (.h5ad backed, Zarr lazily)."""
    if p.suffix == ".zarr" or is_zarr_group(p):
        try:
            g = zarr.open_group(str(p), mode="r")
            x = ad.io.sparse_dataset(g["X"]) if isinstance(g["X"], zarr.Group) else g["X"]
            obs, var = ad.io.read_elem(g["obs"]), ad.io.read_elem(g["var"])
        except (KeyError, ValueError, TypeError, OSError) as e:
            raise JojoInputError(f"could not read {p} as an AnnData Zarr store: {e.__class__.__name__}: {e}") from e
        return x, obs, [str(v) for v in var.index]
    adata = read_input(p, backed=True if p.suffix.lower() == ".h5ad" else None)
    return adata.X, adata.obs, [str(v) for v in adata.var_names]


def raw_shape(path: str | Path) -> tuple[int, int] | None:
    """(cells, genes) from metadata alone for .h5ad and Zarr inputs; None for other formats."""
    p = Path(path)
    try:
        if p.suffix == ".zarr" or is_zarr_group(p):
            xg = zarr.open_group(str(p), mode="r")["X"]
            return tuple(xg.attrs["shape"]) if isinstance(xg, zarr.Group) else tuple(xg.shape)  # type: ignore
        if p.suffix.lower() == ".h5ad":
            with h5py.File(p, "r") as f:
                xg = f["X"]
                return tuple(xg.attrs["shape"]) if isinstance(xg, h5py.Group) else tuple(xg.shape)  # type: ignore
    except Exception:  # unreadable metadata: the reader will say what is wrong
        return None
    return None


def check_zarr_chunks(p: Path) -> None:
    """Refuse an AnnData Zarr store whose X (dense, or data/indices/indptr) lacks a stored chunk or shard: Zarr
    would read it as the fill value (0), silently emptying the cells of a store copied incompletely."""
    if not p.is_dir():
        raise JojoInputError(f"{p} is not a Zarr store folder (supported: {SUPPORTED})")
    try:
        x = zarr.open_group(p, mode="r")["X"]
    except Exception as e:  # zarr raises several types for unreadable metadata
        raise JojoInputError(f"could not open {p} as an AnnData Zarr store with an X matrix: {e.__class__.__name__}: "
                             f"{e} (is the store complete? re-copy or re-write it)") from e
    for arr in [x] if isinstance(x, zarr.Array) else [x[k] for k in ("data", "indices", "indptr") if k in x]:
        missing = missing_chunks(arr, p)
        if missing:
            raise JojoInputError(f"{p}: chunk {missing[0][1]} is missing (Zarr would read it as zeros); the store is "
                                 f"incomplete: re-copy or re-write it (if that block is truly all zeros, write with "
                                 f"zarr.config array.write_empty_chunks=True)")


def missing_chunks(arr: zarr.Array, root: Path) -> list[tuple[tuple[int, ...], str]]:
    """(grid position, key) of each chunk (or shard, when sharded) of ``arr`` that has no file under the store
    folder ``root``: Zarr reads it as the fill value, without an error."""
    if arr.size == 0:
        return []
    return [(c, f"{arr.path}/{k}") for c, k in zip(arr._iter_shard_coords(), arr._iter_shard_keys())
            if not (root / arr.path / k).is_file()]


def _read_h5(p: Path) -> ad.AnnData:
    with h5py.File(p, "r") as f:
        keys = set(f.keys())
        if "matrix" in keys:  # 10x Cell Ranger v3 layout
            import scanpy as sc

            return sc.read_10x_h5(p)
        if "X" in keys:
            x = f["X"]
            if isinstance(x, h5py.Group):  # sparse stored as data/indices/indptr (+ shape attr)
                shape = tuple(x.attrs.get("shape", x.attrs.get("h5sparse_shape")))
                mat = sp.csr_matrix((x["data"][...], x["indices"][...], x["indptr"][...]), shape=shape)
            else:
                mat = x[...]
            obs = pd.DataFrame(index=[f"cell{i}" for i in range(mat.shape[0])])
            if "Y" in keys:
                y = np.asarray(f["Y"][...]).ravel()
                y = y.astype(str) if y.dtype.kind in "SO" else y
                obs["Y"] = pd.Categorical(y.astype(str) if y.dtype.kind != "f" else _float_labels(y))
            return ad.AnnData(X=mat, obs=obs, var=pd.DataFrame(index=[f"g{i}" for i in range(mat.shape[1])]))
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
    # One string per category, not per cell: an atlas of millions of cells would otherwise hold millions of them.
    cat = pd.Categorical(col)
    return np.array([str(v) for v in cat.categories], dtype=object)[cat.codes]
