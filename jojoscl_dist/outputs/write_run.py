"""Everything a finished training run writes, staged and committed atomically (run_dir.py)."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd

from jojoscl_dist.clustering.input_pca import InputPCA
from jojoscl_dist.config import JojoConfig
from jojoscl_dist.data.dataset import PreparedData
from jojoscl_dist.outputs import anndata_out, bundle, report, run_dir


def write_run(cfg: JojoConfig, data: PreparedData, state: dict, chosen: dict, emb: dict[str, np.ndarray],
              labels: np.ndarray, centroids: np.ndarray, metrics: dict[str, Any], out: Path,
              input_pca: InputPCA | None = None) -> None:
    stage = run_dir.staging_dir(out)
    try:
        kept = data.kept_mask  # positional (no lookup by name, no copy of the strings; atlases)
        obs = data.adata.obs.copy(deep=False) if kept.all() else data.adata.obs.iloc[np.flatnonzero(kept)].copy()
        obs["jojoscl_cluster"] = anndata_out.cluster_categorical(labels)
        # NumPy arrays, or Dask arrays over the run's on-disk embedding (atlases): anndata writes those block
        # by block, so results.h5ad never needs every cell's embedding in memory.
        res = ad.AnnData(obs=obs, obsm={"X_jojoscl": emb["z"], "X_jojoscl_h": emb["h"]})
        uns = {"metrics": {k: v for k, v in metrics.items() if isinstance(v, (int, float, str))},
               "source": data.source}
        res.uns["jojoscl"] = uns
        res.write_h5ad(stage / "results.h5ad")
        pd.DataFrame({"cell": data.obs_names, "cluster": labels}).to_csv(stage / "labels.csv", index=False)

        bundle.save(bundle.of_run(cfg, data.stats, state, chosen, centroids, input_pca), stage / "model")
        cfg.save(stage / "config.yaml")

        # <input stem>.jojoscl.h5ad (.zarr for Zarr input); demo.jojoscl.h5ad for the synthetic demo
        ann_name = anndata_out.default_path(cfg.data.path or "demo.h5ad").name
        params = {"n_clusters": data.n_clusters, "label_method": cfg.eval.label_method,
                  "selection": cfg.eval.selection, "epochs": metrics["epochs"], "seed": cfg.run.seed,
                  "source": data.source, "k_rule": (data.k_info or {}).get("rule", "given")}
        annotated = anndata_out.annotate(data.adata, data.kept_mask, labels, emb["z"], cfg.run.obs_key,
                                         {"params": params, "metrics": uns["metrics"]})
        anndata_out.write(annotated, stage / ann_name, input_path=cfg.data.path)

        if cfg.run.plots:
            report.write_report(stage, z=emb["z"], labels=labels, truth=data.labels, history=state["history"],
                                metrics=metrics, seed=cfg.run.seed, source=data.source,
                                n_input_cells=data.adata.n_obs, n_input_genes=data.adata.n_vars,
                                cfg_dict=cfg.to_dict(), k_info=data.k_info, annotated=ann_name)
        if cfg.run.tracking:  # cleared by run_dir.mark_finished once MLflow has the run
            (stage / run_dir.PENDING_MARKER).write_text("MLflow logging not finished\n")
        run_dir.write_json(stage / "metrics.json", {"final": metrics, "history": state["history"],
                                                    "k_selection": data.k_info})
        run_dir.write_marker(stage)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    run_dir.commit(stage, out)
