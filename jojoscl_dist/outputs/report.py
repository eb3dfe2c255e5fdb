"""Pictures and a one-page summary of a run, in its directory: umap.png (z by cluster, and by the truth when
given), curves.png (losses per epoch; selection score and ARI/NMI per evaluation) and summary.md."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

MAX_UMAP_CELLS = 30_000  # UMAP cost grows with cells; a seeded subsample shows the same structure


def _figure(**kw):
    """A Figure without pyplot: no backend switch nor global state (notebooks, threads)."""
    from matplotlib.figure import Figure

    return Figure(**kw)


def umap_2d(z: np.ndarray, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(indices of the plotted cells, their 2-D coordinates)."""
    import umap

    n = z.shape[0]
    rng = np.random.default_rng(seed)
    idx = np.sort(rng.choice(n, MAX_UMAP_CELLS, replace=False)) if n > MAX_UMAP_CELLS else np.arange(n)
    reducer = umap.UMAP(n_neighbors=min(15, max(2, len(idx) - 1)), min_dist=0.3, metric="cosine",
                        random_state=seed, n_jobs=1)
    # UMAP resets numba's thread count, and through the shared OpenMP runtime torch's: later runs in this process
    # would give different low bits.
    import torch

    threads = torch.get_num_threads()
    try:
        return idx, reducer.fit_transform(np.asarray(z[idx]))  # z may be a Dask array (atlases): read the sample only
    finally:
        torch.set_num_threads(threads)


def _scatter(ax, xy: np.ndarray, labels: np.ndarray, title: str) -> None:
    import matplotlib

    lab = np.asarray(labels)
    # Cluster ids in numeric order (0, 1, 2, ..., 10), not as strings (0, 1, 10, 11, 2, ...).
    cats, codes = np.unique(lab if np.issubdtype(lab.dtype, np.number) else lab.astype(str), return_inverse=True)
    cmap = matplotlib.colormaps["tab20" if len(cats) > 10 else "tab10"]
    size = max(1.0, min(12.0, 20000 / max(len(xy), 1)))
    for i, c in enumerate(cats):
        m = codes == i
        ax.scatter(xy[m, 0], xy[m, 1], s=size, color=cmap(i % cmap.N), label=f"{c} ({m.sum()})", linewidths=0,
                   rasterized=True)
    ax.set(title=title, xticks=[], yticks=[], xlabel="UMAP 1", ylabel="UMAP 2")
    ncol = 1 if len(cats) <= 16 else 2
    ax.legend(loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=7, markerscale=max(1.0, 12 / size),
              frameon=False, ncol=ncol)


def umap_title(title: str, n_plotted: int, n_cells: int) -> str:
    """The data's title, then how many cells the UMAP shows (in words: the demo's title counts cells too)."""
    shown = (f"UMAP of all {n_cells} cells" if n_plotted >= n_cells
             else f"UMAP of a seeded {n_plotted} of {n_cells} cells")
    return f"{title}: {shown}" if title else shown


def umap_png(z: np.ndarray, labels: np.ndarray, path: Path, truth: np.ndarray | None = None, seed: int = 0,
             title: str = "") -> Path:
    idx, xy = umap_2d(z, seed)
    panels = [(labels, f"JojoSCL clusters (K={len(np.unique(labels))})")]
    if truth is not None:
        panels.append((truth, f"truth ({len(np.unique(truth))} types)"))
    fig = _figure(figsize=(6.5 * len(panels), 5))
    axes = fig.subplots(1, len(panels), squeeze=False)
    for ax, (lab, t) in zip(axes[0], panels):
        _scatter(ax, xy, np.asarray(lab)[idx], t)
    fig.suptitle(umap_title(title, len(idx), len(z)))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return path


