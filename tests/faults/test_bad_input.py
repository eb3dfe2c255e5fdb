"""Bad input through the CLI entry point (``main(argv)`` in-process, plus one real subprocess): one line naming
the problem and the fix, exit code 2, the input file unmodified, and no partial output left behind.

The messages each case produced are collected and must appear in docs/bad-input.md (regenerate the table with
``JOJOSCL_WRITE_BAD_INPUT_DOC=1 python -m pytest tests/faults/test_bad_input.py``).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import anndata as ad
import h5py
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from jojoscl_dist.outputs import run_dir
from jojoscl_dist.train.__main__ import main

DOC = Path(__file__).resolve().parents[2] / "docs" / "bad-input.md"
MESSAGES: dict[str, tuple[str, str]] = {}  # case -> (what, message with tmp paths as <tmp>)
FAST = ["--epochs", "1", "--batch-size", "32", "--num-workers", "0", "--no-tracking", "--eval-every", "1"]


def sha(path: Path) -> str:
    if path.is_dir():
        h = hashlib.sha256()
        for f in sorted(p for p in path.rglob("*") if p.is_file()):
            h.update(str(f.relative_to(path)).encode())
            h.update(f.read_bytes())
        return h.hexdigest()
    return hashlib.sha256(path.read_bytes()).hexdigest()


def counts(n_cells=120, n_genes=60, seed=0, types=3) -> ad.AnnData:
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(types), -(-n_cells // types))[:n_cells]
    base = rng.gamma(2.0, 1.0, size=(types, n_genes))
    x = rng.poisson(base[y]).astype(np.float32)
    a = ad.AnnData(x, obs=pd.DataFrame({"cell_type": pd.Categorical([f"t{t}" for t in y])},
                                       index=[f"cell{i}" for i in range(n_cells)]))
    a.var_names = [f"gene{j}" for j in range(n_genes)]
    return a


def write(a: ad.AnnData, path: Path) -> Path:
    a.write_h5ad(path)
    return path


def expect_error(case: str, what: str, tmp_path: Path, inp: Path | None, argv: list[str], capsys,
                 must: list[str]) -> str:
    """Run the CLI; assert exit 2, one error line holding every word of ``must``, input intact, no output."""
    out = tmp_path / "out"
    before = sha(inp) if inp is not None and inp.exists() else None
    rc = main([*(["--data", str(inp)] if inp is not None else []), "--output", str(out), *argv])
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.startswith("jojoscl: error:")]
    assert rc == 2, err
    assert len(lines) == 1 and "Traceback" not in err, err
    for word in must:
        assert word.lower() in lines[0].lower(), (word, lines[0])
    if before is not None:
        assert sha(inp) == before
    assert not out.exists()
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".out")]  # no staging, no checkpoints
    msg = lines[0][len("jojoscl: error: "):].replace(str(tmp_path), "<tmp>")
    MESSAGES[case] = (what, msg)
    return lines[0]


def test_missing_file(tmp_path, capsys):
    expect_error("missing file", "`--data` names no file", tmp_path, tmp_path / "nope.h5ad", [], capsys,
                 ["not found", "nope.h5ad", "--data"])


def test_unsupported_extension(tmp_path, capsys):
    p = tmp_path / "counts.csv"
    p.write_text("a,b\n1,2\n")
    expect_error("unsupported extension", "a `.csv` file", tmp_path, p, [], capsys, ["unsupported", ".csv", "supported:"])


def test_corrupt_h5ad(tmp_path, capsys, data_dir):
    src = (data_dir / "CellBench_celseq2_5cl.h5ad").read_bytes()
    p = tmp_path / "truncated.h5ad"
    p.write_bytes(src[: len(src) // 2])
    expect_error("corrupt h5ad", "an `.h5ad` cut in half", tmp_path, p, ["--label-key", "cell_type"], capsys,
                 ["could not read", "truncated.h5ad", "complete"])


def test_corrupt_zarr(tmp_path, capsys):
    p = tmp_path / "broken.zarr"
    counts().write_zarr(p)
    (p / ".zgroup").write_text("{not json")
    expect_error("corrupt Zarr", "a Zarr store with unreadable metadata", tmp_path, p, ["--n-clusters", "3"], capsys,
                 ["could not open", "broken.zarr", "re-copy"])


@pytest.mark.parametrize("layout", ["dense", "sparse", "dense-v3"])
def test_missing_zarr_chunk(tmp_path, capsys, layout):
    a = counts(300, 40)
    p = tmp_path / f"{layout}.zarr"
    if layout == "sparse":
        a.X = sp.csr_matrix(a.X)
        a.write_zarr(p)
        key = "X/indices/0"
    elif layout == "dense":
        a.write_zarr(p, chunks=(100, 40))
        key = "X/1.0"
    else:
        with ad.settings.override(zarr_write_format=3):
            a.write_zarr(p, chunks=(100, 40))
        key = "X/c/1/0"
    chunk = p / key
    assert chunk.is_file()
    chunk.unlink()
    # Without the check zarr silently reads zeros here.
    line = expect_error(f"missing Zarr chunk ({layout})", f"{layout.split('-')[0]} X (Zarr format "
                        f"{3 if layout.endswith('v3') else 2}) lacking one chunk file", tmp_path, p,
                        ["--n-clusters", "3"], capsys, ["missing", "re-copy"])
    assert f"chunk {key} is missing" in line


@pytest.mark.parametrize("bad", ["nan", "inf"])
def test_nan_inf(tmp_path, capsys, bad):
    a = counts()
    a.X[5, 3] = np.nan if bad == "nan" else np.inf
    p = write(a, tmp_path / f"{bad}.h5ad")
    expect_error(f"{'NaN' if bad == 'nan' else 'Inf'} values", f"X holds {bad}", tmp_path, p, ["--label-key", "cell_type"], capsys,
                 ["1 NaN or Inf value(s) (first in row 5)", "fix or drop"])


def test_negative(tmp_path, capsys):
    a = counts()
    a.X[7, 1] = -1.5
    p = write(a, tmp_path / "neg.h5ad")
    expect_error("negative values", "X holds a negative value (scaled data)", tmp_path, p,
                 ["--label-key", "cell_type"], capsys, ["1 negative value(s) (first in row 7)", "raw counts"])


def test_all_zero(tmp_path, capsys):
    a = counts()
    a.X[:] = 0
    p = write(a, tmp_path / "zero.h5ad")
    expect_error("all-zero matrix", "every entry of X is 0", tmp_path, p, ["--n-clusters", "3"], capsys,
                 ["all zeros", "check the input"])


def test_fewer_cells_than_k(tmp_path, capsys):
    p = write(counts(8, 30), tmp_path / "tiny.h5ad")
    expect_error("fewer cells than K", "8 cells, `--n-clusters 10`", tmp_path, p, ["--n-clusters", "10"], capsys,
                 ["larger than the number of usable cells", "K <= 8"])


def test_k_below_two(tmp_path, capsys):
    p = write(counts(), tmp_path / "k1.h5ad")
    expect_error("K < 2", "`--n-clusters 1`", tmp_path, p, ["--n-clusters", "1"], capsys, ["at least 2"])


def test_unknown_label_key(tmp_path, capsys):
    p = write(counts(), tmp_path / "lab.h5ad")
    expect_error("unknown --label-key", "`--label-key celltype` (typo)", tmp_path, p, ["--label-key", "celltype"],
                 capsys, ["unknown --label-key", "'cell_type'", "--n-clusters"])


def test_missing_labels(tmp_path, capsys):
    a = counts()
    a.obs["cell_type"] = a.obs["cell_type"].cat.add_categories([]).astype(object)
    a.obs.iloc[[2, 9], 0] = np.nan
    a.obs["cell_type"] = pd.Categorical(a.obs["cell_type"])
    p = write(a, tmp_path / "nalab.h5ad")
    expect_error("labels with missing values", "two cells without a label", tmp_path, p, ["--label-key", "cell_type"],
                 capsys, ["2 missing values", "without --label-key"])


def test_non_numeric_x(tmp_path, capsys):
    p = tmp_path / "strings.h5"
    with h5py.File(p, "w") as f:  # scDeepCluster layout, X stored as strings
        f["X"] = np.array([[b"1", b"2", b"3"]] * 20)
    expect_error("non-numeric X", "X stored as strings", tmp_path, p, ["--n-clusters", "2"], capsys,
                 ["non-numeric", "convert X to numbers"])


def test_count_gene_ranking_on_non_counts(tmp_path, capsys):
    a = counts()
    a.X = np.log1p(a.X)  # already log-normalised: no counts left for a count model
    p = write(a, tmp_path / "logged.h5ad")
    expect_error("count-model gene ranking on non-counts", "log values with `--hvg-flavor seurat_v3`", tmp_path, p,
                 ["--n-clusters", "3", "--hvg-flavor", "seurat_v3"], capsys,
                 ["seurat_v3 needs raw integer counts", "--hvg-flavor seurat"])


def test_output_holds_earlier_run(tmp_path, capsys):
    p = write(counts(), tmp_path / "ok.h5ad")
    out = tmp_path / "out"
    out.mkdir()
    (out / "metrics.json").write_text("{}")
    run_dir.write_marker(out)  # a finished run of ours
    before = sha(out)
    rc = main(["--data", str(p), "--output", str(out), "--n-clusters", "3", *FAST])
    err = capsys.readouterr().err
    assert rc == 2 and "already holds an earlier run" in err and "--overwrite" in err
    assert sha(out) == before  # the earlier run is untouched
    MESSAGES["output holds an earlier run"] = ("`--output` already has a finished run",
                                               err.strip().split("jojoscl: error: ")[-1].replace(str(tmp_path), "<tmp>"))


def test_unreachable_mlflow(tmp_path, capsys):
    p = write(counts(), tmp_path / "ok.h5ad")
    # Port 9 (discard) has no listener here: connection refused at once; the check runs before reading data.
    expect_error("unreachable MLflow URI", "`--tracking-uri http://127.0.0.1:9`", tmp_path, p,
                 ["--n-clusters", "3", "--tracking-uri", "http://127.0.0.1:9", "--epochs", "1", "--num-workers", "0"],
                 capsys, ["unreachable", "http://127.0.0.1:9", "--no-tracking"])


def test_unwritable_sqlite_store(tmp_path, capsys):
    p = write(counts(), tmp_path / "ok.h5ad")
    blocker = tmp_path / "afile"  # a file where the store's folder should be: the folder can never be created
    blocker.write_text("")
    expect_error("MLflow sqlite store that cannot be created", "`--tracking-uri sqlite:///<tmp>/afile/m.db`",
                 tmp_path, p, ["--n-clusters", "3", "--tracking-uri", f"sqlite:///{blocker}/m.db", "--epochs", "1",
                               "--num-workers", "0"], capsys, ["cannot be created or written", "--no-tracking"])



def test_object_storage_url(tmp_path, capsys, monkeypatch):
    p = write(counts(), tmp_path / "ok.h5ad")
    monkeypatch.chdir(tmp_path)
    expect_error("object-storage URL as a path", "`--storage-path s3://runs/jojo`", tmp_path, p,
                 ["--n-clusters", "3", "--storage-path", "s3://runs/jojo", *FAST], capsys,
                 ["--storage-path", "is a URL", "mount the bucket"])
    assert not (tmp_path / "s3:").exists()  # no local folder named after the scheme

# Warn-and-continue cases: they must run to the end and say what they did.

def run_ok(tmp_path, inp, argv, caplog):
    out = tmp_path / "out"
    before = sha(inp)
    with caplog.at_level("WARNING"):
        rc = main(["--data", str(inp), "--output", str(out), *FAST, *argv])
    assert rc == 0
    assert sha(inp) == before
    return out, json.loads((out / "metrics.json").read_text())["final"], caplog.text


def test_fewer_genes_than_hvgs_warns_and_runs(tmp_path, caplog):
    p = write(counts(120, 40), tmp_path / "few_genes.h5ad")
    out, final, logs = run_ok(tmp_path, p, ["--label-key", "cell_type"], caplog)
    assert final["n_genes"] == 40  # all genes used instead of the default 2000 HVGs
    assert "only 40 genes have non-zero counts; using all of them instead of 2000 HVGs" in logs
    MESSAGES["fewer genes than --n-top-genes (warning, runs)"] = (
        "40 genes, default 2000 HVGs", re.search(r"only 40 genes.*HVGs", logs).group(0))


def test_duplicate_names_made_unique(tmp_path, caplog):
    a = counts(120, 40)
    a.obs_names = [f"cell{i % 100}" for i in range(120)]  # 20 repeated cell names
    a.var_names = [f"gene{j % 35}" for j in range(40)]  # 5 repeated gene symbols (common in 10x exports)
    p = write(a, tmp_path / "dups.h5ad")
    out, final, logs = run_ok(tmp_path, p, ["--label-key", "cell_type"], caplog)
    assert "20 duplicate cell names" in logs and "5 duplicate gene names" in logs
    cells = pd.read_csv(out / "labels.csv")["cell"]
    assert cells.is_unique and len(cells) == 120
    res = ad.read_h5ad(out / "results.h5ad")
    assert res.obs_names.is_unique and "cell_type" in res.obs  # obs joined back to the input
    assert ad.read_h5ad(p).obs_names.duplicated().sum() == 20  # the input keeps its names
    MESSAGES["duplicate cell or gene names (warning, runs)"] = (
        "20 repeated cell names, 5 repeated gene names", re.search(r"20 duplicate cell names[^\n]*", logs).group(0))


def test_batch_smaller_than_k_runs(tmp_path, caplog):
    p = write(counts(120, 40, types=12), tmp_path / "k12.h5ad")
    out, final, _ = run_ok(tmp_path, p, ["--n-clusters", "12", "--batch-size", "8"], caplog)
    assert final["n_clusters"] == 12 and final["n_clusters_found"] >= 2


def test_real_cli_subprocess_exit_code(tmp_path):
    """The real entry point: exit 2 and exactly one stderr line."""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    r = subprocess.run([sys.executable, "-m", "jojoscl_dist.train", "--data", str(tmp_path / "x.zarr"),
                        "--output", str(tmp_path / "o")], capture_output=True, text=True, timeout=120, env=env)
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [f"jojoscl: error: input not found: {tmp_path / 'x.zarr'} "
                                             f"(check the path given to --data)"]


# Nothing deleted that we did not write.

def record(case: str, what: str, err: str, tmp_path: Path) -> str:
    """The single error line of ``err``, recorded for docs/bad-input.md."""
    lines = [ln for ln in err.splitlines() if ln.startswith("jojoscl: error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    msg = lines[0][len("jojoscl: error: "):].replace(str(tmp_path), "<tmp>")
    MESSAGES[case] = (what, msg)
    return msg


def test_output_dot_beside_a_users_file(tmp_path, capsys, monkeypatch):
    p = write(counts(), tmp_path / "ok.h5ad")
    work = tmp_path / "work"
    work.mkdir()
    (work / "notes.txt").write_text("mine")
    monkeypatch.chdir(work)
    rc = main(["--data", str(p), "--output", ".", "--overwrite", "--n-clusters", "3", *FAST])
    msg = record("`--output .` (the working directory)", "`--output . --overwrite` beside a user's file",
                 capsys.readouterr().err, tmp_path)
    assert rc == 2 and "working directory" in msg
    assert (work / "notes.txt").read_text() == "mine" and sorted(x.name for x in work.iterdir()) == ["notes.txt"]


def test_overwrite_refuses_a_folder_we_did_not_write(tmp_path, capsys):
    p = write(counts(), tmp_path / "ok.h5ad")
    out = tmp_path / "results"
    out.mkdir()
    (out / "thesis.docx").write_text("years of work")
    before = sha(out)
    rc = main(["--data", str(p), "--output", str(out), "--overwrite", "--n-clusters", "3", *FAST])
    msg = record("`--overwrite` on a folder jojoscl did not write", "a folder holding a user's file",
                 capsys.readouterr().err, tmp_path)
    assert rc == 2 and "did not write" in msg and "thesis.docx" in msg
    assert sha(out) == before


def test_overwrite_refuses_a_run_folder_a_user_added_to(tmp_path, capsys):
    p = write(counts(), tmp_path / "ok.h5ad")
    out = tmp_path / "out"
    assert main(["--data", str(p), "--output", str(out), "--n-clusters", "3", *FAST]) == 0
    (out / "my_analysis.ipynb").write_text("{}")
    before = sha(out)
    rc = main(["--data", str(p), "--output", str(out), "--overwrite", "--n-clusters", "3", *FAST])
    msg = record("`--overwrite` on a run folder holding a user's file", "a finished run plus a user's notebook",
                 capsys.readouterr().err, tmp_path)
    assert rc == 2 and "my_analysis.ipynb" in msg and sha(out) == before
    (out / "my_analysis.ipynb").unlink()
    assert main(["--data", str(p), "--output", str(out), "--overwrite", "--n-clusters", "3", *FAST]) == 0


def test_input_inside_output(tmp_path, capsys):
    out = tmp_path / "proj"
    out.mkdir()
    p = write(counts(), out / "ok.h5ad")
    before = sha(p)
    rc = main(["--data", str(p), "--output", str(out), "--overwrite", "--n-clusters", "3", *FAST])
    msg = record("input inside --output", "`--data proj/ok.h5ad --output proj --overwrite`",
                 capsys.readouterr().err, tmp_path)
    assert rc == 2 and "holds the input" in msg and sha(p) == before


def test_output_inside_a_zarr_input(tmp_path, capsys):
    p = tmp_path / "atlas.zarr"
    counts().write_zarr(p)
    before = sha(p)
    rc = main(["--data", str(p), "--output", str(p / "run"), "--n-clusters", "3", *FAST])
    msg = record("--output inside the input", "`--output atlas.zarr/run` for a Zarr input", capsys.readouterr().err,
                 tmp_path)
    assert rc == 2 and "inside the input" in msg and sha(p) == before


def test_output_root_or_home(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    (tmp_path / "home").mkdir()
    p = write(counts(), tmp_path / "ok.h5ad")
    rc = main(["--data", str(p), "--output", str(tmp_path / "home"), "--overwrite", "--n-clusters", "3", *FAST])
    msg = record("--output a home or root folder", "`--output ~ --overwrite`", capsys.readouterr().err, tmp_path)
    assert rc == 2 and "root or home folder" in msg


def test_prepare_refuses_input_as_output(tmp_path, capsys):
    from jojoscl_dist.prepare import main as prepare_main

    p = tmp_path / "raw.zarr"
    counts().write_zarr(p)
    before = sha(p)
    rc = prepare_main(["--input", str(p), "--output", str(p), "--overwrite", "-q"])
    msg = record("prepare: --output is the input", "`prepare --input raw.zarr --output raw.zarr --overwrite`",
                 capsys.readouterr().err, tmp_path)
    assert rc == 2 and "holds the input" in msg and sha(p) == before


def test_prepare_overwrite_replaces_only_a_store(tmp_path, capsys):
    from jojoscl_dist.prepare import main as prepare_main

    p = write(counts(), tmp_path / "ok.h5ad")
    other = tmp_path / "other"
    other.mkdir()
    (other / "data.csv").write_text("1,2\n")
    before = sha(other)
    rc = prepare_main(["--input", str(p), "--output", str(other), "--overwrite", "-q"])
    msg = record("prepare: --overwrite on a folder that is not a store", "`prepare --output other --overwrite`",
                 capsys.readouterr().err, tmp_path)
    assert rc == 2 and "not a prepared store" in msg and sha(other) == before
    assert prepare_main(["--input", str(p), "--output", str(tmp_path / "s.zarr"), "-q"]) == 0
    assert prepare_main(["--input", str(p), "--output", str(tmp_path / "s.zarr"), "--overwrite", "-q"]) == 0


def test_prepare_bad_numbers(tmp_path, capsys):
    from jojoscl_dist.prepare import main as prepare_main

    p = write(counts(), tmp_path / "ok.h5ad")
    rc = prepare_main(["--input", str(p), "--output", str(tmp_path / "s.zarr"), "--n-top-genes", "0", "-q"])
    msg = record("prepare: --n-top-genes 0", "`prepare --n-top-genes 0`", capsys.readouterr().err, tmp_path)
    assert rc == 2 and msg == "--n-top-genes must be an integer >= 1, got 0"
    assert not (tmp_path / "s.zarr").exists()


# Nothing we load can run code; checkpoints and bundles are checked.

class _Evil:
    def __init__(self, path: Path):
        self.path = str(path)

    def __reduce__(self):
        return (Path.write_text, (Path(self.path), "pwned"))


def _trained_run(tmp_path: Path) -> tuple[Path, Path]:
    p = write(counts(), tmp_path / "ok.h5ad")
    out = tmp_path / "run"
    assert main(["--data", str(p), "--output", str(out), "--n-clusters", "3", *FAST]) == 0
    return p, out


def test_crafted_model_bundle_runs_no_code(tmp_path, capsys):
    import torch

    from jojoscl_dist.predict import main as predict_main

    p, out = _trained_run(tmp_path)
    bundle_file = out / "model" / "model.pt"
    marker = tmp_path / "pwned.txt"
    torch.save({"schema": 3, "payload": _Evil(marker)}, bundle_file)
    (out / "model" / "model.pt.sha256").unlink()
    rc = predict_main(["--model", str(out), "--data", str(p), "--output", str(tmp_path / "pred.h5ad")])
    msg = record("predict: a model.pt that needs pickle", "a crafted model.pt whose unpickling writes a file",
                 capsys.readouterr().err, tmp_path)
    assert rc == 2 and "refused" in msg and "model.pt" in msg
    assert not marker.exists()  # the payload never ran
    assert not (tmp_path / "pred.h5ad").exists()


def test_predict_overwrite_replaces_only_its_own_copy(tmp_path, capsys):
    from jojoscl_dist.predict import main as predict_main

    p, out = _trained_run(tmp_path)
    theirs = write(counts(seed=5), tmp_path / "colleague.h5ad")
    before = sha(theirs)
    rc = predict_main(["--model", str(out), "--data", str(p), "--output", str(theirs), "--overwrite"])
    msg = record("predict: --overwrite on a file jojoscl did not write", "`predict --output colleague.h5ad "
                 "--overwrite`", capsys.readouterr().err, tmp_path)
    assert rc == 2 and "not an annotated copy" in msg and sha(theirs) == before
    mine = tmp_path / "pred.h5ad"
    assert predict_main(["--model", str(out), "--data", str(p), "--output", str(mine)]) == 0
    assert predict_main(["--model", str(out), "--data", str(p), "--output", str(mine), "--overwrite"]) == 0


def test_predict_with_few_shared_genes(tmp_path, capsys):
    from jojoscl_dist.predict import main as predict_main

    p, out = _trained_run(tmp_path)
    a = counts()
    a.var_names = [f"gene{j}" if j < 6 else f"other{j}" for j in range(a.n_vars)]  # 6 of the model's 60 genes
    q = write(a, tmp_path / "new.h5ad")
    rc = predict_main(["--model", str(out), "--data", str(q), "--output", str(tmp_path / "pred.h5ad")])
    msg = record("predict: new cells share few of the model's genes", "6 of the model's 60 genes present",
                 capsys.readouterr().err, tmp_path)
    assert rc == 2 and "6 of the model's 60 genes" in msg and not (tmp_path / "pred.h5ad").exists()
    rc = predict_main(["--model", str(out), "--data", str(q), "--min-shared-genes", "1.5"])
    msg = record("predict: --min-shared-genes out of range", "`--min-shared-genes 1.5`", capsys.readouterr().err,
                 tmp_path)
    assert rc == 2 and "(0, 1]" in msg


def test_diverged_run_stops_once(tmp_path, capsys):
    p = write(counts(), tmp_path / "ok.h5ad")
    argv = ["--data", str(p), "--output", str(tmp_path / "out"), "--n-clusters", "3", *FAST, "--epochs", "2",
            "--lr", "1e12"]
    rc = main(argv)
    msg = record("loss becomes NaN or Inf", "`--lr 1e12`", capsys.readouterr().err, tmp_path)
    assert rc == 2 and "training diverged" in msg and "lower --lr" in msg and "step" in msg
    assert main(argv) == 2  # a relaunch (e.g. a RayJob retry) stops at once with the same line
    assert record("loss becomes NaN or Inf", "`--lr 1e12`", capsys.readouterr().err, tmp_path) == msg
    assert not (tmp_path / "out").exists()


def test_model_bundle_checksum_mismatch(tmp_path, capsys):
    from jojoscl_dist.predict import main as predict_main

    p, out = _trained_run(tmp_path)
    f = out / "model" / "model.pt"
    data = bytearray(f.read_bytes())
    data[-10] ^= 0xFF
    f.write_bytes(bytes(data))
    rc = predict_main(["--model", str(out), "--data", str(p), "--output", str(tmp_path / "pred.h5ad")])
    msg = record("predict: a model.pt altered after training", "one byte of model.pt changed",
                 capsys.readouterr().err, tmp_path)
    assert rc == 2 and "does not match its checksum" in msg


def test_crafted_checkpoint_runs_no_code_and_is_not_resumed(tmp_path, capsys):
    import torch

    p = write(counts(), tmp_path / "ok.h5ad")
    storage = tmp_path / "storage"
    ckpt = storage / "r1" / "checkpoint_000001"
    ckpt.mkdir(parents=True)
    marker = tmp_path / "pwned.txt"
    torch.save({"schema": 2, "epoch": 0, "payload": _Evil(marker)}, ckpt / "state.pt")
    rc = main(["--data", str(p), "--output", str(tmp_path / "out"), "--storage-path", str(storage), "--run-name",
               "r1", "--n-clusters", "3", *FAST])
    said = capsys.readouterr()
    out = said.out
    assert rc == 0 and not marker.exists(), said.err
    assert "skipping checkpoint" in out and "needs Python pickle" in out and "resuming" not in out


# One run per output; no run trains on another run's data.

def test_second_run_on_the_same_output_is_refused(tmp_path, capsys):
    """A real second process holds the output: refused at once naming it; once it is dead, its lock is taken over."""
    p = write(counts(), tmp_path / "ok.h5ad")
    out = tmp_path / "out"
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from jojoscl_dist.outputs.run_dir import RunLock; "
        f"RunLock({str(tmp_path / '.out.lock')!r}, 'x').acquire(); print('held', flush=True); time.sleep(600)")],
        stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])})
    try:
        assert holder.stdout.readline().strip() == "held"
        rc = main(["--data", str(p), "--output", str(out), "--n-clusters", "3", *FAST])
        msg = record("two runs into one --output", "a second run while another holds the output",
                     capsys.readouterr().err, tmp_path)
        assert rc == 2 and f"pid {holder.pid}" in msg and "in use by another run" in msg
        import socket

        MESSAGES["two runs into one --output"] = (MESSAGES["two runs into one --output"][0], re.sub(
            r"pid \d+ on \S+ since \S+;", "pid <pid> on <host> since <time>;", msg))
        assert socket.gethostname() in msg
        assert not out.exists()
    finally:
        holder.kill()
        holder.wait()
    assert (tmp_path / ".out.lock").exists()  # left behind by the killed process
    assert main(["--data", str(p), "--output", str(out), "--n-clusters", "3", *FAST]) == 0
    assert not (tmp_path / ".out.lock").exists()


def test_resume_on_changed_data_is_refused(tmp_path, capsys):
    p = write(counts(seed=0), tmp_path / "data.h5ad")
    common = ["--storage-path", str(tmp_path / "storage"), "--run-name", "r1", "--n-clusters", "3", *FAST]
    assert main(["--data", str(p), "--output", str(tmp_path / "a"), *common]) == 0
    write(counts(seed=1), p)  # new cells at the same path
    rc = main(["--data", str(p), "--output", str(tmp_path / "b"), *common])
    msg = record("resume on changed data", "new data at the same path, same --run-name and --storage-path",
                 capsys.readouterr().err, tmp_path)
    assert rc == 2 and "trained on other data" in msg and "--run-name" in msg
    assert not (tmp_path / "b").exists()


def test_stale_on_the_fly_store_is_rebuilt(tmp_path, capsys):
    """A large input is prepared into the run's own folder; a store there from other data is rebuilt, never
    trained on."""
    from jojoscl_dist.config import JojoConfig
    from jojoscl_dist.data.zarr_store import prepare
    from jojoscl_dist.data.dataset import prepared_store_path
    from jojoscl_dist.train.run import run_folder

    p = write(counts(150, seed=0), tmp_path / "atlas.h5ad")
    y = tmp_path / "cfg.yaml"
    y.write_text("data:\n  prepare_above_cells: 100\n")
    argv = ["--data", str(p), "--output", str(tmp_path / "out"), "--config", str(y),
            "--storage-path", str(tmp_path / "storage"), "--n-clusters", "3", *FAST]
    from jojoscl_dist.train.__main__ import config_from_args

    store = prepared_store_path(run_folder(config_from_args(argv)))
    assert store.parent.parent == tmp_path / "storage"  # the run's own folder, not a shared fixed path
    other = write(counts(120, seed=3), tmp_path / "other.h5ad")
    prepare(other, store, progress=False)
    assert main(argv) == 0
    said = capsys.readouterr().out
    assert "was prepared from other data" in said
    final = json.loads((tmp_path / "out" / "metrics.json").read_text())["final"]
    assert final["n_cells"] == 150  # trained on this input's cells, not the 120 of the stale store


# Options checked before any work: exit 2, one line naming the flag and the allowed range.

@pytest.mark.parametrize("case,argv,must", [
    ("--epochs 0", ["--epochs", "0"], "--epochs (optim.epochs) must be an integer >= 1, got 0"),
    ("--eval-every 0", ["--eval-every", "0"], "--eval-every (eval.eval_every) must be an integer >= 1, got 0"),
    ("--batch-size 1", ["--batch-size", "1"], "--batch-size (optim.batch_size) must be an integer >= 2, got 1"),
    ("--batch-size below 2 per worker", ["--num-workers", "4", "--batch-size", "6"],
     "--batch-size (optim.batch_size) must be at least 2 per worker (8 for 4 worker(s)), got 6"),
    ("--n-top-genes 0", ["--n-top-genes", "0"], "--n-top-genes (data.n_top_genes) must be an integer >= 1, got 0"),
    ("--n-top-genes negative", ["--n-top-genes", "-5"], "must be an integer >= 1, got -5"),
    ("--lr 0", ["--lr", "0"], "--lr (optim.lr) must be a number > 0, got 0.0"),
    ("--tau-instance 0", ["--tau-instance", "0"], "--tau-instance (loss.tau_instance) must be a number > 0"),
    ("--max-failures negative", ["--max-failures", "-1"], "must be an integer >= 0, got -1"),
    ("--input-pca-components 0", ["--input-pca-components", "0"], "must be an integer >= 1, got 0"),
    ("all loss weights 0", ["--alpha", "0", "--beta", "0", "--w-sure", "0"], "nothing would train"),
])
def test_bad_numbers(tmp_path, capsys, case, argv, must):
    p = write(counts(), tmp_path / "ok.h5ad")
    # argparse keeps the last of a repeated flag: argv overrides FAST
    line = expect_error(case, f"`{' '.join(argv)}`", tmp_path, p, ["--n-clusters", "3", *FAST, *argv], capsys,
                        [must])
    assert must in line


@pytest.mark.parametrize("case,yaml_text,must", [
    ("YAML value of the wrong type", "optim:\n  lr: fast\n", "(optim.lr) must be a number, got 'fast'"),
    ("YAML fraction for an integer", "optim:\n  epochs: 2.5\n", "(optim.epochs) must be an integer, got 2.5"),
    ("YAML unknown key", "optim:\n  learning_rate: 0.001\n", "unknown config key(s) ['optim.learning_rate']"),
    ("YAML not a mapping", "- 1\n- 2\n", "not a mapping of sections"),
    ("YAML out of range", "model:\n  mask_keep: 1.5\n", "model.mask_keep must be a number > 0 and <= 1, got 1.5"),
])
def test_bad_yaml(tmp_path, capsys, case, yaml_text, must):
    p = write(counts(), tmp_path / "ok.h5ad")
    y = tmp_path / "cfg.yaml"
    y.write_text(yaml_text)
    line = expect_error(case, f"`--config` with `{yaml_text.strip()}`".replace("\n", " "), tmp_path, p,
                        ["--config", str(y), "--n-clusters", "3"], capsys, [must])
    assert must in line


def test_missing_config_file(tmp_path, capsys):
    p = write(counts(), tmp_path / "ok.h5ad")
    expect_error("missing --config file", "`--config` names no file", tmp_path, p,
                 ["--config", str(tmp_path / "nope.yaml")], capsys, ["config file not found", "--config"])


def test_yaml_number_written_as_text_is_a_number(tmp_path):
    """YAML 1.1 reads `lr: 3e-4` as text; the config takes it as the number it is."""
    from jojoscl_dist.config import JojoConfig

    y = tmp_path / "cfg.yaml"
    y.write_text("optim:\n  lr: 3e-4\n  epochs: '7'\n")
    cfg = JojoConfig.load(y)
    assert cfg.optim.lr == pytest.approx(3e-4) and isinstance(cfg.optim.lr, float)
    assert cfg.optim.epochs == 7 and isinstance(cfg.optim.epochs, int)


def test_a_bug_is_not_reported_as_bad_input(tmp_path, monkeypatch):
    """Only our input errors exit 2; any other exception keeps its traceback (exit 1 from Python)."""
    import jojoscl_dist.train.run as run_mod

    p = write(counts(), tmp_path / "ok.h5ad")
    monkeypatch.setattr(run_mod, "prepare_data", lambda cfg, store_dir: (_ for _ in ()).throw(ValueError("a bug")))
    with pytest.raises(ValueError, match="a bug"):
        main(["--data", str(p), "--output", str(tmp_path / "out"), "--n-clusters", "3", *FAST])


def test_doc_lists_the_real_messages():
    """docs/bad-input.md holds every message above, verbatim (runs last in this file)."""
    assert len(MESSAGES) >= 35, sorted(MESSAGES)
    if os.environ.get("JOJOSCL_WRITE_BAD_INPUT_DOC"):
        write_doc()
    doc = DOC.read_text()
    for case, (_, msg) in MESSAGES.items():
        assert doc_cell(msg) in doc, (case, msg)


def doc_cell(msg: str) -> str:
    return "`" + msg.replace("|", "\\|").replace("`", "'") + "`"


def write_doc() -> None:
    text = DOC.read_text() if DOC.exists() else ""
    head = text.split("<!-- table -->")[0] if "<!-- table -->" in text else "# Bad input\n\n"
    tail = text.split("<!-- /table -->")[1] if "<!-- /table -->" in text else "\n"
    rows = ["| case | input | message (`<tmp>` = the folder of the input) |", "|---|---|---|"]
    rows += [f"| {case} | {what} | {doc_cell(msg)} |" for case, (what, msg) in MESSAGES.items()]
    DOC.write_text(head + "<!-- table -->\n" + "\n".join(rows) + "\n<!-- /table -->" + tail)
