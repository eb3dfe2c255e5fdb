"""The Python API (jojoscl_dist/api.py) on an in-memory AnnData: the CLI's labels, results placed in the AnnData
(an all-zero cell 'unassigned'), scanpy on the embedding, the bundle round trip, config errors, layers, backed
files, a kept run folder, Ray workers."""

import json
import subprocess
import sys
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scanpy as sc
import scipy.sparse as sp

import jojoscl_dist as jd
from jojoscl_dist.clustering.metrics import score_labels
from jojoscl_dist.data.synthetic import demo_atlas
from jojoscl_dist.errors import JojoInputError
from jojoscl_dist.outputs import bundle
from jojoscl_dist.train.__main__ import main as cli_main

ROOT = Path(__file__).resolve().parents[1]
ZERO_CELL = 5
# Short, identical settings for the API and the CLI (flags) on every 4th PBMC cell (1068 cells): quick on 2 cores.
SETTINGS = {"label_key": "cell_type", "epochs": 2, "eval_every": 2, "kmeans_restarts": 5, "seed": 0}
FLAGS = ["--label-key", "cell_type", "--epochs", "2", "--eval-every", "2", "--kmeans-restarts", "5", "--seed", "0"]


@pytest.fixture(scope="module")
def pbmc(data_dir):
    a = ad.read_h5ad(data_dir / "10X_PBMC_top2000.h5ad")[::4].copy()
    x = a.X.tolil()
    x[ZERO_CELL] = 0  # a cell without counts: dropped from training, 'unassigned' in the results
    a.X = x.tocsr()
    a.X.eliminate_zeros()
    return a


@pytest.fixture(scope="module")
def runs(pbmc, tmp_path_factory):
    """The API on the AnnData, and the CLI on the same cells written to a file."""
    tmp = tmp_path_factory.mktemp("api")
    pbmc.write_h5ad(tmp / "pbmc.h5ad")
    x_before = pbmc.X.copy()
    model = jd.cluster(pbmc, quiet=True, **SETTINGS)
    assert (pbmc.X != x_before).nnz == 0  # the values are the user's, untouched
    assert cli_main(["--data", str(tmp / "pbmc.h5ad"), *FLAGS, "--num-workers", "0", "--no-tracking", "--no-plots",
                     "-q", "--output", str(tmp / "cli")]) == 0
    return model, tmp / "cli"


def tiny(seed=0, n_cells=240):
    return demo_atlas(n_cells, 300, 3, seed=seed)


TINY = {"epochs": 1, "eval_every": 1, "kmeans_restarts": 2, "batch_size": 64, "quiet": True}


def test_cluster_gives_the_cli_labels_and_marks_the_empty_cell(pbmc, runs):
    model, cli = runs
    col = pbmc.obs["jojoscl"]
    assert isinstance(col.dtype, pd.CategoricalDtype) and col.iloc[ZERO_CELL] == "unassigned"
    assert (col == "unassigned").sum() == 1
    cli_labels = pd.read_csv(cli / "labels.csv")
    kept = np.flatnonzero(col != "unassigned")
    assert list(cli_labels["cell"]) == list(pbmc.obs_names[kept])
    np.testing.assert_array_equal(col.iloc[kept].astype(str).astype(int).to_numpy(), cli_labels["cluster"].to_numpy())
    # ... and the same embedding as the CLI's annotated copy, zero row included
    annotated = ad.read_h5ad(cli / "pbmc.jojoscl.h5ad")
    np.testing.assert_array_equal(pbmc.obsm["X_jojoscl"], annotated.obsm["X_jojoscl"])
    assert (annotated.obs["jojoscl_cluster"].astype(str) == col.astype(str)).all()
    uns = pbmc.uns["jojoscl"]
    final = json.loads((cli / "metrics.json").read_text())["final"]
    assert uns["selected_epoch"] == final["selected_epoch"] and uns["metrics"]["ari"] == pytest.approx(final["ari"])
    assert uns["params"]["n_clusters"] == 8 and uns["n_unassigned"] == 1 and uns["obs_key"] == "jojoscl"


def test_scanpy_neighbors_and_umap_take_the_embedding(pbmc, runs):
    a = pbmc.copy()
    assert np.isfinite(a.obsm["X_jojoscl"]).all() and (a.obsm["X_jojoscl"][ZERO_CELL] == 0).all()
    sc.pp.neighbors(a, use_rep="X_jojoscl", n_neighbors=10)
    sc.tl.umap(a, random_state=0)
    assert a.obsm["X_umap"].shape == (a.n_obs, 2) and np.isfinite(a.obsm["X_umap"]).all()


def test_latent_representation_matches_obsm(pbmc, runs):
    model, _ = runs
    np.testing.assert_array_equal(model.get_latent_representation(), pbmc.obsm["X_jojoscl"])
    # computed again through the prediction path, for a copy of the cells
    np.testing.assert_allclose(model.get_latent_representation(pbmc.copy()), pbmc.obsm["X_jojoscl"], atol=1e-4)


