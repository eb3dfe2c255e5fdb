import argparse
from typing import get_args

import anndata as ad
import numpy as np
import pytest
import scanpy as sc
import scipy.sparse as sp

from jojoscl_dist.config import HvgFlavor
from jojoscl_dist.data.preprocess import (HVG_FLAVORS, TARGET_SUM_CAP, PreprocessStats, compute_stats, materialize,
                                          target_sum_arg)
from jojoscl_dist.errors import JojoInputError


def scanpy_reference(a: ad.AnnData, target_sum: float | None = None) -> ad.AnnData:
    b = a.copy()
    sc.pp.filter_genes(b, min_counts=1)
    sc.pp.filter_cells(b, min_counts=1)
    sc.pp.normalize_total(b, target_sum=target_sum)
    sc.pp.log1p(b)
    sc.pp.highly_variable_genes(b, flavor="seurat", n_top_genes=2000)
    b = b[:, b.var.highly_variable].copy()
    sc.pp.scale(b)
    return b


# "median" is scanpy's normalize_total default; "auto" caps it at 1e5 (both sets are deep: medians 2e6 and 2e7).
@pytest.mark.parametrize("name,target_sum,scanpy_target", [("Human_brain", "median", None), ("Yan", "median", None),
                                                            ("Human_brain", "auto", 1e5), ("Yan", 3e4, 3e4)])
def test_streaming_matches_scanpy(data_dir, name, target_sum, scanpy_target):
    a = ad.read_h5ad(data_dir / f"{name}.h5ad")
    st = compute_stats(a.X, list(a.var_names), n_top_genes=2000, chunk_size=97, hvg_flavor="seurat",  # odd chunks
                       target_sum=target_sum)
    x = materialize(a.X, st, chunk_size=61)
    ref = scanpy_reference(a, scanpy_target)
    assert set(st.gene_names) == set(ref.var_names)
    cols = [list(ref.var_names).index(g) for g in st.gene_names]
    np.testing.assert_allclose(x, np.asarray(ref.X)[:, cols], atol=1e-4)


def test_target_sum_auto_is_the_median_capped_at_1e5():
    rng = np.random.default_rng(0)
    shallow = rng.poisson(2.0, size=(60, 40)).astype(np.float32)  # totals ~80: droplet-like, keeps its median
    st = compute_stats(shallow, [f"g{i}" for i in range(40)])
    assert st.target_sum == pytest.approx(np.median(shallow.sum(1)))
    assert compute_stats(shallow, [f"g{i}" for i in range(40)], target_sum="median").target_sum == st.target_sum
    deep = shallow * 10_000  # totals ~8e5: capped
    assert compute_stats(deep, [f"g{i}" for i in range(40)]).target_sum == TARGET_SUM_CAP == 1e5
    assert compute_stats(deep, [f"g{i}" for i in range(40)], target_sum="median").target_sum > 1e5
    st = compute_stats(deep, [f"g{i}" for i in range(40)], target_sum=250.0)
    x = materialize(deep, st)
    row = deep[3] * 250.0 / deep[3].sum()  # cell 3 by hand: log1p of its counts scaled to 250, then z-scored
    logged = np.log1p(deep * (250.0 / deep.sum(1, keepdims=True)))
    want = (np.log1p(row) - logged.mean(0)) / logged.std(0, ddof=1)
    np.testing.assert_allclose(x[3], want[st.gene_index], rtol=1e-4, atol=1e-5)
    assert compute_stats(np.log1p(shallow), [f"g{i}" for i in range(40)]).target_sum == 0.0  # log input: unused


@pytest.mark.parametrize("bad", [0, -5.0, float("nan"), "mean"])
def test_bad_target_sum_raises_clear_error(bad):
    x = np.random.default_rng(0).poisson(2.0, size=(20, 10)).astype(np.float32)
    with pytest.raises(JojoInputError, match="--target-sum must be 'auto', 'median' or a positive number"):
        compute_stats(x, [f"g{i}" for i in range(10)], target_sum=bad)


