"""`python -m jojoscl_dist.prepare --input RAW --output STORE.zarr`: preprocess an atlas out of core.

Reads the raw matrix by row chunks (backed .h5ad, raw AnnData Zarr; smaller formats in memory), computes the
streaming statistics (QC: zero-count genes and cells dropped; totals, median normalisation (capped), log1p, Seurat HVG,
per-gene mean/std: ``compute_stats``), then writes the model input (kept cells x HVG, dense float32, chunked by
rows) with a Dask map_blocks pass: each Dask block is exactly one store chunk, so parallel writers never share a
chunk. The result is an AnnData Zarr store (format 3) with obs (kept cells, with their labels), var (the HVG
names) and the scaling statistics in uns['jojoscl_prepared']. It is written to a hidden sibling folder and renamed
at the end, so a crash never leaves a store that looks complete.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd
import zarr

from jojoscl_dist.config import DataConfig
from jojoscl_dist.data.fingerprint import fingerprint
from jojoscl_dist.data.preprocess import (HVG_FLAVORS, TARGET_SUM_HELP, PreprocessStats, compute_stats,
                                          target_sum_arg)
from jojoscl_dist.data.readers import read_input
from jojoscl_dist.data.zarr_store import FORMAT_VERSION, PREPARED_KEY, commit_store, is_prepared_store, is_zarr_group
from jojoscl_dist.errors import JojoInputError
from jojoscl_dist.outputs.run_dir import refuse_unsafe_target

log = logging.getLogger(__name__)


@dataclass
class RawInput:
    x: Any  # row-sliceable: x[i:j] -> scipy CSR or ndarray
    obs: pd.DataFrame
    var_names: list[str]


def open_raw(path: str | Path) -> RawInput:
    """The raw matrix without loading it where the format allows (h5ad backed, Zarr lazily)."""
    p = Path(path)
    if not p.exists():
        raise JojoInputError(f"input not found: {p} (check --input)")
    if is_prepared_store(p):
        raise JojoInputError(f"{p} is already a prepared store: train on it directly with --data {p}")
    if p.suffix == ".zarr" or is_zarr_group(p):
        try:
            g = zarr.open_group(str(p), mode="r")
            xg = g["X"]
            x = ad.io.sparse_dataset(xg) if isinstance(xg, zarr.Group) else xg
            obs = ad.io.read_elem(g["obs"])
            var = ad.io.read_elem(g["var"])
        except (KeyError, ValueError, TypeError, OSError) as e:
            raise JojoInputError(f"could not read {p} as an AnnData Zarr store: {e.__class__.__name__}: {e}") from e
        return RawInput(x, obs, [str(v) for v in var.index])
    adata = read_input(p, backed=True if p.suffix.lower() == ".h5ad" else None)
    return RawInput(adata.X, adata.obs, [str(v) for v in adata.var_names])


def raw_shape(path: str | Path) -> tuple[int, int] | None:
    """(cells, genes) from metadata alone for .h5ad and Zarr inputs; None for other formats."""
    p = Path(path)
    try:
        if p.suffix == ".zarr" or is_zarr_group(p):
            xg = zarr.open_group(str(p), mode="r")["X"]
            return tuple(xg.attrs["shape"]) if isinstance(xg, zarr.Group) else tuple(xg.shape)  # type: ignore
        if p.suffix.lower() == ".h5ad":
            import h5py

            with h5py.File(p, "r") as f:
                xg = f["X"]
                return tuple(xg.attrs["shape"]) if isinstance(xg, h5py.Group) else tuple(xg.shape)  # type: ignore
    except Exception:  # unreadable metadata: the reader will say what is wrong
        return None
    return None


def input_bytes(path: str | Path) -> int:
    p = Path(path)
    if p.is_dir():
        return sum(f.stat().st_size for f in p.rglob("*") if f.is_file())
    return p.stat().st_size


def needs_prepare(path: str | Path, dc: DataConfig) -> bool:
    """Raw input too large to materialise: prepare it into a store and stream it."""
    if not Path(path).exists():  # the reader raises the clear 'input not found' error
        return False
    shape = raw_shape(path)
    return (shape is not None and shape[0] > dc.prepare_above_cells) or input_bytes(path) > dc.prepare_above_bytes


def _progress(total: int, enabled: bool, desc: str):
    from tqdm import tqdm

    return tqdm(total=total, unit="cells", unit_scale=True, desc=desc, disable=not enabled, mininterval=1.0)


def prepare(input_path: str | Path, output: str | Path, *, n_top_genes: int = 2000, input_scale: str = "auto",
            hvg_flavor: str = "auto", chunk_size: int = 4096, chunk_rows: int = 2048, clip: float | None = None,
            target_sum: float | str = "auto", workers: int | None = None, overwrite: bool = False,
            progress: bool = True) -> dict[str, Any]:
    """Prepare ``input_path`` into the Zarr store ``output``; returns timings and sizes."""
    import dask
    import dask.array as da

    out = Path(output).resolve()
    if not Path(input_path).exists():
        raise JojoInputError(f"input not found: {input_path} (check --input)")
    refuse_unsafe_target(out, [input_path])
    if out.exists() and not overwrite:
        raise JojoInputError(f"{out} already exists: pass --overwrite to replace it, or choose another --output")
    if out.exists() and not is_prepared_store(out):
        raise JojoInputError(f"--output {out} exists and is not a prepared store: --overwrite replaces only a store "
                             f"written by python -m jojoscl_dist.prepare; choose another --output")
    t0 = time.perf_counter()
    raw = open_raw(input_path)
    n_cells, n_genes = raw.x.shape
    bar = _progress(2 * n_cells, progress, "statistics")
    stats = compute_stats(raw.x, raw.var_names, n_top_genes=n_top_genes, input_scale=input_scale,
                          chunk_size=chunk_size, clip=clip, hvg_flavor=hvg_flavor, progress=bar.update,
                          target_sum=target_sum)
    bar.close()
    t_stats = time.perf_counter() - t0
    kept = np.flatnonzero(stats.cell_mask)
    n_kept, g = len(kept), stats.n_genes

    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        _write_skeleton(tmp, raw, stats, kept, input_path)
        root = zarr.open_group(str(tmp), mode="r+")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # zarr's note on future auto-sharding
            zx = root.create_array("X", shape=(n_kept, g), chunks=(min(chunk_rows, max(n_kept, 1)), g),
                                   dtype="float32", fill_value=np.nan)  # NaN: a missing chunk never reads as data
        zx.attrs.update({"encoding-type": "array", "encoding-version": "0.2.0"})

        bar = _progress(n_kept, progress, "writing")

        def transform_block(row_ids: np.ndarray) -> np.ndarray:
            # row_ids: positions in the output; map them to input rows (cells dropped by QC are skipped).
            src = kept[row_ids[0]:row_ids[-1] + 1]
            lo, hi = int(src[0]), int(src[-1]) + 1
            rows = raw.x[lo:hi]
            if hi - lo != len(src):
                rows = rows[src - lo]
            block = stats.transform(rows)
            bar.update(len(src))
            return block

        rid = da.arange(n_kept, chunks=zx.chunks[0])
        xt = da.map_blocks(transform_block, rid, new_axis=1, chunks=(rid.chunks[0], (g,)), dtype=np.float32,
                           meta=np.empty((0, g), np.float32))
        n_workers = workers or min(2, os.cpu_count() or 1)
        with dask.config.set(scheduler="threads", num_workers=n_workers):
            da.store(xt, zx, lock=False)
        bar.close()
        commit_store(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    total = time.perf_counter() - t0
    return {"output": str(out), "n_input_cells": int(n_cells), "n_input_genes": int(n_genes), "n_cells": int(n_kept),
            "n_genes": int(g), "time_stats_s": t_stats, "time_write_s": total - t_stats, "time_total_s": total,
            "cells_per_s": n_cells / max(total, 1e-9)}


def _write_skeleton(tmp: Path, raw: RawInput, stats: PreprocessStats, kept: np.ndarray, source) -> None:
    """obs, var and uns through anndata (format 3); X is added afterwards, chunk by chunk."""
    obs = raw.obs.iloc[kept].copy()
    obs.index = obs.index.astype(str)
    var = pd.DataFrame(index=pd.Index(stats.gene_names, name=None))
    uns = {PREPARED_KEY: {"format_version": FORMAT_VERSION, "source": str(Path(source).resolve()),
                          "source_fingerprint_json": json.dumps(fingerprint(source)),
                          "stats_json": json.dumps(stats.to_dict()),
                          "mean": np.asarray(stats.mean), "std": np.asarray(stats.std)}}
    with ad.settings.override(zarr_write_format=3):  # anndata 0.12 still writes format 2 by default; not global
        ad.AnnData(obs=obs, var=var, uns=uns).write_zarr(tmp)


def check_options(a: argparse.Namespace) -> None:
    """The numeric options, range-checked by the training config's own rules (same limits, same words)."""
    from jojoscl_dist.config import ConfigValueError, JojoConfig

    flags = {"data.n_top_genes": ("--n-top-genes", a.n_top_genes), "data.chunk_size": ("--chunk-size", a.chunk_size),
             "data.store_chunk_rows": ("--chunk-rows", a.chunk_rows)}
    try:
        JojoConfig().override({key: value for key, (_, value) in flags.items()})
    except ConfigValueError as e:
        raise JojoInputError(e.named(flags[e.key][0])) from None
    if a.workers is not None and a.workers < 1:
        raise JojoInputError(f"--workers must be an integer >= 1, got {a.workers}")


