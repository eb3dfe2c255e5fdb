"""Training throughput against this machine's FLOP bound, a per-phase step profile, and CLI wall times.

    PYTHONPATH=. python bench/throughput.py --data /work/shared/data/10X_PBMC_top2000.h5ad [--cli] \
        [--baseline-src DIR] [--write-docs docs/benchmarks.md]
    PYTHONPATH=. python bench/throughput.py --from-json bench/results/speed/throughput.json --write-docs docs/benchmarks.md

Measures: fp32 matmul GFLOP/s (2048^3, median) around the runs; steady-state cells/s of the real per-worker loop
(``train_worker`` through ``LocalSession``, median over epochs after the first) at each batch size, each in a
subprocess, alternating with the checkout ``--baseline-src``; the FLOP bound (FLOPs per cell from the layer
shapes / matmul rate); the phases of one step timed apart (the loop's own functions) with evaluation, checkpoint
and data costs; with ``--cli`` the wall time of a default ``python -m jojoscl_dist.train`` with 0 and 1 Ray workers.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from bench.common import load_labelled, machine, md_table

REPO = Path(__file__).resolve().parents[1]


def matmul_gflops(n: int = 2048, reps: int = 12) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    for _ in range(3):
        a @ b
    ts = []
    for _ in range(reps):
        t = time.perf_counter()
        a @ b
        ts.append(time.perf_counter() - t)
    return 2 * n ** 3 / float(np.median(ts)) / 1e9


def flops_per_cell(n_genes: int, k: int, batch: int, hidden=(512, 256), latent=128, inst=192, ch=64,
                   kmeans_iters: int = 10) -> dict[str, float]:
    """Multiply-add FLOPs (2 per MAC) per cell of one training step, from the layer shapes.

    Query encoder: forward 1x, backward 2x (input and weight gradients) except the first layer, whose input
    needs no gradient (1x). Key encoder: forward only. Heads: on the query view fwd+bwd (3x), on the key view
    fwd + weight gradients (2x). Losses: the 2N x 2N similarity of L_INS (fwd + 2 bwd matmuls) and the 2K x 2K
    of L_CLU. k-means: niter+1 distance matmuls N x K x d. Elementwise work (BN, ReLU, augmentation) is not
    counted: the bound is a matmul bound.
    """
    dims = (n_genes, *hidden, latent)
    enc = [2 * a * b for a, b in zip(dims[:-1], dims[1:])]
    heads = 2 * (latent * inst + inst * inst + latent * ch + ch * k)
    n2 = 2 * batch
    out = {
        "query_encoder_fwd_bwd": enc[0] * 2 + sum(enc[1:]) * 3,
        "key_encoder_fwd": sum(enc),
        "heads": heads * 3 + heads * 2,
        "l_ins": 3 * 2 * n2 * n2 * inst / batch,
        "l_clu": 3 * 2 * (2 * k) ** 2 * batch / batch,
        "kmeans": 2 * k * latent * (kmeans_iters + 1),
    }
    out["total"] = sum(out.values())
    return out


def loop_throughput(data: str, batch: int, epochs: int, threads: int) -> dict:
    """Steady-state cells/s of train_worker (LocalSession), eval only at the end."""
    torch.set_num_threads(threads)
    import jojoscl_dist
    from jojoscl_dist.config import JojoConfig
    from jojoscl_dist.data.loader import ArraySource
    from jojoscl_dist.train.loop import WorkerData, train_worker
    from jojoscl_dist.train.session import LocalSession

    x, y = load_labelled(data)
    cfg = JojoConfig()
    cfg.optim.epochs, cfg.optim.batch_size = epochs, batch
    gf_before = matmul_gflops(reps=6)
    cfg.eval.eval_every = 10 ** 6
    stamps: list[float] = []
    with tempfile.TemporaryDirectory() as tmp:
        s = LocalSession(tmp, device="cpu", on_report=lambda m: stamps.append(time.perf_counter()))
        t0 = time.perf_counter()
        train_worker(cfg, WorkerData(ArraySource(x), len(np.unique(y)), y), s)
    gf = (gf_before + matmul_gflops(reps=6)) / 2  # the machine is shared: the rate around this measurement
    cps = [m["cells_per_s"] for m in s.metrics[1:]]
    walls = np.diff([t0] + stamps)[1:-1]  # per-epoch wall incl. reporting/checkpoint, without the final eval
    return {"batch": batch, "cells_per_s": float(np.median(cps)), "cells_per_s_all": cps,
            "epoch_train_s": float(np.median([m["epoch_time_s"] for m in s.metrics[1:]])),
            "epoch_wall_s": float(np.median(walls)) if len(walls) else float("nan"),
            "final_loss": s.metrics[-1]["loss"], "threads": torch.get_num_threads(), "gflops_around": gf,
            "package": str(Path(jojoscl_dist.__file__).parent)}


def profile_step(data: str, batch: int, steps: int, threads: int) -> dict[str, float]:
    """ms per step in each phase (and per-epoch costs), timed with the loop's own building blocks."""
    torch.set_num_threads(threads)
    from jojoscl_dist.clustering.kmeans import BatchKMeans, fit_kmeans
    from jojoscl_dist.clustering.selection import Selector
    from jojoscl_dist.config import JojoConfig
    from jojoscl_dist.data.loader import ArraySource, epoch_batches
    from jojoscl_dist.losses import cluster_contrastive_loss, instance_contrastive_loss, sure_loss
    from jojoscl_dist.model import JojoSCL, augment, momentum_update
    from jojoscl_dist.model.jojoscl import make_key_encoder
    from jojoscl_dist.train import loop as L
    from jojoscl_dist.train.checkpoint import save_state
    from jojoscl_dist.train.embed import embed

    x, y = load_labelled(data)
    k = len(np.unique(y))
    cfg = JojoConfig()
    mc, lc = cfg.model, cfg.loss
    model = JojoSCL(x.shape[1], k)
    key = make_key_encoder(model.encoder)
    # Older checkouts (--baseline-src) lack make_adam and the noise pool.
    opt = L.make_adam(model, 1e-3, 0.0, torch.device("cpu")) if hasattr(L, "make_adam") else \
        torch.optim.Adam(model.parameters(), lr=1e-3, foreach=True)
    km = BatchKMeans(k, niter=lc.kmeans_iters)
    gen = torch.Generator().manual_seed(0)
    try:
        from jojoscl_dist.model import NoisePool
        pool = NoisePool(batch * x.shape[1], mc.noise_std, gen, "cpu")
    except ImportError:
        pool = None
    pool_arg = () if pool is None else (pool,)
    src = ArraySource(x)
    T: dict[str, float] = {}
    idxs = [b for e in range(4) for b in epoch_batches(x.shape[0], batch, 1, 0, 0, e)]

    def lap(name: str, t0: float) -> float:
        t = time.perf_counter()
        T[name] = T.get(name, 0.0) + t - t0
        return t

    for i in range(steps + 3):
        if i == 3:
            T.clear()  # 3 warm-up steps
        t = time.perf_counter()
        xb = torch.as_tensor(src.rows(idxs[i % len(idxs)]))
        t = lap("data_loading", t)
        xa = augment(xb, mc.mask_keep, mc.noise_std, gen, *pool_arg)
        xk = augment(xb, mc.mask_keep, mc.noise_std, gen, *pool_arg)
        t = lap("augmentation", t)
        with torch.no_grad():
            h_b = key(xk)
        t = lap("key_forward", t)
        h_a, z_a, y_a, z_b, y_b = model(xa, h_b)
        t = lap("query_forward_heads", t)
        loss = instance_contrastive_loss(z_a, z_b, lc.tau_instance) + cluster_contrastive_loss(y_a, y_b, lc.tau_cluster)
        t = lap("losses_ins_clu", t)
        assign = km(h_a.detach())
        t = lap("kmeans", t)
        loss = loss + sure_loss(h_a, assign, h_b)
        t = lap("loss_sure", t)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        t = lap("backward", t)
        opt.step()
        t = lap("optimizer", t)
        momentum_update(key, model.encoder, mc.momentum)
        t = lap("momentum_update", t)
    out = {f"{n}_ms": 1e3 * v / steps for n, v in T.items()}
    out["step_total_ms"] = sum(out.values())

    def ms(name: str, fn) -> None:  # a per-epoch cost
        t = time.perf_counter()
        fn()
        out[name] = 1e3 * (time.perf_counter() - t)

    def evaluate() -> None:
        emb = embed(model, src)
        Selector().update(0, emb["z"], fit_kmeans(emb["z"], k, seed=0, restarts=L.EVAL_KMEANS_RESTARTS))

    ms("evaluation_per_eval_ms", evaluate)
    if pool is not None:
        ms("noise_refill_per_epoch_ms", pool.refill)
    state = {"model": model.state_dict(), "key_encoder": key.state_dict(), "optimizer": opt.state_dict(),
             "best_model": {n: v.clone() for n, v in model.state_dict().items()}}
    with tempfile.TemporaryDirectory() as tmp:
        ms("checkpoint_save_ms", lambda: save_state(tmp, state))
        out["checkpoint_mb"] = os.path.getsize(Path(tmp) / "state.pt") / 2 ** 20
        ms("checkpoint_copy_ms", lambda: shutil.copytree(tmp, Path(tmp) / "copy"))
    return out


