"""Streaming preprocessing (docs/method.md), computed from statistics over row chunks.

1. Drop genes with zero total, then cells with zero total.
2. Scale each cell to the median total count, at most ``TARGET_SUM_CAP`` (``target_sum="auto"``), then log1p.
3. Keep the top-n highly variable genes (Seurat flavour: normalised dispersion within 20 mean bins). On sparse
   count data (the Seurat genes leave fewer than 100 non-zero values per cell) rank by the Seurat v3 standardised
   variance of the counts instead, or, where its mean-variance trend cannot be fitted, by the variance of analytic
   Pearson residuals (``hvg_flavor="auto"``; one more pass over the rows each). ``hvg_flavor="cell_ranger"``
   ranks by the dispersion of the log data, normalised by median and MAD within mean-percentile bins.
4. Scale each gene to zero mean and unit variance (ddof=1, as scanpy), optional clipping.

Two passes over row chunks collect everything (per-cell totals, per-gene sums and sums of squares); the raw
matrix is never densified whole. ``PreprocessStats.transform`` then maps any raw row chunk to model input, so the
same statistics serve training, evaluation, the Zarr ``prepare`` step and prediction on new cells.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
from dataclasses import dataclass
from typing import Any, Iterator

import numpy as np
import pandas as pd
import scipy.sparse as sp
import scipy.stats

from jojoscl_dist.errors import JojoInputError

log = logging.getLogger(__name__)

# Non-integer input whose maximum exceeds this is taken as normalised-but-not-logged (e.g. RPKM/TPM):
# log1p of counts normalised to a median total stays far below it.
LOG_SCALE_MAX = 30.0
# hvg_flavor "auto": below this many non-zero Seurat-HVG values per cell, the genes chosen by dispersion are mostly
# rare, noisy ones (worm_neuron: 24; the mask rule's threshold, 10 kept genes at the 10% keep rate).
SPARSE_NONZERO = 100.0
PR_THETA = 100.0  # negative-binomial overdispersion of the Pearson residuals (Lause et al. 2021; scanpy's default)
HVG_FLAVORS = ("auto", "seurat", "seurat_v3", "pearson_residuals", "cell_ranger")
# target_sum "auto": the median total, but at most this. Deep full-length libraries (10^5-10^7 reads per cell)
# scaled to their median give one read the weight log1p(1), so sampling noise in weak genes is as large as a real
# expression step; at 10^5 it is log1p(0.01-0.1). Droplet data (medians 10^2-10^4) is left at its median.
TARGET_SUM_CAP = 1e5
TARGET_SUM_RULES = ("auto", "median")  # the named totals; anything else must be a positive number
V3_SPAN = 0.3  # loess span of the mean-variance trend (Seurat v3 and scanpy default)


@dataclass
class PreprocessStats:
    input_scale: str  # "counts" | "normalized" | "log"
    n_input_cells: int
    n_input_genes: int
    cell_mask: np.ndarray  # (n_input_cells,) bool: cells kept
    gene_names: list[str]  # the HVG names, in model-input order
    gene_index: np.ndarray  # (n_hvg,) column indices into the input matrix
    target_sum: float  # the total each kept cell is scaled to (counts input; see resolve_target_sum); 0 otherwise
    mean: np.ndarray  # (n_hvg,) mean of the log data
    std: np.ndarray  # (n_hvg,) std (ddof=1) of the log data
    clip: float | None = None
    mean_nonzero: float | None = None  # mean number of non-zero HVG values per kept cell (sparsity of the data)
    hvg_flavor: str = "seurat"  # how the HVGs were ranked: "seurat" | "seurat_v3" | "pearson_residuals" | "cell_ranger"

    @property
    def n_genes(self) -> int:
        return len(self.gene_index)

    def transform(self, chunk: Any) -> np.ndarray:
        """Raw rows (any cells, all input genes) -> float32 model input (rows, n_hvg)."""
        x = as_float(chunk)
        totals = np.asarray(x.sum(axis=1)).ravel()
        x = x[:, self.gene_index]
        x = x.toarray() if sp.issparse(x) else np.array(x, dtype=np.float64)
        x = log_values(x, totals, self.input_scale, self.target_sum)
        out = (x - self.mean) / self.std
        if self.clip is not None:
            np.clip(out, -self.clip, self.clip, out=out)
        return out.astype(np.float32)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["cell_mask"] = None  # per-dataset; not needed to transform new cells
        for k in ("gene_index", "mean", "std"):
            d[k] = np.asarray(d[k]).tolist()
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "PreprocessStats":
        d = dict(d)
        d["cell_mask"] = np.ones(d["n_input_cells"], dtype=bool) if d.get("cell_mask") is None else np.asarray(d["cell_mask"], bool)
        d["gene_index"] = np.asarray(d["gene_index"], dtype=np.int64)
        d["mean"] = np.asarray(d["mean"], dtype=np.float64)
        d["std"] = np.asarray(d["std"], dtype=np.float64)
        return cls(**d)


def _positive_total(v: Any) -> float | None:
    """``v`` as a finite positive number of counts, or None."""
    try:
        value = float(v)
    except (TypeError, ValueError):
        return None
    return value if np.isfinite(value) and value > 0 else None


def resolve_target_sum(target_sum: float | str, totals: np.ndarray) -> float:
    """The total every cell of a count matrix is scaled to: "median", "auto" (the median, capped at
    ``TARGET_SUM_CAP``) or a positive number."""
    if target_sum in TARGET_SUM_RULES:
        median = float(np.median(totals))
        return min(median, TARGET_SUM_CAP) if target_sum == "auto" else median
    value = _positive_total(target_sum)
    if value is None:
        raise JojoInputError(f"--target-sum must be 'auto', 'median' or a positive number of counts per cell; "
                             f"got {target_sum!r}")
    return value


TARGET_SUM_HELP = (f"counts: each cell's total before log1p: auto (the median, at most {TARGET_SUM_CAP:g}) | median "
                   f"(scanpy's, the reference) | a number")


def target_sum_arg(v: str) -> float | str:
    """Command-line value of --target-sum: 'auto', 'median' or a positive number."""
    if v in TARGET_SUM_RULES:
        return v
    value = _positive_total(v)
    if value is None:
        raise argparse.ArgumentTypeError(f"expected 'auto', 'median' or a positive number, got {v!r}")
    return value


def iter_row_chunks(x: Any, chunk_size: int) -> Iterator[tuple[int, int, Any]]:
    """Yield (start, stop, rows) over a matrix, a backed AnnData dataset or a Zarr sparse dataset."""
    n = x.shape[0]
    for start in range(0, n, chunk_size):
        stop = min(start + chunk_size, n)
        yield start, stop, x[start:stop]


def as_float(chunk: Any):
    """Raw rows as float64 (CSR when sparse); non-numeric values are refused (JojoInputError)."""
    if sp.issparse(chunk):
        return chunk.tocsr().astype(np.float64) if chunk.dtype != np.float64 else chunk.tocsr()
    arr = np.asarray(chunk)
    if arr.dtype.kind not in "biuf":
        raise JojoInputError(f"expression matrix has non-numeric dtype {arr.dtype} (convert X to numbers)")
    return arr.astype(np.float64)


def _values(chunk) -> np.ndarray:
    return chunk.data if sp.issparse(chunk) else np.asarray(chunk).ravel()


def _first_row(chunk, flags: np.ndarray) -> int:
    """Row (within the chunk) of the first flagged entry of ``_values(chunk)``."""
    pos = int(np.argmax(flags))
    if sp.issparse(chunk):
        return int(np.searchsorted(chunk.indptr, pos, side="right") - 1)
    return pos // chunk.shape[1]


def log_values(x: np.ndarray, totals: np.ndarray, scale: str, target_sum: float) -> np.ndarray:
    """Dense rows on the model's log scale: counts scaled to ``target_sum`` by their cell ``totals`` then log1p,
    normalised values log1p, log values as they are."""
    if scale == "counts":
        with np.errstate(divide="ignore", invalid="ignore"):
            factor = np.where(totals > 0, target_sum / np.where(totals > 0, totals, 1.0), 0.0)
        return np.log1p(x * factor[:, None])
    if scale == "normalized":
        return np.log1p(x)
    return x


def compute_stats(x: Any, var_names: list[str], *, n_top_genes: int = 2000, input_scale: str = "auto",
                  chunk_size: int = 4096, clip: float | None = None, hvg_flavor: str = "auto",
                  progress=None, target_sum: float | str = "auto") -> PreprocessStats:
    """Two streaming passes over the rows of ``x`` (cells x genes) -> PreprocessStats (a third one when the
    genes are ranked by Pearson residuals)."""
    if hvg_flavor not in HVG_FLAVORS:
        raise JojoInputError(f"unknown HVG flavour {hvg_flavor!r}: choose one of {', '.join(HVG_FLAVORS)}")
    n_cells, n_genes = x.shape
    if n_cells == 0 or n_genes == 0:
        raise JojoInputError(f"expression matrix is empty ({n_cells} cells x {n_genes} genes)")
    chunk_size = max(1, int(chunk_size))

    # Pass 1: totals, value checks, integrality.
    cell_totals = np.zeros(n_cells)
    gene_totals = np.zeros(n_genes)
    gene_sq = np.zeros(n_genes)  # raw sums of squares (the seurat_v3 mean-variance trend)
    integer, vmax = True, 0.0
    for start, stop, rows in iter_row_chunks(x, chunk_size):
        rows = as_float(rows)
        v = _values(rows)
        if v.size:
            bad = ~np.isfinite(v)
            if bad.any():
                raise JojoInputError(f"expression matrix holds {int(bad.sum())} NaN or Inf value(s) (first in row "
                                     f"{start + _first_row(rows, bad)}); fix or drop those values before clustering")
            neg = v < 0
            if neg.any():
                raise JojoInputError(f"expression matrix holds {int(neg.sum())} negative value(s) (first in row "
                                     f"{start + _first_row(rows, neg)}); give raw counts or log-normalised values, "
                                     f"not scaled/centred data")
            vmax = max(vmax, float(v.max()))
            integer = integer and bool(np.all(v == np.round(v)))
        cell_totals[start:stop] = np.asarray(rows.sum(axis=1)).ravel()
        gene_totals += np.asarray(rows.sum(axis=0)).ravel()
        sq = rows.multiply(rows) if sp.issparse(rows) else rows * rows
        gene_sq += np.asarray(sq.sum(axis=0)).ravel()
        if progress is not None:
            progress(stop - start)

    scale = input_scale
    if scale == "auto":
        scale = "counts" if integer else ("normalized" if vmax > LOG_SCALE_MAX else "log")
        if scale != "counts":
            log.warning("input has non-integer values (max %.3g): treating it as %s, skipping %s "
                        "(force with --input-scale counts|normalized|log)", vmax, scale,
                        "median normalisation" if scale == "normalized" else "normalisation and log1p")
    gene_keep = gene_totals > 0
    cell_mask = cell_totals > 0
    if not cell_mask.any():
        raise JojoInputError("every cell has zero total counts (the matrix is all zeros): check the input file")
    n_dropped = int((~cell_mask).sum())
    if n_dropped:
        log.warning("dropping %d cells with zero total counts (they get no cluster)", n_dropped)
    if hvg_flavor in ("pearson_residuals", "seurat_v3") and scale != "counts":
        raise JojoInputError(f"--hvg-flavor {hvg_flavor} needs raw integer counts, but the input is {scale}: "
                             f"use --hvg-flavor seurat (or auto)")
    target_sum = resolve_target_sum(target_sum, cell_totals[cell_mask]) if scale == "counts" else 0.0

    # Pass 2: per-gene sums for the Seurat dispersion (on the de-logged values) and for scaling (log values).
    s_norm = np.zeros(n_genes)
    ss_norm = np.zeros(n_genes)
    s_log = np.zeros(n_genes)
    ss_log = np.zeros(n_genes)
    nonzero = np.zeros(n_genes)  # cells with a non-zero value, per gene
    n_kept = int(cell_mask.sum())
    for start, stop, rows in iter_row_chunks(x, chunk_size):
        rows = as_float(rows)
        keep = cell_mask[start:stop]
        if not keep.all():
            rows = rows[np.flatnonzero(keep)]
        totals = cell_totals[start:stop][keep]
        logged = _log_sparse_or_dense(rows, totals, scale, target_sum)
        normed = logged.expm1() if sp.issparse(logged) else np.expm1(logged)
        for acc_s, acc_ss, m in ((s_norm, ss_norm, normed), (s_log, ss_log, logged)):
            acc_s += np.asarray(m.sum(axis=0)).ravel()
            acc_ss += np.asarray(m.multiply(m).sum(axis=0) if sp.issparse(m) else (m * m).sum(axis=0)).ravel()
        nonzero += np.asarray((logged != 0).sum(axis=0)).ravel()
        if progress is not None:
            progress(stop - start)

    genes = np.flatnonzero(gene_keep)
    if len(genes) < 2:
        raise JojoInputError(f"only {len(genes)} gene(s) have non-zero counts: nothing to cluster on")
    n_top = min(n_top_genes, len(genes))
    if n_top < n_top_genes:
        log.warning("only %d genes have non-zero counts; using all of them instead of %d HVGs", n_top, n_top_genes)
    mean_n, var_n = _mean_var(s_norm[genes], ss_norm[genes], n_kept)
    if hvg_flavor == "cell_ranger":
        flavor, hvg_local = "cell_ranger", cell_ranger_hvg(*_mean_var(s_log[genes], ss_log[genes], n_kept), n_top)
    else:
        flavor, hvg_local = "seurat", seurat_hvg(mean_n, var_n, n_top)
    seurat_nonzero = nonzero[genes[hvg_local]].sum() / n_kept
    sparse_counts = hvg_flavor == "auto" and scale == "counts" and seurat_nonzero < SPARSE_NONZERO
    if n_top < len(genes) and (hvg_flavor == "seurat_v3" or sparse_counts):
        mean_r, var_r = _mean_var(gene_totals[genes], gene_sq[genes], n_kept)
        nvar = seurat_v3_variance(x, cell_mask, genes, mean_r, var_r, chunk_size)
        if nvar is not None:
            flavor = "seurat_v3"
            hvg_local = _top_n(nvar, n_top)
        elif hvg_flavor == "seurat_v3":
            raise JojoInputError("--hvg-flavor seurat_v3: the loess fit of the genes' mean-variance trend failed "
                                 "on this data (too sparse?); use --hvg-flavor pearson_residuals or auto")
    if n_top < len(genes) and (hvg_flavor == "pearson_residuals" or (sparse_counts and flavor == "seurat")):
        flavor = "pearson_residuals"
        rvar = pearson_residual_variance(x, cell_mask, cell_totals, gene_totals, genes, chunk_size)
        hvg_local = _top_n(rvar, n_top)
    if sparse_counts and flavor != "seurat":
        log.warning("sparse counts (%.0f non-zero values per cell in the Seurat HVGs): ranking genes by %s instead "
                    "(--hvg-flavor seurat to keep dispersion)", seurat_nonzero,
                    "Seurat v3 standardised variance" if flavor == "seurat_v3"
                    else "Pearson-residual variance (the Seurat v3 trend fit failed)")
    gene_index = genes[hvg_local]
    mean_l, var_l = _mean_var(s_log[gene_index], ss_log[gene_index], n_kept)
    std = np.sqrt(var_l)
    std[std == 0] = 1.0  # constant genes stay at 0 after centring (as scanpy)
    return PreprocessStats(input_scale=scale, n_input_cells=n_cells, n_input_genes=n_genes, cell_mask=cell_mask,
                           gene_names=[str(var_names[i]) for i in gene_index], gene_index=gene_index,
                           target_sum=target_sum, mean=mean_l, std=std, clip=clip,
                           mean_nonzero=float(nonzero[gene_index].sum() / n_kept), hvg_flavor=flavor)


def pearson_residual_variance(x: Any, cell_mask: np.ndarray, cell_totals: np.ndarray, gene_totals: np.ndarray,
                              genes: np.ndarray, chunk_size: int, theta: float = PR_THETA) -> np.ndarray:
    """Variance over the kept cells of each gene's analytic Pearson residuals (Lause et al. 2021, the ranking of
    scanpy's ``flavor="pearson_residuals"``), for the columns ``genes``; one streaming pass over the rows.

    r_cg = (x_cg - mu_cg) / sqrt(mu_cg + mu_cg^2 / theta), mu_cg = n_c * n_g / n (n_c: the cell's total, n_g: the
    gene's total, n: all counts), clipped to +-sqrt(number of kept cells). Shapes: x (cells, all genes) raw
    counts; cell_mask, cell_totals (cells,); gene_totals (all genes,); genes (G,) -> (G,).
    """
    n_kept = int(cell_mask.sum())
    share = gene_totals[genes] / gene_totals.sum()
    bound = np.sqrt(n_kept)
    s = np.zeros(len(genes))
    ss = np.zeros(len(genes))
    block = max(1, 2**22 // max(1, len(genes)))  # rows densified at once: ~32 MB of float64
    for start, stop, rows in iter_row_chunks(x, chunk_size):
        kept = np.flatnonzero(cell_mask[start:stop])
        rows = as_float(rows)
        for b in range(0, len(kept), block):
            idx = kept[b:b + block]
            raw = rows[idx][:, genes]
            raw = raw.toarray() if sp.issparse(raw) else np.asarray(raw)
            mu = cell_totals[start + idx][:, None] * share[None, :]
            r = (raw - mu) / np.sqrt(mu + mu * mu / theta)
            np.clip(r, -bound, bound, out=r)
            s += r.sum(axis=0)
            ss += (r * r).sum(axis=0)
    return _mean_var(s, ss, n_kept)[1]


def seurat_v3_variance(x: Any, cell_mask: np.ndarray, genes: np.ndarray, mean: np.ndarray, var: np.ndarray,
                       chunk_size: int, span: float = V3_SPAN) -> np.ndarray | None:
    """Seurat v3 standardised variance of the raw counts (Stuart et al. 2019; scanpy's ``flavor="seurat_v3"``)
    for the columns ``genes``; one streaming pass over the rows. None when the loess fit fails.

    A loess (degree 2) of log10 var on log10 mean over the non-constant genes gives each gene an expected std
    sigma_g; counts are clipped at mean_g + sigma_g * sqrt(n) and the standardised variance is
    sum_c (min(x_cg, clip_g) - mean_g)^2 / ((n - 1) sigma_g^2). Shapes: x (cells, all genes) raw counts;
    cell_mask (cells,); genes, mean, var (G,) (raw mean and ddof-1 variance over the n kept cells) -> (G,).
    """
    from skmisc.loess import loess

    n_kept = int(cell_mask.sum())
    fit_log_var = np.zeros(len(genes))
    varies = var > 0
    try:
        model = loess(np.log10(mean[varies]), np.log10(var[varies]), span=span, degree=2)
        model.fit()
    except ValueError as err:  # a singular local fit (e.g. very sparse data)
        log.warning("loess fit of the mean-variance trend failed: %s", err)
        return None
    fit_log_var[varies] = model.outputs.fitted_values
    sigma = np.sqrt(10.0 ** fit_log_var)
    clip_at = mean + sigma * np.sqrt(n_kept)
    s = np.zeros(len(genes))
    ss = np.zeros(len(genes))
    for start, stop, rows in iter_row_chunks(x, chunk_size):
        kept = np.flatnonzero(cell_mask[start:stop])
        sub = as_float(rows)[kept][:, genes]
        if sp.issparse(sub):
            sub = sub.tocsr()
            v = np.minimum(sub.data, clip_at[sub.indices])
            s += np.bincount(sub.indices, weights=v, minlength=len(genes))
            ss += np.bincount(sub.indices, weights=v * v, minlength=len(genes))
        else:
            v = np.minimum(np.asarray(sub), clip_at[None, :])
            s += v.sum(axis=0)
            ss += (v * v).sum(axis=0)
    return (n_kept * mean * mean + ss - 2 * s * mean) / ((n_kept - 1) * sigma * sigma)


def _log_sparse_or_dense(rows, totals: np.ndarray, scale: str, target_sum: float):
    if sp.issparse(rows):
        rows = rows.tocsr(copy=True)
        if scale == "counts":
            factor = target_sum / totals
            rows.data *= np.repeat(factor, np.diff(rows.indptr))
        if scale in ("counts", "normalized"):
            rows.data = np.log1p(rows.data)
        return rows
    return log_values(np.asarray(rows, dtype=np.float64), totals, scale, target_sum)


def _mean_var(s: np.ndarray, ss: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    mean = s / n
    var = (ss - n * mean * mean) / max(n - 1, 1)
    return mean, np.maximum(var, 0.0)


def cell_ranger_hvg(mean: np.ndarray, var: np.ndarray, n_top: int) -> np.ndarray:
    """Indices of the top-n genes by normalised dispersion, Cell Ranger flavour (as scanpy's 'cell_ranger').

    mean/var are of the log-normalised values (not de-logged, unlike 'seurat'). dispersion = var/mean; genes are
    binned at the 10th, 15th, ..., 100th percentiles of the mean, and the dispersion is centred on its bin's median
    and divided by its bin's median absolute deviation (scaled to a normal sd). Ties keep input order.
    """
    mean = mean.copy()
    mean[mean == 0] = 1e-12
    disp = var / mean
    disp[disp == 0] = np.nan
    edges = np.r_[-np.inf, np.percentile(mean, np.arange(10, 105, 5)), np.inf]
    df = pd.DataFrame({"disp": disp, "bin": pd.cut(mean, edges)})
    grouped = df.groupby("bin", observed=False)["disp"]
    median = grouped.transform("median").to_numpy()
    mad = grouped.transform(lambda d: scipy.stats.median_abs_deviation(d.dropna(), scale="normal")
                            if d.notna().any() else np.nan).to_numpy()
    return _top_scores(disp - median, mad, n_top)


def seurat_hvg(mean: np.ndarray, var: np.ndarray, n_top: int, n_bins: int = 20) -> np.ndarray:
    """Indices of the top-n genes by normalised dispersion (Seurat flavour, as scanpy's 'seurat').

    mean/var are of the de-logged (normalised) values. dispersion = log(var/mean); genes are binned by
    log1p(mean) into ``n_bins`` equal-width bins and the dispersion is z-scored within its bin (a bin of one gene
    gets normalised dispersion 1). Ties keep input order.
    """
    mean = mean.copy()
    mean[mean == 0] = 1e-12
    disp = var / mean
    disp[disp == 0] = np.nan
    disp = np.log(disp)
    log_mean = np.log1p(mean)
    bins = pd.cut(log_mean, bins=n_bins)
    df = pd.DataFrame({"disp": disp, "bin": bins})
    grouped = df.groupby("bin", observed=False)["disp"]
    bin_mean = grouped.transform("mean").to_numpy()
    bin_std = grouped.transform("std").to_numpy()
    single = np.isnan(bin_std) & ~np.isnan(disp)
    bin_std[single] = bin_mean[single]
    bin_mean[single] = 0.0
    return _top_scores(disp - bin_mean, bin_std, n_top)


def _top_scores(centred: np.ndarray, spread: np.ndarray, n_top: int) -> np.ndarray:
    """Sorted indices of the n_top largest centred / spread; a score that is NaN (no dispersion, or a bin without
    spread) ranks last, ties keep input order."""
    with np.errstate(divide="ignore", invalid="ignore"):
        norm = centred / spread
    return _top_n(np.where(np.isnan(norm), -np.inf, norm), n_top)


def _top_n(score: np.ndarray, n_top: int) -> np.ndarray:
    """Sorted indices of the n_top highest scores; ties keep input order."""
    return np.sort(np.argsort(-score, kind="stable")[:n_top])


def materialize(x: Any, stats: PreprocessStats, chunk_size: int = 4096, progress=None) -> np.ndarray:
    """The whole preprocessed matrix (kept cells x n_hvg, float32), built chunk by chunk.

    For data that fits in memory; atlases go through ``jojoscl_dist.data.prepare`` into a Zarr store instead.
    """
    n_kept = int(stats.cell_mask.sum())
    out = np.empty((n_kept, stats.n_genes), dtype=np.float32)
    pos = 0
    for start, stop, rows in iter_row_chunks(x, chunk_size):
        keep = stats.cell_mask[start:stop]
        if not keep.any():
            continue
        if not keep.all():
            rows = rows[np.flatnonzero(keep)]
        block = stats.transform(rows)
        out[pos:pos + block.shape[0]] = block
        pos += block.shape[0]
        if progress is not None:
            progress(stop - start)
    return out
