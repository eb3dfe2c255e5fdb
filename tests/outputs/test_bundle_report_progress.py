"""Model bundle save/load and schema check; pictures and summary; progress lines; quiet worker loggers."""

import io
import logging

import numpy as np
import pytest
import torch

from jojoscl_dist.clustering.input_pca import InputPCA
from jojoscl_dist.config import JojoConfig
from jojoscl_dist.data.loader import ArraySource
from jojoscl_dist.data.preprocess import compute_stats
from jojoscl_dist.errors import JojoInputError
from jojoscl_dist.model import JojoSCL, build_model
from jojoscl_dist.outputs import bundle, report
from jojoscl_dist.train.session import EpochProgress, epoch_line


def small_bundle():
    rng = np.random.default_rng(0)
    x = rng.poisson(2.0, (50, 40)).astype(np.float32)
    st = compute_stats(x, [f"g{i}" for i in range(40)], n_top_genes=20)
    torch.manual_seed(0)
    m = JojoSCL(st.n_genes, 3)
    return bundle.ModelBundle(weights=m.state_dict(), n_genes=st.n_genes, n_clusters=3, stats=st,
                              centroids=rng.normal(size=(3, 192)).astype(np.float32), label_method="kmeans",
                              config=JojoConfig(), versions=bundle.versions()), m


def test_bundle_roundtrip(tmp_path):
    b, m = small_bundle()
    path = bundle.save(b, tmp_path / "run" / "model")
    for where in (tmp_path / "run", tmp_path / "run" / "model", path):  # run dir, model dir or file
        got = bundle.load(where)
        assert got.gene_names == b.gene_names and got.n_clusters == 3 and got.schema == bundle.SCHEMA
        np.testing.assert_array_equal(got.centroids, b.centroids)
        np.testing.assert_array_equal(got.stats.mean, b.stats.mean)
        x = torch.randn(4, b.n_genes)
        m.eval()
        assert torch.allclose(got.model()(x)[1], m(x)[1])


def test_bundle_keeps_the_input_pca_and_reads_older_bundles_without_it(tmp_path):
    b, _ = small_bundle()
    x = np.random.default_rng(1).normal(size=(30, b.n_genes)).astype(np.float32)
    b.input_pca = InputPCA.fit(ArraySource(x), 1.0, seed=0, n_components=4)
    got = bundle.load(bundle.save(b, tmp_path / "new"))
    np.testing.assert_array_equal(got.input_pca.coords(x), b.input_pca.coords(x))
    assert (got.input_pca.scale, got.input_pca.weight) == (b.input_pca.scale, b.input_pca.weight)
    d = b.to_dict() | {"schema": 2, "versions": {"torch": torch.__version__}}
    del d["input_pca"]  # a bundle written before the input PCA existed: z alone, as it was trained
    torch.save(d, tmp_path / "model.pt")  # as schema 2 was written: plain numpy arrays, torch's version object
    got = bundle.load(tmp_path)
    assert got.input_pca is None and got.schema == bundle.SCHEMA
    np.testing.assert_array_equal(got.centroids, b.centroids)


def test_bundle_rebuilds_an_encoder_trained_on_input_pcs(tmp_path):
    """model.input_pcs: the projection is part of the weights, so a loaded bundle embeds cells the same way."""
    cfg = JojoConfig()
    cfg.model.input_pcs = 5
    b, _ = small_bundle()
    torch.manual_seed(0)
    m = build_model(cfg.model, b.n_genes, 3)
    rng = np.random.default_rng(2)
    m.encoder.set_input_projection(rng.normal(size=b.n_genes), rng.normal(size=(5, b.n_genes)), 3.0)
    b.weights, b.config = m.state_dict(), cfg
    got = bundle.load(bundle.save(b, tmp_path / "pcs"))
    x = torch.randn(4, b.n_genes)
    np.testing.assert_allclose(got.model()(x)[1].detach(), m.eval()(x)[1].detach(), atol=1e-6)


def test_bundle_schema_and_missing(tmp_path):
    b, _ = small_bundle()
    d = b.to_dict()
    d["schema"] = 1
    torch.save(d, tmp_path / "model.pt")
    with pytest.raises(JojoInputError, match="schema 1"):
        bundle.load(tmp_path)
    with pytest.raises(JojoInputError, match="no model bundle"):
        bundle.load(tmp_path / "nothing")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "model.pt").write_bytes(b"not a torch file")
    with pytest.raises(JojoInputError, match="could not read"):
        bundle.load(tmp_path / "bad")


def history(n=6):
    return [{"epoch": e, "loss": 9 - e * 0.3, "l_ins": 6 - e * 0.2, "l_clu": 2.2, "l_sure": 0.1,
             "cells_per_s": 4800.0, **({"select_silhouette": 0.3 + 0.02 * e, "select_stability": 0.9,
                                        "eval_ari": 0.5 + 0.03 * e, "eval_nmi": 0.6} if e % 2 == 1 else {})}
            for e in range(n)]


