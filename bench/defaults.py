"""Evidence for the defaults: train config variants, keep every evaluation, compare label-free selection rules.

    python -m bench.defaults run --datasets Yan,Goolam --seeds 2 --set optim.lr=3e-4 --out runs/defaults.jsonl
    python -m bench.defaults rules runs/defaults.jsonl [--min-epochs 0,20,40]
    python -m bench.defaults compare BASE.jsonl VARIANT.jsonl

``run`` trains in-process (--num-workers 0), evaluating every 5 epochs, and writes one JSON line per (data set,
seed): the overrides and each evaluation's ARI/NMI (k-means on z, 3 restarts), head ARI and label-free scores.
``rules`` replays the selection rules on those histories (ARI of the epoch each rule would pick, the last, the
oracle); ``compare`` sets two runs side by side on the (data set, seed) pairs they share. ARI here only chooses
defaults across all data sets at once; it never enters a run.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import tempfile
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from bench.common import md_table

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
KEYS = ("epoch", "eval_ari", "eval_nmi", "eval_head_ari", "select_silhouette", "select_stability")


def parse_value(v: str):
    """A --set value: int, float, bool, a comma list of those (tuple fields such as model.hidden_dims), or str."""
    if "," in v:
        return [parse_value(part) for part in v.split(",")]
    for cast in (int, float):
        try:
            return cast(v)
        except ValueError:
            pass
    return {"true": True, "false": False}.get(v.lower(), v)


def run(names: list[str], seeds: int, overrides: dict, out: Path, eval_every: int = 5) -> None:
    from jojoscl_dist.config import JojoConfig
    from jojoscl_dist.data.dataset import prepare_data
    from jojoscl_dist.train.run import default_storage, run_folder, train

    work = Path(tempfile.mkdtemp(prefix="jojoscl-defaults-"))
    with open(out, "a") as f:
        for name in names:
            for seed in range(seeds):
                cfg = JojoConfig().override({
                    "data.path": str(SHARED / f"{name}.h5ad"), "data.label_key": "cell_type", "run.seed": seed,
                    "run.num_workers": 0, "run.tracking": False, "run.quiet": True,
                    "run.output": str(work / f"{name}-{seed}"), "eval.eval_every": eval_every, **overrides})
                state = train(cfg, prepare_data(cfg, run_folder(cfg))).state
                shutil.rmtree(default_storage(cfg), ignore_errors=True)
                hist = [{k: e[k] for k in KEYS if k in e} for e in state["history"] if "eval_ari" in e]
                f.write(json.dumps({"dataset": name, "seed": seed, "extra": overrides, "hist": hist}) + "\n")
                f.flush()
                print(name, seed, [round(e["eval_ari"], 3) for e in hist][-4:], flush=True)
    shutil.rmtree(work, ignore_errors=True)


def pick_index(score: np.ndarray, ok: np.ndarray) -> int:
    """Index of the max of ``score`` among the indices ``ok`` (ties -> the later one, as Selector does)."""
    s = score[ok]
    return int(ok[len(s) - 1 - np.argmax(s[::-1])])


def picks(paths: list[Path], min_epochs: list[int]) -> pd.DataFrame:
    """Per run: ARI at the last evaluation, the best (oracle) and the epoch each rule picks from each warm-up."""
    rows = []
    for r in (json.loads(line) for p in paths for line in open(p)):
        h = pd.DataFrame(r["hist"])
        ari = h["eval_ari"].to_numpy()
        row = {"dataset": r["dataset"], "seed": r["seed"], "last": ari[-1], "oracle": ari.max()}
        for m in min_epochs:
            ok = np.flatnonzero(h["epoch"] >= m - 1)
            for rule in ("silhouette", "stability"):
                row[f"{rule[:4]}>={m}"] = ari[pick_index(h[f"select_{rule}"].to_numpy(), ok)]
        rows.append(row)
    return pd.DataFrame(rows)


def rules(paths: list[Path], min_epochs: list[int]) -> str:
    cols = ["last", "oracle"] + [f"{r}>={m}" for r in ("silh", "stab") for m in min_epochs]
    per = picks(paths, min_epochs).groupby("dataset")[cols].mean()
    rows = [[name, *(f"{v:.3f}" for v in r)] for name, r in per.iterrows()]
    rows.append([f"**mean ({len(per)} sets)**", *(f"**{v:.3f}**" for v in per.mean())])
    return "\n".join(md_table(["data set", *cols], rows))


def compare(base: Path, variant: Path, min_epoch: int = 20) -> str:
    b, v = (picks([p], [min_epoch]).drop_duplicates(["dataset", "seed"], keep="last").set_index(["dataset", "seed"])
            [["last", f"silh>={min_epoch}", "oracle"]] for p in (base, variant))
    both = b.join(v, how="inner", rsuffix="_v")
    if both.empty:
        return "no (data set, seed) in common"
    bm, vm = both.mean().to_numpy().reshape(2, 3)
    return (f"{len(both)} runs in common; ARI last / silhouette pick / oracle: base "
            f"{bm[0]:.3f} / {bm[1]:.3f} / {bm[2]:.3f}, variant {vm[0]:.3f} / {vm[1]:.3f} / {vm[2]:.3f}")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.defaults")
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run")
    r.add_argument("--datasets", required=True)
    r.add_argument("--seeds", type=int, default=1)
    r.add_argument("--set", action="append", default=[], help="dotted.key=value config override (repeatable)")
    r.add_argument("--out", type=Path, required=True)
    q = sub.add_parser("rules")
    q.add_argument("jsonl", nargs="+", type=Path)
    q.add_argument("--min-epochs", default="0,10,20,30,40")
    c = sub.add_parser("compare")
    c.add_argument("base", type=Path)
    c.add_argument("variant", type=Path)
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.ERROR)
    warnings.filterwarnings("ignore")
    if a.cmd == "run":
        run(a.datasets.split(","), a.seeds, {k: parse_value(v) for k, v in (s.split("=", 1) for s in a.set)}, a.out)
    elif a.cmd == "rules":
        print(rules(a.jsonl, [int(m) for m in a.min_epochs.split(",")]))
    else:
        print(compare(a.base, a.variant))


if __name__ == "__main__":
    main()