def test_target_sum_command_line_values():
    assert target_sum_arg("auto") == "auto" and target_sum_arg("median") == "median"
    assert target_sum_arg("1e4") == 1e4
    for bad in ("0", "-1", "nan", "mean"):
        with pytest.raises(argparse.ArgumentTypeError, match="positive number"):
            target_sum_arg(bad)


def test_chunk_size_does_not_change_result(data_dir):
    a = ad.read_h5ad(data_dir / "Yan.h5ad")
    s1 = compute_stats(a.X, list(a.var_names), chunk_size=7)
    s2 = compute_stats(a.X, list(a.var_names), chunk_size=1000)
    assert s1.gene_names == s2.gene_names
    np.testing.assert_allclose(materialize(a.X, s1, 13), materialize(a.X, s2, 90), atol=1e-5)


def test_drops_empty_cells_and_genes():
    rng = np.random.default_rng(0)
    x = rng.poisson(2.0, size=(30, 20)).astype(np.float32)
    x[3] = 0
    x[:, 5] = 0
    st = compute_stats(sp.csr_matrix(x), [f"g{i}" for i in range(20)], n_top_genes=10)
    assert not st.cell_mask[3] and st.cell_mask.sum() == 29
    assert "g5" not in st.gene_names and st.n_genes == 10
    assert materialize(sp.csr_matrix(x), st).shape == (29, 10)
    # sparsity of the model input: non-zero HVG values per kept cell, counted by hand; dense input agrees
    kept = x[st.cell_mask][:, st.gene_index]
    assert st.mean_nonzero == pytest.approx((kept > 0).sum() / 29)
    dense = compute_stats(x, [f"g{i}" for i in range(20)], n_top_genes=10, chunk_size=7)
    assert dense.mean_nonzero == pytest.approx((x[dense.cell_mask][:, dense.gene_index] > 0).sum() / 29)


def test_log_scale_input_detected():
    rng = np.random.default_rng(0)
    x = np.log1p(rng.poisson(3.0, size=(40, 30)) * 1.7)
    st = compute_stats(x, [f"g{i}" for i in range(30)], n_top_genes=30)
    assert st.input_scale == "log"
    rpkm = rng.gamma(1.0, 100.0, size=(40, 30))
    assert compute_stats(rpkm, [f"g{i}" for i in range(30)], n_top_genes=30).input_scale == "normalized"


@pytest.mark.parametrize("bad,msg", [(np.nan, "NaN"), (np.inf, "NaN or Inf"), (-1.0, "negative")])
def test_bad_values_raise_clear_error(bad, msg):
    x = np.ones((5, 4))
    x[2, 1] = bad
    with pytest.raises(JojoInputError, match=msg):
        compute_stats(x, list("abcd"))


def test_all_zero_matrix_raises():
    with pytest.raises(JojoInputError, match="all zeros"):
        compute_stats(np.zeros((5, 4)), list("abcd"))


# --- Gene ranking by analytic Pearson residuals (hvg_flavor) ---

def _grouped_counts(n: int, g: int, shape: float, scale: float, fold: float, markers: int,
                    nb_size: float | None = None, seed: int = 0) -> np.ndarray:
    """Counts of cells in three groups: gene means gamma(shape, scale), groups 1 and 2 each with ``markers`` marker
    genes at ``fold`` x the mean, cell depths U(0.5, 2); Poisson, or negative binomial with size ``nb_size``.
    Cells without any count are dropped."""
    rng = np.random.default_rng(seed)
    mu = np.tile(rng.gamma(shape, scale, size=g), (n, 1))
    grp = rng.integers(0, 3, n)
    mu[grp == 1, :markers] *= fold
    mu[grp == 2, markers:2 * markers] *= fold
    mu *= rng.uniform(0.5, 2, size=(n, 1))
    x = rng.poisson(mu) if nb_size is None else rng.negative_binomial(nb_size, nb_size / (nb_size + mu))
    x = x.astype(np.float32)
    return x[x.sum(axis=1) > 0]