def test_curves_umap_and_summary(tmp_path):
    rng = np.random.default_rng(0)
    centers = rng.normal(size=(3, 16)) * 4
    truth = np.repeat(np.arange(3), 40)
    z = (centers[truth] + rng.normal(size=(120, 16))).astype(np.float32)
    metrics = {"n_cells": 120, "n_genes": 16, "n_clusters": 3, "n_clusters_found": 3, "epochs": 6,
               "selected_epoch": 5, "selection_rule": "last", "label_method": "kmeans", "num_workers": 0,
               "seed": 0, "time_prepare_s": 1.0, "time_train_s": 2.0, "time_total_s": 3.5, "ari": 0.9,
               "nmi": 0.9, "acc": 0.95, "input_pca_weight": 1.5, "input_pca_components": 20}
    files = report.write_report(tmp_path, z=z, labels=truth, truth=truth.astype(str), history=history(),
                                metrics=metrics, seed=0, source="toy.h5ad", n_input_cells=121, n_input_genes=50,
                                cfg_dict=JojoConfig().to_dict(), k_info={"rule": "leiden", "resolution": 1.0,
                                                                         "n_communities": 4, "min_size": 3, "k": 3},
                                annotated="toy.jojoscl.h5ad")
    assert files == ["umap.png", "curves.png", "summary.md"]
    for f in ("umap.png", "curves.png"):
        assert (tmp_path / f).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and (tmp_path / f).stat().st_size > 10_000
    md = (tmp_path / "summary.md").read_text()
    assert "K = 3, chosen without labels by rule `leiden`" in md and "![umap.png](umap.png)" in md
    assert "1 cells with zero counts" in md and "ARI 0.9000" in md
    assert "labels by `kmeans` on [z, 1.5 x input PCA(20)]" in md


def test_umap_title_counts_the_plotted_cells_once():
    demo = "synthetic demo atlas (3000 cells, 3000 genes, 6 types)"
    assert report.umap_title(demo, 3000, 3000) == demo + ": UMAP of all 3000 cells"
    assert report.umap_title("atlas.h5ad", 30000, 90000) == "atlas.h5ad: UMAP of a seeded 30000 of 90000 cells"
    assert report.umap_title("", 5, 5) == "UMAP of all 5 cells"


def test_pictures_leave_the_matplotlib_backend_and_pyplot_alone(tmp_path):
    # A notebook user's backend (inline) must survive a run: the pictures are drawn without pyplot.
    import matplotlib
    import matplotlib.pyplot as plt

    before = matplotlib.get_backend()
    try:
        matplotlib.use("pdf")
        open_figures = plt.get_fignums()  # other tests may leave figures open
        report.curves_png(history(), tmp_path / "c.png", selected_epoch=3)
        z = np.random.default_rng(0).normal(size=(40, 8)).astype(np.float32)
        report.umap_png(z, np.arange(40) % 3, tmp_path / "u.png", truth=np.arange(40) % 2)
        assert matplotlib.get_backend() == "pdf" and plt.get_fignums() == open_figures
        assert all((tmp_path / f).read_bytes()[:4] == b"\x89PNG" for f in ("c.png", "u.png"))
    finally:
        matplotlib.use(before)


def test_legend_lists_cluster_ids_in_numeric_order():
    from matplotlib.figure import Figure

    ax = Figure().subplots()
    labels = np.repeat(np.arange(12), 2)
    report._scatter(ax, np.zeros((24, 2)), labels, "t")
    assert ax.get_legend_handles_labels()[1] == [f"{i} (2)" for i in range(12)]  # 0..11, not 0, 1, 10, 11, 2
    ax = Figure().subplots()
    report._scatter(ax, np.zeros((3, 2)), np.array(["b", "a", "b"]), "t")
    assert ax.get_legend_handles_labels()[1] == ["a (1)", "b (2)"]


def test_umap_leaves_torch_thread_count_alone():
    # UMAP resets numba's thread count on exit, and with it (shared OpenMP runtime) torch's: a second run in the
    # same process then computed with another thread count (not reproducible at OMP_NUM_THREADS=1).
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        idx, xy = report.umap_2d(np.random.default_rng(0).normal(size=(60, 8)).astype(np.float32))
        assert xy.shape == (60, 2) and torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_epoch_line_and_plain_progress():
    m = history()[1]
    line = epoch_line(m, 100)
    assert line.startswith("epoch 2/100 loss 8.7 ") and line.endswith("4800 cells/s") and "sil 0.320" in line
    buf = io.StringIO()  # not a TTY: one plain line per epoch, no bar
    p = EpochProgress(6, stream=buf)
    assert p.mode == "lines"
    for h in history():
        p(h)
    p.close()
    lines = buf.getvalue().splitlines()
    assert len(lines) == 6 and lines[-1].startswith("jojoscl: epoch 6/6 ")
    quiet = io.StringIO()
    EpochProgress(6, mode="off", stream=quiet)(history()[0])
    assert quiet.getvalue() == ""


def test_quiet_worker_logs_targets_the_emitting_loggers():
    # Ray Train's "Reporting training result" logger is named by its file path, so a 'ray.train' level
    # misses it; faiss logs its loader choice at INFO. Both must be off at INFO after the call.
    from ray.train.v2._internal.execution import context

    from jojoscl_dist.train.ray_session import quiet_worker_logs

    assert not context.logger.name.startswith("ray.train")  # why LoggingConfig(log_level) did not help
    quiet_worker_logs()
    assert not context.logger.isEnabledFor(logging.INFO)
    assert not logging.getLogger("faiss.loader").isEnabledFor(logging.INFO)
