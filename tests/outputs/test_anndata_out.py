"""The annotated copy of the user's AnnData: labels/embedding placement, dropped cells, writing rules, scanpy."""

import anndata as ad
import matplotlib

matplotlib.use("Agg")
import numpy as np
import pandas as pd
import pytest
import scanpy as sc
import scipy.sparse as sp

from jojoscl_dist.errors import JojoInputError
from jojoscl_dist.outputs import anndata_out


def toy(n=60, g=30, seed=0):
    rng = np.random.default_rng(seed)
    a = ad.AnnData(X=sp.csr_matrix(rng.poisson(1.0, (n, g)).astype(np.float32)),
                   obs=pd.DataFrame({"cell_type": rng.choice(["a", "b"], n)}, index=[f"c{i}" for i in range(n)]))
    mask = np.ones(n, bool)
    mask[[3, 17]] = False  # two cells dropped by QC
    k = int(mask.sum())
    labels = rng.integers(0, 12, k)
    z = rng.normal(size=(k, 8)).astype(np.float32)
    return a, mask, labels, z


def test_annotate_places_results_and_leaves_input_alone():
    a, mask, labels, z = toy()
    out = anndata_out.annotate(a, mask, labels, z, key="clu", uns={"params": {"k": 12, "none": None}})
    assert out.n_obs == a.n_obs and "clu" not in a.obs and "X_jojoscl" not in a.obsm  # input untouched
    col = out.obs["clu"]
    assert isinstance(col.dtype, pd.CategoricalDtype)
    assert col.notna().all() and (col == "unassigned").sum() == 2 and col.iloc[3] == col.iloc[17] == "unassigned"
    np.testing.assert_array_equal(col[mask].astype(str).astype(int).to_numpy(), labels)
    assert list(col.cat.categories[:3]) == ["0", "1", "2"]  # numeric order, not "0","1","10"
    assert col.cat.categories[-1] == "unassigned"
    emb = out.obsm["X_jojoscl"]
    assert np.isfinite(emb).all() and (emb[~mask] == 0).all() and np.allclose(emb[mask], z)
    assert out.uns["jojoscl"]["n_unassigned"] == 2 and out.uns["jojoscl"]["params"]["none"] == "None"
    with pytest.raises(ValueError, match="shape mismatch"):
        anndata_out.annotate(a, mask, labels[:-1], z[:-1])


def test_write_h5ad_roundtrip_and_scanpy(tmp_path):
    a, mask, labels, z = toy()
    mask[:] = True
    labels = np.arange(a.n_obs) % 3
    z = np.random.default_rng(1).normal(size=(a.n_obs, 8)).astype(np.float32)
    out = anndata_out.annotate(a, mask, labels, z, uns={"metrics": {"ari": 0.5}})
    path = anndata_out.write(out, tmp_path / "x.jojoscl.h5ad")
    back = ad.read_h5ad(path)
    assert back.uns["jojoscl"]["metrics"]["ari"] == 0.5
    sc.pp.neighbors(back, use_rep="X_jojoscl", n_neighbors=5)
    assert back.obsp["connectivities"].shape == (a.n_obs, a.n_obs)
    sc.pl.embedding(back, basis="X_jojoscl", color="jojoscl_cluster", show=False)
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir())  # no temporary left behind


def test_a_copy_with_dropped_cells_takes_scanpy_neighbours_and_umap_whole(tmp_path):
    a, mask, labels, z = toy()
    out = anndata_out.annotate(a, mask, labels, z)
    sc.pp.neighbors(out, use_rep="X_jojoscl", n_neighbors=5)
    sc.tl.umap(out, random_state=0)
    assert np.isfinite(out.obsm["X_umap"]).all() and out.obsm["X_umap"].shape == (a.n_obs, 2)
    assert (out.obs["jojoscl_cluster"] != "unassigned").sum() == a.n_obs - 2


def test_write_refuses_input_and_existing(tmp_path):
    a, mask, labels, z = toy()
    src = tmp_path / "in.h5ad"
    a.write_h5ad(src)
    out = anndata_out.annotate(a, mask, labels, z)
    with pytest.raises(JojoInputError, match="is the input"):
        anndata_out.write(out, src, input_path=src, overwrite=True)
    target = anndata_out.default_path(src)
    assert target == tmp_path / "in.jojoscl.h5ad"
    anndata_out.write(out, target, input_path=src)
    with pytest.raises(JojoInputError, match="--overwrite"):
        anndata_out.write(out, target, input_path=src)
    anndata_out.write(out, target, input_path=src, overwrite=True)
    assert ad.read_h5ad(src).obs.columns.tolist() == ["cell_type"]  # the input was never modified


def test_zarr_input_gives_zarr_output(tmp_path):
    a, mask, labels, z = toy()
    src = tmp_path / "in.zarr"
    a.write_zarr(src)
    target = anndata_out.default_path(src)
    assert target.name == "in.jojoscl.zarr"
    anndata_out.write(anndata_out.annotate(a, mask, labels, z), target, input_path=src)
    back = ad.read_zarr(target)
    assert (back.obs["jojoscl_cluster"] == "unassigned").sum() == 2