def _sparse_counts() -> np.ndarray:
    """Shallow Poisson counts (~8 non-zero genes per cell), 20 marker genes per group."""
    return _grouped_counts(300, 400, 0.3, 0.05, fold=8, markers=20)


def _deep_counts(n: int = 200, g: int = 400) -> np.ndarray:
    """Negative-binomial counts (~75% non-zero), 15 marker genes per group."""
    return _grouped_counts(n, g, 2.0, 2.0, fold=5, markers=15, nb_size=5)


def _ranks_like_scanpy(x: np.ndarray, flavor: str, scanpy_hvg: np.ndarray, n_top: int) -> PreprocessStats:
    """Our ranking ``flavor`` picks scanpy's genes (bool ``scanpy_hvg``) on sparse and dense input in any chunking,
    and not the Seurat-dispersion genes (so the flavour is really switched)."""
    names = [f"g{i}" for i in range(x.shape[1])]
    st = compute_stats(sp.csr_matrix(x), names, n_top_genes=n_top, hvg_flavor=flavor, chunk_size=37)
    assert st.hvg_flavor == flavor
    assert set(st.gene_index) == set(np.flatnonzero(scanpy_hvg))
    dense = compute_stats(x, names, n_top_genes=n_top, hvg_flavor=flavor, chunk_size=1000)
    np.testing.assert_array_equal(dense.gene_index, st.gene_index)
    seurat = compute_stats(x, names, n_top_genes=n_top, hvg_flavor="seurat")
    assert seurat.hvg_flavor == "seurat" and set(seurat.gene_index) != set(st.gene_index)
    return st


def test_pearson_residual_variance_by_hand():
    from jojoscl_dist.data.preprocess import pearson_residual_variance

    # x = [[2, 0], [0, 2]]: every mu = 2 * 2 / 4 = 1, so r = +-1 / sqrt(1 + 1/100) (under the clip sqrt(2)), and
    # each gene's residuals are (+-a, -+a): variance (ddof 1) = 2 a^2 = 2 / 1.01.
    x = np.array([[2.0, 0.0], [0.0, 2.0]])
    v = pearson_residual_variance(x, np.ones(2, bool), x.sum(1), x.sum(0), np.array([0, 1]), chunk_size=1)
    np.testing.assert_allclose(v, [2 / 1.01, 2 / 1.01])
    # The clip: one cell holding a gene's counts far above its mu gets sqrt(n cells), not its raw residual.
    y = np.array([[10.0, 0.0], [0.0, 10.0], [0.0, 10.0], [0.0, 10.0]])  # mu of gene 0: 2.5 in every cell
    gene_tot, cell_tot = y.sum(0), y.sum(1)
    mu00 = cell_tot[0] * gene_tot[0] / y.sum()
    assert (100 - mu00) / np.sqrt(mu00 + mu00**2 / 100) > 2.0  # would exceed the bound sqrt(4) = 2
    r0 = np.array([2.0] + [-(c * gene_tot[0] / y.sum()) / np.sqrt(c * gene_tot[0] / y.sum()
                                                                  + (c * gene_tot[0] / y.sum()) ** 2 / 100)
                           for c in cell_tot[1:]])
    v = pearson_residual_variance(y, np.ones(4, bool), cell_tot, gene_tot, np.array([0]), chunk_size=3)
    np.testing.assert_allclose(v, [r0.var(ddof=1)])


def test_pearson_residual_ranking_matches_scanpy_and_any_chunking():
    x = _sparse_counts()
    a = ad.AnnData(x)
    sc.experimental.pp.highly_variable_genes(a, flavor="pearson_residuals", n_top_genes=50)
    st = _ranks_like_scanpy(x, "pearson_residuals", a.var["highly_variable"].to_numpy(), 50)
    assert set(range(40)) & set(st.gene_index)  # the markers rank high


