"""`python -m jojoscl_dist.train`: arguments -> JojoConfig (defaults: config.py, or --config FILE) -> run."""

from __future__ import annotations

import argparse
import logging
import sys
import warnings

from jojoscl_dist.version import __version__
from jojoscl_dist.config import ConfigValueError, JojoConfig
from jojoscl_dist.data.preprocess import TARGET_SUM_HELP, target_sum_arg
from jojoscl_dist.errors import JojoInputError, TrackingError, TrainingFailed


def n_clusters_arg(v: str) -> int | str:
    if v == "auto":
        return v
    try:
        return int(v)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer or 'auto', got {v!r}") from None


# (flag, config key, type, help)
OPTIONS: list[tuple[str, str, type, str]] = [
    ("--data", "data.path", str, "input: .h5ad, .h5 (X/Y or 10x), .zarr, 10x folder; none = synthetic demo"),
    ("--label-key", "data.label_key", str, "obs column with true labels (evaluation only; gives K if --n-clusters absent)"),
    ("--n-clusters", "data.n_clusters", n_clusters_arg, "number of clusters K, or 'auto' (label-free: --k-rule)"),
    ("--k-rule", "data.k_rule", str, "rule for --n-clusters auto: leiden | silhouette"),
    ("--obs-key", "run.obs_key", str, "obs column for the clusters in the annotated copy of the input"),
    ("--n-top-genes", "data.n_top_genes", int, "highly variable genes kept (default 2000)"),
    ("--input-scale", "data.input_scale", str, "auto | counts | normalized | log"),
    ("--target-sum", "data.target_sum", target_sum_arg, TARGET_SUM_HELP),
    ("--hvg-flavor", "data.hvg_flavor", str, "gene ranking: auto (Seurat v3 on sparse counts) | seurat | seurat_v3 | pearson_residuals | cell_ranger"),
    ("--num-workers", "run.num_workers", int, "Ray Train workers (0 = in-process, no Ray)"),
    ("--epochs", "optim.epochs", int, "training epochs"),
    ("--batch-size", "optim.batch_size", int, "global batch size (split across workers)"),
    ("--lr", "optim.lr", float, "Adam learning rate"),
    ("--seed", "run.seed", int, "the one seed of every random source"),
    ("--output", "run.output", str, "run directory"),
    ("--storage-path", "run.storage_path", str, "Ray Train storage (checkpoints); shared storage on a cluster"),
    ("--run-name", "run.run_name", str, "Ray Train run name (same name + storage = resume)"),
    ("--max-failures", "run.max_failures", int, "worker failures Ray Train recovers from"),
    ("--tracking-uri", "run.tracking_uri", str, "MLflow tracking URI (default: sqlite under --output)"),
    ("--experiment", "run.experiment", str, "MLflow experiment name"),
    ("--register-model", "run.register_model", str, "register the run's MLflow model under this name"),
    ("--alpha", "loss.alpha", float, "weight of the instance loss"),
    ("--beta", "loss.beta", float, "weight of the cluster loss"),
    ("--w-sure", "loss.w_sure", float, "weight of the SURE loss"),
    ("--tau-instance", "loss.tau_instance", float, "instance temperature"),
    ("--tau-cluster", "loss.tau_cluster", float, "cluster temperature"),
    ("--sure-variant", "loss.sure_variant", str, "cross | same"),
    ("--kmeans-backend", "loss.kmeans_backend", str, "per-batch k-means: torch (on the model device) | faiss"),
    ("--input-pcs", "model.input_pcs", int, "encoder input: the cell projected on the input's top N principal "
     "components (0 = the genes, the default; see docs/method.md)"),
    ("--selection", "eval.selection", str, "label-free model selection: last | silhouette | stability"),
    ("--label-method", "eval.label_method", str, "final labels: kmeans | leiden (kNN graph, K) | head (argmax)"),
    ("--input-pca-weight", "eval.input_pca_weight", float, "weight of the input's PCA coordinates beside z "
     "in the final k-means (0 = z alone)"),
    ("--input-pca-components", "eval.input_pca_components", int, "input principal components beside z"),
    ("--kmeans-restarts", "eval.kmeans_restarts", int, "final k-means restarts"),
    ("--kmeans-select", "eval.kmeans_select", str, "final k-means restart kept: consensus (agrees most with the "
     "others) | inertia (lowest)"),
    ("--eval-every", "eval.eval_every", int, "epochs between evaluations"),
    ("--placement", "run.placement", str, "Ray worker placement: PACK (fewest nodes) | SPREAD | STRICT_SPREAD "
     "(one worker per node)"),
    ("--cpus-per-worker", "run.cpus_per_worker", int, "Ray CPUs (torch threads) per worker (default: the "
     "cluster's CPUs shared out)"),
    ("--gpu-wait", "run.gpu_wait_s", float, "with --use-gpu on Ray: seconds to wait for a GPU per worker to join "
     "the cluster (autoscaling) before failing (default 300)"),
    ("--checkpoint-every", "run.checkpoint_every", int, "epochs between checkpoints (the last one always)"),
    ("--precision", "optim.precision", str, "fp32 | bf16 (autocast forward passes; a GPU speed option)"),
]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m jojoscl_dist.train", description="Train JojoSCL on Ray Train and "
                                "write label-free clusters.")
    p.add_argument("--version", action="version", version=f"jojoscl-dist {__version__}")
    p.add_argument("--config", help="YAML/JSON config file (e.g. a sweep's best.yaml); flags override it")
    for flag, key, tp, help_ in OPTIONS:
        p.add_argument(flag, dest=key, type=tp, default=None, help=help_)
    p.add_argument("--use-gpu", dest="run.use_gpu", action="store_const", const=True, default=None,
                   help="train on CUDA (default: in-process when CUDA is available; on Ray when the cluster has a GPU per worker)")
    p.add_argument("--cpu", dest="run.use_gpu", action="store_const", const=False, help="never use a GPU")
    p.add_argument("--overwrite", dest="run.overwrite", action="store_const", const=True, default=None,
                   help="replace an earlier run in --output")
    p.add_argument("--no-tracking", dest="run.tracking", action="store_const", const=False, default=None,
                   help="do not log to MLflow")
    p.add_argument("--reference-compatible", dest="loss.reference_compatible", action="store_const", const=True,
                   default=None, help="reproduce the authors' loss quirks (comparison only)")
    p.add_argument("--no-plots", dest="run.plots", action="store_const", const=False, default=None,
                   help="skip umap.png / curves.png / summary.md")
    p.add_argument("-q", "--quiet", dest="run.quiet", action="store_const", const=True, default=None)
    return p


