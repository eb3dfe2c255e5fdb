"""bench.quality --baselines-only: the baselines on a real (small) file, without training a model."""

import anndata as ad
import numpy as np
import pandas as pd

import bench.quality as quality


def test_baselines_only_scores_the_baselines_and_trains_nothing(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    truth = np.repeat(np.arange(3), 40)
    rates = rng.gamma(2.0, 1.0, size=(3, 300))
    rates[:, :30] *= np.repeat(np.eye(3), 10, axis=1) * 20 + 1  # 10 marker genes per type
    counts = rng.poisson(rates[truth]).astype(np.float32)
    a = ad.AnnData(X=counts, obs=pd.DataFrame({"cell_type": pd.Categorical([f"t{t}" for t in truth])},
                                              index=[f"c{i}" for i in range(120)]))
    a.write_h5ad(tmp_path / "toy.h5ad")
    monkeypatch.setattr(quality, "SHARED", tmp_path)
    monkeypatch.setattr(quality, "run_one", lambda *a, **k: (_ for _ in ()).throw(AssertionError("trained")))
    quality.main(["--datasets", "toy", "--seed-list", "0", "--baselines-only", "--out", str(tmp_path / "q")])
    row = pd.read_csv(tmp_path / "q.csv").iloc[0]
    assert row["variant"] == "baselines" and row["n_cells"] == 120 and row["k"] == 3
    assert row["kmeans_pca_ari"] > 0.9  # three well separated types
    assert "train_s" not in row.index and "pick_ari" not in row.index
    assert "| toy | 3 |" in (tmp_path / "q.md").read_text()


def test_report_fills_baselines_of_no_baseline_runs_per_column(tmp_path):
    from bench.quality_report import fill_baselines

    runs = pd.DataFrame([{"dataset": "a", "seed": 5, "variant": "full", "pick_ari": 0.7},
                         {"dataset": "a", "seed": 0, "variant": "full", "pick_ari": 0.6, "kmeans_pca_ari": 0.5}])
    old = tmp_path / "old.log"  # an older source without the no-model column
    old.write_text(str({"dataset": "a", "seed": 5, "variant": "baselines", "kmeans_pca_ari": 0.4,
                        "kmeans_pca_nmi": 0.41}) + "\n")
    new = tmp_path / "new.log"
    new.write_text(str({"dataset": "a", "seed": 5, "variant": "baselines", "kmeans_pca_ari": 0.45,
                        "kmeans_pca_nmi": 0.46, "kmeans_pca_ours_ari": 0.55, "kmeans_pca_ours_nmi": 0.56}) + "\n")
    out = fill_baselines(runs, [old, new]).set_index("seed")
    assert out.loc[5, "kmeans_pca_ari"] == 0.45  # the newest source wins
    assert out.loc[5, "kmeans_pca_ours_ari"] == 0.55
    assert out.loc[0, "kmeans_pca_ari"] == 0.5  # a run's own value is never replaced
    assert np.isnan(out.loc[0, "kmeans_pca_ours_ari"])  # no source for seed 0: left empty, not invented


def test_seed_table_averages_complete_seeds_only():
    from bench.quality_report import seed_table

    rows = [{"dataset": d, "seed": s, "variant": "full", "pick_ari": a, "pick_nmi": 0.5}
            for d, s, a in [("a", 0, 0.2), ("b", 0, 0.4), ("a", 1, 0.6), ("b", 1, 1.0), ("a", 2, 0.9)]]
    lines = seed_table(pd.DataFrame(rows))
    assert lines[2] == "| 0 | 0.300 | 0.500 |"  # (0.2 + 0.4) / 2
    assert lines[3] == "| 1 | 0.800 | 0.500 |"
    assert len(lines) == 4  # seed 2 lacks set b: left out


def test_ablation_pairs_compare_each_variant_with_full_on_shared_runs_only():
    from bench.quality_report import ablation_pairs

    rows = [{"dataset": d, "seed": s, "variant": "full", "pick_ari": a, "pick_nmi": 0.5}
            for d, s, a in [("a", 0, 0.5), ("a", 1, 0.7), ("b", 0, 0.2), ("c", 0, 0.9)]]
    rows += [{"dataset": d, "seed": s, "variant": "no_sure", "pick_ari": a, "pick_nmi": 0.4}
             for d, s, a in [("a", 0, 0.6), ("b", 0, 0.5), ("b", 1, 0.1)]]  # (b, 1) has no full run
    lines = ablation_pairs(pd.DataFrame(rows))
    assert len(lines) == 3
    # pairs (a,0) and (b,0): full 0.5, 0.2 -> mean 0.35; no_sure 0.6, 0.5 -> 0.55; both sets gain > 0.02
    assert lines[2].startswith("| `no_sure` | 2 (2) | 0.350 -> 0.550 | 0.500 -> 0.400 | - | - | 2 | 0 |")
    assert ablation_pairs(pd.DataFrame(rows[:4])) == []  # nothing but full: no table


def test_render_lists_set_overrides_apart_from_ablations(tmp_path):
    from bench.quality_report import render

    rows = [{"dataset": "a", "seed": 0, "variant": v, "pick_ari": a, "pick_nmi": 0.5, "n_cells": 10, "k": 2,
             "train_s": 1.0} for v, a in [("full", 0.5), ("set:loss.beta=2", 0.4), ("ins_only", 0.6)]]
    f = tmp_path / "r.log"
    f.write_text("\n".join(str(r) for r in rows) + "\n")
    text = render([f])
    knobs = text.split("### Config overrides")[1].split("###")[0]
    pairs = text.split("### Ablations against the full model on every set measured")[1]
    assert "`loss.beta=2` | 1 (1) | 0.500 -> 0.400" in knobs and "ins_only" not in knobs
    assert "`ins_only` | 1 (1) | 0.500 -> 0.600" in pairs and "beta" not in pairs


def test_set_as_full_runs_the_overrides_as_the_table_with_baselines(tmp_path, monkeypatch):
    import types

    import pytest

    seen = []

    def fake_run(name, seed, ov, epochs, workdir, dump=None):
        seen.append(ov)
        data = types.SimpleNamespace(x=np.zeros((4, 2)), labels=np.array([0, 0, 1, 1]), n_clusters=2)
        return {"dataset": name, "seed": seed, "n_cells": 4, "k": 2, "pick_ari": 0.5, "pick_nmi": 0.5,
                "train_s": 1.0}, data

    monkeypatch.setattr(quality, "run_one", fake_run)
    monkeypatch.setattr(quality, "baselines", lambda x, truth, k, seed: {"kmeans_pca": {"ari": 0.3, "nmi": 0.4}})
    quality.main(["--datasets", "toy", "--seed-list", "0", "--set", "model.mask_keep=0.2", "--set-as-full",
                  "--out", str(tmp_path / "q")])
    row = pd.read_csv(tmp_path / "q.csv").iloc[0]
    assert seen == [{"model.mask_keep": 0.2}]  # the override reached training, once
    assert row["variant"] == "full" and row["overrides"] == "model.mask_keep=0.2"
    assert row["kmeans_pca_ari"] == 0.3  # baselines attached, as for the default table
    for bad in (["--set-as-full"], ["--set", "model.mask_keep=0.2", "--set-as-full", "--variants", "no_sure"]):
        with pytest.raises(SystemExit):
            quality.main(["--datasets", "toy", "--out", str(tmp_path / "r")] + bad)
    assert not (tmp_path / "r.csv").exists()