def run_cli(data: str, workers: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "jojoscl_dist.train", "--data", data, "--label-key", "cell_type",
               "--num-workers", str(workers), "--output", f"{tmp}/out", "--no-tracking", "-q"]
        t = time.perf_counter()
        r = subprocess.run(cmd, env=dict(os.environ, PYTHONPATH=str(REPO), RAY_DEDUP_LOGS="0"), capture_output=True,
                           text=True, timeout=1800)
        wall = time.perf_counter() - t
        if r.returncode != 0:
            return {"workers": workers, "error": r.stderr[-2000:]}
        m = json.loads((Path(tmp) / "out" / "metrics.json").read_text())
        hist = m["history"]
        return {"workers": workers, "wall_s": wall, "train_s": m["final"]["time_train_s"],
                "epochs": m["final"]["epochs"], "ari": m["final"].get("ari"),
                "train_loop_s": sum(h["epoch_time_s"] for h in hist),
                "eval_s": sum(h.get("eval_time_s", 0.0) for h in hist),
                "torch_threads": hist[-1].get("torch_threads"), "cmd": " ".join(cmd[1:])}


def sub(src: str, fn: str, *args) -> dict:
    """Run one measurement of this file in a subprocess: this checkout's bench package on src's jojoscl_dist."""
    code = ("import importlib.util as u, json, sys; "
            f"s = u.spec_from_file_location('bench', {str(REPO / 'bench' / '__init__.py')!r}); "
            "sys.modules['bench'] = b = u.module_from_spec(s); s.loader.exec_module(b); "
            f"from bench import throughput as T; print('RESULT', json.dumps(T.{fn}(*{args!r})))")
    # cwd=src too: "python -c" puts the cwd first on sys.path, which would otherwise import this checkout.
    r = subprocess.run([sys.executable, "-c", code], env=dict(os.environ, PYTHONPATH=src), capture_output=True,
                       text=True, timeout=1800, cwd=src)
    line = [ln for ln in r.stdout.splitlines() if ln.startswith("RESULT ")]
    if not line:
        raise RuntimeError(r.stderr[-3000:])
    return json.loads(line[-1][7:])