def curves_png(history: list[dict[str, Any]], path: Path, selected_epoch: int | None = None) -> Path:
    ep = np.array([h["epoch"] + 1 for h in history])
    fig = _figure(figsize=(12, 4.2))
    a1, a2 = fig.subplots(1, 2)
    for key, label in (("loss", "total"), ("l_ins", "instance"), ("l_clu", "cluster"), ("l_sure", "SURE")):
        if history and key in history[0]:
            a1.plot(ep, [h[key] for h in history], label=label, lw=2 if key == "loss" else 1)
    a1.set(xlabel="epoch", ylabel="training loss (mean over batches)", title="training loss")
    a1.legend(frameon=False)
    evals = [h for h in history if "select_silhouette" in h]
    e_ep = [h["epoch"] + 1 for h in evals]
    for key, label, style in (("select_silhouette", "silhouette of k-means on z (label-free)", "o-"),
                              ("select_input_silhouette", "silhouette of the same clusters in input PCA (label-free)",
                               "d-"),
                              ("select_stability", "stability: ARI vs previous eval (label-free)", "s-"),
                              ("eval_ari", "ARI of k-means on z vs truth (not used to select)", "^--"),
                              ("eval_final_ari", "ARI of the final labels' k-means [z, input PCA] vs truth", "x--"),
                              ("eval_nmi", "NMI vs truth (not used to select)", "v--")):
        vals = [h.get(key) for h in evals]
        if evals and all(v is not None for v in vals):
            a2.plot(e_ep, vals, style, label=label, ms=4)
    if selected_epoch is not None:
        a2.axvline(selected_epoch + 1, color="grey", ls=":", label=f"selected epoch {selected_epoch + 1}")
    a2.set(xlabel="epoch", title="evaluations", ylim=(min(-0.05, a2.get_ylim()[0]), 1.05))
    a2.legend(frameon=False, fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return path


def _fmt(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def summary_md(path: Path, *, source: str, n_input_cells: int, n_input_genes: int, metrics: dict[str, Any],
               cfg_dict: dict[str, Any], k_info: dict | None, pictures: list[str], annotated: str | None) -> Path:
    m = metrics
    lines = ["# JojoSCL run summary", "", "## Data", "",
             f"- input: `{source}`",
             f"- {n_input_cells} cells x {n_input_genes} genes in; {m['n_cells']} cells x {m['n_genes']} "
             f"highly variable genes used ({n_input_cells - m['n_cells']} cells with zero counts left unassigned)",
             "", "## Clusters", ""]
    if k_info:
        extra = (f" (resolution {k_info.get('resolution')}, {k_info.get('n_communities')} communities, those of "
                 f">= {k_info.get('min_size')} cells counted)" if k_info.get("rule") == "leiden" else "")
        lines.append(f"- K = {m['n_clusters']}, chosen without labels by rule `{k_info['rule']}` on PCA(50) of "
                     f"the preprocessed data{extra}")
    else:
        lines.append(f"- K = {m['n_clusters']} (given)")
    n_pc = m.get("input_pca_components", 50)  # runs written before the setting existed used 50
    space = (f" on [z, {m['input_pca_weight']:g} x input PCA({n_pc})]" if m.get("label_method") == "kmeans"
             and m.get("input_pca_weight", 0) > 0 else " on z" if m.get("label_method") == "kmeans" else "")
    lines += [f"- clusters found: {m['n_clusters_found']}; labels by `{m['label_method']}`{space}",
              f"- model selection: rule `{m['selection_rule']}` kept epoch {m['selected_epoch'] + 1} of "
              f"{m['epochs']} (label-free)"]
    if "ari" in m:
        lines.append(f"- against the given labels: ARI {m['ari']:.4f}, NMI {m['nmi']:.4f}, ACC {m['acc']:.4f}"
                     + (f" (best evaluation epoch by ARI would have been {m['oracle_epoch'] + 1}: ARI "
                        f"{m['oracle_ari']:.4f}; reported only, never used)" if "oracle_ari" in m else ""))
    if annotated:
        lines.append(f"- annotated copy of the input: `{annotated}` (obs['{cfg_dict['run']['obs_key']}'], "
                     f"obsm['X_jojoscl'])")
    where = f"{m['num_workers']} Ray workers" if m["num_workers"] > 0 else "in-process"
    lines += ["", "## Timings", "",
              f"- preparation {m['time_prepare_s']:.1f} s, training {m['time_train_s']:.1f} s ({where})",
              f"- total {m.get('time_total_s', float('nan')):.1f} s", "", "## Settings", "",
              "| setting | value |", "|---|---|"]
    oc, lc = cfg_dict["optim"], cfg_dict["loss"]
    lines += [f"| {k} | {_fmt(v)} |" for k, v in (
        ("epochs", m["epochs"]), ("batch size", oc["batch_size"]), ("learning rate", oc["lr"]),
        ("tau instance / cluster", f"{lc['tau_instance']} / {lc['tau_cluster']}"),
        ("alpha / beta / w_sure", f"{lc['alpha']} / {lc['beta']} / {lc['w_sure']}"), ("seed", m["seed"]))]
    lines += ["", "## Final metrics", "", "| metric | value |", "|---|---|"]
    lines += [f"| {k} | {_fmt(v)} |" for k, v in m.items()
              if isinstance(v, (int, float, str)) and not isinstance(v, bool)]
    for pic in pictures:
        lines += ["", f"![{pic}]({pic})"]
    path.write_text("\n".join(lines) + "\n")
    return path


def write_report(stage: Path, *, z: np.ndarray, labels: np.ndarray, truth: np.ndarray | None,
                 history: list[dict], metrics: dict[str, Any], seed: int, **summary_kw) -> list[str]:
    """All three files; a failing picture is logged and skipped (the run's results matter more)."""
    pictures = []
    for name, fn in (("umap.png", lambda p: umap_png(z, labels, p, truth, seed, title=f"{summary_kw['source']}")),
                     ("curves.png", lambda p: curves_png(history, p, metrics.get("selected_epoch")))):
        try:
            fn(stage / name)
            pictures.append(name)
        except Exception as e:  # noqa: BLE001 - a picture must never cost the user their clusters
            log.warning("could not draw %s: %s: %s", name, e.__class__.__name__, e)
    summary_md(stage / "summary.md", metrics=metrics, pictures=pictures, **summary_kw)
    return pictures + ["summary.md"]
