"""Training on 70% of a real set, predicting the other 30% and the training cells (the whole path: run(cfg) ->
bundle -> predict CLI), plus gene alignment and the counts-total rule."""

import json

import anndata as ad
import numpy as np
import pytest

from jojoscl_dist.clustering.metrics import score_labels
from jojoscl_dist.config import JojoConfig
from jojoscl_dist.data.preprocess import compute_stats
from jojoscl_dist.outputs import bundle
from jojoscl_dist.predict import align_genes, main as predict_main, predict, transform_aligned
from jojoscl_dist.train.run import run

# Measured (seed 0, 6 epochs, batch 128, lr 1e-3, last epoch, this split): training ARI 0.909, held-out ARI vs truth 0.879, training
# cells re-predicted 100% identical; random assignment gives ~0. The floor leaves room for thread-count noise.
HELD_OUT_ARI_FLOOR = 0.6


@pytest.fixture(scope="module")
def split_run(data_dir, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("predict")
    a = ad.read_h5ad(data_dir / "CellBench_celseq2_5cl.h5ad")
    rng = np.random.default_rng(0)
    order = rng.permutation(a.n_obs)
    n_train = int(0.7 * a.n_obs)
    train, test = a[np.sort(order[:n_train])].copy(), a[np.sort(order[n_train:])].copy()
    train.write_h5ad(tmp / "train.h5ad")
    test.write_h5ad(tmp / "test.h5ad")
    cfg = JojoConfig()
    cfg.data.path = str(tmp / "train.h5ad")
    cfg.data.label_key = "cell_type"
    cfg.optim.epochs, cfg.optim.batch_size = 6, 128
    cfg.optim.lr = 1e-3  # six epochs must learn: the faster rate (the default 3e-4 suits 100 epochs)
    cfg.eval.eval_every, cfg.eval.selection = 3, "last"  # the floor below was measured on the last epoch
    cfg.run.num_workers, cfg.run.tracking, cfg.run.quiet = 0, False, True
    cfg.run.output = str(tmp / "run")
    result = run(cfg)
    return tmp, result, train, test


# The split run trains for ~40 s on an idle 2-core machine (3.5 min at load 20): slow tier.
@pytest.mark.slow
def test_run_directory_contents(split_run):
    tmp, result, train, _ = split_run
    out = result.output
    for f in ("results.h5ad", "labels.csv", "model/model.pt", "metrics.json", "config.yaml", "umap.png",
              "curves.png", "summary.md", "train.jojoscl.h5ad"):
        assert (out / f).exists(), f
    ann = ad.read_h5ad(out / "train.jojoscl.h5ad")
    assert ann.n_obs == train.n_obs and ann.n_vars == train.n_vars  # the user's data, all cells and genes
    np.testing.assert_array_equal(ann.obs["jojoscl_cluster"].astype(int).to_numpy(), result.labels)
    assert ann.uns["jojoscl"]["params"]["n_clusters"] == 5
    assert not (tmp / "train.jojoscl.h5ad").exists()  # nothing written beside the training input
    b = bundle.load(out)
    # k-means centroids in [z, PCA(n) of the input] (eval.input_pca_weight > 0 by default)
    n_pc = result.metrics["input_pca_components"]
    assert b.centroids.shape == (5, 192 + n_pc) and len(b.gene_names) == b.n_genes == 2000
    assert b.input_pca.components.shape == (n_pc, 2000)


@pytest.mark.slow
def test_predict_training_cells_reproduces_labels(split_run):
    _, result, train, _ = split_run
    pred = predict(bundle.load(result.output), train)
    assert pred.cell_mask.all() and pred.n_missing_genes == 0
    assert (pred.labels == result.labels).mean() >= 0.99  # nearest final k-means centroid = its label
    np.testing.assert_allclose(pred.z, result.embedding, atol=1e-5)


@pytest.mark.slow
def test_predict_held_out_cells_cli(split_run, capsys):
    tmp, result, _, test = split_run
    out = tmp / "test_pred.h5ad"
    assert predict_main(["--model", str(result.output), "--data", str(tmp / "test.h5ad"), "--output", str(out),
                         "--obs-key", "pred", "--label-key", "cell_type"]) == 0
    got = ad.read_h5ad(out)
    assert got.n_obs == test.n_obs and got.obsm["X_jojoscl"].shape == (test.n_obs, 192)
    ari = score_labels(test.obs["cell_type"].astype(str), got.obs["pred"].astype(str))["ari"]
    train_ari = json.loads((result.output / "metrics.json").read_text())["final"]["ari"]
    print(f"held-out ARI {ari:.4f}; training ARI {train_ari:.4f}")
    assert ari > HELD_OUT_ARI_FLOOR
    assert ari > train_ari - 0.15  # held-out cells are not clustered much worse than the training cells
    # An existing output is refused without --overwrite, with one clear line and exit status 2.
    assert predict_main(["--model", str(result.output), "--data", str(tmp / "test.h5ad"), "--output", str(out)]) == 2
    assert "--overwrite" in capsys.readouterr().err


@pytest.mark.slow
def test_missing_genes_warn_and_still_assign(split_run, caplog):
    _, result, _, test = split_run
    b = bundle.load(result.output)
    drop = set(b.gene_names[::10])  # 10% of the model genes absent from the new data
    sub = test[:, [g not in drop for g in test.var_names]].copy()
    full = predict(b, test)
    with caplog.at_level("WARNING"):
        part = predict(b, sub)
    assert part.n_missing_genes == len(drop)
    assert f"{len(drop)} of the model's 2000 genes are missing" in caplog.text
    assert (part.labels == full.labels).mean() > 0.8


def test_alignment_by_name_and_counts_totals(data_dir):
    a = ad.read_h5ad(data_dir / "Yan.h5ad")  # counts? either way the rule is the same
    st = compute_stats(a.X, list(a.var_names), n_top_genes=500)
    ref = st.transform(a.X)
    perm = np.random.default_rng(0).permutation(a.n_vars)  # same genes, another column order
    b = a[:, perm].copy()
    cols, n_missing = align_genes(st, b.var_names)
    got, keep = transform_aligned(b.X, st, cols)
    assert n_missing == 0 and keep.all()
    np.testing.assert_allclose(got, ref, atol=1e-5)
    # Restricting the new data to the model genes changes the per-cell totals for counts input (they must be
    # over all of the cell's genes, as in training): the result must differ then, and only then.
    only_hvg = a[:, st.gene_names].copy()
    got2, _ = transform_aligned(only_hvg.X, st, align_genes(st, only_hvg.var_names)[0])
    assert np.allclose(got2, ref, atol=1e-5) == (st.input_scale != "counts")
