"""Prepared Zarr stores: out-of-core preparation, streaming batches, damaged chunks, on-the-fly preparation."""

import shutil
import subprocess
import sys
from pathlib import Path

import anndata as ad
import numpy as np
import pytest
import scipy.sparse as sp
import zarr

from jojoscl_dist.config import JojoConfig
from jojoscl_dist.data.loader import iter_epoch, stream_plan
from jojoscl_dist.data.preprocess import PreprocessStats, compute_stats, materialize
from jojoscl_dist.data.readers import read_input
from jojoscl_dist.data.synthetic import AtlasSpec, iter_chunks, write_raw_zarr
from jojoscl_dist.data.zarr_store import ZarrSource, is_prepared_store, prepare, read_prepared_meta
from jojoscl_dist.errors import JojoInputError

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


@pytest.fixture(scope="module")
def brain_store(data_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("store") / "brain.zarr"
    # Small chunks so the 420 cells span several store chunks and statistics chunks.
    prepare(data_dir / "Human_brain.h5ad", out, chunk_size=100, chunk_rows=64, workers=2, progress=False)
    return out


def test_prepare_matches_in_memory_materialize(data_dir, brain_store):
    a = read_input(data_dir / "Human_brain.h5ad")
    stats = compute_stats(a.X, list(a.var_names))
    expected = materialize(a.X, stats)
    src = ZarrSource(brain_store)
    assert src.shape == expected.shape and src.chunk_rows == 64
    np.testing.assert_allclose(src.rows(slice(None)), expected, rtol=1e-5, atol=1e-5)
    idx = np.array([400, 3, 77, 64, 65])
    np.testing.assert_allclose(src.rows(idx), expected[idx], rtol=1e-5, atol=1e-5)
    # An ordinary AnnData store (format 3), with the HVG names, the cells and the statistics.
    assert (brain_store / "zarr.json").exists() and not (brain_store / ".zgroup").exists()
    b = ad.read_zarr(brain_store)
    assert list(b.var_names) == stats.gene_names and list(b.obs_names) == list(a.obs_names)
    assert (b.obs["cell_type"].astype(str).values == a.obs["cell_type"].astype(str).values).all()
    st = PreprocessStats.from_dict(read_prepared_meta(brain_store)["stats"])
    np.testing.assert_allclose(st.mean, stats.mean)
    np.testing.assert_array_equal(st.gene_index, stats.gene_index)
    assert st.mean_nonzero == pytest.approx(stats.mean_nonzero) and 0 < st.mean_nonzero < st.n_genes
    assert st.target_sum == stats.target_sum == 1e5  # a deep full-length set: the default caps its median (2e6)
    assert is_prepared_store(brain_store) and not is_prepared_store(data_dir / "Human_brain.h5ad")
    assert not [p for p in brain_store.parent.iterdir() if p.name.startswith(".")]  # no staging left


def test_prepare_cli_passes_the_target_sum(data_dir, tmp_path):
    from jojoscl_dist.prepare import main

    out = tmp_path / "yan.zarr"
    assert main(["--input", str(data_dir / "Yan.h5ad"), "--output", str(out), "--target-sum", "median", "-q"]) == 0
    st = PreprocessStats.from_dict(read_prepared_meta(out)["stats"])
    a = read_input(data_dir / "Yan.h5ad")
    assert st.target_sum == pytest.approx(float(np.median(np.asarray(a.X.sum(1)).ravel()))) and st.target_sum > 1e5


def test_prepare_crash_leaves_no_store(tmp_path, monkeypatch):
    raw = write_raw_zarr(AtlasSpec(n_cells=600, n_genes=300, n_types=3), tmp_path / "raw.zarr", 200, progress=False)
    calls = {"n": 0}
    orig = PreprocessStats.transform

    def failing(self, chunk):
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("simulated crash")
        return orig(self, chunk)

    monkeypatch.setattr(PreprocessStats, "transform", failing)
    with pytest.raises(RuntimeError, match="simulated crash"):
        prepare(raw, tmp_path / "store.zarr", n_top_genes=100, chunk_rows=100, workers=1, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["raw.zarr"]


def test_synthetic_raw_zarr_is_streamed_and_exact(tmp_path):
    spec = AtlasSpec(n_cells=1300, n_genes=400, n_types=4, seed=3)
    out = write_raw_zarr(spec, tmp_path / "raw.zarr", chunk_size=500, progress=False)
    a = ad.read_zarr(out)
    mats, types = zip(*iter_chunks(spec, 500))
    assert a.shape == (1300, 400) and (a.X != sp.vstack(mats)).nnz == 0
    assert (a.obs["cell_type"].astype(str).values == np.array([f"type{t}" for t in np.concatenate(types)])).all()
    assert zarr.open_group(str(out), mode="r").metadata.zarr_format == 3


@pytest.mark.parametrize("n, world", [(1000, 2), (1003, 2), (1000, 3), (90, 1)])
def test_stream_plan_covers_every_cell_once_with_equal_batches(n, world):
    plans = [stream_plan(n, 64, 128, world, r, seed=5, epoch=2, buffer_chunks=3) for r in range(world)]
    batches = [p.batch_indices() for p in plans]
    assert len({len(b) for b in batches}) == 1  # equal step counts
    assert len({tuple(len(x) for x in b) for b in batches}) == 1  # and equal batch sizes
    seen = np.concatenate([np.concatenate(b) for b in batches])
    assert len(seen) == len(np.unique(seen)) == world * (n // world)  # each cell at most once; < world dropped
    if n % world == 0:
        assert np.array_equal(np.sort(seen), np.arange(n))
    other = np.concatenate(stream_plan(n, 64, 128, world, 0, seed=5, epoch=3).batch_indices())
    assert not np.array_equal(other, np.concatenate(batches[0]))  # reshuffled every epoch


def test_shuffle_buffer_mixes_chunks():
    b = stream_plan(10_000, 100, 200, 1, 0, seed=0, epoch=0, buffer_chunks=8).batch_indices()
    chunks_per_batch = [len(np.unique(x // 100)) for x in b[:-1]]
    assert min(chunks_per_batch) >= 4  # rows of a batch come from several chunks, not one contiguous run


def test_iter_epoch_streams_the_planned_rows(brain_store):
    src = ZarrSource(brain_store)
    full = src.rows(slice(None))
    for rank in range(2):
        plan = stream_plan(src.shape[0], src.chunk_rows, 64, 2, rank, seed=1, epoch=0, buffer_chunks=2)
        got = list(iter_epoch(src, 64, 2, rank, seed=1, epoch=0, buffer_chunks=2, prefetch=2))
        idx = plan.batch_indices()
        assert len(got) == len(idx) == 210 // 32
        for x, i in zip(got, idx):
            np.testing.assert_array_equal(x, full[i])


def _damaged_copy(store: Path, tmp_path: Path, chunk: str = "3/0", corrupt: bool = False) -> Path:
    dst = tmp_path / "damaged.zarr"
    shutil.copytree(store, dst)
    f = dst / "X" / "c" / chunk
    if corrupt:
        f.write_bytes(b"not a zstd frame" * 10)
    else:
        f.unlink()
    return dst


def test_missing_chunk_is_named_when_opening(brain_store, tmp_path):
    bad = _damaged_copy(brain_store, tmp_path)
    with pytest.raises(JojoInputError, match=r"chunk X/c/3/0 \(rows 192-256.*missing"):
        ZarrSource(bad)
    r = subprocess.run([sys.executable, "-m", "jojoscl_dist.train", "--data", str(bad), "--label-key", "cell_type",
                        "--num-workers", "0", "--epochs", "1", "--output", str(tmp_path / "run"), "--no-tracking"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and "jojoscl: error:" in r.stderr and "X/c/3/0" in r.stderr
    assert not (tmp_path / "run").exists()


def test_chunk_lost_during_training_fails_naming_it(brain_store, tmp_path):
    from jojoscl_dist.train.loop import WorkerData, train_worker
    from jojoscl_dist.train.session import LocalSession

    dst = tmp_path / "s.zarr"
    shutil.copytree(brain_store, dst)
    src = ZarrSource(dst)  # complete when opened
    (dst / "X" / "c" / "5" / "0").unlink()  # then a chunk disappears: it would read as fill value
    cfg = JojoConfig().override({"optim.epochs": 1, "optim.batch_size": 64})
    with pytest.raises(JojoInputError, match=r"chunk X/c/5/0 in .* missing"):
        train_worker(cfg, WorkerData(src, 8), LocalSession(tmp_path / "ck", device="cpu"))


def test_corrupt_chunk_is_named(brain_store, tmp_path):
    src = ZarrSource(_damaged_copy(brain_store, tmp_path, "2/0", corrupt=True))  # present, so opening passes
    with pytest.raises(JojoInputError, match=r"chunk X/c/2/0 in .* corrupt"):
        src.rows(slice(0, 420))


def test_large_raw_input_is_prepared_on_the_fly(tmp_path):
    from jojoscl_dist.train.run import run

    raw = write_raw_zarr(AtlasSpec(n_cells=900, n_genes=300, n_types=3), tmp_path / "raw.zarr", 300, progress=False)
    cfg = JojoConfig().override({"data.path": str(raw), "data.label_key": "cell_type", "data.n_top_genes": 100,
                                 "data.prepare_above_cells": 500, "data.store_chunk_rows": 128,
                                 "optim.epochs": 2, "optim.batch_size": 128, "run.num_workers": 0,
                                 "run.output": str(tmp_path / "out"), "run.tracking": False,
                                 "eval.kmeans_restarts": 1, "eval.final_fit_cells": 500})
    res = run(cfg)
    assert res.metrics["n_cells"] == 900 and res.metrics["n_genes"] == 100 and len(res.labels) == 900
    assert res.metrics["ari"] > 0.5  # three well-separated synthetic types
    # Atlas path: the embedding went to disk (not returned), final k-means fit on 500 cells, all 900 assigned.
    assert res.embedding is None
    results = ad.read_h5ad(res.output / "results.h5ad")
    assert results.obsm["X_jojoscl"].shape == (900, 192) and results.obsm["X_jojoscl_h"].shape == (900, 128)
    np.testing.assert_array_equal(results.obs["jojoscl_cluster"].astype(int).to_numpy(), res.labels)
    annotated = ad.read_zarr(res.output / "raw.jojoscl.zarr")
    np.testing.assert_array_equal(annotated.obsm["X_jojoscl"], results.obsm["X_jojoscl"])
    assert list(annotated.obs["jojoscl_cluster"].cat.categories) == [str(c) for c in np.unique(res.labels)]
    # the run's store and its on-disk embedding are cleaned up
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "raw.zarr"]


@pytest.mark.ray
def test_two_worker_ray_training_on_a_prepared_store(brain_store, tmp_path):
    out = tmp_path / "run"
    r = subprocess.run([sys.executable, "-m", "jojoscl_dist.train", "--data", str(brain_store), "--label-key",
                        "cell_type", "--num-workers", "2", "--epochs", "3", "--batch-size", "64", "--output",
                        str(out), "--no-tracking"], capture_output=True, text=True, timeout=400)
    assert r.returncode == 0, r.stderr[-3000:]
    import json

    m = json.loads((out / "metrics.json").read_text())
    assert m["final"]["num_workers"] == 2 and m["final"]["n_cells"] == 420
    assert [h["epoch"] for h in m["history"]] == [0, 1, 2]
    assert ad.read_h5ad(out / "results.h5ad").obsm["X_jojoscl"].shape == (420, 192)