def test_auto_flavour_switches_on_sparse_counts_only(caplog):
    x = _sparse_counts()
    names = [f"g{i}" for i in range(x.shape[1])]
    with caplog.at_level("WARNING"):
        # auto: ~1 non-zero Seurat HVG value per cell; so sparse that the Seurat v3 trend cannot be fitted (as on
        # worm_neuron), hence Pearson residuals
        st = compute_stats(x, names, n_top_genes=50)
    assert st.hvg_flavor == "pearson_residuals"
    assert "Pearson-residual variance (the Seurat v3 trend fit failed)" in caplog.text
    deep = np.random.default_rng(1).poisson(20.0, size=(60, 300)).astype(np.float32)
    assert compute_stats(deep, [f"g{i}" for i in range(300)], n_top_genes=100).hvg_flavor == "seurat"
    # Non-integer input: auto keeps dispersion; asking for residuals is refused with the fix.
    assert compute_stats(x * 0.5, names, n_top_genes=50).hvg_flavor == "seurat"
    with pytest.raises(JojoInputError, match="needs raw integer counts.*--hvg-flavor seurat"):
        compute_stats(x * 0.5, names, n_top_genes=50, hvg_flavor="pearson_residuals")
    with pytest.raises(JojoInputError, match="unknown HVG flavour"):
        compute_stats(x, names, hvg_flavor="cellranger")


# --- Gene ranking by the Cell Ranger dispersion (hvg_flavor="cell_ranger") ---

def test_cell_ranger_ranking_matches_scanpy_and_any_chunking():
    x = _deep_counts()
    a = ad.AnnData(x.copy())
    sc.pp.normalize_total(a)
    sc.pp.log1p(a)
    sc.pp.highly_variable_genes(a, flavor="cell_ranger", n_top_genes=150)
    st = _ranks_like_scanpy(x, "cell_ranger", a.var["highly_variable"].to_numpy(), 150)
    assert len(set(range(30)) & set(st.gene_index)) >= 27  # the markers rank high


def test_cell_ranger_by_hand():
    """Normalised dispersion by hand. Means 1..21: the bin edges are the 10th, 15th, ..., 100th percentiles
    (3, 4, ..., 21), so genes 0-2 share the first bin and every other gene is alone in its bin (MAD 0: no score,
    ranked last, in input order)."""
    from jojoscl_dist.data.preprocess import cell_ranger_hvg

    mean = np.arange(1.0, 22.0)
    var = mean * 2.0  # dispersion var/mean = 2 everywhere ...
    var[0], var[1] = 1.0, 10.0  # ... but genes 0 and 1 have dispersion 1 and 5
    # First bin: dispersions (1, 5, 2): median 2, MAD 1 (x 1.4826 to a normal sd): gene 1 -> 3 / 1.4826 = 2.02,
    # gene 2 -> 0, gene 0 -> -1 / 1.4826 = -0.67.
    assert list(cell_ranger_hvg(mean, var, 1)) == [1]
    assert list(cell_ranger_hvg(mean, var, 2)) == [1, 2]
    assert list(cell_ranger_hvg(mean, var, 4)) == [0, 1, 2, 3]  # then gene 3: the first of the unscored genes


def test_cell_ranger_from_any_input_scale():
    """Unlike the count models, cell_ranger ranks log or normalised input too (on its log values)."""
    x = _deep_counts()
    names = [f"g{i}" for i in range(x.shape[1])]
    logged = np.log1p(x / x.sum(1, keepdims=True) * 1e4).astype(np.float32)
    st = compute_stats(logged, names, n_top_genes=100, hvg_flavor="cell_ranger")
    assert st.input_scale == "log" and st.hvg_flavor == "cell_ranger" and st.n_genes == 100
    assert len(set(range(30)) & set(st.gene_index)) >= 27


# --- Gene ranking by the Seurat v3 standardised variance of the counts ---

