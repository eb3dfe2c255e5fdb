"""Figures of a run (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def umap_png(path: str | Path, embedding: np.ndarray, clusters: np.ndarray, truth: np.ndarray | None = None,
             seed: int = 0, title: str = "") -> Path:
    """2-D UMAP (cosine, like the selection scores) of the embedding, coloured by cluster and, if given, by truth."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import umap

    n = embedding.shape[0]
    reducer = umap.UMAP(n_neighbors=min(15, max(2, n - 1)), metric="cosine", random_state=seed)
    xy = reducer.fit_transform(np.asarray(embedding, dtype=np.float32))
    panels = [("cluster", np.asarray(clusters))] + ([("truth", np.asarray(truth))] if truth is not None else [])
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 5), squeeze=False)
    for ax, (name, lab) in zip(axes[0], panels):
        cats, codes = np.unique(lab.astype(str), return_inverse=True)
        sc = ax.scatter(xy[:, 0], xy[:, 1], c=codes, cmap="tab20", s=max(1.0, 3000 / max(n, 1)), linewidths=0)
        ax.set_title(f"{title} by {name}".strip())
        ax.set_xticks([])
        ax.set_yticks([])
        if len(cats) <= 20:
            handles = [plt.Line2D([], [], marker="o", ls="", color=sc.cmap(sc.norm(i))) for i in range(len(cats))]
            ax.legend(handles, cats, fontsize=6, loc="best", markerscale=0.8)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
