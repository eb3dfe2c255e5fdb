"""Render the quality benchmark's rows (bench/quality.py) as the markdown of docs/benchmarks.md ("Quality").

    python -m bench.quality_report ROWS [ROWS ...] [--baselines-from ROWS ...] [--out FILE.md]

ROWS: bench/quality.py's CSV, its printed log (``.log``: the one-dict-per-run lines, so a table cut short or split
over processes still renders) or the same rows one JSON object a line (``.jsonl``, the stored results). Rows of
every file are pooled, so the 'full' runs of the main table serve as the ablations' reference.
"""

from __future__ import annotations

import argparse
import ast
import json
from pathlib import Path

import numpy as np
import pandas as pd

from bench.common import md_table
from bench.quality import PAPER, PAPER_SETS

METHODS = {"pick": "label-free pick (default)", "pick_w0": "pick, k-means on z alone", "last": "last epoch",
           "oracle": "oracle epoch (labels!)", "kmeans_pca": "k-means PCA(50)", "leiden_1.0": "Leiden r=1",
           "leiden_K": "Leiden to K", "kmeans_pca_ours": "our final k-means on input PCA alone (no model)"}
BASELINES = ["kmeans_pca", "leiden_1.0", "leiden_K"]
PRESELECTED = {"10X_PBMC_top2000", "Bladder_top2000"}  # the paper used all genes; these files hold 2000
RULES = {"hist_last": "last evaluation", "hist_silhouette": "silhouette in z (default rule)",
         "hist_input_silhouette": "silhouette in input PCA", "hist_stability": "stability",
         "oracle": "oracle (labels!)"}


def _ms(v: pd.Series) -> str:
    return f"{v.mean():.3f}±{v.std(ddof=0):.3f}" if len(v) else "-"


def _vs(col: pd.Series, base: pd.Series) -> list[int]:
    """How many data sets ``col`` beats ``base`` on by more than 0.02, and loses on."""
    return [int(((col - base) > 0.02).sum()), int(((base - col) > 0.02).sum())]


def _full(df: pd.DataFrame) -> pd.DataFrame:
    return df[df["variant"] == "full"]


def main_table(df: pd.DataFrame) -> list[str]:
    full = _full(df)
    seeds = full.groupby("dataset")["seed"].nunique()
    rows = []
    for name, g in full.groupby("dataset", sort=True):
        cells = [f"{_ms(g[f'{m}_ari'].dropna())} / {g[f'{m}_nmi'].mean():.3f}"
                 if f"{m}_ari" in g and g[f"{m}_ari"].notna().any() else "-" for m in METHODS]
        paper = PAPER.get(name)
        pj, ps = (f"{a:.3f} / {n:.3f}" for a, n in paper) if paper else ("-", "-")
        if paper and name in PRESELECTED:
            pj += " (paper: all genes)"
        rows.append([name, int(g["n_cells"].iloc[0]), int(g["k"].iloc[0]), *cells, pj, ps, f"{g['train_s'].mean():.0f}"])
    per = full.groupby("dataset").mean(numeric_only=True)
    rows.append([f"**mean over {len(per)} sets**", "", "", *(
        f"**{per[f'{m}_ari'].mean():.3f}** / {per[f'{m}_nmi'].mean():.3f}" if f"{m}_ari" in per else "-"
        for m in METHODS), "", "", ""])
    head = ["dataset", "cells", "K", *(f"{label} ARI / NMI" for label in METHODS.values()), "paper JojoSCL",
            "paper ScCCL", "s/run"]
    return [f"Mean ± sd over {seeds.min()}-{seeds.max()} seeds per data set.", ""] + md_table(head, rows)


def seed_table(df: pd.DataFrame) -> list[str]:
    """The mean over data sets of each seed that covers every data set: how far one seed's table moves, and whether
    the seeds the defaults were chosen on stand out."""
    full = _full(df)
    cols = {c: label for c, label in (("pick_ari", "pick ARI"), ("pick_nmi", "pick NMI"),
                                      ("kmeans_pca_ari", "k-means PCA(50) ARI"),
                                      ("kmeans_pca_ours_ari", "no-model final k-means ARI")) if c in full}
    rows = [[seed, *(f"{g[c].mean():.3f}" if g[c].notna().all() else "-" for c in cols)]
            for seed, g in full.groupby("seed", sort=True)
            if g["dataset"].nunique() == full["dataset"].nunique()]  # a partial seed would compare other sets
    return md_table(["seed", *cols.values()], rows) if len(rows) > 1 else []