def test_seurat_v3_ranking_matches_scanpy_and_any_chunking():
    from jojoscl_dist.data.preprocess import seurat_v3_variance

    x = _deep_counts()
    a = ad.AnnData(x.copy())
    sc.pp.highly_variable_genes(a, flavor="seurat_v3", n_top_genes=200)
    st = _ranks_like_scanpy(x, "seurat_v3", a.var["highly_variable"].to_numpy(), 200)
    assert len(set(range(30)) & set(st.gene_index)) >= 27  # the markers rank high
    # The standardised variances themselves, not only the top set.
    g = np.arange(x.shape[1])
    mean, var = x.mean(0, dtype=np.float64), x.var(0, ddof=1, dtype=np.float64)
    nvar = seurat_v3_variance(x, np.ones(len(x), bool), g, mean, var, chunk_size=50)
    np.testing.assert_allclose(nvar, a.var["variances_norm"].to_numpy(), rtol=1e-6)


def test_seurat_v3_clips_a_cell_far_above_the_trend():
    from jojoscl_dist.data.preprocess import seurat_v3_variance

    x = _deep_counts()
    g, cells = np.arange(x.shape[1]), np.ones(len(x), bool)
    y = x.copy()
    y[0, 40] = 2000.0  # the gene's mean is ~4 elsewhere: far above mean + sqrt(n) * sigma of the trend
    mean, var = y.mean(0, dtype=np.float64), y.var(0, ddof=1, dtype=np.float64)
    at_2000 = seurat_v3_variance(y, cells, g, mean, var, chunk_size=64)
    y[0, 40] = 4000.0  # the same trend inputs, the count twice as far out
    at_4000 = seurat_v3_variance(y, cells, g, mean, var, chunk_size=64)
    # Clipped, the cell adds the same (n / (n - 1) of the trend variance) however far out it is; unclipped, its
    # term ((count - mean)^2) would grow ~4x.
    np.testing.assert_allclose(at_4000, at_2000, rtol=1e-12)
    assert at_2000[40] <= len(y) + 1


def test_auto_ranks_sparse_counts_by_seurat_v3_where_the_trend_fits(caplog):
    x = _grouped_counts(300, 600, 1.0, 0.5, fold=5, markers=20)  # ~50 non-zero Seurat HVG values per cell
    names = [f"g{i}" for i in range(600)]
    with caplog.at_level("WARNING"):
        st = compute_stats(x, names, n_top_genes=200)
    assert st.hvg_flavor == "seurat_v3" and "Seurat v3 standardised variance" in caplog.text
    v3 = compute_stats(x, names, n_top_genes=200, hvg_flavor="seurat_v3")
    np.testing.assert_array_equal(st.gene_index, v3.gene_index)
    assert len(set(range(40)) & set(st.gene_index)) >= 30  # the markers
    assert compute_stats(x, names, n_top_genes=200, hvg_flavor="seurat").hvg_flavor == "seurat"  # forced


def test_seurat_v3_needs_counts_and_a_trend_fit(monkeypatch):
    x = _deep_counts()
    names = [f"g{i}" for i in range(x.shape[1])]
    assert compute_stats(x, names, n_top_genes=200).hvg_flavor == "seurat"  # only on request, not under auto
    with pytest.raises(JojoInputError, match="needs raw integer counts.*--hvg-flavor seurat"):
        compute_stats(x * 0.5, names, n_top_genes=200, hvg_flavor="seurat_v3")

    import skmisc.loess

    class Singular:  # what skmisc raises on a singular local fit (seen on very sparse data: worm_neuron)
        def __init__(self, *args, **kwargs):
            pass

        def fit(self):
            raise ValueError("reciprocal condition number 1e-15")

    monkeypatch.setattr(skmisc.loess, "loess", Singular)
    with pytest.raises(JojoInputError, match="loess fit .* failed.*--hvg-flavor pearson_residuals"):
        compute_stats(x, names, n_top_genes=200, hvg_flavor="seurat_v3")


def test_config_and_preprocess_name_the_same_hvg_flavours():
    # spelled twice because the data modules do not import the config: the CLI's choices and the config's check
    # must not drift apart
    assert get_args(HvgFlavor) == HVG_FLAVORS