def main(argv: list[str] | None = None) -> int:
    dc = DataConfig()
    p = argparse.ArgumentParser(prog="python -m jojoscl_dist.prepare",
                                description="Preprocess a raw atlas out of core into a Zarr store for training.")
    p.add_argument("--input", required=True, help=".h5ad (read backed), X/Y .h5, 10x, or raw AnnData .zarr")
    p.add_argument("--output", required=True, help="the prepared store (STORE.zarr)")
    p.add_argument("--n-top-genes", type=int, default=dc.n_top_genes)
    p.add_argument("--input-scale", default=dc.input_scale, choices=["auto", "counts", "normalized", "log"])
    p.add_argument("--hvg-flavor", default=dc.hvg_flavor, choices=HVG_FLAVORS)
    p.add_argument("--target-sum", type=target_sum_arg, default=dc.target_sum, help=TARGET_SUM_HELP)
    p.add_argument("--chunk-size", type=int, default=dc.chunk_size, help="rows per statistics chunk")
    p.add_argument("--chunk-rows", type=int, default=dc.store_chunk_rows, help="rows per chunk of the store's X")
    p.add_argument("--workers", type=int, default=None, help="Dask threads for the write pass (default 2)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing store")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="jojoscl: %(levelname)s: %(message)s")
    try:
        check_options(a)
        info = prepare(a.input, a.output, n_top_genes=a.n_top_genes, input_scale=a.input_scale,
                       hvg_flavor=a.hvg_flavor, target_sum=a.target_sum,
                       chunk_size=a.chunk_size, chunk_rows=a.chunk_rows, workers=a.workers, overwrite=a.overwrite,
                       progress=not a.quiet)
    except JojoInputError as e:
        print(f"jojoscl: error: {e}", file=sys.stderr)
        return 2
    print(f"jojoscl: prepared {info['n_cells']} cells x {info['n_genes']} genes into {info['output']} "
          f"in {info['time_total_s']:.1f} s ({info['cells_per_s']:.0f} cells/s)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
