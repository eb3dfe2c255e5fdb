"""The model bundle (``<run>/model/model.pt``, README "Outputs"): everything needed to assign new cells, written
and read by ``safe_files.py`` (no code runs on load; ``model.pt.sha256`` must match). ``centroids`` live in the
run's final space: z followed by the weighted input PCA coordinates (``input_pca``; None in older bundles: z
alone), or for the head method the mean z of each head cluster."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from jojoscl_dist.version import __version__
from jojoscl_dist.clustering.input_pca import InputPCA
from jojoscl_dist.config import JojoConfig
from jojoscl_dist.data.preprocess import PreprocessStats
from jojoscl_dist.errors import JojoInputError
from jojoscl_dist.model import JojoSCL, build_model
from jojoscl_dist.outputs import safe_files

SCHEMA = 3
READABLE_SCHEMAS = (2, 3)  # 2: the same fields with plain numpy arrays (read without pickle all the same)
FILENAME = "model.pt"


@dataclass
class ModelBundle:
    weights: dict[str, torch.Tensor]
    n_genes: int
    n_clusters: int
    stats: PreprocessStats
    centroids: np.ndarray
    label_method: str
    config: JojoConfig
    versions: dict[str, str]
    schema: int = SCHEMA
    input_pca: InputPCA | None = None

    @property
    def gene_names(self) -> list[str]:
        return list(self.stats.gene_names)

    def model(self) -> JojoSCL:
        m = build_model(self.config.model, self.n_genes, self.n_clusters)
        m.load_state_dict(self.weights)
        return m.eval()

    def to_dict(self) -> dict[str, Any]:
        return {"schema": self.schema, "weights": {k: v.detach().cpu() for k, v in self.weights.items()},
                "n_genes": int(self.n_genes), "n_clusters": int(self.n_clusters),
                "gene_names": self.gene_names, "preprocess": self.stats.to_dict(),
                "centroids": np.asarray(self.centroids, dtype=np.float32), "label_method": self.label_method,
                "config": self.config.to_dict(), "versions": dict(self.versions),
                "input_pca": self.input_pca.to_dict() if self.input_pca is not None else None}


def of_run(cfg: JojoConfig, stats: PreprocessStats, state: dict, chosen: dict, centroids: np.ndarray,
           input_pca: InputPCA | None) -> ModelBundle:
    """The bundle of a trained run: the ``chosen`` weights of its final checkpoint ``state``."""
    return ModelBundle(weights=chosen, n_genes=state["n_genes"], n_clusters=state["n_clusters"], stats=stats,
                       centroids=centroids, label_method=cfg.eval.label_method, config=cfg, versions=versions(),
                       input_pca=input_pca)


def versions() -> dict[str, str]:
    return {"jojoscl_dist": __version__, "torch": torch.__version__, "python": sys.version.split()[0]}


def save(bundle: ModelBundle, directory: str | Path) -> Path:
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    return safe_files.save(bundle.to_dict(), d / FILENAME)


def resolve_path(path: str | Path) -> Path:
    """A run directory, its model/ folder or the model.pt file itself."""
    p = Path(path)
    for cand in (p, p / FILENAME, p / "model" / FILENAME):
        if cand.is_file():
            return cand
    raise JojoInputError(f"no model bundle at {p}: pass a run directory (the --output of a training run), its "
                         f"model/ folder or a model.pt file")


def load(path: str | Path) -> ModelBundle:
    p = resolve_path(path)
    d = safe_files.load(p, "model bundle")
    if not isinstance(d, dict) or "schema" not in d:
        raise JojoInputError(f"{p} is not a jojoscl model bundle (no schema field)")
    if d["schema"] not in READABLE_SCHEMAS:
        raise JojoInputError(f"model bundle {p} has schema {d['schema']} but this jojoscl-dist ({__version__}) "
                             f"reads schemas {', '.join(map(str, READABLE_SCHEMAS))}: retrain with this version, "
                             f"or predict with the version that wrote it "
                             f"({d.get('versions', {}).get('jojoscl_dist', 'unknown')})")
    missing = [k for k in ("weights", "n_genes", "n_clusters", "preprocess", "centroids", "label_method", "config")
               if k not in d]
    if missing:
        raise JojoInputError(f"model bundle {p} lacks {missing} (the file is incomplete: retrain)")
    stats = PreprocessStats.from_dict(d["preprocess"])
    if stats.n_genes != d["n_genes"]:
        raise JojoInputError(f"model bundle {p} is inconsistent: {stats.n_genes} preprocessing genes for a model "
                             f"of {d['n_genes']} inputs")
    return ModelBundle(weights=dict(d["weights"]), n_genes=int(d["n_genes"]), n_clusters=int(d["n_clusters"]),
                       stats=stats, centroids=np.asarray(d["centroids"], dtype=np.float32),
                       label_method=str(d["label_method"]), config=JojoConfig.from_dict(d["config"]),
                       versions=dict(d.get("versions", {})), schema=SCHEMA,
                       input_pca=InputPCA.from_dict(d.get("input_pca")))
