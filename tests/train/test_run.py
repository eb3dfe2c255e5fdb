"""The run driver's data-dependent settings: the mask keep rate follows the sparsity of the data."""

import anndata as ad
import numpy as np
import pytest
import scipy.sparse as sp
import yaml

from jojoscl_dist.config import JojoConfig
from jojoscl_dist.errors import JojoInputError
from jojoscl_dist.train.run import run


def _counts(n_cells: int, n_genes: int, rate: float, seed: int = 0) -> ad.AnnData:
    rng = np.random.default_rng(seed)
    x = rng.poisson(rate, size=(n_cells, n_genes)).astype(np.float32)
    x[:, 0] += 1  # no empty cells
    obs = {"cell_type": np.array(["a", "b"])[rng.integers(0, 2, n_cells)]}
    return ad.AnnData(X=sp.csr_matrix(x), obs=obs)


def _small_cli_config(tmp_path, *flags: str) -> JojoConfig:
    """A 200-cell counts file at tmp_path/d.h5ad and the CLI config of a fast in-process run on it, plus flags."""
    from jojoscl_dist.train.__main__ import config_from_args

    path = tmp_path / "d.h5ad"
    _counts(200, 300, 0.5).write_h5ad(path)
    return config_from_args(["--data", str(path), "--label-key", "cell_type", "--batch-size", "100",
                             "--num-workers", "0", "--no-tracking", "--no-plots", "--output", str(tmp_path / "out"),
                             *flags])


@pytest.mark.parametrize("rate, sparse", [(0.02, True), (0.5, False)])
def test_mask_keep_rises_on_sparse_data_and_is_recorded(tmp_path, capsys, rate, sparse):
    path = tmp_path / "d.h5ad"
    _counts(200, 300, rate).write_h5ad(path)
    cfg = JojoConfig().override({"data.path": str(path), "data.label_key": "cell_type", "optim.epochs": 1,
                                 "optim.batch_size": 100, "run.num_workers": 0, "run.tracking": False,
                                 "run.plots": False, "run.output": str(tmp_path / "out"),
                                 "eval.kmeans_restarts": 1})
    run(cfg)
    saved = yaml.safe_load((tmp_path / "out" / "config.yaml").read_text())["model"]["mask_keep"]
    note = "sparse data" in capsys.readouterr().out
    if sparse:  # ~7 non-zero genes per cell (6 + the forced one): keep 10 of them -> capped at 0.5
        assert saved == 0.5 and note
    else:  # ~120 non-zero genes per cell: the configured 10% already keeps 12
        assert saved == 0.1 and not note


@pytest.mark.parametrize("weight", [1.0, 0.0])
def test_final_kmeans_space_follows_input_pca_weight(tmp_path, weight):
    from jojoscl_dist.outputs import bundle

    path = tmp_path / "d.h5ad"
    _counts(200, 300, 0.5).write_h5ad(path)
    cfg = JojoConfig().override({"data.path": str(path), "data.label_key": "cell_type", "optim.epochs": 2,
                                 "optim.batch_size": 100, "run.num_workers": 0, "run.tracking": False,
                                 "run.plots": False, "run.output": str(tmp_path / "out"), "eval.eval_every": 1,
                                 "eval.kmeans_restarts": 1, "eval.input_pca_weight": weight})
    res = run(cfg)
    b = bundle.load(res.output)
    evals = [h for h in res.history if "eval_ari" in h]
    if weight:
        assert b.input_pca is not None and b.centroids.shape == (2, 192 + cfg.eval.input_pca_components)
        # the oracle column is the final label method (k-means on [z, PCA]) at its best evaluation
        assert res.metrics["oracle_ari"] == max(h["eval_final_ari"] for h in evals)
    else:
        assert b.input_pca is None and b.centroids.shape == (2, 192)
        assert not any("eval_final_ari" in h for h in evals)
        assert res.metrics["oracle_ari"] == max(h["eval_ari"] for h in evals)


def test_final_kmeans_restart_selection_reaches_the_labels(tmp_path, monkeypatch):
    """eval.kmeans_select / kmeans_restarts (CLI --kmeans-select / --kmeans-restarts) reach the final k-means,
    and the run's metrics record them."""
    import jojoscl_dist.clustering.kmeans as km
    from jojoscl_dist.train.__main__ import config_from_args

    seen = []
    real = km.consensus_index
    monkeypatch.setattr(km, "consensus_index", lambda labels, objs: seen.append(len(labels)) or real(labels, objs))
    cfg = _small_cli_config(tmp_path, "--epochs", "1", "--kmeans-select", "consensus", "--kmeans-restarts", "4")
    res = run(cfg)
    assert seen == [4]  # the final k-means only: in-training evaluations keep 3 restarts by inertia
    assert res.metrics["kmeans_select"] == "consensus" and res.metrics["kmeans_restarts"] == 4
    with pytest.raises(JojoInputError, match="kmeans_select must be one of"):
        config_from_args(["--kmeans-select", "best"])


