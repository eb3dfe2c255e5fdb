"""Every cell embedded with a trained model (evaluations, final labels, prediction): in memory (``embed``), or for
atlases block by block into a Zarr group read back as Dask arrays (``embed_to_zarr``), so memory stays flat."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from jojoscl_dist.clustering.final import PCA_KEY
from jojoscl_dist.model.jojoscl import JojoSCL


@torch.no_grad()
def _blocks_out(model: JojoSCL, source, device, batch: int, project=None):
    """Eval-mode forward in row blocks: (start, {'h','z','y'} and with ``project`` ``PCA_KEY``, as float32 NumPy)."""
    was_training = model.training
    model.eval()
    n = source.shape[0]
    try:
        for start in range(0, n, batch):
            rows = np.array(source.rows(slice(start, min(start + batch, n))), dtype=np.float32)
            out = {k: v.float().cpu().numpy() for k, v in zip(("h", "z", "y"), model(torch.as_tensor(rows, device=device)))}
            if project is not None:
                out[PCA_KEY] = project(rows)
            yield start, out
    finally:
        model.train(was_training)


def embed(model: JojoSCL, source, device: torch.device | str = "cpu", batch: int = 8192,
          project=None) -> dict[str, np.ndarray]:
    """{'h': (n,128), 'z': (n,192), 'y': (n,K)} of every row, and ``PCA_KEY`` with ``project``."""
    outs: dict[str, list[np.ndarray]] = {"h": [], "z": [], "y": []} | ({PCA_KEY: []} if project is not None else {})
    for _, block in _blocks_out(model, source, device, batch, project):
        for k, v in block.items():
            outs[k].append(v)
    return {k: np.concatenate(v) if v else np.zeros((0, 0), np.float32) for k, v in outs.items()}


def embed_to_zarr(model: JojoSCL, source, path: str | Path, device: torch.device | str = "cpu",
                  batch: int | None = None, project=None) -> dict:
    """``embed`` into a Zarr group at ``path`` (chunks of ``batch`` rows), returned as Dask arrays. ``batch``
    defaults to the source's chunk rows: one stored chunk per block keeps the driver's peak low."""
    import dask.array as da
    import zarr

    n = source.shape[0]
    batch = batch or int(getattr(source, "chunk_rows", 0)) or 8192
    group = zarr.open_group(str(path), mode="w")
    arrays: dict = {}
    for start, block in _blocks_out(model, source, device, batch, project):
        for k, v in block.items():
            if k not in arrays:
                arrays[k] = group.create_array(k, shape=(n, v.shape[1]), chunks=(batch, v.shape[1]), dtype="float32")
            arrays[k][start:start + len(v)] = v
    return {k: da.from_zarr(a) for k, a in arrays.items()}
