"""`python -m jojoscl_dist.predict --model RUN_DIR --data NEW.h5ad [--output FILE]`: clusters for new cells.

Genes are aligned by name to the model's (duplicates made unique as training did; missing ones filled with the
training mean, refused below --min-shared-genes); cells are preprocessed with the saved statistics (per-cell
totals over all their genes, as in training), embedded, and each goes to the nearest training centroid in the
run's final space (or the cluster head's argmax). Cells with zero total get no cluster. The annotated copy
(outputs/anndata_out.py) goes to --output or beside the input as <stem>.jojoscl.h5ad (.zarr for Zarr input).
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata.utils import make_index_unique

from jojoscl_dist.version import __version__
from jojoscl_dist.clustering.final import final_labels
from jojoscl_dist.data.loader import ArraySource
from jojoscl_dist.data.preprocess import PreprocessStats, as_float, iter_row_chunks
from jojoscl_dist.data.readers import get_labels, read_input
from jojoscl_dist.errors import JojoInputError
from jojoscl_dist.outputs import anndata_out, bundle as bundle_mod
from jojoscl_dist.outputs.bundle import ModelBundle
from jojoscl_dist.train.embed import embed

log = logging.getLogger(__name__)

MIN_SHARED_GENES = 0.5  # fraction of the model's genes the new data must hold (--min-shared-genes)


@dataclass
class Prediction:
    labels: np.ndarray  # (kept cells,) cluster ids
    z: np.ndarray  # (kept cells, d_z)
    cell_mask: np.ndarray  # (all cells,) True where the cell got a cluster
    n_missing_genes: int


def unique_gene_names(var_names) -> list[str]:
    """The names training gives these genes: duplicates suffixed -1, -2, ... by anndata's own rule (what
    AnnData.var_names_make_unique applies in training), in memory only."""
    names = pd.Index([str(v) for v in var_names])
    if names.is_unique:
        return list(names)
    log.warning("%d duplicate gene names in the new data (e.g. %r): matched to the model's genes as training named "
                "them (suffixed -1, -2, ...)", int(names.duplicated().sum()), names[names.duplicated()][0])
    with warnings.catch_warnings():  # anndata's note on suffix collisions: the renaming is the same as training's
        warnings.simplefilter("ignore", UserWarning)
        return list(make_index_unique(names))


def align_genes(stats: PreprocessStats, var_names) -> tuple[np.ndarray, int]:
    """Column of each model gene in the new data (-1 where missing) and the number missing."""
    names = unique_gene_names(var_names)
    pos = {n: i for i, n in enumerate(names)}
    cols = np.array([pos.get(g, -1) for g in stats.gene_names], dtype=np.int64)
    n_missing = int((cols < 0).sum())
    if n_missing == len(cols):
        raise JojoInputError(f"none of the model's {len(cols)} genes is in the new data's var_names (e.g. "
                             f"{stats.gene_names[:3]} vs {names[:3]}): use the same gene identifiers as in training")
    return cols, n_missing


def transform_aligned(rows, stats: PreprocessStats, cols: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Raw rows (all of the new data's genes) -> (model input for cells with a non-zero total, that mask)."""
    x = as_float(rows)
    v = x.data if sp.issparse(x) else x
    if not np.isfinite(v).all():
        raise JojoInputError("new data holds NaN or Inf values: fix or drop them before predicting")
    if (v < 0).any():
        raise JojoInputError("new data holds negative values: give the same kind of values as in training "
                             f"(training input scale: {stats.input_scale})")
    keep = np.asarray(x.sum(axis=1)).ravel() > 0  # totals over every gene of the new data, as in training
    present = cols >= 0
    # Missing genes read column 0, then get the training mean (0 after scaling).
    out = dataclasses.replace(stats, gene_index=np.where(present, cols, 0)).transform(x[keep])
    out[:, ~present] = 0.0
    return out, keep


def check_scale(x, stats: PreprocessStats) -> None:
    """Warn when the new values do not look like the training input's kind (counts vs non-integer)."""
    v = as_float(x[: min(x.shape[0], 500)])
    v = v.data if sp.issparse(v) else np.asarray(v).ravel()
    integer = bool(np.all(v == np.round(v))) if v.size else True
    if stats.input_scale == "counts" and not integer:
        log.warning("the model was trained on raw counts but the new data has non-integer values: give raw counts "
                    "(predictions on normalised values will be off)")
    if stats.input_scale != "counts" and integer and v.size and v.max() > 30:
        log.warning("the model was trained on %s values but the new data looks like raw counts", stats.input_scale)


def check_min_shared(fraction: float) -> None:
    if not 0 < fraction <= 1:
        raise JojoInputError(f"--min-shared-genes must be a fraction in (0, 1], got {fraction:g}")


