import anndata as ad
import numpy as np
import pytest
import scanpy as sc
import scipy.sparse as sp

from jojoscl_dist.data.preprocess import compute_stats, materialize
from jojoscl_dist.errors import JojoInputError


def scanpy_reference(a: ad.AnnData) -> ad.AnnData:
    b = a.copy()
    sc.pp.filter_genes(b, min_counts=1)
    sc.pp.filter_cells(b, min_counts=1)
    sc.pp.normalize_total(b)
    sc.pp.log1p(b)
    sc.pp.highly_variable_genes(b, flavor="seurat", n_top_genes=2000)
    b = b[:, b.var.highly_variable].copy()
    sc.pp.scale(b)
    return b


@pytest.mark.parametrize("name", ["Human_brain", "Yan"])
def test_streaming_matches_scanpy(data_dir, name):
    a = ad.read_h5ad(data_dir / f"{name}.h5ad")
    st = compute_stats(a.X, list(a.var_names), n_top_genes=2000, chunk_size=97)  # odd chunks on purpose
    x = materialize(a.X, st, chunk_size=61)
    ref = scanpy_reference(a)
    assert set(st.gene_names) == set(ref.var_names)
    cols = [list(ref.var_names).index(g) for g in st.gene_names]
    np.testing.assert_allclose(x, np.asarray(ref.X)[:, cols], atol=1e-4)


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