def weight_replay(df: pd.DataFrame) -> list[str]:
    """Mean over data sets of the pick's ARI / NMI with the final k-means on [z, w * input PCA], per weight w
    (bench/quality.py replays every weight on the same picked models)."""
    full = _full(df)
    ws = sorted({c[len("pick_w"):-len("_ari")] for c in full if c.startswith("pick_w") and c.endswith("_ari")},
                key=float)
    if not ws:
        return []
    full = full.dropna(subset=[f"pick_w{w}_ari" for w in ws])
    per = full.groupby("dataset").mean(numeric_only=True)
    rows = [[w, f"{per[f'pick_w{w}_ari'].mean():.3f}", f"{per[f'pick_w{w}_nmi'].mean():.3f}",
             *_vs(per[f"pick_w{w}_ari"], per["pick_w0_ari"])] for w in ws]
    return [f"{len(full)} runs on {len(per)} sets, the same picked models; w = 0 is k-means on z alone:", ""] + md_table(
        ["input-PCA weight w", "mean ARI", "mean NMI", "sets where it beats w = 0 by > 0.02", "... loses by > 0.02"],
        rows)


def selection_replay(df: pd.DataFrame) -> list[str]:
    """Mean over data sets of the evaluation-time ARI at the epoch each rule picks (runs that recorded them)."""
    full = _full(df)
    if "hist_input_silhouette_ari" not in full or full["hist_input_silhouette_ari"].isna().all():
        return []
    full = full[full["hist_input_silhouette_ari"].notna()]
    per = full.groupby("dataset").mean(numeric_only=True)
    rows = [[label, f"{per[f'{r}_ari'].mean():.3f}", *_vs(per[f"{r}_ari"], per["hist_silhouette_ari"])]
            for r, label in RULES.items()]
    return [f"{len(full)} runs on {len(per)} sets; ARI of the k-means clusters evaluated during training at the epoch "
            "each rule picks (not in the first 20% of epochs), mean over sets:", ""] + md_table(
        ["rule", "mean ARI", "sets where it beats the default rule by > 0.02", "... loses by > 0.02"], rows)


def _ablation_variants(df: pd.DataFrame) -> list[str]:
    """The ablation variants present (bench.quality ABLATIONS other than 'full'), in order of appearance."""
    return [v for v in dict.fromkeys(df["variant"]) if v not in ("full", "baselines") and not v.startswith("set:")]


def ablation_table(df: pd.DataFrame) -> list[str]:
    """Data set x variant, on the seeds every variant of that data set has (the 'full' column included)."""
    variants = _ablation_variants(df)
    if not variants:
        return []
    order = ["full"] + variants
    rows, means = [], []
    for name in [s for s in PAPER_SETS if s in set(df.loc[df["variant"].isin(variants), "dataset"])]:
        d = df[df["dataset"] == name]
        seeds = set.intersection(*[set(d.loc[d["variant"] == v, "seed"]) for v in order])
        if not seeds:
            continue
        g = {v: d[(d["variant"] == v) & d["seed"].isin(seeds)] for v in order}
        rows.append([name, ",".join(str(int(x)) for x in sorted(seeds)),
                     *(f"{_ms(g[v]['pick_ari'])} / {g[v]['pick_nmi'].mean():.3f}" for v in order)])
        means.append([g[v]["pick_ari"].mean() for v in order])
    if means:
        rows.append([f"**mean ARI ({len(means)} sets)**", "", *(f"**{m:.3f}**" for m in np.mean(means, axis=0))])
    return md_table(["data set", "seeds", *order], rows)


