"""What the bench scripts share: markdown tables as docs/benchmarks.md prints them, the machine line, a labelled set."""

from __future__ import annotations

import os
import platform


def md_row(cells) -> str:
    """``| a | b |``; an empty cell prints as ``| |``."""
    return "|" + "|".join(f" {c} " if c != "" else " " for c in cells) + "|"


def md_table(header, rows) -> list[str]:
    return [md_row(header), "|" + "---|" * len(header)] + [md_row(r) for r in rows]


def machine() -> str:
    return f"{platform.node()} {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs"


def load_labelled(path):
    """The package's preprocessed matrix of a .h5ad and its obs['cell_type'] (the cells it keeps)."""
    import anndata as ad

    from jojoscl_dist.data.preprocess import compute_stats, materialize

    a = ad.read_h5ad(path)
    st = compute_stats(a.X, list(a.var_names))
    return materialize(a.X, st), a.obs["cell_type"].astype(str).to_numpy()[st.cell_mask]
