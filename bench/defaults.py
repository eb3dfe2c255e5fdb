"""Evidence for the defaults: train config variants, keep every evaluation, compare label-free selection rules.

    python -m bench.defaults run --datasets Yan,Goolam --seeds 2 --set optim.lr=3e-4 --out runs/defaults.jsonl
    python -m bench.defaults rules runs/defaults.jsonl [--min-epochs 0,20,40]
    python -m bench.defaults compare BASE.jsonl VARIANT.jsonl

``run`` trains in-process (the per-worker loop, --num-workers 0) with evaluations every 5 epochs and writes one
JSON line per (data set, seed): the config overrides and each evaluation's ARI/NMI (k-means on z, 3 restarts),
head ARI, and the label-free silhouette and stability scores. ``rules`` replays the selection rules on those
histories (ARI of the epoch each rule would pick; ``last``; the oracle); ``compare`` sets two runs side by side
on the (data set, seed) pairs they share. ARI here is a yardstick for choosing defaults across all data sets at
once (one set of defaults for every data set); it never enters a run.
"""

from __future__ import annotations

import argparse
import collections
import json
import logging
import shutil
import tempfile
import warnings
from pathlib import Path

import numpy as np

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
                cfg = JojoConfig()
                cfg.data.path, cfg.data.label_key = str(SHARED / f"{name}.h5ad"), "cell_type"
                cfg.run.seed, cfg.run.num_workers, cfg.run.tracking, cfg.run.quiet = seed, 0, False, True
                cfg.run.output = str(work / f"{name}-{seed}")
                cfg.eval.eval_every = eval_every
                cfg = cfg.override(overrides)
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


def rules(paths: list[Path], min_epochs: list[int]) -> str:
    rows = [json.loads(line) for p in paths for line in open(p)]
    res: dict = collections.defaultdict(lambda: collections.defaultdict(list))
    for r in rows:
        h = r["hist"]
        ari = np.array([e["eval_ari"] for e in h])
        ep = np.array([e["epoch"] for e in h])
        d = res[r["dataset"]]
        d["last"].append(ari[-1])
        d["oracle"].append(ari.max())
        for m in min_epochs:
            ok = np.flatnonzero(ep >= m - 1)
            for rule in ("silhouette", "stability"):
                d[f"{rule[:4]}>={m}"].append(ari[pick_index(np.array([e[f'select_{rule}'] for e in h]), ok)])
    cols = ["last", "oracle"] + [f"{r}>={m}" for r in ("silh", "stab") for m in min_epochs]
    lines = ["| data set | " + " | ".join(cols) + " |", "|---|" + "---|" * len(cols)]
    means = collections.defaultdict(list)
    for name, d in sorted(res.items()):
        lines.append(f"| {name} | " + " | ".join(f"{np.mean(d[c]):.3f}" for c in cols) + " |")
        for c in cols:
            means[c].append(np.mean(d[c]))
    lines.append(f"| **mean ({len(res)} sets)** | " + " | ".join(f"**{np.mean(means[c]):.3f}**" for c in cols) + " |")
    return "\n".join(lines)


def compare(base: Path, variant: Path, min_epoch: int = 20) -> str:
    def load(p: Path) -> dict:
        out = {}
        for line in open(p):
            r = json.loads(line)
            ari = np.array([e["eval_ari"] for e in r["hist"]])
            ep = np.array([e["epoch"] for e in r["hist"]])
            sil = np.array([e["select_silhouette"] for e in r["hist"]])
            out[(r["dataset"], r["seed"])] = (ari[-1], ari[pick_index(sil, np.flatnonzero(ep >= min_epoch - 1))], ari.max())
        return out

    b, v = load(base), load(variant)
    keys = sorted(set(b) & set(v))
    if not keys:
        return "no (data set, seed) in common"
    bm, vm = np.mean([b[k] for k in keys], 0), np.mean([v[k] for k in keys], 0)
    return (f"{len(keys)} runs in common; ARI last / silhouette pick / oracle: base "
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
