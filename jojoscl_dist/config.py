"""Typed configuration: every default of jojoscl-dist. Each field's source: "paper" (arXiv 2506.00410), "ref" (the
authors' code, ziwenwang28/JojoSCL), "CC" (Contrastive Clustering, Li et al. 2021) or "ours"; docs/decisions.md
gives the measurements behind each."""

from __future__ import annotations

import dataclasses
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from types import UnionType
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints

import yaml

from jojoscl_dist.errors import JojoInputError

InputScale = Literal["auto", "counts", "normalized", "log"]
HvgFlavor = Literal["auto", "seurat", "seurat_v3", "pearson_residuals", "cell_ranger"]
SureVariant = Literal["cross", "same"]
LabelMethod = Literal["kmeans", "leiden", "head"]
KMeansBackend = Literal["torch", "faiss"]
SelectionRule = Literal["stability", "silhouette", "last"]
KRule = Literal["leiden", "silhouette"]
KMeansSelect = Literal["inertia", "consensus"]


@dataclass
class DataConfig:
    path: str | None = None  # None: the packaged synthetic demo atlas
    label_key: str | None = None  # obs column with the truth; evaluation only (and K when n_clusters is None)
    n_clusters: int | str | None = None  # K; None -> number of distinct labels in label_key; "auto" -> k_rule
    k_rule: KRule = "leiden"  # ours: label-free K rule for n_clusters="auto"
    k_resolution: float = 1.0  # ours: Leiden resolution of k_rule "leiden"
    n_top_genes: int = 2000  # paper: top-2000 HVG
    # ours: Seurat dispersion; on sparse counts Seurat v3, or Pearson residuals where its trend cannot be fitted
    hvg_flavor: HvgFlavor = "auto"
    input_scale: InputScale = "auto"  # auto: integer counts -> normalise+log1p; non-integer -> see data.preprocess
    # counts: each cell's total before log1p: "median" (scanpy's), or "auto" (ours): the median capped at 1e5
    target_sum: float | str = "auto"
    scale_clip: float | None = None  # per-gene z-score clipping (reference: none)
    chunk_size: int = 4096  # rows per streaming chunk for preprocessing statistics
    store_chunk_rows: int = 2048  # ours: rows per chunk of a store's X (16 MB at 2000 HVG)
    shuffle_buffer_chunks: int = 8  # ours: chunks whose rows are shuffled together, bounding a streamed epoch's memory
    prefetch_batches: int = 4  # batches read ahead in a background thread
    prepare_above_cells: int = 500_000  # raw input larger than this is prepared into a store, then streamed
    prepare_above_bytes: int = 2 * 1024**3  # ... or a raw input file larger than this
    demo_cells: int = 3000  # synthetic demo atlas size when path is None
    demo_genes: int = 3000
    demo_types: int = 6


@dataclass
class ModelConfig:
    hidden_dims: tuple[int, ...] = (512, 256)  # paper: G -> 512 -> 256 -> 128
    latent_dim: int = 128  # paper
    instance_dim: int = 192  # paper: instance head 128 -> 192 -> 192
    cluster_hidden: int = 64  # paper: cluster head 128 -> 64 -> K
    # ours: >0 -> the encoder reads the cell projected on the input's top PCs; off: it loses on the 21-set mean
    input_pcs: int = 0
    mask_keep: float = 0.1  # ref: inverted dropout p=0.9 -> keep 10%, survivors x10
    mask_min_nonzero: float = 10.0  # ours: sparse data: keep rate raised (<= 0.5) to keep this many non-zeros
    noise_std: float = 0.1  # ref: Gaussian noise N(0, 0.1^2)
    momentum: float = 0.5  # ref: theta_k <- m*theta_k + (1-m)*theta_q