def paired_table(df: pd.DataFrame, variants: list[str], what: str) -> list[str]:
    """Each variant against 'full' on the (data set, seed) pairs both measured: mean over data sets of the
    label-free pick's ARI / NMI, ARI on z alone, the oracle ARI, and how many sets move by more than 0.02 either
    way. ``what`` heads the first column."""
    full = _full(df).set_index(["dataset", "seed"])
    rows = []
    for v in variants:
        both = full.join(df[df["variant"] == v].set_index(["dataset", "seed"]), how="inner", rsuffix="_v")
        if both.empty:
            continue
        m = both.groupby(level="dataset").mean(numeric_only=True)  # each data set weighs the same
        rows.append([f"`{v.removeprefix('set:')}`", f"{len(both)} ({len(m)})", *(
            f"{m[c].mean():.3f} -> {m[c + '_v'].mean():.3f}" if c + "_v" in m else "-"
            for c in ("pick_ari", "pick_nmi", "pick_w0_ari", "oracle_ari")), *_vs(m["pick_ari_v"], m["pick_ari"])])
    return md_table([what, "runs (sets)", f"pick ARI full -> {what}", "pick NMI", "pick ARI, k-means on z alone",
                     "oracle ARI", "sets > +0.02", "sets < -0.02"], rows) if rows else []


def knob_table(df: pd.DataFrame) -> list[str]:
    return paired_table(df, [v for v in dict.fromkeys(df["variant"]) if v.startswith("set:")], "override")


def ablation_pairs(df: pd.DataFrame) -> list[str]:
    """What a loss contributes across every set measured, not only on the sets of the per-set ablation table."""
    return paired_table(df, _ablation_variants(df), "ablation")


SECTIONS = {
    "Table II, label-free": main_table,
    "Mean over all data sets, per seed": seed_table,
    "Final k-means space: input-PCA weight replayed on the same runs": weight_replay,
    "Selection rules replayed on the same runs": selection_replay,
    "Config overrides (`bench.quality --set`) against the defaults, same seeds": knob_table,
    "Ablations (label-free pick, ARI mean±sd / NMI, same seeds)": ablation_table,
    "Ablations against the full model on every set measured": ablation_pairs,
}


def _read(p: Path) -> pd.DataFrame:
    if p.suffix == ".jsonl":
        return pd.DataFrame([json.loads(line) for line in p.read_text().splitlines() if line.strip()])
    if p.suffix == ".log":
        return pd.DataFrame([ast.literal_eval(line) for line in p.read_text().splitlines() if line.startswith("{")])
    return pd.read_csv(p)


def _read_all(paths: list[Path]) -> pd.DataFrame:
    return pd.concat([_read(p) for p in paths], ignore_index=True)


def fill_baselines(df: pd.DataFrame, sources: list[Path]) -> pd.DataFrame:
    """Runs made with --no-baselines take the baseline columns of the same (data set, seed) from ``sources``: the
    baselines (and the no-model column) see only the preprocessed matrix and the seed, not the training."""
    src = _read_all(sources)
    df = df.copy()
    key = pd.MultiIndex.from_frame(df[["dataset", "seed"]])
    for c in [c for b in BASELINES + ["kmeans_pca_ours"] for c in (f"{b}_ari", f"{b}_nmi") if c in src]:
        # Per column: older sources lack the newer columns, and must still give the ones they have.
        s = src.dropna(subset=[c]).drop_duplicates(["dataset", "seed"], keep="last").set_index(["dataset", "seed"])[c]
        df[c] = (df[c] if c in df else pd.Series(np.nan, index=df.index)).fillna(
            pd.Series(s.reindex(key).to_numpy(), index=df.index))
    return df


def render(csvs: list[Path], baselines_from: list[Path] | None = None) -> str:
    df = _read_all(csvs).drop_duplicates(subset=["dataset", "seed", "variant"], keep="last")
    if baselines_from:
        df = fill_baselines(df, baselines_from)
    out = []
    for title, table in SECTIONS.items():
        lines = table(df)
        if lines:
            out += ["", f"### {title}", ""] + lines
    return "\n".join(out[1:]) + "\n"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.quality_report")
    p.add_argument("csv", nargs="+", type=Path)
    p.add_argument("--out", type=Path)
    p.add_argument("--baselines-from", nargs="+", type=Path,
                   help="fill the baseline columns of runs made with --no-baselines from these files")
    a = p.parse_args(argv)
    text = render(a.csv, a.baselines_from)
    if a.out:
        a.out.write_text(text)
    print(text)


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()
