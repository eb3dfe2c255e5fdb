"""--n-clusters auto: the label-free K rules, and the CLI path end to end."""

import json

import numpy as np
import pytest

from jojoscl_dist.clustering.k_select import choose_k
from jojoscl_dist.train.__main__ import config_from_args, main


def blobs(k=6, per=60, d=40, seed=0):
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(k, d)) * 6
    return (np.repeat(centers, per, axis=0) + rng.normal(size=(k * per, d))).astype(np.float32)


@pytest.mark.parametrize("rule", ["leiden", "silhouette"])
def test_rules_find_separated_clusters(rule):
    k, info = choose_k(blobs(), rule, seed=0, k_max=12)
    assert k == 6 and info["rule"] == rule


def test_cli_parses_auto_and_rejects_words():
    assert config_from_args(["--n-clusters", "auto"]).data.n_clusters == "auto"
    assert config_from_args(["--n-clusters", "7"]).data.n_clusters == 7
    with pytest.raises(SystemExit):
        config_from_args(["--n-clusters", "many"])


def test_auto_k_run(data_dir, tmp_path, capsys):
    out = tmp_path / "run"
    rc = main(["--data", str(data_dir / "CellBench_celseq2_3cl.h5ad"), "--n-clusters", "auto", "--num-workers",
               "0", "--epochs", "1", "--output", str(out), "--no-tracking", "--no-plots"])
    assert rc == 0
    m = json.loads((out / "metrics.json").read_text())
    # Leiden on PCA(50) of this set gives 3 communities (docs/benchmarks.md, K selection): the true K.
    assert m["k_selection"]["rule"] == "leiden" and m["final"]["n_clusters"] == m["k_selection"]["k"] == 3
    assert m["final"]["k_rule"] == "leiden"
    assert "--n-clusters auto: K = 3" in capsys.readouterr().out