def test_save_load_predict_gives_the_same_clusters(pbmc, runs, tmp_path):
    model, cli = runs
    pred = model.predict(pbmc)
    assert pred[ZERO_CELL] == "unassigned"
    # nearest training centroid: the training labels, bar cells on a boundary of the final k-means
    assert (np.asarray(pred) == pbmc.obs["jojoscl"].to_numpy()).mean() > 0.99
    model.save(tmp_path / "m")
    with pytest.raises(JojoInputError, match="already exists"):
        model.save(tmp_path / "m")
    saved, from_cli = bundle.load(tmp_path / "m"), bundle.load(cli)  # the CLI's bundle: same fields, same weights
    assert saved.to_dict().keys() == from_cli.to_dict().keys()
    for k, w in from_cli.weights.items():
        assert np.array_equal(w.numpy(), saved.weights[k].numpy()), k
    for loaded in (jd.JojoSCL.load(tmp_path / "m"), jd.JojoSCL.load(cli, pbmc)):
        np.testing.assert_array_equal(np.asarray(loaded.predict(pbmc)), np.asarray(pred))
    held_out = pbmc[pbmc.n_obs // 2:].copy()
    np.testing.assert_array_equal(np.asarray(jd.JojoSCL.load(cli).predict(held_out)),
                                  np.asarray(pred[pbmc.n_obs // 2:]))


def test_the_package_root_loads_the_api_on_first_use():
    code = "import sys, jojoscl_dist; print(jojoscl_dist.__version__ != '', 'torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.split() == ["True", "False"]  # import and --version stay cheap
    assert jd.cluster.__module__ == "jojoscl_dist.api" and {"cluster", "JojoSCL"} <= set(dir(jd))
    with pytest.raises(AttributeError, match="no attribute 'clusters'"):
        jd.clusters


def test_bad_config_is_one_clear_error_and_leaves_the_anndata_alone():
    a = tiny()
    with pytest.raises(JojoInputError, match=r"unknown config key 'epoch' \(did you mean \['epochs'"):
        jd.cluster(a, epoch=3)
    with pytest.raises(JojoInputError, match=r"optim.epochs must be an integer >= 1, got 0"):
        jd.cluster(a, **{"optim.epochs": 0})
    with pytest.raises(JojoInputError, match="'path' is not an API setting: pass the AnnData itself"):
        jd.cluster(a, path="x.h5ad")
    with pytest.raises(JojoInputError, match="unknown layer 'counts'"):
        jd.cluster(a, layer="counts")
    assert "jojoscl" not in a.obs and not a.obsm and "jojoscl" not in a.uns


def test_a_layer_and_a_backed_file_give_the_labels_of_x(tmp_path):
    a = tiny()
    ref = a.copy()
    jd.cluster(ref, 3, **TINY)
    layered = ad.AnnData(X=sp.csr_matrix(a.shape, dtype=np.float32), obs=a.obs, var=a.var,
                         layers={"counts": a.X})  # an all-zero X: only the layer can give these labels
    jd.cluster(layered, 3, layer="counts", key_added="clu", **TINY)
    a.write_h5ad(tmp_path / "a.h5ad")
    backed = ad.read_h5ad(tmp_path / "a.h5ad", backed="r")
    jd.cluster(backed, 3, **TINY)
    for other, key in ((layered, "clu"), (backed, "jojoscl")):
        assert list(other.obs[key]) == list(ref.obs["jojoscl"])
    assert "X_clu" in layered.obsm and layered.uns["clu"]["params"]["layer"] == "counts"


def test_an_output_folder_keeps_the_checkpoints_and_refuses_other_data(tmp_path):
    a = tiny()
    m1 = jd.cluster(a, 3, output=str(tmp_path / "run"), **TINY)
    assert list((tmp_path / "run").glob("*/checkpoint_*"))
    m2 = jd.cluster(a.copy(), 3, output=str(tmp_path / "run"), **TINY)  # resumes the finished run: no training
    assert m2.metrics["time_train_s"] < m1.metrics["time_train_s"] and m2.history == m1.history
    other = tiny(seed=1)
    with pytest.raises(JojoInputError, match=r"trained on other data than AnnData \(240 cells x 300 genes\)"):
        jd.cluster(other, 3, output=str(tmp_path / "run"), **TINY)


@pytest.mark.slow
@pytest.mark.ray
def test_two_ray_workers(pbmc):
    a = pbmc.copy()
    model = jd.cluster(a, num_workers=2, quiet=True, **SETTINGS)
    assert model.metrics["num_workers"] == 2 and a.obs["jojoscl"].iloc[ZERO_CELL] == "unassigned"
    kept = a.obs["jojoscl"] != "unassigned"
    # Two workers split each batch (a different run from in-process): scored against the truth, not the labels.
    assert score_labels(a.obs["cell_type"][kept].astype(str).to_numpy(),
                        a.obs["jojoscl"][kept].astype(str).to_numpy())["ari"] > 0.4
