"""Files we write and read back (model bundles, checkpoints) without pickle, with a checksum, durably.

- Arrays are stored as torch tensors (numpy arrays tagged so they come back as numpy), everything else as plain
  types, and every load uses ``torch.load(weights_only=True)``: a crafted file cannot run code, it is refused.
- Beside each file ``<name>.sha256`` holds its SHA-256 (``sha256sum`` format); a file whose bytes disagree is
  refused, so a truncated or altered checkpoint is never trained on or predicted with.
- Writes go to a temporary name, are fsynced, then renamed, and the folder is fsynced: a crash leaves the old file
  or the new one, never half of one.
"""

from __future__ import annotations

import hashlib
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
    """The inverse of ``to_plain`` (tagged tensors -> numpy arrays)."""
    if isinstance(obj, dict):
        if set(obj) == {_ND}:
            return obj[_ND].numpy()
        return {k: from_plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(from_plain(v) for v in obj)
    return obj


def checksum_path(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def save(obj: Any, path: str | Path) -> Path:
    """``obj`` (tensors, numpy arrays, plain types) to ``path`` and its checksum file, atomically and durably."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as f:
        torch.save(to_plain(obj), f)
        f.flush()
        os.fsync(f.fileno())
    digest = sha256_of(tmp)
    write_durably(checksum_path(path), f"{digest}  {path.name}\n")
    tmp.replace(path)
    fsync_dir(path.parent)
    return path


def write_durably(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    tmp.replace(path)


def fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # some filesystems do not open folders; the rename is still atomic there
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def verify(path: Path, what: str) -> None:
    """Refuse ``path`` when its checksum file exists and disagrees with its bytes."""
    cs = checksum_path(path)
    if not cs.is_file():
        return
    expected = (cs.read_text().split() or [""])[0]
    actual = sha256_of(path)
    if expected != actual:
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
    """The Python objects a torch file would import when unpickled, found by reading its opcodes (nothing runs);
    [] when the file cannot be parsed at all."""
    try:
        return sorted(g for g in torch.serialization.get_unsafe_globals_in_checkpoint(path)
                      if g not in {f"{o.__module__}.{o.__qualname__}" for o in _LEGACY_GLOBALS})
    except Exception:  # not a torch file: reported as unreadable
        return []
