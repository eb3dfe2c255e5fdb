"""Files we write and read back (model bundles, checkpoints): no pickle, a checksum, durable writes.

Arrays are stored as torch tensors (numpy ones tagged to come back as numpy) and every load uses
``torch.load(weights_only=True)``, so a crafted file is refused instead of running code. ``<name>.sha256`` beside
each file (``sha256sum`` format) must match its bytes, so a truncated or altered file is never used.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import torch

from jojoscl_dist.errors import JojoInputError

_ND = "__ndarray__"  # tag of a numpy array stored as a tensor
# Files of the previous bundle/checkpoint schema hold plain numpy arrays and torch's version string: rebuilding
# those runs no code, so these are the only globals the restricted unpickler may use beyond its defaults.
_LEGACY_GLOBALS = [np._core.multiarray._reconstruct, np.ndarray, np.dtype, torch.torch_version.TorchVersion,
                   *(type(np.dtype(t)) for t in "?bhilqBHILQefdg")]  # numeric dtypes only


def to_plain(obj: Any) -> Any:
    """numpy arrays -> tagged tensors, numpy scalars -> Python scalars, containers recursively."""
    if isinstance(obj, np.ndarray):
        if obj.dtype.kind in "OUS":  # strings/objects have no tensor dtype: keep them as lists
            return obj.tolist()
        return {_ND: torch.from_numpy(np.ascontiguousarray(obj))}
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, str) and type(obj) is not str:  # e.g. torch.__version__: only plain str loads safely
        return str(obj)
    if isinstance(obj, dict):
        return {k: to_plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(to_plain(v) for v in obj)
    return obj


def from_plain(obj: Any) -> Any:
    """The inverse of ``to_plain``."""
    if isinstance(obj, dict):
        if set(obj) == {_ND}:
            return obj[_ND].numpy()
        return {k: from_plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(from_plain(v) for v in obj)
    return obj


def checksum_path(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def save(obj: Any, path: str | Path) -> Path:
    """``obj`` (tensors, numpy arrays, plain types) to ``path`` and its checksum file, atomically and durably."""
    path, buf = Path(path), io.BytesIO()
    torch.save(to_plain(obj), buf)
    write_durably(checksum_path(path), f"{hashlib.sha256(buf.getvalue()).hexdigest()}  {path.name}\n")
    write_durably(path, buf.getvalue())
    fsync_dir(path.parent)
    return path


def write_durably(path: Path, data: str | bytes) -> None:
    """Through a temporary file, fsynced, then renamed: a crash leaves the old file or the new one, never half."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb" if isinstance(data, bytes) else "w") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    tmp.replace(path)


def fsync_dir(directory: Path) -> None:
    with contextlib.suppress(OSError):  # some filesystems do not open folders; the rename is still atomic there
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def verify(path: Path, what: str) -> None:
    """Refuse ``path`` when its checksum file exists and disagrees with its bytes."""
    cs = checksum_path(path)
    if not cs.is_file():
        return
    with open(path, "rb") as f:
        actual = hashlib.file_digest(f, "sha256").hexdigest()
    if (cs.read_text().split() or [""])[0] != actual:
        raise JojoInputError(f"{what} {path} does not match its checksum in {cs.name}: the file is damaged or was "
                             f"altered; restore it, or retrain")


def load(path: str | Path, what: str) -> Any:
    """Verify and load a file written by ``save`` (or a previous schema's plain numpy arrays) without pickle."""
    path = Path(path)
    verify(path, what)
    try:
        with torch.serialization.safe_globals(_LEGACY_GLOBALS):
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        foreign = _pickled_globals(path) if isinstance(e, pickle.UnpicklingError) else []
        if foreign:
            raise JojoInputError(f"{what} {path} needs Python pickle to load (it refers to {', '.join(foreign[:3])}): refused, "
                                 f"because loading it could run code; use a file written by jojoscl-dist") from None
        raise JojoInputError(f"could not read {what} {path}: {e.__class__.__name__}: "
                             f"{(str(e).splitlines() or [''])[0]} (is the file complete?)") from None
    return from_plain(obj)


def _pickled_globals(path: Path) -> list[str]:
    """What a torch file would import when unpickled, read from its opcodes (nothing runs); [] if unparseable."""
    try:
        return sorted(g for g in torch.serialization.get_unsafe_globals_in_checkpoint(path)
                      if g not in {f"{o.__module__}.{o.__qualname__}" for o in _LEGACY_GLOBALS})
    except Exception:  # not a torch file: reported as unreadable
        return []