@dataclass
class LossConfig:
    alpha: float = 1.0  # ours: weight of L_INS; equal weights, doubling either was no better
    beta: float = 1.0  # ours: weight of L_CLU
    w_sure: float = 1.0  # paper: 1; here L_SURE trains, unlike the reference's
    tau_instance: float = 0.07  # ref/paper
    tau_cluster: float = 1.0  # CC: 1.0
    sure_variant: SureVariant = "cross"  # ours: prior from the key view; the same-view value is 0
    kmeans_iters: int = 10  # ours: Lloyd iterations of the warm-started per-batch k-means
    kmeans_warm_start: bool = True  # ours: carry centroids from the previous step (speed)
    kmeans_backend: KMeansBackend = "torch"  # per-batch Lloyd: torch on the model's device, or faiss (GPU/CPU)
    reference_compatible: bool = False  # reproduce the authors' quirks (comparison only)


@dataclass
class OptimConfig:
    epochs: int = 100  # ours: small sets degrade with longer training
    batch_size: int = 256  # GLOBAL batch; each of N workers takes batch_size / N
    lr: float = 3e-4  # ours: the reference's 0.2 collapsed the cluster head
    weight_decay: float = 0.0  # ours
    schedule: Literal["constant", "cosine"] = "constant"
    min_steps: int = 0  # if >0, raise epochs so that small datasets still get this many optimiser steps
    precision: Literal["fp32", "bf16"] = "fp32"  # bf16: autocast forward passes (GPU speed option)


@dataclass
class EvalConfig:
    eval_every: int = 5  # epochs between label-free evaluations (candidates for the selection rule)
    selection: SelectionRule = "silhouette"  # ours: label-free pick
    select_from: float = 0.2  # ours: evaluations in the first 20% of epochs are never picked
    label_method: LabelMethod = "kmeans"  # final labels: k-means on the instance embedding z, or head argmax
    kmeans_restarts: int = 40  # ours: final k-means restarts, k-means++ seeded
    kmeans_select: KMeansSelect = "consensus"  # ours: the restart agreeing most with the others, not lowest inertia
    # ours: the final k-means clusters [z, w * PCA of the input] (0 = z alone): the two fail on different sets
    input_pca_weight: float = 1.5
    input_pca_components: int = 20  # ours: input principal components appended to z
    max_eval_cells: int = 20000  # ours: in-training evaluations embed a seeded sample of this many cells (atlases)
    final_fit_cells: int = 100000  # ours: on a prepared store, the final k-means fits on a seeded sample this size