def measure(a: argparse.Namespace, command: str) -> dict:
    import anndata as ad

    res: dict = {"machine": f"{machine()}, torch {torch.__version__}, threads {a.threads}",
                 "command": command, "loop": [], "gflops": [matmul_gflops()]}
    f = ad.read_h5ad(a.data, backed="r")
    k, n_genes = f.obs["cell_type"].nunique(), min(2000, f.n_vars)
    f.file.close()
    srcs = {"this": str(REPO)} | ({"baseline": a.baseline_src} if a.baseline_src else {})
    for b in a.batches:
        for r in range(a.repeats):
            for name, src in srcs.items():
                m = sub(src, "loop_throughput", a.data, b, a.epochs, a.threads)
                m["code"], m["repeat"] = name, r
                m["ratio_local"] = m["cells_per_s"] / (m["gflops_around"] * 1e9 / flops_per_cell(n_genes, k, b)["total"])
                res["loop"].append(m)
                print(f"loop [{name}] batch {b}: {m['cells_per_s']:.0f} cells/s, {m['ratio_local']:.0%} of the bound "
                      f"at {m['gflops_around']:.0f} GFLOP/s [{m['package']}]", flush=True)
        res["gflops"].append(matmul_gflops())
    g = float(np.median(res["gflops"]))  # the machine is shared: the bound uses the median rate
    res["bound"] = {}
    for b in a.batches:
        f = flops_per_cell(n_genes, k, b)
        bound = g * 1e9 / f["total"]
        ms = {n: [m for m in res["loop"] if m["batch"] == b and m["code"] == n] for n in srcs}
        got = {n: float(np.median([m["cells_per_s"] for m in v])) for n, v in ms.items()}
        res["bound"][b] = {"mflop_per_cell": f["total"] / 1e6, "flops": f, "bound_cells_per_s": bound,
                           **{f"{n}_ratio_local": float(np.median([m["ratio_local"] for m in v])) for n, v in ms.items()},
                           **{f"{n}_cells_per_s": v for n, v in got.items()},
                           **{f"{n}_ratio": v / bound for n, v in got.items()}}
    res["profile"] = {n: sub(src, "profile_step", a.data, a.batches[0], a.profile_steps, a.threads)
                      for n, src in srcs.items()}
    if a.cli:
        res["cli"] = [run_cli(a.data, w) for w in (0, 1)]
    return res


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default="/work/shared/data/10X_PBMC_top2000.h5ad")
    ap.add_argument("--batches", type=int, nargs="+", default=[256, 1024])
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--repeats", type=int, default=2, help="alternating repeats of each loop measurement")
    ap.add_argument("--baseline-src", help="another checkout to measure side by side (PYTHONPATH of it)")
    ap.add_argument("--profile-steps", type=int, default=30)
    ap.add_argument("--cli", action="store_true", help="also time full default CLI runs (minutes)")
    ap.add_argument("--write-docs", help="write the results into this markdown file's 'Speed' section")
    ap.add_argument("--from-json", help="measure nothing: take the results from this file (the JSON line printed)")
    a = ap.parse_args(argv)
    if a.from_json:
        res = json.loads(Path(a.from_json).read_text())
    else:
        torch.set_num_threads(a.threads)
        res = measure(a, "PYTHONPATH=. python bench/throughput.py " + " ".join(argv if argv is not None else sys.argv[1:]))
        print("JSON", json.dumps(res))
    if a.write_docs:
        write_docs(Path(a.write_docs), res)
    return 0


