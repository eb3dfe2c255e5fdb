"""The per-worker loop in-process (LocalSession): learning, reproducibility, checkpoint content, resume."""

import anndata as ad
import numpy as np
import pytest

from jojoscl_dist.clustering.final import final_labels
from jojoscl_dist.clustering.metrics import score_labels
from jojoscl_dist.config import JojoConfig
from jojoscl_dist.data.loader import ArraySource
from jojoscl_dist.data.preprocess import compute_stats, materialize
from jojoscl_dist.train.checkpoint import SCHEMA_VERSION, load_state
from jojoscl_dist.train.embed import embed
from jojoscl_dist.model import build_model
from jojoscl_dist.train.loop import WorkerData, train_worker
from jojoscl_dist.train.session import LocalSession


@pytest.fixture(scope="module")
def cellbench(data_dir):
    a = ad.read_h5ad(data_dir / "CellBench_celseq2_5cl.h5ad")
    st = compute_stats(a.X, list(a.var_names))
    return materialize(a.X, st), a.obs["cell_type"].astype(str).to_numpy()[st.cell_mask]


def small_cfg(epochs=6) -> JojoConfig:
    cfg = JojoConfig()
    cfg.optim.epochs = epochs
    cfg.optim.batch_size = 128
    cfg.eval.eval_every = 3
    cfg.optim.lr = 1e-3  # six epochs must show learning: the faster rate (the default 3e-4 suits 100 epochs)
    cfg.loss.w_sure = 1.0  # every loss term and the per-batch k-means in the loop
    return cfg


def run_local(cfg, x, y, session=None):
    session = session or LocalSession()
    train_worker(cfg, WorkerData(ArraySource(x), 5, y), session)
    return session


def labels_of(session, cfg, x):
    st = load_state(session.checkpoint)
    m = build_model(cfg.model, st["n_genes"], st["n_clusters"])
    m.load_state_dict(st["model"])
    emb = embed(m, ArraySource(x))
    return final_labels(emb, 5, "kmeans", cfg.run.seed, 3).labels, emb


def test_learns_and_reports(cellbench):
    x, y = cellbench
    cfg = small_cfg(6)
    s = run_local(cfg, x, y)
    assert [m["epoch"] for m in s.metrics] == list(range(6))
    assert s.metrics[-1]["loss"] < s.metrics[0]["loss"]
    assert "eval_ari" in s.metrics[2] and "select_silhouette" in s.metrics[5]
    labels, _ = labels_of(s, cfg, x)
    assert len(np.unique(labels)) == 5
    assert score_labels(y, labels)["ari"] > 0.8  # five cell lines separate easily; random labels give ~0


def test_same_seed_same_labels_and_embedding(cellbench):
    x, y = cellbench
    cfg = small_cfg(3)
    l1, e1 = labels_of(run_local(cfg, x, y), cfg, x)
    l2, e2 = labels_of(run_local(cfg, x, y), cfg, x)
    assert np.array_equal(l1, l2)
    np.testing.assert_array_equal(e1["z"], e2["z"])
    cfg.run.seed = 1
    _, e3 = labels_of(run_local(cfg, x, y), cfg, x)
    assert not np.allclose(e1["z"], e3["z"])


def test_checkpoint_schema_and_resume(cellbench):
    x, y = cellbench
    cfg = small_cfg(4)
    full = run_local(cfg, x, y)
    st = load_state(full.checkpoint)
    for key in ("model", "key_encoder", "optimizer", "scheduler", "rng", "kmeans", "selector", "history", "epoch", "step"):
        assert key in st
    assert st["epoch"] == 3 and st["schema"] == SCHEMA_VERSION
    # Stop after 2 epochs, then resume the same session to 4: the resumed run starts at epoch 2, not 0,
    # and ends with the same weights as the uninterrupted run.
    part = run_local(small_cfg(2), x, y)
    before = len(part.metrics)
    run_local(cfg, x, y, session=part)
    assert [m["epoch"] for m in part.metrics[before:]] == [2, 3]
    resumed = load_state(part.checkpoint)
    for k, v in st["model"].items():
        assert np.allclose(v.numpy(), resumed["model"][k].numpy(), atol=1e-5), k


class WatchingSession(LocalSession):
    """Receives every in-training evaluation through the session hook."""

    def __init__(self, *a, **k):
        super().__init__(*a, **k)
        self.evaluations = []

    def on_evaluation(self, epoch, embedding, labels, scores):
        self.evaluations.append((epoch, {n: v.shape for n, v in embedding.items()}, labels, dict(scores)))


def test_a_session_sees_every_evaluation(cellbench):
    x, y = cellbench
    cfg = small_cfg(epochs=5)
    cfg.eval.eval_every = 2
    session = run_local(cfg, x, y, WatchingSession())
    assert [e[0] for e in session.evaluations] == [1, 3, 4]  # every 2nd epoch, and the last
    by_epoch = {m["epoch"]: m for m in session.metrics}
    for epoch, shapes, labels, scores in session.evaluations:
        assert shapes == {"h": (len(x), 128), "z": (len(x), 192), "y": (len(x), 5)}
        assert labels.shape == (len(x),) and len(np.unique(labels)) == 5
        assert scores == {n[len("select_"):]: v for n, v in by_epoch[epoch].items() if n.startswith("select_")}
        assert by_epoch[epoch]["eval_ari"] == score_labels(y, labels)["ari"]  # the labels that were scored


def test_evaluations_on_a_capped_sample(cellbench):
    """Above eval.max_eval_cells the in-training evaluations embed only that many cells (fixed, seeded)."""
    x, y = cellbench
    cfg = small_cfg(epochs=3)
    cfg.eval.max_eval_cells = 200
    session = run_local(cfg, x, y, WatchingSession())
    assert [(e[0], e[1]["z"][0], len(e[2])) for e in session.evaluations] == [(2, 200, 200)]  # of the 571 cells
    h = load_state(session.checkpoint)["history"][-1]
    assert 0.0 <= h["eval_ari"] <= 1.0 and np.isfinite(h["select_silhouette"])


def test_input_pcs_projection_is_fitted_on_the_data_and_saved(cellbench):
    """model.input_pcs: the loop fits the input PCA once (seeded) and the encoder keeps it in its weights."""
    from jojoscl_dist.clustering.input_pca import InputPCA

    x, y = cellbench
    cfg = small_cfg(3)
    cfg.model.input_pcs = 10
    session = run_local(cfg, x, y)
    st = load_state(session.checkpoint)
    pca = InputPCA.fit(ArraySource(x), 1.0, cfg.run.seed, cfg.eval.max_eval_cells, n_components=10)
    np.testing.assert_allclose(st["model"]["encoder.in_components"].numpy(), pca.components / pca.scale, atol=1e-6)
    np.testing.assert_allclose(st["key_encoder"]["in_mean"].numpy(), pca.mean, atol=1e-6)
    labels, _ = labels_of(session, cfg, x)  # rebuilt from the config: the projection comes with the weights
    assert score_labels(y, labels)["ari"] > 0.8
