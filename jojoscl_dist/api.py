"""The Python API, scverse style: ``cluster(adata)`` annotates an AnnData in place; ``JojoSCL`` trains, embeds,
assigns new cells and saves or loads the model bundle the CLI writes. Both run the CLI's own functions
(train/run.py ``fit``, data/dataset.py ``prepare_data``, predict.py ``predict``)."""

from __future__ import annotations

import difflib
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd

from jojoscl_dist.config import JojoConfig
from jojoscl_dist.data.dataset import own_anndata, prepare_data
from jojoscl_dist.errors import JojoInputError
from jojoscl_dist.outputs import anndata_out, bundle
from jojoscl_dist.predict import predict as predict_cells
from jojoscl_dist.train.run import fit, run_folder

# A field name alone (epochs) stands for its section's key (optim.epochs): no field name is in two sections.
FIELDS = {name: f"{section}.{name}" for section, fields in JojoConfig().to_dict().items() for name in fields}
# Keys the API sets itself, and what to do instead.
NOT_HERE = {"data.path": "pass the AnnData itself (or read the file with anndata.read_h5ad)",
            "data.n_clusters": "use the n_clusters argument",
            "run.num_workers": "use the num_workers argument of cluster() or .train()",
            "run.use_gpu": "use the use_gpu argument of cluster() or .train()",
            "run.tracking": "MLflow logging is done by the CLI (python -m jojoscl_dist.train)"}


def config_of(n_clusters: int | str | None, config: dict[str, Any]) -> JojoConfig:
    """The run's JojoConfig from the API's keyword arguments: config keys, dotted (optim.epochs) or not (epochs)."""
    dotted = {}
    for key, value in config.items():
        full = key if "." in key else FIELDS.get(key)
        if full not in FIELDS.values():
            near = difflib.get_close_matches(key, [*FIELDS, *FIELDS.values()], n=3)
            raise JojoInputError(f"unknown config key {key!r}{f' (did you mean {near}?)' if near else ''}: give a "
                                 f"field of jojoscl_dist/config.py, e.g. epochs=50 or optim.epochs=50")
        if full in NOT_HERE:
            raise JojoInputError(f"{key!r} is not an API setting: {NOT_HERE[full]}")
        dotted[full] = value
    if n_clusters is None and dotted.get("data.label_key") is None:
        n_clusters = "auto"  # label-free K (data.k_rule), where the CLI asks for one
    # No MLflow, no Ray unless asked (num_workers), a temporary run folder unless one is named (output).
    return JojoConfig().override({"run.tracking": False, "run.num_workers": 0, "run.plots": False,
                                  "run.output": "", **dotted, "data.n_clusters": n_clusters})


