"""The identity of an input, recorded by prepared stores and checkpoints so that neither is reused for other data:
the resolved path (for messages only: a volume may be mounted elsewhere), the size, the newest modification time,
and a SHA-256 over the first and last MiB of a file, or over a folder's metadata files and its list of files with
their sizes (cheap at a million cells); for an AnnData object, over its names and every value."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

from jojoscl_dist.data.preprocess import iter_row_chunks

BLOCK = 1 << 20  # bytes hashed at each end of a file
METADATA_FILES = {"zarr.json", ".zarray", ".zattrs", ".zgroup", ".zmetadata"}
COMPARED = ("size", "mtime_ns", "sha256")


def fingerprint(path: str | Path) -> dict[str, Any]:
    p = Path(path).resolve()
    return _of_folder(p) if p.is_dir() else _of_file(p)


def _of_file(p: Path) -> dict[str, Any]:
    st = p.stat()
    h = hashlib.sha256()
    with open(p, "rb") as f:
        h.update(f.read(BLOCK))
        if st.st_size > 2 * BLOCK:
            f.seek(-BLOCK, os.SEEK_END)
        h.update(f.read(BLOCK))
    return {"path": str(p), "size": int(st.st_size), "mtime_ns": int(st.st_mtime_ns), "sha256": h.hexdigest()}


def _of_folder(p: Path) -> dict[str, Any]:
    h = hashlib.sha256()
    size, mtime = 0, 0
    for f in sorted(x for x in p.rglob("*") if x.is_file()):
        st = f.stat()
        rel = f.relative_to(p).as_posix()
        size += st.st_size
        mtime = max(mtime, st.st_mtime_ns)
        h.update(f"{rel}\0{st.st_size}\n".encode())
        if f.name in METADATA_FILES:
            h.update(f.read_bytes())
    return {"path": str(p), "size": int(size), "mtime_ns": int(mtime), "sha256": h.hexdigest()}


def same_data(a: dict[str, Any] | None, b: dict[str, Any] | None) -> bool:
    return a is not None and b is not None and all(a.get(k) == b.get(k) for k in COMPARED)


def describe_change(old: dict[str, Any], new: dict[str, Any]) -> str:
    """What differs, in words, for an error line."""
    parts = []
    if old.get("size") != new.get("size"):
        parts.append(f"size {old.get('size')} -> {new.get('size')} bytes")
    if old.get("mtime_ns") != new.get("mtime_ns"):
        parts.append("modification time changed")
    if old.get("sha256") != new.get("sha256"):
        parts.append("content hash changed")
    if old.get("path") != new.get("path"):
        parts.append(f"was {old.get('path')}")
    return ", ".join(parts) or "no fingerprint recorded"


def fingerprint_matrix(x: Any, obs_names: Any, var_names: Any, label: str) -> dict[str, Any]:
    """An AnnData's matrix ``x`` (in memory or backed): its stored values as size, a SHA-256 over its shape, dtype,
    names and values read in row chunks; ``label`` stands in for the path in messages."""
    h = hashlib.sha256(f"{x.shape}\0{x.dtype}\n".encode())
    for names in (obs_names, var_names):
        h.update("\0".join(map(str, names)).encode() + b"\n")
    size = 0
    for _, _, rows in iter_row_chunks(x, 4096):
        if sp.issparse(rows):
            rows = rows.tocsr()
            parts = (rows.data, rows.indices, np.diff(rows.indptr))
        else:
            parts = (np.ascontiguousarray(rows),)
        for a in parts:
            h.update(a.tobytes())
        size += parts[0].size
    return {"path": label, "size": int(size), "mtime_ns": 0, "sha256": h.hexdigest()}
