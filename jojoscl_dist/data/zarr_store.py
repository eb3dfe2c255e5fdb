"""Prepared stores: AnnData Zarr groups (format 3) whose X is the preprocessed HVG matrix, dense float32 chunked by
rows (read ~2.4x faster than CSR densified and scaled per batch, see docs/decisions.md); uns['jojoscl_prepared']
marks them and holds the scaling statistics. ``prepare`` writes one out of core; ``ZarrSource`` streams its rows.

X's fill value is NaN: a chunk missing on disk reads as NaN, never as plausible zeros, and preprocessed values are
always finite, so every read tells a hole from data.
"""

from __future__ import annotations

import json
import os
import shutil
import time
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import anndata as ad
import numpy as np
import pandas as pd
import zarr
from tqdm import tqdm

from jojoscl_dist.data.fingerprint import fingerprint
from jojoscl_dist.data.preprocess import PreprocessStats, compute_stats
from jojoscl_dist.data.readers import is_zarr_group, missing_chunks, open_raw
from jojoscl_dist.errors import JojoInputError

PREPARED_KEY = "jojoscl_prepared"
FORMAT_VERSION = 1


def is_prepared_store(path: str | Path) -> bool:
    """True for a store written by ``prepare`` (uns['jojoscl_prepared'] present)."""
    if not is_zarr_group(path):
        return False
    try:
        g = zarr.open_group(str(path), mode="r")
        return "uns" in g and PREPARED_KEY in g["uns"]
    except Exception:  # not readable as a group: not ours
        return False


def read_prepared_meta(path: str | Path) -> dict[str, Any]:
    """uns['jojoscl_prepared'] with 'stats' and 'source_fingerprint' decoded from their JSON."""
    meta = dict(ad.io.read_elem(zarr.open_group(str(path), mode="r")["uns"][PREPARED_KEY]))
    meta["stats"] = json.loads(str(meta.pop("stats_json")))
    fp = meta.pop("source_fingerprint_json", None)  # absent in stores of earlier versions
    meta["source_fingerprint"] = json.loads(str(fp)) if fp is not None else None
    return meta


def _chunk_key(arr: zarr.Array, coords: tuple[int, ...]) -> str:
    key = arr.metadata.encode_chunk_key(coords)
    return f"{arr.path}/{key}" if arr.path else key