class JojoSCL:
    """A JojoSCL model of ``adata`` (X, or ``layers[layer]``; in memory or backed). ``config``: config keys, e.g.
    ``epochs=50``, ``label_key="cell_type"`` (scores only, and K when ``n_clusters`` is None; without it K is
    chosen label-free) or ``output="runs/x"`` (keep the checkpoints there: a repeated call resumes; on a
    multi-node Ray cluster name a folder on storage every node shares, else the run folder is temporary)."""

    def __init__(self, adata: ad.AnnData | None, n_clusters: int | str | None = None, *, layer: str | None = None,
                 **config: Any):
        if adata is not None:
            own_anndata(adata, layer)  # an unknown layer is refused now, not after training
        self.adata, self.layer = adata, layer
        self.config = config_of(n_clusters, config)
        self.bundle: bundle.ModelBundle | None = None
        self.metrics: dict[str, Any] = {}
        self.history: list[dict] = []
        self.labels: pd.Categorical | None = None  # of every cell of adata ('unassigned': no counts)
        self.latent: np.ndarray | None = None  # z of every cell of adata (zero rows where unassigned)
        self.cell_mask: np.ndarray | None = None  # the cells of adata trained on (the others have no counts)
        self.source = ""
        self._kept_labels: np.ndarray | None = None

    def __repr__(self) -> str:
        state = (f"trained, {self.bundle.n_clusters} clusters, {self.bundle.n_genes} genes" if self.bundle
                 else "not trained")
        return f"JojoSCL({state})"

    def train(self, num_workers: int = 0, use_gpu: bool | None = None) -> "JojoSCL":
        """Train in this process (``num_workers`` 0) or on that many Ray Train workers (a local Ray, or the
        cluster RAY_ADDRESS names); ``use_gpu`` None: CUDA when available."""
        if self.adata is None:
            raise JojoInputError("this model has no AnnData to train on: JojoSCL(adata, ...)")
        t_start = time.perf_counter()
        cfg = self.config.override({"run.num_workers": num_workers, "run.use_gpu": use_gpu})
        temp = None
        if not cfg.run.output:
            temp = Path(tempfile.mkdtemp(prefix="jojoscl-api-"))
            cfg = cfg.override({"run.output": str(temp / "run")})
        elif not cfg.run.storage_path:  # the checkpoints go into the named folder, kept
            cfg = cfg.override({"run.storage_path": cfg.run.output})
        try:
            data = prepare_data(cfg, run_folder(cfg), adata=self.adata, layer=self.layer)
            result = fit(cfg, data, t_start)
        finally:
            if temp is not None:  # the checkpoints too: they live beside the run folder, inside temp
                shutil.rmtree(temp, ignore_errors=True)
        self.bundle = bundle.of_run(result.cfg, data.stats, result.state, result.chosen, result.centroids,
                                    result.input_pca)
        self.metrics, self.history = result.metrics, result.history
        self.cell_mask, self.source, self._kept_labels = data.kept_mask, data.source, result.labels
        self.labels = anndata_out.cluster_categorical(result.labels, self.cell_mask)
        self.latent = anndata_out.full_rows(np.asarray(result.emb["z"]), self.cell_mask)
        return self

    def _trained(self) -> bundle.ModelBundle:
        if self.bundle is None:
            raise JojoInputError("the model is not trained: call .train() first, or JojoSCL.load(dir)")
        return self.bundle

    def _predict(self, adata: ad.AnnData | None):
        b = self._trained()
        adata = self.adata if adata is None else adata
        if adata is None:
            raise JojoInputError("no AnnData given: pass the cells to embed or assign")
        return predict_cells(b, own_anndata(adata, self.layer))

    def get_latent_representation(self, adata: ad.AnnData | None = None) -> np.ndarray:
        """z of every cell of ``adata`` (default: the training AnnData, as trained); zero rows for cells without
        counts."""
        if self.latent is not None and (adata is None or adata is self.adata):
            return self.latent.copy()
        pred = self._predict(adata)
        return anndata_out.full_rows(pred.z, pred.cell_mask)

    def predict(self, adata: ad.AnnData | None = None) -> pd.Categorical:
        """The cluster of each cell of ``adata`` (nearest training centroid, as ``python -m jojoscl_dist.predict``);
        'unassigned' for cells without counts. Genes are matched by name."""
        pred = self._predict(adata)
        return anndata_out.cluster_categorical(pred.labels, pred.cell_mask)

    def save(self, directory: str | Path, overwrite: bool = False) -> Path:
        """Write the model bundle the CLI writes (``<directory>/model.pt``; safe to load: no code runs)."""
        target = Path(directory) / bundle.FILENAME
        if target.exists() and not overwrite:
            raise JojoInputError(f"{target} already exists: pass overwrite=True to replace it, or another folder")
        return bundle.save(self._trained(), directory)

    @classmethod
    def load(cls, directory: str | Path, adata: ad.AnnData | None = None, *, layer: str | None = None) -> "JojoSCL":
        """A saved model, or a CLI run's (its --output, model/ folder or model.pt), for ``adata``'s cells."""
        b = bundle.load(directory)
        model = cls(adata, b.n_clusters, layer=layer)
        model.bundle = b
        # its settings, for .train(); not the run folder or logging of the run that wrote it
        model.config = b.config.override({"run.output": "", "run.storage_path": None, "run.tracking": False,
                                          "run.num_workers": 0})
        return model


def cluster(adata: ad.AnnData, n_clusters: int | str | None = None, *, layer: str | None = None,
            key_added: str = "jojoscl", num_workers: int = 0, use_gpu: bool | None = None, seed: int = 0,
            **config: Any) -> JojoSCL:
    """Cluster the cells of ``adata`` with JojoSCL and write, in place, ``obs[key_added]`` (categorical; cells
    without counts 'unassigned'), ``obsm['X_' + key_added]`` (the embedding z; zero rows for those) and
    ``uns[key_added]`` (parameters, metrics, the selected epoch). Returns the trained model. ``config``: see
    ``JojoSCL``; ``num_workers`` > 0 trains on Ray Train."""
    model = JojoSCL(adata, n_clusters, layer=layer, seed=seed, **config).train(num_workers, use_gpu)
    cfg, m = model.bundle.config, model.metrics
    params = {"n_clusters": m["n_clusters"], "layer": layer, "label_method": cfg.eval.label_method,
              "selection": cfg.eval.selection, "epochs": m["epochs"], "seed": cfg.run.seed,
              "num_workers": num_workers, "source": model.source, "k_rule": m["k_rule"]}
    anndata_out.add_results(adata, model.cell_mask, model._kept_labels, model.latent[model.cell_mask], key_added,
                            f"X_{key_added}", key_added,
                            {"params": params, "selected_epoch": m["selected_epoch"],
                             "metrics": {k: v for k, v in m.items() if isinstance(v, (int, float, str))}})
    return model
