"""Scale benchmark: synthetic raw atlas -> prepare (out of core) -> one training epoch, streamed vs in memory.

For each size N: write a raw Zarr atlas (N cells x G genes, CSR), prepare it into a store (G -> HVG), train one
epoch on the store with Ray Train workers (streaming), and train one epoch in memory on a subset that fits (the
existing path: materialise + ray.put) at the same global batch size. Every stage runs as a subprocess whose whole
process tree (driver, raylet, Ray Train workers, ...) is sampled for its peak RSS.

    PYTHONPATH=. python bench/scale.py --cells 100000 30000 --genes 20000 --workdir /tmp/scale --json out.json
    PYTHONPATH=. python bench/scale.py --report out.json   # its table, as in docs/benchmarks.md
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil

from bench.common import machine, md_table

PY = sys.executable


def _label(cmd: str) -> str:
    if cmd.startswith("ray::"):
        return cmd.split()[0]  # ray::RayTrainWorker, ray::TrainController, ray::IDLE, ...
    for key in ("raylet", "gcs_server", "dashboard", "log_monitor", "monitor.py", "runtime_env", "jojoscl_dist"):
        if key in cmd:
            return key
    return cmd.split()[0].rsplit("/", 1)[-1] if cmd else "?"


class TreeRSS:
    """Peak RSS of every process under ``root`` (sampled every ``interval`` s)."""

    def __init__(self, root: int, interval: float = 0.25):
        self.peak: dict[int, tuple[int, str]] = {}  # pid -> (peak RSS, label)
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, args=(root, interval), daemon=True)
        self._t.start()

    def _run(self, root: int, interval: float) -> None:
        while not self._stop.is_set():
            try:
                top = psutil.Process(root)
                procs = [top, *top.children(recursive=True)]
            except psutil.Error:
                procs = []
            for p in procs:
                try:
                    rss, cmd = p.memory_info().rss, " ".join(p.cmdline())
                except psutil.Error:
                    continue
                if rss > self.peak.get(p.pid, (0, ""))[0]:
                    self.peak[p.pid] = (rss, "driver" if p.pid == root else _label(cmd))
            self._stop.wait(interval)

    def stop(self) -> dict:
        self._stop.set()
        self._t.join()
        by_label: dict[str, list[int]] = {}
        for rss, label in self.peak.values():
            by_label.setdefault(label, []).append(rss)
        top = sorted(by_label.items(), key=lambda kv: -max(kv[1]))
        return {"max_process_gib": max((r for r, _ in self.peak.values()), default=0) / 2**30,
                "per_label_max_gib": {k: max(v) / 2**30 for k, v in top},
                "per_label_count": {k: len(v) for k, v in top}}


def run_stage(name: str, cmd: list[str], d: Path, timeout: float = 7200) -> dict:
    """Run one stage as a subprocess (its output in d/<name>.log): wall time and the peak RSS of its process tree."""
    print(f"[{d.name}] {name}", flush=True)
    t0 = time.perf_counter()
    log = d / f"{name}.log"
    with open(log, "w") as f:
        p = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=os.environ.copy())
        mon = TreeRSS(p.pid)
        try:
            rc = p.wait(timeout=timeout)
        finally:
            if p.poll() is None:
                p.kill()
            rss = mon.stop()
    wall = time.perf_counter() - t0
    if rc != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({rc}); see {log}:\n{log.read_text()[-2000:]}")
    return {"wall_s": wall, **rss}


def write_subset_h5ad(raw: Path, n: int, dest: Path) -> None:
    """The first n cells of a raw Zarr atlas as an in-memory-sized .h5ad (for the in-memory comparison)."""
    import anndata as ad
    import zarr

    g = zarr.open_group(str(raw), mode="r")
    x = ad.io.sparse_dataset(g["X"])[:n]
    obs = ad.io.read_elem(g["obs"]).iloc[:n]
    var = ad.io.read_elem(g["var"])
    ad.AnnData(X=x, obs=obs, var=var).write_h5ad(dest)


def train_stage(name: str, data: Path, d: Path, args) -> dict:
    """One epoch of the training CLI (no plots: not what is measured), with the epoch's figures."""
    out = d / f"run_{name.removeprefix('train_')}"
    r = run_stage(name, [PY, "-m", "jojoscl_dist.train", "--data", str(data), "--label-key", "cell_type",
                         "--num-workers", str(args.workers), "--epochs", "1", "--batch-size", str(args.batch_size),
                         "--output", str(out), "--no-tracking", "--no-plots", "--overwrite", "-q"], d)
    m = json.loads((out / "metrics.json").read_text())
    h = m["history"][0]
    return r | {"epoch_time_s": h["epoch_time_s"], "cells_per_s_total": h["cells_per_s"],
                "cells_per_s_per_worker": h["cells_per_s"] / max(1, args.workers),
                "eval_time_s": h.get("eval_time_s"), "ari": m["final"].get("ari"), "n_cells": m["final"]["n_cells"]}