class ZarrSource:
    """Rows of a prepared store's X (cells x HVG, float32), read straight from disk.

    Contiguous ranges read whole chunks; random indices are slow, so training streams whole chunks
    (``loader.iter_epoch``). Opened by path: Ray workers open it from shared storage, not the object store.
    """

    def __init__(self, path: str | Path, check_chunks: bool = True):
        self.path = str(Path(path).resolve())
        if not is_prepared_store(self.path):
            raise JojoInputError(f"{path} is not a prepared store (no uns['{PREPARED_KEY}']): create one with "
                                 f"python -m jojoscl_dist.prepare --input RAW --output {path}")
        self._open()
        if check_chunks:
            self.check_chunks()

    def _open(self) -> None:
        self.x = zarr.open_group(self.path, mode="r")["X"]
        if not isinstance(self.x, zarr.Array) or self.x.ndim != 2:
            raise JojoInputError(f"{self.path}: X must be a dense 2-D array in a prepared store; re-run prepare")
        self.chunk_rows = int(self.x.chunks[0])

    def __getstate__(self) -> dict:
        return {"path": self.path}

    def __setstate__(self, state: dict) -> None:
        self.path = state["path"]
        self._open()

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(int(s) for s in self.x.shape)  # type: ignore[return-value]

    def check_chunks(self) -> None:
        """Every chunk of X must exist on disk: a missing one would read as fill value, not data."""
        missing = missing_chunks(self.x, Path(self.path))
        if missing:
            (i, _), key = missing[0]
            raise JojoInputError(f"prepared store is incomplete: chunk {key} (rows {i * self.chunk_rows}-"
                                 f"{min((i + 1) * self.chunk_rows, self.shape[0])}) is missing in {self.path} "
                                 f"({len(missing)} chunk(s) missing in all); re-run python -m jojoscl_dist.prepare "
                                 f"--overwrite to rebuild the store")

    def read_range(self, start: int, stop: int) -> np.ndarray:
        return self._read(slice(start, stop), np.arange(start, stop))

    def rows(self, idx: np.ndarray | slice) -> np.ndarray:
        if isinstance(idx, slice):
            start, stop, step = idx.indices(self.shape[0])
            return self.read_range(start, stop)[::step]
        idx = np.asarray(idx, dtype=np.int64)
        return self._read(idx, idx)  # zarr decodes each chunk it needs once, whatever the order of idx

    def _read(self, sel: slice | np.ndarray, row_ids: np.ndarray) -> np.ndarray:
        """Rows ``sel`` of X (rows ``row_ids``), float32; a chunk that is corrupt, missing or holds NaN is named."""
        try:
            block = self.x.oindex[sel]
        except Exception as err:  # a corrupt chunk fails to decode: find and name it
            for i in np.unique(row_ids // self.chunk_rows):
                try:
                    self.x[i * self.chunk_rows:min((i + 1) * self.chunk_rows, self.shape[0])]
                except Exception as e:
                    raise JojoInputError(f"chunk {_chunk_key(self.x, (int(i), 0))} in {self.path} is corrupt "
                                         f"({e.__class__.__name__}: {e}); rebuild the store with python -m "
                                         f"jojoscl_dist.prepare --overwrite") from e
            raise JojoInputError(f"could not read rows {row_ids.min()}-{row_ids.max() + 1} of {self.path}: "
                                 f"{err}") from err
        nan = np.isnan(block).any(axis=1)
        if nan.any():
            bad = int(row_ids[np.argmax(nan)])
            raise JojoInputError(f"chunk {_chunk_key(self.x, (bad // self.chunk_rows, 0))} in {self.path} is "
                                 f"missing or holds NaN (row {bad}); the store is damaged: rebuild it with python -m "
                                 f"jojoscl_dist.prepare --overwrite")
        return np.asarray(block, dtype=np.float32)


@contextmanager
def staged_store(out: Path, replaceable=is_prepared_store) -> Iterator[Path]:
    """A hidden sibling folder to write the store ``out`` into; when the block ends its metadata is consolidated and
    it is renamed to ``out`` (replacing an older store only when ``replaceable(out)`` says we wrote it), and when the
    block fails it is removed: a crash never leaves a store that looks complete."""
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        yield tmp
        with warnings.catch_warnings(action="ignore", category=UserWarning):  # consolidated metadata: an extension
            zarr.consolidate_metadata(str(tmp))
        if out.exists():
            if not replaceable(out):
                raise JojoInputError(f"{out} exists and is not a store jojoscl wrote: choose another output path "
                                     f"(nothing jojoscl did not write is replaced)")
            shutil.rmtree(out)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def refuse_unsafe_target(out: Path, inputs: list[str | Path], flag: str = "--output") -> None:
    """Never write into or replace a root or home folder, the working directory (or a folder holding it), or a
    folder that holds an input; never write inside an input. For stores and run folders alike."""
    out = out.resolve()
    home = Path.home().resolve()
    if out == Path(out.anchor) or out == home or out in home.parents:
        raise JojoInputError(f"{flag} {out} is a root or home folder: give a new folder for the run, e.g. "
                             f"{flag} runs/{out.name or 'jojoscl'}")
    cwd = Path.cwd().resolve()
    if out == cwd or out in cwd.parents:
        raise JojoInputError(f"{flag} {out} is the working directory or holds it: give a new folder, e.g. "
                             f"{flag} runs/jojoscl")
    for inp in inputs:
        i = Path(inp).resolve()
        if i == out or out in i.parents:
            raise JojoInputError(f"{flag} {out} holds the input {i}: choose an output folder outside the input")
        if i in out.parents:
            raise JojoInputError(f"{flag} {out} lies inside the input {i}: choose an output folder outside it")


def _bar(total: int, enabled: bool, desc: str) -> tqdm:
    return tqdm(total=total, unit="cells", unit_scale=True, desc=desc, disable=not enabled, mininterval=1.0)


def prepare(input_path: str | Path, output: str | Path, *, n_top_genes: int = 2000, input_scale: str = "auto",
            hvg_flavor: str = "auto", chunk_size: int = 4096, chunk_rows: int = 2048, clip: float | None = None,
            target_sum: float | str = "auto", workers: int | None = None, overwrite: bool = False,
            progress: bool = True) -> dict[str, Any]:
    """Preprocess the raw matrix ``input_path`` out of core into the prepared store ``output``; timings and sizes.

    The statistics come from streaming passes over row chunks (``compute_stats``); X is then written by a Dask
    map_blocks pass whose every block is exactly one store chunk, so parallel writers never share a chunk.
    """
    import dask
    import dask.array as da

    src, out = Path(input_path), Path(output).resolve()
    if not src.exists():
        raise JojoInputError(f"input not found: {input_path} (check --input)")
    refuse_unsafe_target(out, [input_path])
    if out.exists() and not overwrite:
        raise JojoInputError(f"{out} already exists: pass --overwrite to replace it, or choose another --output")
    if out.exists() and not is_prepared_store(out):
        raise JojoInputError(f"--output {out} exists and is not a prepared store: --overwrite replaces only a store "
                             f"written by python -m jojoscl_dist.prepare; choose another --output")
    if is_prepared_store(src):
        raise JojoInputError(f"{src} is already a prepared store: train on it directly with --data {src}")
    t0 = time.perf_counter()
    x, obs, var_names = open_raw(src)
    n_cells, n_genes = x.shape
    bar = _bar(2 * n_cells, progress, "statistics")
    stats = compute_stats(x, var_names, n_top_genes=n_top_genes, input_scale=input_scale, chunk_size=chunk_size,
                          clip=clip, hvg_flavor=hvg_flavor, progress=bar.update, target_sum=target_sum)
    bar.close()
    t_stats = time.perf_counter() - t0
    kept = np.flatnonzero(stats.cell_mask)
    n_kept, g = len(kept), stats.n_genes

    with staged_store(out) as tmp:
        _write_skeleton(tmp, obs.iloc[kept], stats, src)
        root = zarr.open_group(str(tmp), mode="r+")
        with warnings.catch_warnings(action="ignore", category=UserWarning):  # zarr's note on future auto-sharding
            zx = root.create_array("X", shape=(n_kept, g), chunks=(min(chunk_rows, max(n_kept, 1)), g),
                                   dtype="float32", fill_value=np.nan)  # NaN: a missing chunk never reads as data
        zx.attrs.update({"encoding-type": "array", "encoding-version": "0.2.0"})
        bar = _bar(n_kept, progress, "writing")

        def transform_block(row_ids: np.ndarray) -> np.ndarray:
            # row_ids: positions in the output; map them to input rows (cells dropped by QC are skipped).
            rows_in = kept[row_ids[0]:row_ids[-1] + 1]
            lo, hi = int(rows_in[0]), int(rows_in[-1]) + 1
            rows = x[lo:hi]
            block = stats.transform(rows if hi - lo == len(rows_in) else rows[rows_in - lo])
            bar.update(len(rows_in))
            return block

        rid = da.arange(n_kept, chunks=zx.chunks[0])
        xt = da.map_blocks(transform_block, rid, new_axis=1, chunks=(rid.chunks[0], (g,)), dtype=np.float32,
                           meta=np.empty((0, g), np.float32))
        with dask.config.set(scheduler="threads", num_workers=workers or min(2, os.cpu_count() or 1)):
            da.store(xt, zx, lock=False)
        bar.close()
    total = time.perf_counter() - t0
    return {"output": str(out), "n_input_cells": int(n_cells), "n_input_genes": int(n_genes), "n_cells": int(n_kept),
            "n_genes": int(g), "time_stats_s": t_stats, "time_write_s": total - t_stats, "time_total_s": total,
            "cells_per_s": n_cells / max(total, 1e-9)}


def _write_skeleton(tmp: Path, obs: pd.DataFrame, stats: PreprocessStats, source: Path) -> None:
    """obs (the kept cells), var and uns through anndata (format 3); X is added afterwards, chunk by chunk."""
    obs = obs.copy()
    obs.index = obs.index.astype(str)
    uns = {PREPARED_KEY: {"format_version": FORMAT_VERSION, "source": str(source.resolve()),
                          "source_fingerprint_json": json.dumps(fingerprint(source)),
                          "stats_json": json.dumps(stats.to_dict()),
                          "mean": np.asarray(stats.mean), "std": np.asarray(stats.std)}}
    with ad.settings.override(zarr_write_format=3):  # anndata 0.12 still writes format 2 by default; not global
        ad.AnnData(obs=obs, var=pd.DataFrame(index=pd.Index(stats.gene_names, name=None)), uns=uns).write_zarr(tmp)