@dataclass
class RunConfig:
    seed: int = 0
    num_workers: int = 1
    # Ray CPUs per Train worker, i.e. its torch threads, on which float results depend; None: the CPUs shared out
    cpus_per_worker: int | None = None
    use_gpu: bool | None = None  # None: CUDA when available in-process; on Ray, when the cluster has a GPU per worker
    # How Ray places the workers: PACK (fewest nodes), SPREAD, or STRICT_SPREAD (one worker per node)
    placement: Literal["PACK", "SPREAD", "STRICT_SPREAD"] = "PACK"
    gpu_wait_s: float = 300.0  # with use_gpu on Ray: how long to wait for GPU workers to join before failing
    output: str = "runs/jojoscl"
    run_name: str | None = None
    storage_path: str | None = None  # Ray Train storage; default .<output>.ray beside the output
    max_failures: int = 0
    checkpoint_every: int = 1  # ours: epochs between checkpoints (the last epoch always)
    overwrite: bool = False
    tracking: bool = True
    tracking_uri: str | None = None  # default sqlite under the output directory
    experiment: str = "jojoscl"
    register_model: str | None = None  # MLflow registry name the run's pyfunc model is registered under
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
        cfg = _build(cls, d or {}, "")
        cfg.validate()
        return cfg

    def validate(self) -> "JojoConfig":
        """Range and cross-field checks (types are checked and coerced when the config is built)."""
        for section, fields in self.to_dict().items():
            for name, value in fields.items():
                if f"{section}.{name}" in RANGES:
                    _check_range(f"{section}.{name}", value, RANGES[f"{section}.{name}"])
        for key, value in (("data.path", self.data.path), ("run.output", self.run.output),
                           ("run.storage_path", self.run.storage_path)):
            check_local_path(key, value)
        workers = max(1, self.run.num_workers)
        if self.optim.batch_size < 2 * workers:
            raise ConfigValueError("optim.batch_size", f"must be at least 2 per worker ({2 * workers} for "
                                   f"{workers} worker(s)), got {self.optim.batch_size}")
        if self.loss.alpha + self.loss.beta + self.loss.w_sure <= 0:
            raise JojoInputError("loss.alpha, loss.beta and loss.w_sure (--alpha, --beta, --w-sure) are all 0: "
                                 "nothing would train; give at least one a positive weight")
        if self.data.demo_cells < self.data.demo_types:
            raise ConfigValueError("data.demo_cells", f"must be at least data.demo_types ({self.data.demo_types}), "
                                   f"got {self.data.demo_cells}")
        return self

    def save(self, path: str | Path) -> None:
        # Through JSON: tuples become lists, which YAML's safe dumper writes.
        Path(path).write_text(yaml.safe_dump(json.loads(json.dumps(self.to_dict())), sort_keys=False))

    @classmethod
    def load(cls, path: str | Path) -> "JojoConfig":
        path = Path(path)
        try:
            text = path.read_text()
            d = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
        except FileNotFoundError:
            raise JojoInputError(f"config file not found: {path} (check --config)") from None
        except (OSError, ValueError, yaml.YAMLError) as e:
            raise JojoInputError(f"could not read config file {path}: {e.__class__.__name__}: "
                                 f"{str(e).splitlines()[0]}") from None
        if d is not None and not isinstance(d, dict):
            raise JojoInputError(f"config file {path} holds a {type(d).__name__}, not a mapping of sections "
                                 f"(data, model, loss, optim, eval, run)")
        return cls.from_dict(d)

    def override(self, dotted: dict[str, Any]) -> "JojoConfig":
        """Return a copy with 'section.field' keys replaced (used by the CLI and Tune)."""
        d = self.to_dict()
        for key, value in dotted.items():
            section, _, name = key.partition(".")
            if section not in d or name not in d[section]:
                raise JojoInputError(f"unknown config key {key!r} (sections: {', '.join(d)}; see "
                                     f"jojoscl_dist/config.py)")
            d[section][name] = value
        return JojoConfig.from_dict(d)


def check_local_path(key: str, value: str | None) -> None:
    """Refuse a URL where a path is expected: Path() would turn s3://b/x into a local folder named 's3:'."""
    if value and re.match(r"^[A-Za-z][A-Za-z0-9+.-]+://", value):
        raise ConfigValueError(key, f"{value!r} is a URL; only local or mounted (POSIX) paths are supported: "
                               f"mount the bucket (e.g. s3fs, gcsfuse, a CSI volume) and give its path")


class ConfigValueError(JojoInputError):
    """A config value of the wrong type or out of range; ``key`` is its 'section.field' (the CLI adds the flag)."""

    def __init__(self, key: str, problem: str):
        self.key, self.problem = key, problem
        super().__init__(f"{key} {problem}")

    def named(self, name: str) -> str:
        return f"{name} {self.problem}"


# 'section.field' -> (lowest, highest, lowest allowed itself, highest allowed itself); None = unbounded.
# None values of optional fields are not range-checked.
_AT_LEAST_0 = (0, None, True, True)
_AT_LEAST_1 = (1, None, True, True)
_AT_LEAST_2 = (2, None, True, True)
_POSITIVE = (0, None, False, True)
RANGES: dict[str, tuple[float | None, float | None, bool, bool]] = {
    **dict.fromkeys(("data.prefetch_batches", "model.input_pcs", "model.mask_min_nonzero", "model.noise_std",
                     "loss.alpha", "loss.beta", "loss.w_sure", "optim.weight_decay", "optim.min_steps",
                     "eval.input_pca_weight", "run.num_workers", "run.max_failures", "run.gpu_wait_s"), _AT_LEAST_0),
    **dict.fromkeys(("data.n_top_genes", "data.chunk_size", "data.store_chunk_rows", "data.shuffle_buffer_chunks",
                     "data.prepare_above_cells", "data.prepare_above_bytes", "model.hidden_dims", "model.latent_dim",
                     "model.instance_dim", "model.cluster_hidden", "loss.kmeans_iters", "optim.epochs",
                     "eval.eval_every", "eval.kmeans_restarts", "eval.input_pca_components", "run.cpus_per_worker",
                     "run.checkpoint_every"), _AT_LEAST_1),
    **dict.fromkeys(("data.demo_cells", "data.demo_genes", "data.demo_types", "optim.batch_size",
                     "eval.max_eval_cells", "eval.final_fit_cells"), _AT_LEAST_2),
    **dict.fromkeys(("data.k_resolution", "data.scale_clip", "loss.tau_instance", "loss.tau_cluster", "optim.lr"),
                    _POSITIVE),
    "model.mask_keep": (0, 1, False, True),
    "model.momentum": (0, 1, True, True),
    "eval.select_from": (0, 1, True, False),
    "run.seed": (0, 2**63 - 1, True, True),
}


