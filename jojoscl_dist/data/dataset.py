"""A run's data set: the input (a file, a prepared store, an AnnData object or the synthetic demo atlas) read,
checked and preprocessed, K fixed, and the settings that depend on the data. Knows nothing of training or of where
a run keeps its files: the caller names the folder a large raw input is prepared into."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import zarr

from jojoscl_dist.clustering.k_select import choose_k
from jojoscl_dist.config import DataConfig, JojoConfig
from jojoscl_dist.data.fingerprint import describe_change, fingerprint, fingerprint_matrix, same_data
from jojoscl_dist.data.loader import ArraySource
from jojoscl_dist.data.preprocess import PreprocessStats, compute_stats, materialize
from jojoscl_dist.data.readers import get_labels, raw_shape, read_input
from jojoscl_dist.data.synthetic import demo_atlas
from jojoscl_dist.data.zarr_store import ZarrSource, is_prepared_store, prepare, read_prepared_meta
from jojoscl_dist.errors import JojoInputError
from jojoscl_dist.model.augment import effective_keep

log = logging.getLogger(__name__)

AUTO_K_MAX_CELLS = 50_000  # --n-clusters auto on a prepared store looks at this many cells (seeded sample)


@dataclass
class PreparedData:
    adata: ad.AnnData  # the input as read (never modified)
    x: np.ndarray | ZarrSource  # preprocessed (kept cells x HVG), float32: in memory, or a prepared store
    stats: PreprocessStats
    n_clusters: int
    labels: np.ndarray | None  # truth for kept cells (evaluation only)
    obs_names: np.ndarray  # kept cells
    source: str
    k_info: dict | None = None  # how K was chosen when --n-clusters auto
    fingerprint: dict | None = None  # the input's identity (data/fingerprint.py); None for the demo atlas

    @property
    def kept_mask(self) -> np.ndarray:
        """Rows of ``adata`` that were trained on; a prepared store's adata holds only kept cells (no X)."""
        return np.ones(self.adata.n_obs, dtype=bool) if isinstance(self.x, ZarrSource) else self.stats.cell_mask


def as_source(x):
    return x if isinstance(x, ZarrSource) else ArraySource(x)


def needs_prepare(path: str | Path, dc: DataConfig) -> bool:
    """Raw input too large to materialise: prepare it into a store and stream it."""
    p = Path(path)
    if not p.exists():  # the reader raises the clear 'input not found' error
        return False
    shape = raw_shape(p)
    if shape is not None and shape[0] > dc.prepare_above_cells:
        return True
    size = sum(f.stat().st_size for f in p.rglob("*") if f.is_file()) if p.is_dir() else p.stat().st_size
    return size > dc.prepare_above_bytes


