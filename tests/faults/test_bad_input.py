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


def test_doc_lists_the_real_messages():
    """docs/bad-input.md holds every message above, verbatim (runs last in this file)."""
    assert len(MESSAGES) >= 18, sorted(MESSAGES)
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
