"""Zarr AnnData stores on disk: the prepared (model-input) store and its row-streaming reader.

A prepared store is an ordinary AnnData Zarr group (format 3) whose X is the preprocessed HVG matrix, dense
float32, chunked by rows (measured: dense row chunks read ~2.4x faster than CSR that must be densified and
scaled per batch, see docs/decisions.md). ``uns['jojoscl_prepared']`` marks it and holds the scaling
statistics (``PreprocessStats.to_dict`` as JSON), so training detects it and streams it instead of preprocessing.

X is created with fill value NaN: a chunk that is missing on disk reads back as NaN (never as plausible zeros),
and preprocessed values are always finite, so every read can cheaply tell a hole from data.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import zarr
from zarr.core.sync import sync

from jojoscl_dist.errors import JojoInputError

PREPARED_KEY = "jojoscl_prepared"
FORMAT_VERSION = 1


def is_zarr_group(path: str | Path) -> bool:
    p = Path(path)
    return p.is_dir() and ((p / "zarr.json").exists() or (p / ".zgroup").exists())


def is_prepared_store(path: str | Path) -> bool:
    """True for a store written by ``python -m jojoscl_dist.prepare`` (uns['jojoscl_prepared'] present)."""
    if not is_zarr_group(path):
        return False
    try:
        g = zarr.open_group(str(path), mode="r")
        return "uns" in g and PREPARED_KEY in g["uns"]
    except Exception:  # not readable as a group: not ours
        return False


def read_prepared_meta(path: str | Path) -> dict[str, Any]:
    """uns['jojoscl_prepared'] with 'stats' decoded from its JSON."""
    import anndata as ad

    g = zarr.open_group(str(path), mode="r")
    meta = dict(ad.io.read_elem(g["uns"][PREPARED_KEY]))
    meta["stats"] = json.loads(str(meta.pop("stats_json")))
    fp = meta.pop("source_fingerprint_json", None)  # absent in stores of earlier versions
    meta["source_fingerprint"] = json.loads(str(fp)) if fp is not None else None
    return meta


def _chunk_key(arr: zarr.Array, coords: tuple[int, ...]) -> str:
    key = arr.metadata.encode_chunk_key(coords)
    return f"{arr.path}/{key}" if arr.path else key


def _stored_keys(arr: zarr.Array) -> set[str]:
    prefix = f"{arr.path}/" if arr.path else ""

    async def collect() -> set[str]:
        return {k async for k in arr.store.list_prefix(prefix)}

    return sync(collect())


class ZarrSource:
    """Rows of a prepared store's X (cells x HVG, float32), read straight from disk.

    ``rows(slice)`` reads a contiguous range (fast: whole chunks); ``rows(indices)`` works but is slow on
    random indices, which is why training streams whole chunks (``loader.iter_epoch``). Opened by path, so
    Ray workers open it themselves from shared storage instead of receiving the matrix through the object store.
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

    @property
    def n_chunks(self) -> int:
        return -(-self.shape[0] // self.chunk_rows)

    def chunk_name(self, i: int) -> str:
        return f"{self.path}/{_chunk_key(self.x, (i, 0))}"

    def check_chunks(self) -> None:
        """Every row chunk of X must exist on disk: a missing one would read as fill value, not data."""
        present = _stored_keys(self.x)
        n_col_chunks = -(-self.shape[1] // int(self.x.chunks[1]))
        missing = [(i, j) for i in range(self.n_chunks) for j in range(n_col_chunks)
                   if _chunk_key(self.x, (i, j)) not in present]
        if missing:
            i, j = missing[0]
            raise JojoInputError(f"prepared store is incomplete: chunk {_chunk_key(self.x, (i, j))} "
                                 f"(rows {i * self.chunk_rows}-{min((i + 1) * self.chunk_rows, self.shape[0])}) is "
                                 f"missing in {self.path} ({len(missing)} chunk(s) missing in all); re-run "
                                 f"python -m jojoscl_dist.prepare --overwrite to rebuild the store")

    def read_range(self, start: int, stop: int) -> np.ndarray:
        try:
            block = self.x[start:stop]
        except Exception as e:  # a corrupt chunk fails to decode: find and name it
            self._raise_bad_chunk(start, stop, e)
        if np.isnan(block).any():
            bad = int(np.flatnonzero(np.isnan(block).any(axis=1))[0]) + start
            i = bad // self.chunk_rows
            raise JojoInputError(f"chunk {_chunk_key(self.x, (i, 0))} in {self.path} is missing or holds NaN "
                                 f"(row {bad}); the store is damaged: rebuild it with python -m "
                                 f"jojoscl_dist.prepare --overwrite")
        return np.asarray(block, dtype=np.float32)

    def _raise_bad_chunk(self, start: int, stop: int, err: Exception):
        for i in range(start // self.chunk_rows, (stop - 1) // self.chunk_rows + 1):
            try:
                self.x[i * self.chunk_rows:min((i + 1) * self.chunk_rows, self.shape[0])]
            except Exception as e:
                raise JojoInputError(f"chunk {_chunk_key(self.x, (i, 0))} in {self.path} is corrupt "
                                     f"({e.__class__.__name__}: {e}); rebuild the store with python -m "
                                     f"jojoscl_dist.prepare --overwrite") from e
        raise JojoInputError(f"could not read rows {start}-{stop} of {self.path}: {err}") from err

    def rows(self, idx: np.ndarray | slice) -> np.ndarray:
        if isinstance(idx, slice):
            start, stop, step = idx.indices(self.shape[0])
            block = self.read_range(start, stop)
            return block if step == 1 else block[::step]
        idx = np.asarray(idx)
        if idx.size == 0:
            return np.zeros((0, self.shape[1]), np.float32)
        lo, hi = int(idx.min()), int(idx.max()) + 1
        if hi - lo <= 4 * idx.size:  # dense enough: one contiguous read, then pick
            return self.read_range(lo, hi)[idx - lo]
        out = np.empty((idx.size, self.shape[1]), np.float32)
        order = np.argsort(idx, kind="stable")
        sidx = idx[order]
        # Group sorted indices by chunk so each chunk is decoded once.
        chunk_of = sidx // self.chunk_rows
        bounds = np.flatnonzero(np.diff(chunk_of)) + 1
        for part_pos in np.split(np.arange(sidx.size), bounds):
            c = int(chunk_of[part_pos[0]])
            c0 = c * self.chunk_rows
            block = self.read_range(c0, min(c0 + self.chunk_rows, self.shape[0]))
            out[order[part_pos]] = block[sidx[part_pos] - c0]
        return out


def commit_store(tmp: Path, out: Path, replaceable=is_prepared_store) -> None:
    """Consolidate a finished store's metadata and move it into place, replacing an older one only when
    ``replaceable(out)`` says we wrote it: written under a temporary name first, so a crash never leaves a store
    that looks complete."""
    import os
    import shutil
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # consolidated metadata is a zarr-python extension in v3
        zarr.consolidate_metadata(str(tmp))
    if out.exists():
        if not replaceable(out):
            raise JojoInputError(f"{out} exists and is not a store jojoscl wrote: choose another output path "
                                 f"(nothing jojoscl did not write is replaced)")
        shutil.rmtree(out)
    os.replace(tmp, out)