def predict(b: ModelBundle, adata: ad.AnnData, chunk_size: int = 4096, *,
            min_shared_genes: float = MIN_SHARED_GENES) -> Prediction:
    """Clusters of new cells; a JojoInputError when they hold fewer than ``min_shared_genes`` (a fraction) of the
    model's genes: the assignment would be a guess."""
    check_min_shared(min_shared_genes)
    cols, n_missing = align_genes(b.stats, adata.var_names)
    n_model, n_shared = len(cols), len(cols) - n_missing
    if n_shared < min_shared_genes * n_model:
        raise JojoInputError(f"the new data holds {n_shared} of the model's {n_model} genes "
                             f"({n_shared / n_model:.0%}), fewer than --min-shared-genes {min_shared_genes:g}: use "
                             f"the same gene identifiers as in training, or lower --min-shared-genes")
    if n_missing:
        log.warning("%d of the model's %d genes are missing from the new data: filled with the training mean",
                    n_missing, n_model)
    check_scale(adata.X, b.stats)
    blocks = [transform_aligned(rows, b.stats, cols) for _, _, rows in iter_row_chunks(adata.X, chunk_size)]
    x, mask = (np.concatenate(parts) for parts in zip(*blocks))
    if not mask.any():
        raise JojoInputError("every new cell has zero total counts: nothing to assign")
    input_pca = b.input_pca if b.label_method != "head" else None
    emb = embed(b.model(), ArraySource(x), project=input_pca.coords if input_pca is not None else None)
    labels = final_labels(emb, b.n_clusters, b.label_method, input_pca=input_pca, centroids=b.centroids).labels
    return Prediction(labels, emb["z"], mask, n_missing)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m jojoscl_dist.predict",
                                description="Assign new cells to the clusters of a trained JojoSCL run.")
    p.add_argument("--version", action="version", version=f"jojoscl-dist {__version__}")
    p.add_argument("--model", required=True, help="run directory (the --output of training), its model/ folder "
                   "or model.pt")
    p.add_argument("--data", required=True, help="new cells: .h5ad, .h5, .zarr, 10x (same gene identifiers)")
    p.add_argument("--output", help="annotated copy to write (default: <data stem>.jojoscl.h5ad beside the data)")
    p.add_argument("--obs-key", default=anndata_out.DEFAULT_KEY, help="obs column for the clusters")
    p.add_argument("--label-key", help="obs column with true labels: print the agreement (ARI/NMI/ACC)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    p.add_argument("--min-shared-genes", type=float, default=MIN_SHARED_GENES, metavar="FRACTION",
                   help="refuse new data holding fewer than this fraction of the model's genes, in (0, 1] "
                   f"(default {MIN_SHARED_GENES:g})")
    return p


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="jojoscl: %(levelname)s: %(message)s")
    warnings.filterwarnings("ignore", category=FutureWarning)
    args = build_parser().parse_args(argv)
    try:
        check_min_shared(args.min_shared_genes)  # before loading anything
        b = bundle_mod.load(args.model)
        target = Path(args.output) if args.output else anndata_out.default_path(args.data)
        anndata_out.check_target(target, args.data, args.overwrite)  # fail before the work, not after
        adata = read_input(args.data)
        truth = get_labels(adata, args.label_key)
        pred = predict(b, adata, min_shared_genes=args.min_shared_genes)
        out = anndata_out.annotate(adata, pred.cell_mask, pred.labels, pred.z, args.obs_key,
                                   {"params": {"model": str(Path(args.model).resolve()),
                                               "label_method": b.label_method, "n_clusters": b.n_clusters,
                                               "n_missing_genes": pred.n_missing_genes}})
        anndata_out.write(out, target, input_path=args.data, overwrite=args.overwrite)
    except JojoInputError as e:
        print(f"jojoscl: error: {e}", file=sys.stderr)
        return 2
    ids, counts = np.unique(pred.labels, return_counts=True)
    line = (f"jojoscl: {len(pred.labels)} cells assigned to {len(ids)} of {b.n_clusters} clusters "
            f"({', '.join(f'{i}: {c}' for i, c in zip(ids, counts))})")
    if (~pred.cell_mask).any():
        line += f"; {int((~pred.cell_mask).sum())} cells with zero counts unassigned"
    if truth is not None:
        from jojoscl_dist.clustering.metrics import score_labels

        s = score_labels(truth[pred.cell_mask], pred.labels)
        line += f"; vs {args.label_key}: ARI {s['ari']:.4f} NMI {s['nmi']:.4f} ACC {s['acc']:.4f}"
    print(line + f"; written to {target}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