def report(results: dict) -> str:
    """One markdown row per size of a results file."""
    procs = ("ray::RayTrainWorker", "driver", "ray::TrainController", "gcs_server")
    rows = []
    for r in results["sizes"]:
        g, p, ts, tm = r.get("generate"), r.get("prepare"), r["train_stream"], r["train_memory"]
        rows.append([f"{r['cells']:,}", f"{g['wall_s']:.0f} ({g['max_process_gib']:.2f})" if g else "-",
                     f"{p['wall_s']:.0f}, {p['cells_per_s']:,.0f} ({p['max_process_gib']:.2f})" if p else "-",
                     f"{r['store_gib']:.2f}", f"{ts['epoch_time_s']:.1f}, {ts['cells_per_s_per_worker']:,.0f}",
                     f"{tm['cells_per_s_per_worker']:,.0f} ({tm['n_cells']:,})", f"{r['stream_vs_memory']:.2f}",
                     " / ".join(f"{ts['per_label_max_gib'].get(k, float('nan')):.2f}" for k in procs),
                     f"{ts['eval_time_s']:.1f}", f"{ts['ari']:.3f}"])
    return "\n".join(md_table(
        ["cells", "generate raw: s (peak GiB)", "prepare: s, cells/s (peak GiB)", "store GiB",
         "streamed epoch: s, cells/s/worker", "in memory: cells/s/worker (subset)", "stream / memory",
         "peak RSS GiB in training: Train worker / driver / TrainController / gcs_server", "rank-0 evaluation s",
         "ARI after the epoch"], rows)) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--cells", type=int, nargs="+", default=[100_000, 1_000_000])
    ap.add_argument("--genes", type=int, default=20_000)
    ap.add_argument("--types", type=int, default=10)
    ap.add_argument("--hvg", type=int, default=2000)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--memory-cells", type=int, default=30_000, help="subset size of the in-memory comparison")
    ap.add_argument("--workdir", default="/tmp/jojoscl-scale")
    ap.add_argument("--json", default=None)
    ap.add_argument("--report", metavar="JSON", help="print the markdown table of a results file and exit")
    args = ap.parse_args()
    if args.report:
        print(report(json.loads(Path(args.report).read_text())), end="")
        return
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    results = {"command": " ".join([Path(PY).name, *sys.argv]), "sizes": [],
               "machine": f"{machine()}, {psutil.virtual_memory().total / 2**30:.0f} GiB"}
    for n in args.cells:
        d = work / f"n{n}"
        raw, store, sub = d / "raw.zarr", d / "prepared.zarr", d / "subset.h5ad"
        shutil.rmtree(d, ignore_errors=True)
        d.mkdir(parents=True)
        r: dict = {"cells": n, "genes": args.genes}
        r["generate"] = run_stage("generate", [PY, "-m", "jojoscl_dist.data.synthetic", "--cells", str(n), "--genes",
                                               str(args.genes), "--types", str(args.types), "--output", str(raw), "-q"], d)
        r["prepare"] = run_stage("prepare", [PY, "-m", "jojoscl_dist.prepare", "--input", str(raw), "--output",
                                             str(store), "--n-top-genes", str(args.hvg), "-q"], d)
        r["prepare"]["cells_per_s"] = n / r["prepare"]["wall_s"]
        r["store_gib"] = sum(f.stat().st_size for f in store.rglob("*") if f.is_file()) / 2**30
        r["train_stream"] = train_stage("train_stream", store, d, args)
        write_subset_h5ad(raw, min(args.memory_cells, n), sub)
        r["train_memory"] = train_stage("train_memory", sub, d, args)
        r["stream_vs_memory"] = r["train_stream"]["cells_per_s_per_worker"] / r["train_memory"]["cells_per_s_per_worker"]
        results["sizes"].append(r)
        print(json.dumps(r, indent=1), flush=True)
        shutil.rmtree(raw, ignore_errors=True)
        shutil.rmtree(store, ignore_errors=True)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
