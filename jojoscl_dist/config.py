"""Typed configuration: every default of jojoscl-dist lives here.

Sources of defaults are given beside each field: "paper" (arXiv 2506.00410), "ref" (the authors' code,
ziwenwang28/JojoSCL), "CC" (Contrastive Clustering, Li et al. 2021) or "ours" (set on measurement; see
docs/decisions.md for the evidence behind each).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args, get_origin, get_type_hints

import yaml

InputScale = Literal["auto", "counts", "normalized", "log"]
HvgFlavor = Literal["auto", "seurat", "seurat_v3", "pearson_residuals", "cell_ranger"]
SureVariant = Literal["cross", "same"]
LabelMethod = Literal["kmeans", "head"]
KMeansBackend = Literal["torch", "faiss"]
SelectionRule = Literal["stability", "silhouette", "last"]
KRule = Literal["leiden", "silhouette"]
KMeansSelect = Literal["inertia", "consensus"]


@dataclass
class DataConfig:
    path: str | None = None  # None: the packaged synthetic demo atlas
    label_key: str | None = None  # obs column with the truth; evaluation only (and K when n_clusters is None)
    n_clusters: int | str | None = None  # K; None -> number of distinct labels in label_key; "auto" -> k_rule
    k_rule: KRule = "leiden"  # ours: label-free K rule for n_clusters="auto" (docs/decisions.md)
    k_resolution: float = 1.0  # Leiden resolution of k_rule "leiden" (ours: 1.0 beat 0.5)
    n_top_genes: int = 2000  # paper: top-2000 HVG (1000 and 3000 measured: docs/decisions.md)
    # ours: Seurat dispersion; on sparse counts the Seurat v3 variance, or Pearson residuals where its trend cannot
    # be fitted (data/preprocess.py). "cell_ranger" is a per-data-set option. Why: docs/decisions.md
    hvg_flavor: HvgFlavor = "auto"
    input_scale: InputScale = "auto"  # auto: integer counts -> normalise+log1p; non-integer -> see data.preprocess
    # counts: each cell is scaled to this total before log1p. "median": the median total (scanpy, the reference);
    # "auto" (ours): the median, capped at 1e5 so one read of a deep library does not weigh log1p(1) (docs/decisions.md)
    target_sum: float | str = "auto"
    scale_clip: float | None = None  # per-gene z-score clipping (reference: none; 10 measured: docs/decisions.md)
    chunk_size: int = 4096  # rows per streaming chunk for preprocessing statistics
    # Atlas scale (prepared Zarr stores; see jojoscl_dist/prepare.py and docs/benchmarks.md "Scale")
    store_chunk_rows: int = 2048  # ours: rows per chunk of a prepared store's X (16 MB at 2000 HVG)
    shuffle_buffer_chunks: int = 8  # ours: chunks whose rows are shuffled together when streaming a store
    prefetch_batches: int = 4  # batches read ahead in a background thread
    prepare_above_cells: int = 500_000  # raw input larger than this is prepared into a store, then streamed
    prepare_above_bytes: int = 2 * 1024**3  # ... or a raw input file larger than this
    demo_cells: int = 3000  # synthetic demo atlas size when path is None
    demo_genes: int = 3000
    demo_types: int = 6


@dataclass
class ModelConfig:
    hidden_dims: tuple[int, ...] = (512, 256)  # paper: G -> 512 -> 256 -> 128
    latent_dim: int = 128  # paper (64 measured: docs/decisions.md)
    instance_dim: int = 192  # paper: instance head 128 -> 192 -> 192 (128 measured: docs/decisions.md)
    cluster_hidden: int = 64  # paper: cluster head 128 -> 64 -> K (128 measured: docs/decisions.md)
    # ours: >0 -> the encoder reads the augmented cell projected on the input's top PCs (fixed; model/jojoscl.py).
    # Off by default: it helps some sets and loses on the 21-set mean (docs/decisions.md)
    input_pcs: int = 0
    mask_keep: float = 0.1  # ref: inverted dropout p=0.9 -> keep 10%, survivors x10 (docs/decisions.md)
    mask_min_nonzero: float = 10.0  # ours: on sparse data raise the keep rate (<= 0.5) so a view keeps this many
    #                                 of a cell's non-zero genes on average; 0 = the reference's fixed rate
    noise_std: float = 0.1  # ref: Gaussian noise N(0, 0.1^2)
    momentum: float = 0.5  # ref: theta_k <- m*theta_k + (1-m)*theta_q


@dataclass
class LossConfig:
    # ours: equal weights; doubling either was no better (docs/decisions.md)
    alpha: float = 1.0  # weight of L_INS
    beta: float = 1.0  # weight of L_CLU
    w_sure: float = 1.0  # paper: 1; here L_SURE trains, unlike the reference's (docs/decisions.md)
    tau_instance: float = 0.07  # ref/paper (0.05, 0.2 and 0.5 measured: docs/decisions.md)
    tau_cluster: float = 1.0  # CC: 1.0
    sure_variant: SureVariant = "cross"  # ours: prior from the key view; the same-view value is 0 (docs/decisions.md)
    kmeans_iters: int = 10  # ours: Lloyd iterations of the warm-started per-batch k-means (docs/decisions.md)
    kmeans_warm_start: bool = True  # carry centroids from the previous step (ours: speed)
    kmeans_backend: KMeansBackend = "torch"  # per-batch Lloyd: torch on the model's device, or faiss (GPU/CPU)
    reference_compatible: bool = False  # reproduce the authors' quirks (comparison only)


@dataclass
class OptimConfig:
    epochs: int = 100  # ours: small sets degrade with longer training (docs/decisions.md)
    batch_size: int = 256  # GLOBAL batch; each of N workers takes batch_size / N
    lr: float = 3e-4  # ours: the reference's 0.2 collapsed the cluster head (docs/decisions.md)
    weight_decay: float = 0.0  # ours: 1e-4 was worse (docs/decisions.md)
    schedule: Literal["constant", "cosine"] = "constant"
    min_steps: int = 0  # if >0, raise epochs so that small datasets still get this many optimiser steps
    precision: Literal["fp32", "bf16"] = "fp32"  # bf16: autocast forward passes (GPU speed option)


@dataclass
class EvalConfig:
    eval_every: int = 5  # epochs between label-free evaluations (candidates for the selection rule)
    selection: SelectionRule = "silhouette"  # ours: label-free pick (docs/decisions.md)
    select_from: float = 0.2  # ours: evaluations in the first 20% of epochs are never picked (docs/decisions.md)
    label_method: LabelMethod = "kmeans"  # final labels: k-means on the instance embedding z, or head argmax
    kmeans_restarts: int = 40  # ours: final k-means restarts, k-means++ seeded (docs/decisions.md)
    # ours: keep the restart that agrees most with the others, not the lowest inertia (cluster/kmeans.py)
    kmeans_select: KMeansSelect = "consensus"
    # ours: the final k-means clusters [z, w * PCA(n) of the input] (cluster/input_pca.py); 0 = z alone.
    # The two views fail on different sets (docs/decisions.md)
    input_pca_weight: float = 1.5
    # ours: 20 components beat 10-50 (docs/decisions.md)
    input_pca_components: int = 20  # input principal components appended to z
    max_eval_cells: int = 20000  # ours: in-training evaluations embed a seeded sample of this many cells (atlases)
    final_fit_cells: int = 100000  # ours: on a prepared store, the final k-means fits on a seeded sample this size


@dataclass
class RunConfig:
    seed: int = 0
    num_workers: int = 1
    # Ray CPUs per Train worker, which set its torch threads; None: the local cluster's CPUs shared out. The
    # sweep's best-config rerun sets the trials' value: float results depend on the thread count.
    cpus_per_worker: int | None = None
    use_gpu: bool | None = None  # None: use CUDA when available
    output: str = "runs/jojoscl"
    run_name: str | None = None
    storage_path: str | None = None  # Ray Train storage; default <output>/ray
    max_failures: int = 0
    checkpoint_every: int = 1  # epochs between checkpoints (the last epoch always); see docs/decisions.md
    overwrite: bool = False
    tracking: bool = True
    tracking_uri: str | None = None  # default sqlite under the output directory
    experiment: str = "jojoscl"
    quiet: bool = False
    obs_key: str = "jojoscl_cluster"  # obs column of the clusters in the annotated copy of the input
    plots: bool = True  # umap.png, curves.png and summary.md in the run directory


@dataclass
class JojoConfig:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    run: RunConfig = field(default_factory=RunConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "JojoConfig":
        return _build(cls, d or {})

    def save(self, path: str | Path) -> None:
        path = Path(path)
        text = yaml.safe_dump(_plain(self.to_dict()), sort_keys=False)
        path.write_text(text)

    @classmethod
    def load(cls, path: str | Path) -> "JojoConfig":
        path = Path(path)
        text = path.read_text()
        d = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
        return cls.from_dict(d)

    def override(self, dotted: dict[str, Any]) -> "JojoConfig":
        """Return a copy with 'section.field' keys replaced (used by the CLI and Tune)."""
        d = self.to_dict()
        for key, value in dotted.items():
            section, name = key.split(".", 1)
            if section not in d or name not in d[section]:
                raise KeyError(f"unknown config key {key!r}")
            d[section][name] = value
        return JojoConfig.from_dict(d)


def _plain(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    return obj


def _build(cls: type, d: dict[str, Any]) -> Any:
    hints = get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = set(d) - known
    if unknown:
        raise KeyError(f"unknown config keys for {cls.__name__}: {sorted(unknown)}")
    kwargs = {}
    for name, value in d.items():
        tp = hints[name]
        if dataclasses.is_dataclass(tp):
            kwargs[name] = _build(tp, value or {})
        elif get_origin(tp) is tuple and value is not None:
            kwargs[name] = tuple(value)
        else:
            _check_literal(cls.__name__, name, tp, value)
            kwargs[name] = value
    return cls(**kwargs)


def _check_literal(owner: str, name: str, tp: Any, value: Any) -> None:
    if get_origin(tp) is Literal and value not in get_args(tp):
        raise ValueError(f"{owner}.{name} must be one of {get_args(tp)}, got {value!r}")