def write_docs(path: Path, res: dict) -> None:
    codes = sorted({m["code"] for m in res["loop"]})
    lines = ["## Speed", "", f"Machine: {res['machine']}. Command: `{res['command']}`.", "",
             f"fp32 matmul (2048^3): {', '.join(f'{v:.0f}' for v in res['gflops'])} GFLOP/s across the run "
             "(the machine is shared: the bound uses the median).", "",
             "Ratio = cells/s / bound; 'local' divides each measurement by the bound at the matmul rate measured "
             "just around it (robust to the load changing during the run).", ""]
    lines += md_table(["batch", "MFLOP/cell", "bound cells/s", *(f"{n} cells/s (ratio; local)" for n in codes)], [
        [b, f"{r['mflop_per_cell']:.2f}", f"{r['bound_cells_per_s']:.0f}",
         *(f"{r[f'{n}_cells_per_s']:.0f} ({r[f'{n}_ratio']:.0%}; {r[f'{n}_ratio_local']:.0%})" for n in codes)]
        for b, r in res["bound"].items()])
    lines += ["", "Each repeat's cells/s, epoch times and matmul rate: `loop` in the stored JSON."]
    for name, p in res["profile"].items():
        lines += ["", f"Profile ({name}), ms per step at batch {res['loop'][0]['batch']} and per-epoch costs:", ""]
        lines += md_table(["phase", "ms"], [[k, f"{v:.2f}"] for k, v in p.items()])
    for c in res.get("cli", []):
        lines += ["", f"- CLI `{c.get('cmd', '')}`: " + ", ".join(
            f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in c.items() if k != "cmd")]
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    start = text.find("## Speed")
    end = text.find("\n## ", start + 1) if start >= 0 else -1
    before = text[:start] if start >= 0 else text.rstrip("\n") + "\n\n"
    path.write_text(before + "\n".join(lines) + "\n\n" + (text[end + 1:] if end >= 0 else ""))


if __name__ == "__main__":
    sys.exit(main())