def prepare_data(cfg: JojoConfig, store_dir: Path, adata: ad.AnnData | None = None,
                 layer: str | None = None) -> PreparedData:
    """The data set of ``adata`` (its X, or ``layers[layer]``) when given, else of ``cfg.data``. ``store_dir`` is
    the run's own folder: a large raw input file is prepared out of core into ``prepared_store_path(store_dir)``
    (reused by a resumed run when it holds the same input)."""
    dc = cfg.data
    if adata is None and dc.path is not None and is_prepared_store(dc.path):  # stream it; never materialised
        return _from_store(cfg, Path(dc.path), str(dc.path), fingerprint(dc.path))
    if adata is None and dc.path is not None and needs_prepare(dc.path, dc):  # an atlas: prepared, streamed
        raw_fp = fingerprint(dc.path)
        store = prepared_store_path(store_dir)
        if not _store_matches(store, raw_fp):  # a resumed run reuses its store, never another input's
            print(f"jojoscl: {dc.path} is large: preparing it out of core into {store}", flush=True)
            prepare(dc.path, store, n_top_genes=dc.n_top_genes, input_scale=dc.input_scale,
                    hvg_flavor=dc.hvg_flavor, chunk_size=dc.chunk_size, chunk_rows=dc.store_chunk_rows,
                    clip=dc.scale_clip, target_sum=dc.target_sum, overwrite=True, progress=not cfg.run.quiet)
        return _from_store(cfg, store, str(dc.path), raw_fp)
    label_key, fp = dc.label_key, None
    if adata is not None:
        adata = own_anndata(adata, layer)
        source = f"AnnData ({adata.n_obs} cells x {adata.n_vars} genes{f', layer {layer!r}' if layer else ''})"
        fp = fingerprint_matrix(adata.X, adata.obs_names, adata.var_names, source)
    elif dc.path is None:
        adata = demo_atlas(dc.demo_cells, dc.demo_genes, dc.demo_types, seed=cfg.run.seed)
        source = f"synthetic demo atlas ({dc.demo_cells} cells, {dc.demo_genes} genes, {dc.demo_types} types)"
        label_key = dc.label_key or "cell_type"
    else:
        adata = read_input(dc.path)
        source = str(dc.path)
        fp = fingerprint(dc.path)
    if adata.n_obs == 0 or adata.n_vars == 0:
        raise JojoInputError(f"{source} has {adata.n_obs} cells x {adata.n_vars} genes: nothing to cluster")
    make_names_unique(adata)
    labels_all = get_labels(adata, label_key)
    k = _n_clusters(dc.n_clusters, labels_all)
    stats = compute_stats(adata.X, list(adata.var_names), n_top_genes=dc.n_top_genes, input_scale=dc.input_scale,
                          chunk_size=dc.chunk_size, clip=dc.scale_clip, hvg_flavor=dc.hvg_flavor,
                          target_sum=dc.target_sum)
    n_kept = int(stats.cell_mask.sum())
    if k != "auto" and k > n_kept:
        raise JojoInputError(f"--n-clusters {k} is larger than the number of usable cells ({n_kept}); "
                             f"choose K <= {n_kept}")
    x = materialize(adata.X, stats, chunk_size=dc.chunk_size)
    k_info = None
    if k == "auto":
        if n_kept < 3:
            raise JojoInputError(f"{n_kept} usable cells are too few to choose K: give --n-clusters K")
        k, k_info = _auto_k(cfg, x)
    labels = labels_all[stats.cell_mask] if labels_all is not None else None
    return PreparedData(adata, x, stats, k, labels, np.asarray(adata.obs_names)[stats.cell_mask], source, k_info, fp)


def own_anndata(adata: ad.AnnData, layer: str | None = None) -> ad.AnnData:
    """An AnnData over the user's matrix (X, or ``layers[layer]``; a backed X stays on disk) and obs columns, with
    names of its own: making them unique leaves the user's object as it was."""
    if layer is not None and layer not in adata.layers:
        raise JojoInputError(f"unknown layer {layer!r}: the AnnData has layers {list(adata.layers)} (pick one, or "
                             f"layer=None for X)")
    x = adata.layers[layer] if layer is not None else adata.X
    if x is None:
        raise JojoInputError("the AnnData has no X: pass layer= naming the layer of expression values")
    return ad.AnnData(X=x, obs=adata.obs.copy(deep=False), var=pd.DataFrame(index=adata.var_names.copy()))


def prepared_store_path(store_dir: Path) -> Path:
    """Where a large raw input is prepared on the fly: inside the run's own folder ``store_dir``, never shared."""
    return Path(store_dir) / "prepared.zarr"


def _store_matches(store: Path, raw_fp: dict) -> bool:
    """The store exists, is complete and was prepared from exactly this input (else it is rebuilt)."""
    if not is_prepared_store(store):
        return False
    recorded = read_prepared_meta(store).get("source_fingerprint")
    if same_data(recorded, raw_fp):
        return True
    print(f"jojoscl: {store} was prepared from other data ({describe_change(recorded or {}, raw_fp)}): "
          f"preparing it again", flush=True)
    return False


