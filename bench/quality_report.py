"""Render the quality benchmark's CSVs (bench/quality.py) as the markdown in docs/benchmarks.md ("Quality").

    python -m bench.quality_report TABLE.csv [ABLATIONS.csv ...] [--out FILE.md]
    python -m bench.quality_report bench/results/quality/table.jsonl \
        --baselines-from bench/results/quality/baselines.jsonl          # the tables in docs/benchmarks.md

A ``.log`` argument is bench/quality.py's printed output: its one-dict-per-run lines are read, so a table cut
short (or split over processes) still renders. A ``.jsonl`` argument holds the same rows, one JSON object a line
(the stored results).

Tables: the main one (variant 'full': label-free pick, last epoch, oracle epoch, three baselines, the paper's
values), the targets of the quality issue checked against it, and the ablations pivoted per variant. Rows of
every CSV are pooled, so the 'full' runs of the main table serve as the ablations' reference.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd

from bench.quality import PAPER, PAPER_SETS

METHODS = [("pick", "label-free pick (default)"), ("pick_w0", "pick, k-means on z alone"), ("last", "last epoch"),
           ("oracle", "oracle epoch (labels!)"),
           ("kmeans_pca", "k-means PCA(50)"), ("leiden_1.0", "Leiden r=1"), ("leiden_K", "Leiden to K"),
           ("kmeans_pca_ours", "our final k-means on input PCA alone (no model)")]
BASELINES = ["kmeans_pca", "leiden_1.0", "leiden_K"]
PRESELECTED = {"10X_PBMC_top2000", "Bladder_top2000"}  # the paper used all genes; these files hold 2000
ISSUE_BAR = 0.72  # the quality issue's 'so >= 0.72' (its November k-means on PCA, 0.673, + 0.05)


def _ms(v: pd.Series) -> str:
    return f"{v.mean():.3f}±{v.std(ddof=0):.3f}" if len(v) else "-"


def main_table(df: pd.DataFrame) -> list[str]:
    full = df[df["variant"] == "full"]
    seeds = full.groupby("dataset")["seed"].nunique()
    head = ("| dataset | cells | K | " + " | ".join(f"{label} ARI / NMI" for _, label in METHODS)
            + " | paper JojoSCL | paper ScCCL | s/run |")
    lines = [f"Mean ± sd over {seeds.min()}-{seeds.max()} seeds per data set.", "", head,
             "|---|---|---|" + "---|" * (len(METHODS) + 3)]
    for name, g in full.groupby("dataset", sort=True):
        cells = [f"{_ms(g[f'{m}_ari'].dropna())} / {g[f'{m}_nmi'].mean():.3f}" if f"{m}_ari" in g and
                 g[f"{m}_ari"].notna().any() else "-" for m, _ in METHODS]
        paper = PAPER.get(name)
        pj = f"{paper[0][0]:.3f} / {paper[0][1]:.3f}" if paper else "-"
        ps = f"{paper[1][0]:.3f} / {paper[1][1]:.3f}" if paper else "-"
        if paper and name in PRESELECTED:
            pj += " (paper: all genes)"
        lines.append(f"| {name} | {int(g['n_cells'].iloc[0])} | {int(g['k'].iloc[0])} | " + " | ".join(cells)
                     + f" | {pj} | {ps} | {g['train_s'].mean():.0f} |")
    per_set = full.groupby("dataset")
    means = {m: per_set[f"{m}_ari"].mean().mean() for m, _ in METHODS if f"{m}_ari" in full}
    nmis = {m: per_set[f"{m}_nmi"].mean().mean() for m, _ in METHODS if f"{m}_nmi" in full}
    lines.append(f"| **mean over {full['dataset'].nunique()} sets** | | | "
                 + " | ".join(f"**{means[m]:.3f}** / {nmis[m]:.3f}" if m in means else "-" for m, _ in METHODS)
                 + " | | | |")
    return lines


def seed_table(df: pd.DataFrame) -> list[str]:
    """The mean over data sets of each seed that covers every data set: how far one seed's table moves, and whether the
    seeds the defaults were chosen on stand out."""
    full = df[df["variant"] == "full"]
    n_sets = full["dataset"].nunique()
    cols = [("pick_ari", "pick ARI"), ("pick_nmi", "pick NMI"), ("kmeans_pca_ari", "k-means PCA(50) ARI"),
            ("kmeans_pca_ours_ari", "no-model final k-means ARI")]
    cols = [(c, label) for c, label in cols if c in full]
    lines = ["| seed | " + " | ".join(label for _, label in cols) + " |", "|---|" + "---|" * len(cols)]
    for seed, g in full.groupby("seed", sort=True):
        if g["dataset"].nunique() < n_sets:
            continue  # a partial seed would compare different sets
        lines.append(f"| {seed} | " + " | ".join(f"{g[c].mean():.3f}" if g[c].notna().all() else "-"
                                                 for c, _ in cols) + " |")
    return lines if len(lines) > 3 else []


def targets(df: pd.DataFrame) -> list[str]:
    full = df[df["variant"] == "full"]
    per = full.groupby("dataset")[["pick_ari", "pick_nmi"] + [f"{b}_ari" for b in BASELINES
                                                             if f"{b}_ari" in full]].mean()
    lines = ["| target | paper ARI / NMI | ours ARI / NMI (label-free) | ARI gap | met |", "|---|---|---|---|---|"]
    for name in PAPER_SETS:
        if name not in per.index:
            continue
        (pa, pn), _ = PAPER[name]
        a, n = per.loc[name, "pick_ari"], per.loc[name, "pick_nmi"]
        ok = a >= pa and n >= pn
        lines.append(f"| {name}{' (2000 pre-selected genes)' if name in PRESELECTED else ''} | {pa:.3f} / {pn:.3f} | "
                     f"{a:.3f} / {n:.3f} | {a - pa:+.3f} | {'yes' if ok else 'no'} |")
    if all(f"{b}_ari" in per for b in BASELINES):
        best_b = max(BASELINES, key=lambda b: per[f"{b}_ari"].mean())
        bar = per[f"{best_b}_ari"].mean() + 0.05
        ours = per["pick_ari"].mean()
        if "kmeans_pca_ours_ari" in full:  # not a target: what the model adds over its own final k-means
            nm = full.groupby("dataset")["kmeans_pca_ours_ari"].mean().mean()
            lines.append(f"| (not a target) margin over our final k-means on the input PCA alone ({nm:.3f}) | - | "
                         f"{per['pick_ari'].mean():.3f} | {per['pick_ari'].mean() - nm:+.3f} | - |")
        lines.append(f"| mean ARI over {len(per)} sets >= best baseline ({best_b} {per[f'{best_b}_ari'].mean():.3f}) "
                     f"+ 0.05 | {bar:.3f} | {ours:.3f} | {ours - bar:+.3f} | {'yes' if ours >= bar else 'no'} |")
        # The issue states the bar as a fixed number too; the in-harness baseline moves with the seeds.
        lines.append(f"| mean ARI over {len(per)} sets >= the issue's fixed bar (k-means on PCA measured in November, "
                     f"0.673, + 0.05) | {ISSUE_BAR:.3f} | {ours:.3f} | {ours - ISSUE_BAR:+.3f} | "
                     f"{'yes' if ours >= ISSUE_BAR else 'no'} |")
    return lines


def _ablation_variants(df: pd.DataFrame) -> list[str]:
    """The ablation variants present (bench.quality ABLATIONS other than 'full'), in order of appearance."""
    return [v for v in dict.fromkeys(df["variant"]) if v not in ("full", "baselines") and not v.startswith("set:")]


def ablation_table(df: pd.DataFrame) -> list[str]:
    """Data set x variant, on the seeds every variant of that data set has (the 'full' column included)."""
    variants = _ablation_variants(df)
    if not variants:
        return []
    order = ["full"] + variants
    lines = ["| data set | seeds | " + " | ".join(order) + " |", "|---|---|" + "---|" * len(order)]
    per_set: dict[str, dict[str, float]] = {}
    for name in [s for s in PAPER_SETS if s in set(df.loc[df["variant"].isin(variants), "dataset"])]:
        d = df[df["dataset"] == name]
        seeds = set.intersection(*[set(d.loc[d["variant"] == v, "seed"]) for v in order])
        if not seeds:
            continue
        d = d[d["seed"].isin(seeds)]
        cells = []
        for v in order:
            g = d[d["variant"] == v]
            cells.append(f"{_ms(g['pick_ari'])} / {g['pick_nmi'].mean():.3f}")
            per_set.setdefault(name, {})[v] = g["pick_ari"].mean()
        lines.append(f"| {name} | {','.join(str(int(x)) for x in sorted(seeds))} | " + " | ".join(cells) + " |")
    if per_set:
        lines.append(f"| **mean ARI ({len(per_set)} sets)** | | "
                     + " | ".join(f"**{np.mean([p[v] for p in per_set.values()]):.3f}**" for v in order) + " |")
    return lines


def paired_table(df: pd.DataFrame, variants: list[str], what: str) -> list[str]:
    """Each variant against 'full' on the (data set, seed) pairs both measured: mean over data sets of the
    label-free pick's ARI / NMI, ARI on z alone, the oracle ARI, and how many sets move by more than 0.02 either
    way. ``what`` heads the first column."""
    full = df[df["variant"] == "full"].set_index(["dataset", "seed"])
    lines = [f"| {what} | runs (sets) | pick ARI full -> {what} | pick NMI | pick ARI, k-means on z alone | "
             "oracle ARI | sets > +0.02 | sets < -0.02 |", "|---|---|---|---|---|---|---|---|"]
    for v in variants:
        both = full.join(df[df["variant"] == v].set_index(["dataset", "seed"]), how="inner", rsuffix="_v")
        if both.empty:
            continue
        m = both.groupby(level="dataset").mean(numeric_only=True)  # each data set weighs the same
        d = m["pick_ari_v"] - m["pick_ari"]
        cells = [f"{m[c].mean():.3f} -> {m[c + '_v'].mean():.3f}" if c + "_v" in m else "-"
                 for c in ("pick_ari", "pick_nmi", "pick_w0_ari", "oracle_ari")]
        lines.append(f"| `{v.removeprefix('set:')}` | {len(both)} ({len(m)}) | " + " | ".join(cells)
                     + f" | {int((d > 0.02).sum())} | {int((d < -0.02).sum())} |")
    return lines if len(lines) > 2 else []


def knob_table(df: pd.DataFrame) -> list[str]:
    """Each ``--set`` variant against 'full' (``paired_table``)."""
    return paired_table(df, [v for v in dict.fromkeys(df["variant"]) if v.startswith("set:")], "override")


def ablation_pairs(df: pd.DataFrame) -> list[str]:
    """Each ablation variant against 'full' on every (data set, seed) pair measured, the paper's five sets or more:
    what a loss contributes across the whole table, not only on the sets of the per-set ablation table."""
    return paired_table(df, _ablation_variants(df), "ablation")


RULES = [("hist_last", "last evaluation"), ("hist_silhouette", "silhouette in z (default rule)"),
         ("hist_input_silhouette", "silhouette in input PCA"), ("hist_stability", "stability"),
         ("oracle", "oracle (labels!)")]


def selection_replay(df: pd.DataFrame) -> list[str]:
    """Mean over data sets of the evaluation-time ARI at the epoch each rule picks (runs that recorded them)."""
    full = df[(df["variant"] == "full")]
    if "hist_input_silhouette_ari" not in full:
        return []
    full = full[full["hist_input_silhouette_ari"].notna()]
    if full.empty:
        return []
    per = full.groupby("dataset")[[f"{r}_ari" for r, _ in RULES]].mean()
    lines = [f"{len(full)} runs on {len(per)} sets; ARI of the k-means clusters evaluated during training at the epoch "
             "each rule picks (not in the first 20% of epochs), mean over sets:", "",
             "| rule | mean ARI | sets where it beats the default rule by > 0.02 | ... loses by > 0.02 |",
             "|---|---|---|---|"]
    base = per["hist_silhouette_ari"]
    for r, label in RULES:
        col = per[f"{r}_ari"]
        lines.append(f"| {label} | {col.mean():.3f} | {int(((col - base) > 0.02).sum())} | "
                     f"{int(((base - col) > 0.02).sum())} |")
    return lines


def weight_replay(df: pd.DataFrame) -> list[str]:
    """Mean over data sets of the pick's ARI / NMI with the final k-means on [z, w * input PCA], per weight w
    (bench/quality.py replays every weight on the same picked models)."""
    full = df[df["variant"] == "full"]
    ws = sorted({c[len("pick_w"):-len("_ari")] for c in full if c.startswith("pick_w") and c.endswith("_ari")},
                key=float)
    if not ws:
        return []
    full = full.dropna(subset=[f"pick_w{w}_ari" for w in ws])
    per = full.groupby("dataset")[[f"pick_w{w}_{m}" for w in ws for m in ("ari", "nmi")]].mean()
    lines = [f"{len(full)} runs on {len(per)} sets, the same picked models; w = 0 is k-means on z alone:", "",
             "| input-PCA weight w | mean ARI | mean NMI | sets where it beats w = 0 by > 0.02 | ... loses by > 0.02 |",
             "|---|---|---|---|---|"]
    base = per["pick_w0_ari"]
    for w in ws:
        col = per[f"pick_w{w}_ari"]
        lines.append(f"| {w} | {col.mean():.3f} | {per[f'pick_w{w}_nmi'].mean():.3f} | "
                     f"{int(((col - base) > 0.02).sum())} | {int(((base - col) > 0.02).sum())} |")
    return lines


def _read(p: Path) -> pd.DataFrame:
    if p.suffix == ".jsonl":
        import json

        return pd.DataFrame([json.loads(line) for line in p.read_text().splitlines() if line.strip()])
    if p.suffix == ".log":
        import ast

        return pd.DataFrame([ast.literal_eval(line) for line in p.read_text().splitlines() if line.startswith("{")])
    return pd.read_csv(p)


def _read_all(paths: list[Path]) -> pd.DataFrame:
    return pd.concat([_read(p) for p in paths], ignore_index=True)


def fill_baselines(df: pd.DataFrame, sources: list[Path]) -> pd.DataFrame:
    """Runs made with --no-baselines take the baseline columns of the same (data set, seed) from ``sources``.

    The baselines see only the preprocessed matrix and the seed, so a change to training leaves them as they were.
    """
    src = _read_all(sources)
    # The no-model column too: like the baselines it depends on the matrix and the seed only.
    cols = [c for b in BASELINES + ["kmeans_pca_ours"] for c in (f"{b}_ari", f"{b}_nmi") if c in src]
    df = df.copy()
    key = pd.MultiIndex.from_frame(df[["dataset", "seed"]])
    for c in cols:
        # Per column: older sources lack the newer columns, and must still give the ones they have.
        s = src.dropna(subset=[c]).drop_duplicates(subset=["dataset", "seed"], keep="last").set_index(["dataset", "seed"])[c]
        if c not in df:
            df[c] = np.nan
        df[c] = df[c].fillna(pd.Series(s.reindex(key).to_numpy(), index=df.index))
    return df


def render(csvs: list[Path], baselines_from: list[Path] | None = None) -> str:
    df = _read_all(csvs).drop_duplicates(subset=["dataset", "seed", "variant"], keep="last")
    if baselines_from:
        df = fill_baselines(df, baselines_from)
    out = ["### Table II, label-free", ""] + main_table(df) + ["", "### Targets of the quality issue", ""] + targets(df)
    per_seed = seed_table(df)
    if per_seed:
        out += ["", "### Mean over all data sets, per seed", ""] + per_seed
    weights = weight_replay(df)
    if weights:
        out += ["", "### Final k-means space: input-PCA weight replayed on the same runs", ""] + weights
    replay = selection_replay(df)
    if replay:
        out += ["", "### Selection rules replayed on the same runs", ""] + replay
    knobs = knob_table(df)
    if knobs:
        out += ["", "### Config overrides (`bench.quality --set`) against the defaults, same seeds", ""] + knobs
    abl = ablation_table(df)
    if abl:
        out += ["", "### Ablations (label-free pick, ARI mean±sd / NMI, same seeds)", ""] + abl
    pairs = ablation_pairs(df)
    if pairs:
        out += ["", "### Ablations against the full model on every set measured", ""] + pairs
    return "\n".join(out) + "\n"


def compare(before: list[Path], after: list[Path]) -> str:
    """Label-free pick ARI / NMI of the 'full' runs, before vs after a change, on the (data set, seed) pairs both
    measured: the check that a speed change leaves quality alone."""
    def load(paths: list[Path]) -> pd.DataFrame:
        df = _read_all(paths)
        df = df[df["variant"] == "full"].drop_duplicates(subset=["dataset", "seed"], keep="last")
        return df.set_index(["dataset", "seed"])[["pick_ari", "pick_nmi", "oracle_ari", "train_s"]]

    b, a = load(before), load(after)
    both = b.join(a, how="inner", lsuffix="_before", rsuffix="_after")
    lines = ["| data set | seeds | pick ARI before | after | pick NMI before | after | oracle ARI before | after | "
             "train s before | after |", "|---|---|---|---|---|---|---|---|---|---|"]
    for name, g in both.groupby(level="dataset", sort=True):
        seeds = ",".join(str(s) for s in g.index.get_level_values("seed"))
        lines.append(f"| {name} | {seeds} | " + " | ".join(
            f"{g[f'{c}_{w}'].mean():.3f}" if c != "train_s" else f"{g[f'{c}_{w}'].mean():.0f}"
            for c in ("pick_ari", "pick_nmi", "oracle_ari", "train_s") for w in ("before", "after")) + " |")
    m = both.groupby(level="dataset").mean()  # each data set weighs the same, whatever its seed count
    lines.append(f"| **mean over {len(m)} sets** | {len(both)} runs | " + " | ".join(
        f"**{m[f'{c}_{w}'].mean():.3f}**" if c != "train_s" else f"{m[f'{c}_{w}'].sum():.0f} (sum)"
        for c in ("pick_ari", "pick_nmi", "oracle_ari", "train_s") for w in ("before", "after")) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.quality_report")
    p.add_argument("csv", nargs="+", type=Path)
    p.add_argument("--out", type=Path)
    p.add_argument("--before", nargs="+", type=Path,
                   help="compare: runs before a change (the positional files are the runs after it)")
    p.add_argument("--baselines-from", nargs="+", type=Path,
                   help="fill the baseline columns of runs made with --no-baselines from these files")
    a = p.parse_args(argv)
    text = compare(a.before, a.csv) if a.before else render(a.csv, a.baselines_from)
    if a.out:
        a.out.write_text(text)
    print(text)


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()
