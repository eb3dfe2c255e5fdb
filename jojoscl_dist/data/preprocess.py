"""Streaming preprocessing (docs/method.md): statistics over row chunks; the raw matrix is never densified whole.

Zero-total genes, then cells, are dropped; counts are scaled to the median total (capped: ``target_sum="auto"``)
and log1p'd; the top-n highly variable genes are kept (Seurat dispersion; on sparse counts the Seurat v3
standardised variance or, where its trend cannot be fitted, the Pearson-residual variance: ``hvg_flavor="auto"``);
each gene is scaled to zero mean and unit variance (ddof=1, as scanpy). ``PreprocessStats.transform`` maps any raw
row chunk to model input, so the same statistics serve training, ``prepare`` and prediction on new cells.
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

# Non-integer input above this is normalised-but-not-logged (RPKM/TPM): log1p of median-scaled counts stays far below.
LOG_SCALE_MAX = 30.0
# hvg_flavor "auto": below this many non-zero Seurat-HVG values per cell, dispersion picks mostly rare, noisy genes
# (worm_neuron: 24).
SPARSE_NONZERO = 100.0
PR_THETA = 100.0  # negative-binomial overdispersion of the Pearson residuals (Lause et al. 2021; scanpy's default)
HVG_FLAVORS = ("auto", "seurat", "seurat_v3", "pearson_residuals", "cell_ranger")
# target_sum "auto": the median total, at most this. Deep full-length libraries scaled to their median give one read
# the weight log1p(1), so noise in weak genes rivals real expression steps; droplet medians (10^2-10^4) stay.
TARGET_SUM_CAP = 1e5
TARGET_SUM_RULES = ("auto", "median")  # the named totals; anything else must be a positive number
TARGET_SUM_HELP = (f"counts: each cell's total before log1p: auto (the median, at most {TARGET_SUM_CAP:g}) | median "
                   f"(scanpy's, the reference) | a number")
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
        out = (log_values(x, totals, self.input_scale, self.target_sum) - self.mean) / self.std
        if self.clip is not None:
            np.clip(out, -self.clip, self.clip, out=out)
        return out.astype(np.float32)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["cell_mask"] = None  # per-dataset; not needed to transform new cells
        return d | {k: np.asarray(d[k]).tolist() for k in ("gene_index", "mean", "std")}

    @classmethod
    def from_dict(cls, d: dict) -> "PreprocessStats":
        mask = d.get("cell_mask")
        return cls(**(d | {"cell_mask": np.ones(d["n_input_cells"], bool) if mask is None else np.asarray(mask, bool),
                           "gene_index": np.asarray(d["gene_index"], dtype=np.int64),
                           "mean": np.asarray(d["mean"], dtype=np.float64),
                           "std": np.asarray(d["std"], dtype=np.float64)}))


def _target_sum_value(v: Any) -> float | str | None:
    """'auto', 'median', a finite positive number of counts, or None for anything else."""
    if v in TARGET_SUM_RULES:
        return v
    try:
        value = float(v)
    except (TypeError, ValueError):
        return None
    return value if np.isfinite(value) and value > 0 else None


def resolve_target_sum(target_sum: float | str, totals: np.ndarray) -> float:
    """The total each cell of a count matrix is scaled to: the median of ``totals`` ("median"; "auto" caps it at
    ``TARGET_SUM_CAP``) or the number given."""
    value = _target_sum_value(target_sum)
    if value is None:
        raise JojoInputError(f"--target-sum must be 'auto', 'median' or a positive number of counts per cell; "
                             f"got {target_sum!r}")
    if value in TARGET_SUM_RULES:
        median = float(np.median(totals))
        return min(median, TARGET_SUM_CAP) if value == "auto" else median
    return value


def target_sum_arg(v: str) -> float | str:
    """Command-line value of --target-sum."""
    value = _target_sum_value(v)
    if value is None:
        raise argparse.ArgumentTypeError(f"expected 'auto', 'median' or a positive number, got {v!r}")
    return value


def iter_row_chunks(x: Any, chunk_size: int) -> Iterator[tuple[int, int, Any]]:
    """Yield (start, stop, rows) over a matrix, a backed AnnData dataset or a Zarr sparse dataset."""
    for start in range(0, x.shape[0], chunk_size):
        stop = min(start + chunk_size, x.shape[0])
        yield start, stop, x[start:stop]


def as_float(chunk: Any):
    """Raw rows as float64 (CSR when sparse); non-numeric values are refused (JojoInputError)."""
    if sp.issparse(chunk):
        return chunk.tocsr().astype(np.float64) if chunk.dtype != np.float64 else chunk.tocsr()
    arr = np.asarray(chunk)
    if arr.dtype.kind not in "biuf":
        raise JojoInputError(f"expression matrix has non-numeric dtype {arr.dtype} (convert X to numbers)")
    return arr.astype(np.float64)


def _kept(rows: Any, keep: np.ndarray) -> Any:
    return rows if keep.all() else rows[np.flatnonzero(keep)]


def _check_values(rows: Any, start: int) -> np.ndarray:
    """The stored values of float rows starting at input row ``start``; NaN, Inf or negative ones are refused."""
    v = rows.data if sp.issparse(rows) else np.asarray(rows).ravel()
    for flags, what, fix in ((~np.isfinite(v), "NaN or Inf", "fix or drop those values before clustering"),
                             (v < 0, "negative", "give raw counts or log-normalised values, not scaled/centred data")):
        if flags.any():
            pos = int(np.argmax(flags))
            row = np.searchsorted(rows.indptr, pos, side="right") - 1 if sp.issparse(rows) else pos // rows.shape[1]
            raise JojoInputError(f"expression matrix holds {int(flags.sum())} {what} value(s) (first in row "
                                 f"{start + int(row)}); {fix}")
    return v


def log_values(x: Any, totals: np.ndarray, scale: str, target_sum: float) -> Any:
    """Rows (dense, or CSR) on the model's log scale: counts scaled to ``target_sum`` by their cell ``totals`` then
    log1p, normalised values log1p, log values as they are."""
    if scale == "counts":
        with np.errstate(divide="ignore", invalid="ignore"):
            factor = np.where(totals > 0, target_sum / np.where(totals > 0, totals, 1.0), 0.0)
        x = x.multiply(factor[:, None]).tocsr() if sp.issparse(x) else x * factor[:, None]
    if scale == "log":
        return x
    return x.log1p() if sp.issparse(x) else np.log1p(x)


def _col_sums(m: Any) -> tuple[np.ndarray, np.ndarray]:
    """Per-column sums of ``m`` (dense or sparse) and of its squares."""
    sq = m.multiply(m) if sp.issparse(m) else m * m
    return np.asarray(m.sum(axis=0)).ravel(), np.asarray(sq.sum(axis=0)).ravel()


def _mean_var(s: np.ndarray, ss: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    mean = s / n
    var = (ss - n * mean * mean) / max(n - 1, 1)
    return mean, np.maximum(var, 0.0)


def compute_stats(x: Any, var_names: list[str], *, n_top_genes: int = 2000, input_scale: str = "auto",
                  chunk_size: int = 4096, clip: float | None = None, hvg_flavor: str = "auto",
                  progress=None, target_sum: float | str = "auto") -> PreprocessStats:
    """Two streaming passes over the rows of ``x`` (cells x genes) -> PreprocessStats (a third one when the genes
    are ranked by Seurat v3 or Pearson-residual variance)."""
    if hvg_flavor not in HVG_FLAVORS:
        raise JojoInputError(f"unknown HVG flavour {hvg_flavor!r}: choose one of {', '.join(HVG_FLAVORS)}")
    n_cells, n_genes = x.shape
    if n_cells == 0 or n_genes == 0:
        raise JojoInputError(f"expression matrix is empty ({n_cells} cells x {n_genes} genes)")
    chunk_size = max(1, int(chunk_size))
    progress = progress or (lambda n: None)

    # Pass 1: totals, value checks, integrality; raw sums of squares for the seurat_v3 mean-variance trend.
    cell_totals, gene_totals, gene_sq = np.zeros(n_cells), np.zeros(n_genes), np.zeros(n_genes)
    integer, vmax = True, 0.0
    for start, stop, rows in iter_row_chunks(x, chunk_size):
        rows = as_float(rows)
        v = _check_values(rows, start)
        if v.size:
            vmax = max(vmax, float(v.max()))
            integer = integer and bool(np.all(v == np.round(v)))
        cell_totals[start:stop] = np.asarray(rows.sum(axis=1)).ravel()
        s, ss = _col_sums(rows)
        gene_totals += s
        gene_sq += ss
        progress(stop - start)

    scale = input_scale
    if scale == "auto":
        scale = "counts" if integer else ("normalized" if vmax > LOG_SCALE_MAX else "log")
        if scale != "counts":
            log.warning("input has non-integer values (max %.3g): treating it as %s, skipping %s "
                        "(force with --input-scale counts|normalized|log)", vmax, scale,
                        "median normalisation" if scale == "normalized" else "normalisation and log1p")
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

    # Pass 2: per-gene sums of the de-logged values (Seurat dispersion) and of the log values (cell_ranger, scaling).
    s_norm, ss_norm, s_log, ss_log = (np.zeros(n_genes) for _ in range(4))
    nonzero = np.zeros(n_genes)  # cells with a non-zero value, per gene
    n_kept = int(cell_mask.sum())
    for start, stop, rows in iter_row_chunks(x, chunk_size):
        keep = cell_mask[start:stop]
        logged = log_values(_kept(as_float(rows), keep), cell_totals[start:stop][keep], scale, target_sum)
        normed = logged.expm1() if sp.issparse(logged) else np.expm1(logged)
        for acc_s, acc_ss, m in ((s_norm, ss_norm, normed), (s_log, ss_log, logged)):
            s, ss = _col_sums(m)
            acc_s += s
            acc_ss += ss
        nonzero += np.asarray((logged != 0).sum(axis=0)).ravel()
        progress(stop - start)

    genes = np.flatnonzero(gene_totals > 0)
    if len(genes) < 2:
        raise JojoInputError(f"only {len(genes)} gene(s) have non-zero counts: nothing to cluster on")
    n_top = min(n_top_genes, len(genes))
    if n_top < n_top_genes:
        log.warning("only %d genes have non-zero counts; using all of them instead of %d HVGs", n_top, n_top_genes)
    if hvg_flavor == "cell_ranger":
        flavor, hvg_local = "cell_ranger", cell_ranger_hvg(*_mean_var(s_log[genes], ss_log[genes], n_kept), n_top)
    else:
        flavor, hvg_local = "seurat", seurat_hvg(*_mean_var(s_norm[genes], ss_norm[genes], n_kept), n_top)
    seurat_nonzero = nonzero[genes[hvg_local]].sum() / n_kept
    sparse_counts = hvg_flavor == "auto" and scale == "counts" and seurat_nonzero < SPARSE_NONZERO
    if n_top < len(genes) and (hvg_flavor == "seurat_v3" or sparse_counts):
        mean_r, var_r = _mean_var(gene_totals[genes], gene_sq[genes], n_kept)
        nvar = seurat_v3_variance(x, cell_mask, genes, mean_r, var_r, chunk_size)
        if nvar is not None:
            flavor, hvg_local = "seurat_v3", _top_n(nvar, n_top)
        elif hvg_flavor == "seurat_v3":
            raise JojoInputError("--hvg-flavor seurat_v3: the loess fit of the genes' mean-variance trend failed "
                                 "on this data (too sparse?); use --hvg-flavor pearson_residuals or auto")
    if n_top < len(genes) and (hvg_flavor == "pearson_residuals" or (sparse_counts and flavor == "seurat")):
        flavor = "pearson_residuals"
        hvg_local = _top_n(pearson_residual_variance(x, cell_mask, cell_totals, gene_totals, genes, chunk_size), n_top)
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
    """Variance over the kept cells of the analytic Pearson residuals of the columns ``genes`` (Lause et al. 2021;
    scanpy's ``flavor="pearson_residuals"``), in one pass: r = (x - mu) / sqrt(mu + mu^2 / theta) with
    mu = cell total * gene total / all counts, clipped to +-sqrt(kept cells)."""
    n_kept = int(cell_mask.sum())
    share = gene_totals[genes] / gene_totals.sum()
    bound = np.sqrt(n_kept)
    s, ss = np.zeros(len(genes)), np.zeros(len(genes))
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
    """Seurat v3 standardised variance of the raw counts of the columns ``genes`` (Stuart et al. 2019; scanpy's
    ``flavor="seurat_v3"``), in one pass; ``mean``/``var`` are over the kept cells. None when the loess fails.

    A loess (degree 2) of log10 var on log10 mean gives each gene an expected std sigma; counts are clipped at
    mean + sigma * sqrt(n) and the result is sum_c (min(x, clip) - mean)^2 / ((n - 1) sigma^2).
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
    s, ss = np.zeros(len(genes)), np.zeros(len(genes))
    for start, stop, rows in iter_row_chunks(x, chunk_size):
        sub = as_float(rows)[np.flatnonzero(cell_mask[start:stop])][:, genes]
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


def _dispersion(mean: np.ndarray, var: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(mean with zeros lifted to 1e-12, var / mean with zeros as NaN), as scanpy."""
    mean = np.where(mean == 0, 1e-12, mean)
    disp = var / mean
    disp[disp == 0] = np.nan
    return mean, disp


def cell_ranger_hvg(mean: np.ndarray, var: np.ndarray, n_top: int) -> np.ndarray:
    """Sorted indices of the top-n genes by normalised dispersion, as scanpy's 'cell_ranger': var/mean of the log
    values, centred on the median and divided by the normal-scaled MAD of its bin (mean percentiles 10, 15, ...)."""
    mean, disp = _dispersion(mean, var)
    edges = np.r_[-np.inf, np.percentile(mean, np.arange(10, 105, 5)), np.inf]
    grouped = pd.DataFrame({"disp": disp, "bin": pd.cut(mean, edges)}).groupby("bin", observed=False)["disp"]
    mad = grouped.transform(lambda d: scipy.stats.median_abs_deviation(d.dropna(), scale="normal")
                            if d.notna().any() else np.nan).to_numpy()
    return _top_scores(disp - grouped.transform("median").to_numpy(), mad, n_top)


def seurat_hvg(mean: np.ndarray, var: np.ndarray, n_top: int, n_bins: int = 20) -> np.ndarray:
    """Sorted indices of the top-n genes by normalised dispersion, as scanpy's 'seurat': log(var/mean) of the
    de-logged values, z-scored within ``n_bins`` equal-width bins of log1p(mean) (a bin of one gene scores 1)."""
    mean, disp = _dispersion(mean, var)
    disp = np.log(disp)
    grouped = pd.DataFrame({"disp": disp, "bin": pd.cut(np.log1p(mean), bins=n_bins)}).groupby("bin", observed=False)
    bin_mean = grouped["disp"].transform("mean").to_numpy()
    bin_std = grouped["disp"].transform("std").to_numpy()
    single = np.isnan(bin_std) & ~np.isnan(disp)
    bin_std[single] = bin_mean[single]
    bin_mean[single] = 0.0
    return _top_scores(disp - bin_mean, bin_std, n_top)


def _top_scores(centred: np.ndarray, spread: np.ndarray, n_top: int) -> np.ndarray:
    """``_top_n`` of centred / spread; a NaN score (no dispersion, or a bin without spread) ranks last."""
    with np.errstate(divide="ignore", invalid="ignore"):
        norm = centred / spread
    return _top_n(np.where(np.isnan(norm), -np.inf, norm), n_top)


def _top_n(score: np.ndarray, n_top: int) -> np.ndarray:
    """Sorted indices of the n_top highest scores; ties keep input order."""
    return np.sort(np.argsort(-score, kind="stable")[:n_top])


def materialize(x: Any, stats: PreprocessStats, chunk_size: int = 4096) -> np.ndarray:
    """The whole preprocessed matrix (kept cells x n_hvg, float32), chunk by chunk: for data that fits in memory
    (an atlas is prepared into a Zarr store instead: ``zarr_store.prepare``)."""
    out = np.empty((int(stats.cell_mask.sum()), stats.n_genes), dtype=np.float32)
    pos = 0
    for start, stop, rows in iter_row_chunks(x, chunk_size):
        keep = stats.cell_mask[start:stop]
        if keep.any():
            block = stats.transform(_kept(rows, keep))
            out[pos:pos + len(block)] = block
            pos += len(block)
    return out