def make_names_unique(adata: ad.AnnData) -> None:
    """Duplicate cell or gene names are suffixed (-1, -2, ...) with a warning, in memory only (never the file):
    repeated gene symbols are common in 10x exports, and cell names must be unique to join outputs to the input."""
    for axis, names in (("cell", adata.obs_names), ("gene", adata.var_names)):
        if not names.is_unique:
            log.warning("%d duplicate %s names (e.g. %r): made unique by suffixing -1, -2, ... (outputs use the "
                        "new names)", int(names.duplicated().sum()), axis, names[names.duplicated()][0])
            (adata.obs_names_make_unique if axis == "cell" else adata.var_names_make_unique)()


def _n_clusters(k: int | str | None, labels: np.ndarray | None) -> int | str:
    """K as given, 'auto' (chosen later from the data), or the number of distinct labels."""
    if isinstance(k, str) and k != "auto":
        raise JojoInputError(f"--n-clusters must be an integer or 'auto', got {k!r}")
    if k == "auto":
        return k
    if k is None:
        if labels is None:
            raise JojoInputError("the number of clusters is unknown: pass --n-clusters K, or --label-key KEY to take "
                                 "K from the labels")
        k = len(np.unique(labels))
    if k < 2:
        raise JojoInputError(f"--n-clusters must be at least 2, got {k}")
    return k


def _auto_k(cfg: JojoConfig, x: np.ndarray) -> tuple[int, dict]:
    k, k_info = choose_k(x, cfg.data.k_rule, seed=cfg.run.seed, resolution=cfg.data.k_resolution)
    k_info = {key: v for key, v in k_info.items() if key != "scores"} | (
        {"scores": {str(a): b for a, b in k_info["scores"].items()}} if "scores" in k_info else {})
    if not cfg.run.quiet:
        print(f"jojoscl: --n-clusters auto: K = {k} (rule '{cfg.data.k_rule}', label-free)", flush=True)
    return k, k_info


def _from_store(cfg: JojoConfig, path: Path, source: str, fp: dict | None) -> PreparedData:
    """A prepared store: obs/var/statistics from its metadata; X stays on disk (ZarrSource)."""
    x = ZarrSource(path)  # checks every chunk is present
    stats = PreprocessStats.from_dict(read_prepared_meta(path)["stats"])
    g = zarr.open_group(str(path), mode="r")
    adata = ad.AnnData(obs=ad.io.read_elem(g["obs"]), var=ad.io.read_elem(g["var"]))
    labels = get_labels(adata, cfg.data.label_key)
    k = _n_clusters(cfg.data.n_clusters, labels)
    k_info = None
    n = x.shape[0]
    if k == "auto":  # chosen on a seeded sample of the store: the Leiden rule needs cells in memory
        take = np.sort(np.random.default_rng(cfg.run.seed).choice(n, min(n, AUTO_K_MAX_CELLS), replace=False))
        k, k_info = _auto_k(cfg, x.rows(take))
        k_info["n_cells_used"] = int(len(take))
    if k > n:
        raise JojoInputError(f"--n-clusters {k} is larger than the number of cells ({n}); choose K <= {n}")
    return PreparedData(adata, x, stats, k, labels, np.asarray(adata.obs_names), source, k_info, fp)


def resolve_for_data(cfg: JojoConfig, data: PreparedData) -> JojoConfig:
    """Settings that depend on the data, fixed before training (so checkpoints and config.yaml hold them): the
    mask keep rate on sparse data (``effective_keep``)."""
    keep = effective_keep(cfg.model.mask_keep, cfg.model.mask_min_nonzero, data.stats.mean_nonzero)
    if keep == cfg.model.mask_keep:
        return cfg
    if not cfg.run.quiet:
        print(f"jojoscl: sparse data ({data.stats.mean_nonzero:.0f} non-zero genes per cell on average): mask keep "
              f"rate {cfg.model.mask_keep:g} -> {keep:.3g} (model.mask_min_nonzero = {cfg.model.mask_min_nonzero:g})",
              flush=True)
    return cfg.override({"model.mask_keep": keep})
