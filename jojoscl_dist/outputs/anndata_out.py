"""Results back into the user's AnnData: a copy of the input with obs[key] (categorical clusters; 'unassigned'
for cells the run could not use), obsm['X_jojoscl'] (z; zero rows for those, so that scanpy's neighbours and UMAP
take it as it is) and uns['jojoscl'] (parameters and metrics). Written as h5ad, or Zarr for Zarr input; never over the input, nor over a file we did not write."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd

from jojoscl_dist.errors import JojoInputError

DEFAULT_KEY = "jojoscl_cluster"
EMBEDDING_KEY = "X_jojoscl"
SUFFIX = ".jojoscl"
UNASSIGNED = "unassigned"  # cells with no counts after gene filtering: no embedding to cluster


def is_zarr(path: str | Path) -> bool:
    p = Path(path)
    return p.suffix == ".zarr" or (p.is_dir() and ((p / "zarr.json").exists() or (p / ".zgroup").exists()))


def default_path(input_path: str | Path) -> Path:
    """<input stem>.jojoscl.h5ad (or .zarr) beside the input."""
    p = Path(input_path)
    return p.parent / f"{p.name[: -len(p.suffix)] if p.suffix else p.name}{SUFFIX}{'.zarr' if is_zarr(p) else '.h5ad'}"


def check_target(target: str | Path, input_path: str | Path | None, overwrite: bool) -> Path:
    t = Path(target)
    if input_path is not None and Path(input_path).exists() and t.resolve() == Path(input_path).resolve():
        raise JojoInputError(f"the output {t} is the input file: choose another output path (the input is never "
                             f"overwritten)")
    if t.exists() and not overwrite:
        raise JojoInputError(f"{t} already exists: pass --overwrite to replace it, or choose another --output")
    if t.exists() and not is_annotated_copy(t):
        raise JojoInputError(f"{t} exists and is not an annotated copy written by jojoscl (no uns['jojoscl']): "
                             f"--overwrite replaces only those; choose another --output")
    return t


def is_annotated_copy(path: Path) -> bool:
    """An h5ad or Zarr AnnData whose uns holds our 'jojoscl' entry (read from metadata; nothing else is loaded)."""
    try:
        if is_zarr(path):
            import zarr

            return "jojoscl" in zarr.open_group(str(path), mode="r")["uns"]
        import h5py

        with h5py.File(path, "r") as f:
            return "uns" in f and "jojoscl" in f["uns"]
    except Exception:  # unreadable or another format: not ours
        return False


def _plain(v: Any) -> Any:
    """Values h5ad/Zarr can store in uns: scalars and strings; containers recursively; None -> 'None'."""
    if isinstance(v, dict):
        return {str(k): _plain(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        vals = [_plain(x) for x in v]
        return vals if all(isinstance(x, (int, float, str, bool)) for x in vals) and vals else str(list(v))
    if isinstance(v, (np.integer, np.floating, np.bool_)):
        return v.item()
    if v is None:
        return "None"
    return v if isinstance(v, (int, float, str, bool)) else str(v)


def cluster_categorical(labels: np.ndarray, cell_mask: np.ndarray | None = None) -> pd.Categorical:
    """Cluster ids as a categorical '0', '1', ..., '10' in numeric order, 'unassigned' outside ``cell_mask``; built
    from codes, so no Python string per cell (atlases)."""
    labels = np.asarray(labels)
    ids, codes = np.unique(labels, return_inverse=True)
    categories = [str(v) for v in ids]
    if cell_mask is not None and not np.all(cell_mask):
        full = np.full(len(cell_mask), len(ids), dtype=np.int64)
        full[np.asarray(cell_mask, dtype=bool)] = codes
        codes, categories = full, categories + [UNASSIGNED]
    return pd.Categorical.from_codes(codes, categories=categories)


def annotate(adata: ad.AnnData, cell_mask: np.ndarray, labels: np.ndarray, embedding: np.ndarray,
             key: str = DEFAULT_KEY, uns: dict[str, Any] | None = None) -> ad.AnnData:
    """A copy of ``adata`` (all cells) with labels/embedding of the kept cells (``cell_mask``) filled in."""
    out = adata.to_memory() if adata.isbacked else adata.copy()
    add_results(out, cell_mask, labels, embedding, key, EMBEDDING_KEY, "jojoscl", uns)
    return out


def add_results(adata: ad.AnnData, cell_mask: np.ndarray, labels: np.ndarray, embedding: np.ndarray, key: str,
                embedding_key: str, uns_key: str, uns: dict[str, Any] | None = None) -> None:
    """obs[key], obsm[embedding_key] and uns[uns_key] of ``adata`` (all cells) set, in place, from the labels and
    embedding of the kept cells (``cell_mask``)."""
    cell_mask = np.asarray(cell_mask, dtype=bool)
    if cell_mask.shape[0] != adata.n_obs or int(cell_mask.sum()) != len(labels) or len(labels) != len(embedding):
        raise ValueError(f"shape mismatch: {adata.n_obs} cells, mask of {cell_mask.shape[0]} keeping "
                         f"{int(cell_mask.sum())}, {len(labels)} labels, {len(embedding)} embedding rows")
    if key in adata.obs.columns:
        adata.obs = adata.obs.drop(columns=[key])
    adata.obs[key] = cluster_categorical(labels, cell_mask)
    adata.obsm[embedding_key] = full_rows(embedding, cell_mask)
    adata.uns[uns_key] = _plain({"obs_key": key, "embedding_key": embedding_key,
                                 "n_unassigned": int((~cell_mask).sum()), **(uns or {})})


def full_rows(embedding: np.ndarray, cell_mask: np.ndarray) -> np.ndarray:
    """The embedding of every cell: the kept cells' rows, zeros for the others."""
    if cell_mask.all():  # every cell kept (always so for a prepared store): the embedding as given, maybe Dask
        return embedding
    emb = np.zeros((len(cell_mask), embedding.shape[1]), dtype=np.float32)
    emb[cell_mask] = np.asarray(embedding)
    return emb


def write(adata: ad.AnnData, target: str | Path, input_path: str | Path | None = None,
          overwrite: bool = False) -> Path:
    """Write h5ad (or Zarr for a .zarr target) atomically: to a temporary name, then renamed."""
    t = check_target(target, input_path, overwrite)
    t.parent.mkdir(parents=True, exist_ok=True)
    tmp = t.parent / f".{t.stem}.partial{t.suffix}"
    _remove(tmp)
    try:
        if t.suffix == ".zarr":
            adata.write_zarr(tmp)
        else:
            adata.write_h5ad(tmp)
    except BaseException:
        _remove(tmp)
        raise
    _remove(t)
    tmp.rename(t)
    return t


def _remove(p: Path) -> None:
    if p.is_dir():
        shutil.rmtree(p)
    elif p.exists():
        p.unlink()