def _check_range(key: str, value: Any, rule: tuple) -> None:
    lo, hi, lo_in, hi_in = rule
    if value is None:
        return
    for v in value if isinstance(value, tuple) else (value,):
        if (lo is not None and (v < lo or (v == lo and not lo_in))) or \
                (hi is not None and (v > hi or (v == hi and not hi_in))):
            bounds = [f"{'>=' if lo_in else '>'} {lo:g}"] if lo is not None else []
            bounds += [f"{'<=' if hi_in else '<'} {hi:g}"] if hi is not None else []
            kind = "an integer" if isinstance(value, int) else "a number"
            raise ConfigValueError(key, f"must be {kind} {' and '.join(bounds)}, got {value!r}")


def _build(cls: type, d: Any, prefix: str) -> Any:
    if not isinstance(d, dict):
        raise JojoInputError(f"config section {prefix.rstrip('.') or 'root'} must be a mapping of fields, got "
                             f"{d!r}")
    hints = get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = set(d) - known
    if unknown:
        raise JojoInputError(f"unknown config key(s) {sorted(prefix + str(u) for u in unknown)}: known keys "
                             f"{'of ' + prefix.rstrip('.') if prefix else 'are'} {sorted(known)}")
    kwargs = {}
    for name, value in d.items():
        tp = hints[name]
        if dataclasses.is_dataclass(tp):
            kwargs[name] = _build(tp, value or {}, f"{name}.")
        else:
            kwargs[name] = _coerce(prefix + name, tp, value)
    return cls(**kwargs)


def _coerce(key: str, tp: Any, value: Any) -> Any:
    """``value`` checked against the field's type; YAML's numbers written as text (``lr: 3e-4``, which YAML
    1.1 reads as a string) are taken as numbers."""
    if get_origin(tp) is Literal:
        if value not in get_args(tp):
            raise ConfigValueError(key, f"must be one of {', '.join(map(str, get_args(tp)))}, got {value!r}")
        return value
    options = get_args(tp) if get_origin(tp) in (Union, UnionType) else (tp,)
    if value is None:
        if type(None) in options:
            return None
        raise ConfigValueError(key, "must be given (it has no 'None' setting)")
    if get_origin(tp) is tuple:
        if not isinstance(value, (list, tuple)) or not value:
            raise ConfigValueError(key, f"must be a list of integers, got {value!r}")
        return tuple(_coerce(key, int, v) for v in value)
    if str in options and isinstance(value, str):
        return value
    for t in (bool, int, float):
        if t in options:
            got = _as(t, value)
            if got is not None:
                return got
    if str in options:
        raise ConfigValueError(key, f"must be text or a number, got {value!r}")
    names = " or ".join({bool: "true/false", int: "an integer", float: "a number"}[t] for t in (bool, int, float)
                        if t in options)
    raise ConfigValueError(key, f"must be {names}, got {value!r}")


def _as(t: type, value: Any) -> Any:
    """``value`` as ``t`` when it is one unambiguously, else None."""
    if t is bool or isinstance(value, bool):  # true/false is a bool only, and a bool nothing else
        return value if t is bool and isinstance(value, bool) else None
    if isinstance(value, str):
        try:
            value = float(value.strip())
        except ValueError:
            return None
    if not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    if t is int:
        return int(value) if float(value).is_integer() else None
    return float(value)