def test_input_pca_components_from_the_cli(tmp_path, monkeypatch):
    """--input-pca-components sets the input PCA columns appended to z: in the bundle's centroids (so predict
    assigns in the same space), the metrics, and the in-training evaluations' final-space k-means."""
    import jojoscl_dist.train.loop as loop
    from jojoscl_dist.outputs import bundle

    cfg = _small_cli_config(tmp_path, "--epochs", "1", "--kmeans-restarts", "2", "--input-pca-components", "12")
    assert cfg.eval.input_pca_components == 12
    dims = []
    real = loop.fit_kmeans
    monkeypatch.setattr(loop, "fit_kmeans", lambda x, k, **kw: dims.append(x.shape[1]) or real(x, k, **kw))
    res = run(cfg)
    assert dims == [192, 192 + 12]  # the evaluation: k-means on z (selection), on [z, p] (oracle column)
    assert bundle.load(res.output).centroids.shape == (2, 192 + 12)
    assert res.metrics["input_pca_components"] == 12
    cfg.eval.input_pca_components, cfg.run.output = 0, str(tmp_path / "bad")
    with pytest.raises(JojoInputError, match="eval.input_pca_components must be an integer >= 1, got 0"):
        run(cfg)
    assert not (tmp_path / "bad").exists()
    cfg.eval.input_pca_components, cfg.model.input_pcs = 12, -5
    with pytest.raises(JojoInputError, match="model.input_pcs must be an integer >= 0, got -5"):
        run(cfg)
    assert not (tmp_path / "bad").exists()


def test_input_pcs_end_to_end_cli_bundle_predict(tmp_path):
    """--input-pcs: the whole path (CLI config -> run -> bundle -> predict) embeds cells through the projection."""
    from jojoscl_dist.outputs import bundle
    from jojoscl_dist.predict import predict

    cfg = _small_cli_config(tmp_path, "--epochs", "2", "--kmeans-restarts", "2", "--input-pcs", "8")
    res = run(cfg)
    b = bundle.load(res.output)
    assert b.config.model.input_pcs == 8
    assert b.weights["encoder.in_components"].shape == (8, b.n_genes)
    assert b.weights["encoder.in_components"].abs().sum() > 0  # fitted, not the zeros it was built with
    pred = predict(b, ad.read_h5ad(cfg.data.path))
    np.testing.assert_allclose(pred.z, res.embedding, atol=1e-5)
    assert (pred.labels == res.labels).mean() >= 0.99


def test_hvg_flavor_from_the_cli(tmp_path):
    """--hvg-flavor reaches the gene ranking: auto switches to the Seurat v3 variance on sparse counts, seurat keeps
    dispersion, pearson_residuals ranks by residuals, and residuals on non-count input stop the run before any
    output."""
    from jojoscl_dist.data.dataset import prepare_data

    store_dir = tmp_path / "run"  # where the atlas case below prepares its store
    cfg = _small_cli_config(tmp_path, "--n-top-genes", "100")  # ~1.5 non-zero values per cell: sparse
    assert cfg.data.hvg_flavor == "auto"
    auto = prepare_data(cfg, store_dir).stats
    assert auto.hvg_flavor == "seurat_v3" and auto.n_genes == 100
    cfg.data.hvg_flavor = "seurat"
    seurat = prepare_data(cfg, store_dir).stats
    assert seurat.hvg_flavor == "seurat" and set(seurat.gene_index) != set(auto.gene_index)
    cfg.data.hvg_flavor = "pearson_residuals"
    assert prepare_data(cfg, store_dir).stats.hvg_flavor == "pearson_residuals"
    cfg.data.hvg_flavor = "cell_ranger"
    ranger = prepare_data(cfg, store_dir).stats
    assert ranger.hvg_flavor == "cell_ranger" and set(ranger.gene_index) != set(seurat.gene_index)
    # An input above the atlas threshold is prepared out of core into a store: the flavour reaches that path too.
    cfg.data.prepare_above_cells = 100
    atlas = prepare_data(cfg, store_dir).stats
    assert atlas.hvg_flavor == "cell_ranger" and list(atlas.gene_index) == list(ranger.gene_index)
    cfg.data.prepare_above_cells = JojoConfig().data.prepare_above_cells
    a = ad.read_h5ad(tmp_path / "d.h5ad")
    a.X = a.X * 0.5  # non-integer: not counts
    a.write_h5ad(tmp_path / "half.h5ad")
    cfg.data.path, cfg.data.hvg_flavor, cfg.run.output = str(tmp_path / "half.h5ad"), "pearson_residuals", str(tmp_path / "bad")
    with pytest.raises(JojoInputError, match="needs raw integer counts"):
        run(cfg)
    assert not (tmp_path / "bad").exists()


def test_target_sum_from_the_cli(tmp_path):
    """--target-sum reaches the normalisation, in memory and on the out-of-core store path; a bad value stops the
    parser."""
    from jojoscl_dist.train.__main__ import config_from_args
    from jojoscl_dist.data.dataset import prepare_data

    store_dir = tmp_path / "run"  # where the out-of-core case below prepares its store
    cfg = _small_cli_config(tmp_path)
    median = float(np.median(np.asarray(ad.read_h5ad(tmp_path / "d.h5ad").X.sum(1)).ravel()))
    assert cfg.data.target_sum == "auto" and median < 1e5
    # shallow counts: the cap does not bite
    assert prepare_data(cfg, store_dir).stats.target_sum == pytest.approx(median)
    cfg = _small_cli_config(tmp_path, "--target-sum", "50")
    assert cfg.data.target_sum == 50.0 and prepare_data(cfg, store_dir).stats.target_sum == 50.0
    cfg.data.prepare_above_cells = 100  # prepared into a store first: the same target
    assert prepare_data(cfg, store_dir).stats.target_sum == 50.0
    with pytest.raises(SystemExit) as e:
        config_from_args(["--target-sum", "-3"])
    assert e.value.code == 2
