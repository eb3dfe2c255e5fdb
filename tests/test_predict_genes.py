"""predict and the new data's genes: duplicated names are renamed as training renamed them, and new data that
shares too few of the model's genes is refused (--min-shared-genes) with one line and exit 2."""

from __future__ import annotations

import hashlib
import warnings

import anndata as ad
import numpy as np
import pandas as pd
import pytest

from jojoscl_dist.config import JojoConfig
from jojoscl_dist.errors import JojoInputError
from jojoscl_dist.outputs import bundle
from jojoscl_dist.predict import align_genes, main as predict_main, predict, unique_gene_names
from jojoscl_dist.train.run import run

N_GENES = 60


def counts(n_cells: int, seed: int) -> ad.AnnData:
    """Three cell types of Poisson counts; genes 10 and 11 share the name 'DUP' (as in some 10x exports)."""
    rng = np.random.default_rng(seed)
    y = np.arange(n_cells) % 3
    base = np.random.default_rng(0).gamma(2.0, 1.0, size=(3, N_GENES))
    a = ad.AnnData(rng.poisson(base[y]).astype(np.float32),
                   obs=pd.DataFrame({"cell_type": pd.Categorical([f"t{t}" for t in y])},
                                    index=[f"c{seed}_{i}" for i in range(n_cells)]))
    names = [f"gene{j}" for j in range(N_GENES)]
    names[10] = names[11] = "DUP"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # anndata: "Variable names are not unique"
        a.var_names = names
    return a


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("predict_genes")
    train = counts(150, seed=1)
    train.write_h5ad(tmp / "train.h5ad")
    cfg = JojoConfig()
    cfg.data.path, cfg.data.label_key = str(tmp / "train.h5ad"), "cell_type"
    cfg.optim.epochs, cfg.optim.batch_size = 2, 32
    cfg.eval.eval_every, cfg.eval.kmeans_restarts = 2, 2
    cfg.run.num_workers, cfg.run.use_gpu, cfg.run.tracking, cfg.run.quiet, cfg.run.plots = 0, False, False, True, False
    cfg.run.output = str(tmp / "run")
    result = run(cfg)
    b = bundle.load(result.output)
    assert len(b.gene_names) == N_GENES and {"DUP", "DUP-1"} <= set(b.gene_names)
    return tmp, result, b, train


def test_unique_names_follow_anndata():
    names = ["A", "GENE", "B", "GENE", "GENE-1", "GENE"]
    a = ad.AnnData(np.zeros((1, len(names)), dtype=np.float32))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        a.var_names = names
        a.var_names_make_unique()  # what training applies (make_names_unique in data/dataset.py)
    assert unique_gene_names(names) == list(a.var_names)  # ['A', 'GENE', 'B', 'GENE-2', 'GENE-1', 'GENE-3']


def test_duplicate_gene_names_map_like_training(tiny_run, caplog):
    _, result, b, train = tiny_run
    cols, n_missing = align_genes(b.stats, train.var_names)
    assert n_missing == 0
    assert cols[b.gene_names.index("DUP")] == 10 and cols[b.gene_names.index("DUP-1")] == 11
    with caplog.at_level("WARNING"):
        pred = predict(b, train)
    assert "1 duplicate gene names in the new data (e.g. 'DUP')" in caplog.text
    # The training cells embed exactly as in training: each DUP column feeds the model input it trained.
    np.testing.assert_allclose(pred.z, result.embedding, atol=1e-5)
    assert train.var_names.tolist().count("DUP") == 2  # the caller's AnnData keeps its names


def shared_only(a: ad.AnnData, n_shared: int) -> ad.AnnData:
    """The same cells with every gene past the first ``n_shared`` renamed (other identifiers)."""
    out = a.copy()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        out.var_names = [n if j < n_shared else f"other{j}" for j, n in enumerate(a.var_names)]
    return out


def sha(p) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def test_too_few_shared_genes_refused(tiny_run, capsys, caplog):
    tmp, result, _, _ = tiny_run
    new = tmp / "few.h5ad"
    shared_only(counts(90, seed=2), 12).write_h5ad(new)  # 12 of the 60 model genes (both DUP columns among them)
    before = sha(new)
    out = tmp / "few_pred.h5ad"
    assert predict_main(["--model", str(result.output), "--data", str(new), "--output", str(out)]) == 2
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.startswith("jojoscl: error:")]
    assert lines == ["jojoscl: error: the new data holds 12 of the model's 60 genes (20%), fewer than "
                     "--min-shared-genes 0.5: use the same gene identifiers as in training, or lower "
                     "--min-shared-genes"], err
    assert "Traceback" not in err and not out.exists() and sha(new) == before
    # Lowered: it runs, and says how many genes are missing.
    with caplog.at_level("WARNING"):
        assert predict_main(["--model", str(result.output), "--data", str(new), "--output", str(out),
                             "--min-shared-genes", "0.1"]) == 0
    assert "48 of the model's 60 genes are missing from the new data" in caplog.text
    assert ad.read_h5ad(out).obs["jojoscl_cluster"].notna().all()


def test_above_the_threshold_runs_with_a_warning(tiny_run, caplog):
    _, _, b, _ = tiny_run
    new = shared_only(counts(90, seed=3), 40)  # 40 of the 60 model genes (67%)
    with caplog.at_level("WARNING"):
        pred = predict(b, new)
    assert pred.n_missing_genes == 20 and len(pred.labels) == 90
    assert "20 of the model's 60 genes are missing" in caplog.text
    with pytest.raises(JojoInputError, match=r"holds 40 of the model's 60 genes \(67%\), fewer than "
                                             r"--min-shared-genes 0.9"):
        predict(b, new, min_shared_genes=0.9)


@pytest.mark.parametrize("value", ["0", "1.5", "nan"])
def test_min_shared_genes_out_of_range(tiny_run, capsys, value):
    tmp, result, _, _ = tiny_run
    out = tmp / "never.h5ad"
    assert predict_main(["--model", str(result.output), "--data", str(tmp / "train.h5ad"), "--output", str(out),
                         "--min-shared-genes", value]) == 2
    assert f"jojoscl: error: --min-shared-genes must be a fraction in (0, 1], got {value}" in capsys.readouterr().err
    assert not out.exists()