def config_from_args(argv: list[str] | None = None) -> JojoConfig:
    args = vars(build_parser().parse_args(argv))
    path = args.pop("config")
    cfg = JojoConfig.load(path) if path else JojoConfig()
    return cfg.override({k: v for k, v in args.items() if v is not None})


FLAG_OF = {key: flag for flag, key, _, _ in OPTIONS}


def input_error_line(e: JojoInputError) -> str:
    """The error's message, naming the command-line flag of a config value where there is one."""
    if isinstance(e, ConfigValueError) and e.key in FLAG_OF:
        return e.named(f"{FLAG_OF[e.key]} ({e.key})")
    return str(e)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="jojoscl: %(levelname)s: %(message)s")
    logging.getLogger("faiss").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", category=FutureWarning)
    try:
        cfg = config_from_args(argv)
        from jojoscl_dist.train.run import run

        result = run(cfg)
    except JojoInputError as e:  # only our input errors; anything else is a bug and keeps its traceback
        print(f"jojoscl: error: {input_error_line(e)}", file=sys.stderr)
        return 2
    except (TrainingFailed, TrackingError) as e:  # the same command resumes the run, or retries the logging
        print(f"jojoscl: error: {e}", file=sys.stderr)
        return 1
    m = result.metrics
    line = (f"jojoscl: {m['n_cells']} cells -> {m['n_clusters_found']} clusters "
            f"(epoch {m['selected_epoch']} by '{m['selection_rule']}', label-free)")
    if "ari" in m:
        line += f"; vs labels ARI {m['ari']:.4f} NMI {m['nmi']:.4f} ACC {m['acc']:.4f}"
    print(line + f"; {m['time_total_s']:.1f} s; outputs in {result.output}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
