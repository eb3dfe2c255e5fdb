"""Offline checks for the deployment files (k8s/, infra/), shared by the tests in tests/deploy.

Nothing here talks to a cluster, a registry or the network. What it can honestly check:

* ``render()``: a small kustomize subset (``resources``, RFC 6902 ``patches`` with a ``target``,
  ``namespace``, ``images``), applied in kustomize's order. Any other kustomization field raises
  ``RenderError`` instead of being ignored, so the overlays cannot silently rely on something this
  loader does not do. It is stricter than kustomize in one way: a patch whose target matches
  nothing is an error. When a ``kustomize`` or ``kubectl`` binary is around, the tests compare
  this renderer's output with ``kustomize build`` (identical with kubectl's kustomize v5.5.0).
* ``schema_errors()``: validation of RayJob/RayCluster objects against the ``openAPIV3Schema`` of
  the KubeRay v1.7.0 CRDs (read from ``../shared/k8s-crds``), converted to JSON Schema with the
  Kubernetes extensions handled: int-or-string, nullable, preserve-unknown-fields, list-type set
  and map (duplicate keys), int32/int64 ranges, unknown fields rejected (what ``kubectl apply``
  does with its default strict field validation), and the few CEL rules of these CRDs evaluated
  by hand (an unknown CEL rule on a field we set is reported, never skipped).
* ``invariant_errors()``: project rules on top of the schema (Ray version, images, GPUs, shared
  storage, MLflow env, resume-on-retry, KubeRay's own name limits, ...).

Run ``python tests/deploy/deploy_lib.py k8s/overlays/gpu`` to print a rendered overlay.
"""

from __future__ import annotations

import ast
import copy
import functools
import os
import re
import shlex
import sys
import tomllib
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any, Iterable

import jsonschema
import yaml
from jsonschema.exceptions import ValidationError
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name

REPO_ROOT = Path(__file__).resolve().parents[2]
K8S_DIR = REPO_ROOT / "k8s"
INFRA_DIR = REPO_ROOT / "infra"
KUSTOMIZATION_DIRS = ("base", "overlays/cpu", "overlays/gpu", "storage")

# The image flavour names the Python the images are built on (rayproject/ray:...-py311-...).
PYTHON_TAG = "py311"
GPU_RESOURCE = "nvidia.com/gpu"
MLFLOW_ENV = "MLFLOW_TRACKING_URI"
# KubeRay's own metadata validation (ray-operator/controllers/ray/utils: MaxRayClusterNameLength
# = 53 so that "<name>-serve-svc" fits 63 characters; RayJob names get a 6-character suffix for
# their RayCluster, hence 47). Names must be DNS-1035 labels.
MAX_NAME_LENGTH = {"RayCluster": 53, "RayJob": 47}
DNS1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
DNS1123_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")

_YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def shared_dir() -> Path:
    """``../shared`` next to the repository, or ``$JOJOSCL_SHARED_DIR``."""
    env = os.environ.get("JOJOSCL_SHARED_DIR")
    return Path(env) if env else REPO_ROOT.parent / "shared"


def crd_dir() -> Path:
    return shared_dir() / "k8s-crds"


# --------------------------------------------------------------------------- pyproject pins


@functools.lru_cache(maxsize=None)
def pyproject() -> dict:
    return tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())


@functools.lru_cache(maxsize=None)
def requirements() -> dict[str, SpecifierSet]:
    """canonical name -> specifier, over dependencies and every extra."""
    project = pyproject()["project"]
    reqs = list(project.get("dependencies", []))
    for extra in project.get("optional-dependencies", {}).values():
        reqs.extend(extra)
    out: dict[str, SpecifierSet] = {}
    for line in reqs:
        req = Requirement(line)
        name = canonicalize_name(req.name)
        if name in out and str(out[name]) != str(req.specifier):
            raise ValueError(f"pyproject.toml pins {name} twice differently: {out[name]} / {req.specifier}")
        out[name] = req.specifier
    return out


def exact_pin(name: str) -> str:
    """The version of a ``name==X`` requirement in pyproject.toml."""
    spec = requirements()[canonicalize_name(name)]
    specs = list(spec)
    if len(specs) != 1 or specs[0].operator != "==":
        raise ValueError(f"{name} is not pinned with == in pyproject.toml: {spec}")
    return specs[0].version


def ray_version() -> str:
    return exact_pin("ray")


# --------------------------------------------------------------------------- YAML / kustomize


class RenderError(Exception):
    pass


def load_docs(path: Path) -> list[dict]:
    with open(path) as fh:
        docs = [d for d in yaml.load_all(fh, Loader=_YAML_LOADER) if d is not None]
    for d in docs:
        if not isinstance(d, dict):
            raise RenderError(f"{path}: a YAML document is not a mapping")
    return docs


def manifest_files() -> list[Path]:
    """Every YAML file under k8s/ (manifests, kustomizations and patches)."""
    return sorted(p for p in K8S_DIR.rglob("*") if p.suffix in (".yaml", ".yml"))


_SUPPORTED_KUSTOMIZATION_FIELDS = {"apiVersion", "kind", "resources", "patches", "namespace", "images"}
_CLUSTER_SCOPED_KINDS = {"Namespace", "ClusterRole", "ClusterRoleBinding", "PersistentVolume",
                         "StorageClass", "CustomResourceDefinition", "PriorityClass"}


def kustomization_file(directory: Path) -> Path:
    for name in ("kustomization.yaml", "kustomization.yml", "Kustomization"):
        if (directory / name).is_file():
            return directory / name
    raise RenderError(f"{directory}: no kustomization file")


def _matches(doc: dict, target: dict | None) -> bool:
    if not target:
        return True
    group, _, version = doc.get("apiVersion", "").rpartition("/")
    checks = {
        "group": group,
        "version": version,
        "kind": doc.get("kind", ""),
        "name": doc.get("metadata", {}).get("name", ""),
        "namespace": doc.get("metadata", {}).get("namespace", ""),
    }
    for key, value in target.items():
        if key not in checks:
            raise RenderError(f"patch target field {key!r} is not supported by this loader")
        if not re.fullmatch(value, checks[key]):
            return False
    return True


def render(directory: Path | str) -> list[dict]:
    """Render a kustomization directory (the subset described in the module docstring)."""
    directory = Path(directory)
    if not directory.is_absolute():
        directory = REPO_ROOT / directory
    kfile = kustomization_file(directory)
    spec = load_docs(kfile)[0]
    unknown = set(spec) - _SUPPORTED_KUSTOMIZATION_FIELDS
    if unknown:
        raise RenderError(f"{kfile}: fields {sorted(unknown)} are not understood by tests/deploy/deploy_lib.render")
    docs: list[dict] = []
    for res in spec.get("resources", []):
        path = (directory / res).resolve()
        if path.is_dir():
            docs.extend(render(path))
        elif path.is_file():
            docs.extend(load_docs(path))
        else:
            raise RenderError(f"{kfile}: resource {res} does not exist")
    for patch in spec.get("patches", []):
        if "patch" in patch:
            ops = yaml.load(patch["patch"], Loader=_YAML_LOADER)
            where = f"{kfile} (inline patch)"
        else:
            ppath = directory / patch["path"]
            if not ppath.is_file():
                raise RenderError(f"{kfile}: patch file {patch['path']} does not exist")
            ops = yaml.load(ppath.read_text(), Loader=_YAML_LOADER)
            where = str(ppath)
        if not isinstance(ops, list):
            raise RenderError(f"{where}: only RFC 6902 (JSON) patches are supported by this loader")
        hits = 0
        for i, doc in enumerate(docs):
            if _matches(doc, patch.get("target")):
                try:
                    docs[i] = apply_json_patch(doc, ops)
                except PatchError as exc:
                    raise RenderError(f"{where}: {exc}") from exc
                hits += 1
        if not hits:
            raise RenderError(f"{where}: target {patch.get('target')} matches no resource")
    namespace = spec.get("namespace")
    if namespace:
        for doc in docs:
            if doc.get("kind") not in _CLUSTER_SCOPED_KINDS:
                doc.setdefault("metadata", {})["namespace"] = namespace
    for image in spec.get("images", []):
        for doc in docs:
            _set_image(doc, image)
    seen: set[tuple] = set()
    for doc in docs:
        key = (doc.get("apiVersion"), doc.get("kind"), doc.get("metadata", {}).get("namespace"),
               doc.get("metadata", {}).get("name"))
        if key in seen:
            raise RenderError(f"{kfile}: duplicate resource {key}")
        seen.add(key)
    return docs


def _set_image(node: Any, image: dict) -> None:
    """kustomize's `images` transformer: every containers/initContainers entry, at any depth
    (that is also what it does inside custom resources such as RayJob), whose image name matches."""
    if isinstance(node, list):
        for item in node:
            _set_image(item, image)
        return
    if not isinstance(node, dict):
        return
    for key, value in node.items():
        if key in ("containers", "initContainers") and isinstance(value, list):
            for c in value:
                if isinstance(c, dict) and isinstance(c.get("image"), str):
                    c["image"] = _retag(c["image"], image)
        _set_image(value, image)


def _retag(ref: str, image: dict) -> str:
    repo, tag = split_image(ref)
    digest = ref.split("@", 1)[1] if "@" in ref else ""
    if repo != image.get("name"):
        return ref
    repo = image.get("newName", repo)
    if image.get("digest"):
        return f"{repo}@{image['digest']}"
    if image.get("newTag"):
        return f"{repo}:{image['newTag']}"
    return f"{repo}@{digest}" if digest else (f"{repo}:{tag}" if tag else repo)


# --------------------------------------------------------------------------- RFC 6902


class PatchError(Exception):
    pass


def _pointer(ptr: str) -> list[str]:
    if ptr == "":
        return []
    if not ptr.startswith("/"):
        raise PatchError(f"bad JSON pointer {ptr!r}")
    return [t.replace("~1", "/").replace("~0", "~") for t in ptr[1:].split("/")]


def _index(container: list, token: str, *, allow_end: bool) -> int:
    if allow_end and token == "-":
        return len(container)
    if not re.fullmatch(r"0|[1-9][0-9]*", token):
        raise PatchError(f"bad array index {token!r}")
    idx = int(token)
    if idx > len(container) or (idx == len(container) and not allow_end):
        raise PatchError(f"array index {idx} out of range")
    return idx


def _walk(doc: Any, tokens: list[str]) -> Any:
    node = doc
    for tok in tokens:
        if isinstance(node, dict):
            if tok not in node:
                raise PatchError(f"path segment {tok!r} does not exist")
            node = node[tok]
        elif isinstance(node, list):
            node = node[_index(node, tok, allow_end=False)]
        else:
            raise PatchError(f"cannot descend into a scalar at {tok!r}")
    return node


def _add(doc: Any, tokens: list[str], value: Any) -> Any:
    if not tokens:
        return value
    parent = _walk(doc, tokens[:-1])
    last = tokens[-1]
    if isinstance(parent, dict):
        parent[last] = value
    elif isinstance(parent, list):
        parent.insert(_index(parent, last, allow_end=True), value)
    else:
        raise PatchError("cannot add to a scalar")
    return doc


def _remove(doc: Any, tokens: list[str]) -> Any:
    if not tokens:
        raise PatchError("cannot remove the whole document")
    parent = _walk(doc, tokens[:-1])
    last = tokens[-1]
    if isinstance(parent, dict):
        if last not in parent:
            raise PatchError(f"cannot remove missing key {last!r}")
        return parent.pop(last)
    if isinstance(parent, list):
        return parent.pop(_index(parent, last, allow_end=False))
    raise PatchError("cannot remove from a scalar")


def apply_json_patch(doc: dict, ops: list[dict]) -> dict:
    """Apply RFC 6902 operations to a copy of ``doc``."""
    doc = copy.deepcopy(doc)
    for op in ops:
        kind = op.get("op")
        path = _pointer(op.get("path", ""))
        if kind == "test":
            if _walk(doc, path) != op["value"]:
                raise PatchError(f"test failed at {op['path']}: expected {op['value']!r}, found {_walk(doc, path)!r}")
        elif kind == "add":
            doc = _add(doc, path, copy.deepcopy(op["value"]))
        elif kind == "remove":
            _remove(doc, path)
        elif kind == "replace":
            _walk(doc, path)  # must exist
            if path:
                _remove(doc, path)
            doc = _add(doc, path, copy.deepcopy(op["value"]))
        elif kind == "copy":
            doc = _add(doc, path, copy.deepcopy(_walk(doc, _pointer(op["from"]))))
        elif kind == "move":
            src = _pointer(op["from"])
            value = _walk(doc, src)
            _remove(doc, src)
            doc = _add(doc, path, value)
        else:
            raise PatchError(f"unknown op {kind!r}")
    return doc


# --------------------------------------------------------------------------- CRD -> JSON Schema

_INT_RANGES = {"int32": (-(2**31), 2**31 - 1), "int64": (-(2**63), 2**63 - 1)}

# The CEL rules (x-kubernetes-validations) present in the KubeRay v1.7.0 CRDs, evaluated by hand.
# "self == oldSelf" is a transition rule: only checked on update, so it always holds on create.
KNOWN_CEL_RULES = {
    "self == oldSelf": lambda s: True,
    "self in ['ray.io/kuberay-operator', 'kueue.x-k8s.io/multikueue']":
        lambda s: s in ("ray.io/kuberay-operator", "kueue.x-k8s.io/multikueue"),
    "!(has(self.jobStatus) && has(self.jobDeploymentStatus))":
        lambda s: not ("jobStatus" in s and "jobDeploymentStatus" in s),
    "has(self.jobStatus) || has(self.jobDeploymentStatus)":
        lambda s: "jobStatus" in s or "jobDeploymentStatus" in s,
    "!((has(self.onSuccess) || has(self.onFailure)) && has(self.deletionRules))":
        lambda s: not (("onSuccess" in s or "onFailure" in s) and "deletionRules" in s),
    "((has(self.onSuccess) && has(self.onFailure)) || has(self.deletionRules))":
        lambda s: ("onSuccess" in s and "onFailure" in s) or "deletionRules" in s,
}

# ObjectMeta is `type: object` without properties in every CRD; the API server validates it
# itself. This is the part of that validation our manifests can get wrong.
_OBJECT_META = {
    "type": "object",
    "required": ["name"],
    "properties": {
        "name": {"type": "string", "maxLength": 253, "pattern": DNS1123_SUBDOMAIN.pattern},
        "namespace": {"type": "string", "maxLength": 63, "pattern": r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"},
        "labels": {"type": "object", "additionalProperties": {"type": "string"}},
        "annotations": {"type": "object", "additionalProperties": {"type": "string"}},
    },
    "additionalProperties": True,
}


def convert_schema(node: Any) -> Any:
    """Turn a CRD openAPIV3Schema node into a JSON Schema (draft 4) node."""
    if not isinstance(node, dict):
        return node
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key == "properties":
            out[key] = {name: convert_schema(sub) for name, sub in value.items()}
        elif key == "items":
            out[key] = convert_schema(value)
        elif key == "additionalProperties":
            out[key] = value if isinstance(value, bool) else convert_schema(value)
        elif key in ("anyOf", "allOf", "oneOf"):
            out[key] = [convert_schema(v) for v in value]
        elif key in ("nullable", "x-kubernetes-int-or-string", "x-kubernetes-preserve-unknown-fields",
                     "description"):
            continue  # handled below / irrelevant
        elif key == "x-kubernetes-list-type":
            out[key] = value
            if value == "set":
                out["uniqueItems"] = True
        else:
            out[key] = value  # type, enum, format, pattern, required, default, x-kubernetes-*...
    if node.get("x-kubernetes-int-or-string") and "anyOf" not in out:
        out.pop("type", None)
        out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    if node.get("nullable"):
        if "type" in out:
            out["type"] = [out["type"], "null"]
        if "enum" in out:
            out["enum"] = list(out["enum"]) + [None]
    preserve = node.get("x-kubernetes-preserve-unknown-fields", False)
    is_object = out.get("type") == "object" or "properties" in out
    if is_object and "additionalProperties" not in out and not preserve:
        # Structural schemas prune unknown fields; kubectl's default strict field validation turns
        # them into errors. An object without properties only accepts {} then.
        out["additionalProperties"] = False
    return out


def _list_map_keys(validator, keys, instance, schema):
    if not validator.is_type(instance, "array"):
        return
    item_props = schema.get("items", {}).get("properties", {})
    seen: dict[tuple, int] = {}
    for i, item in enumerate(instance):
        if not isinstance(item, dict):
            continue
        key = tuple(item.get(k, item_props.get(k, {}).get("default")) for k in keys)
        if key in seen:
            yield ValidationError(f"duplicate list-map key {dict(zip(keys, key))} (items {seen[key]} and {i})")
        else:
            seen[key] = i


def _cel_rules(validator, rules, instance, schema):
    for rule in rules:
        check = KNOWN_CEL_RULES.get(rule["rule"])
        if check is None:
            yield ValidationError(f"CEL rule not evaluated offline, check by hand: {rule['rule']}")
        elif not check(instance):
            yield ValidationError(f"CEL rule failed: {rule.get('message', rule['rule'])}")


_FORMATS = jsonschema.FormatChecker(formats=())
for _fmt, (_lo, _hi) in _INT_RANGES.items():
    _FORMATS.checks(_fmt)(lambda v, lo=_lo, hi=_hi: not isinstance(v, int) or lo <= v <= hi)

K8sValidator = jsonschema.validators.extend(
    jsonschema.Draft4Validator,
    {"x-kubernetes-list-map-keys": _list_map_keys, "x-kubernetes-validations": _cel_rules},
)


@dataclass
class CRDSchema:
    kind: str
    group: str
    versions: dict[str, dict]  # version -> {"served":, "storage":, "deprecated":}
    validators: dict[str, Any]  # version -> validator


CRD_FILES = {"RayJob": "ray.io_rayjobs.yaml", "RayCluster": "ray.io_rayclusters.yaml"}


@functools.lru_cache(maxsize=None)
def crd_document(kind: str) -> dict:
    path = crd_dir() / CRD_FILES[kind]
    crd = load_docs(path)[0]
    assert crd["spec"]["names"]["kind"] == kind, path
    return crd


@functools.lru_cache(maxsize=None)
def crd_schema(kind: str) -> CRDSchema:
    crd = crd_document(kind)
    versions, validators = {}, {}
    for ver in crd["spec"]["versions"]:
        versions[ver["name"]] = {k: ver.get(k) for k in ("served", "storage", "deprecated")}
        schema = convert_schema(ver["schema"]["openAPIV3Schema"])
        schema["properties"]["metadata"] = _OBJECT_META
        schema["required"] = sorted(set(schema.get("required", [])) | {"apiVersion", "kind", "metadata", "spec"})
        validators[ver["name"]] = K8sValidator(schema, format_checker=_FORMATS)
    return CRDSchema(kind, crd["spec"]["group"], versions, validators)


def schema_errors(doc: dict) -> list[str]:
    """CRD validation errors for a RayJob/RayCluster (empty list = valid)."""
    kind = doc.get("kind")
    if kind not in ("RayJob", "RayCluster"):
        return [f"not a KubeRay kind: {kind!r}"]
    crd = crd_schema(kind)
    group, _, version = str(doc.get("apiVersion", "")).rpartition("/")
    if group != crd.group or version not in crd.versions:
        return [f"apiVersion {doc.get('apiVersion')!r} is not served by the {kind} CRD"]
    info = crd.versions[version]
    if not info["served"] or info["deprecated"] or not info["storage"]:
        return [f"apiVersion {doc.get('apiVersion')!r} is deprecated/not the storage version; use {crd.group}/v1"]
    errors = sorted(crd.validators[version].iter_errors(doc), key=lambda e: list(e.absolute_path))
    return [f"{e.json_path}: {e.message}" for e in errors]


# --------------------------------------------------------------------------- model helpers


def parse_quantity(q: Any) -> Decimal:
    """Kubernetes resource quantity -> number (cores for CPU, bytes for memory)."""
    if isinstance(q, (int, float)):
        return Decimal(str(q))
    m = re.fullmatch(r"([+-]?(?:\d+(?:\.\d*)?|\.\d+))([eE][+-]?\d+|[KMGTPE]i|[numkMGTPE])?", str(q))
    if not m:
        raise ValueError(f"bad quantity {q!r}")
    number, suffix = Decimal(m.group(1)), m.group(2) or ""
    binary = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60}
    decimal = {"n": Decimal("1e-9"), "u": Decimal("1e-6"), "m": Decimal("1e-3"), "": 1, "k": 10**3,
               "M": 10**6, "G": 10**9, "T": 10**12, "P": 10**15, "E": 10**18}
    if suffix in binary:
        return number * binary[suffix]
    if suffix in decimal:
        return number * decimal[suffix]
    return number * Decimal(10) ** int(suffix[1:])


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
        containers = self.pod.get("containers") or [{}]
        return containers[0]

    def resource(self, section: str, name: str) -> Decimal:
        value = self.container.get("resources", {}).get(section, {}).get(name)
        return Decimal(0) if value is None else parse_quantity(value)

    @property
    def gpus(self) -> int:
        return int(max(self.resource("limits", GPU_RESOURCE), self.resource("requests", GPU_RESOURCE)))

    @property
    def pods(self) -> int:
        if self.is_head:
            return 1
        return int(self.spec.get("replicas", self.spec.get("minReplicas", 0))) * int(self.spec.get("numOfHosts", 1))

    @property
    def max_pods(self) -> int:
        if self.is_head:
            return 1
        return int(self.spec.get("maxReplicas", self.pods)) * int(self.spec.get("numOfHosts", 1))


def cluster_spec(doc: dict) -> dict:
    if doc.get("kind") == "RayJob":
        return doc.get("spec", {}).get("rayClusterSpec") or {}
    return doc.get("spec", {})


def ray_groups(doc: dict) -> list[RayGroup]:
    spec = cluster_spec(doc)
    groups = [RayGroup("head", True, spec.get("headGroupSpec", {}))]
    groups += [RayGroup(w.get("groupName", f"#{i}"), False, w) for i, w in enumerate(spec.get("workerGroupSpecs", []))]
    return groups


def split_image(image: str) -> tuple[str, str]:
    """'registry:5000/org/name:tag' -> ('registry:5000/org/name', 'tag')."""
    image = image.split("@", 1)[0]
    slash = image.rfind("/")
    colon = image.rfind(":")
    if colon > slash:
        return image[:colon], image[colon + 1:]
    return image, ""


IMAGE_TAG = re.compile(r"^(?P<app>[\w.]+)-ray(?P<ray>\d+\.\d+\.\d+)-(?P<py>py\d+)-(?P<flavor>cpu|cu\d+)$")

# --------------------------------------------------------------------------- entrypoints

# The CLI contract of the package (what the manifests may pass). Value-less flags map to False.
CLI_CONTRACT: dict[str, dict[str, bool]] = {
    "jojoscl_dist.train": {
        "--data": True, "--label-key": True, "--n-clusters": True, "--num-workers": True,
        "--use-gpu": False, "--epochs": True, "--batch-size": True, "--seed": True, "--output": True,
        "--storage-path": True, "--run-name": True, "--max-failures": True, "--tracking-uri": True,
        "--overwrite": False,  # docs/deploy.md: re-run after outputs were written
    },
    "tune.sweep": {
        "--data": True, "--num-samples": True, "--scheduler": True, "--search": True, "--output": True,
        "--tracking-uri": True, "--storage-path": True,
    },
}
REQUIRED_FLAGS = {"jojoscl_dist.train": {"--data"}, "tune.sweep": {"--data", "--num-samples"}}
PATH_FLAGS = ("--data", "--output", "--storage-path")


@dataclass
class Entrypoint:
    module: str
    args: dict[str, Any] = field(default_factory=dict)  # flag -> value (True for bare flags)
    errors: list[str] = field(default_factory=list)


def parse_entrypoint(entrypoint: str) -> Entrypoint:
    tokens = shlex.split(entrypoint or "")
    if len(tokens) < 3 or tokens[0] not in ("python", "python3") or tokens[1] != "-m":
        return Entrypoint("", errors=[f"entrypoint is not `python -m MODULE ...`: {entrypoint!r}"])
    ep = Entrypoint(tokens[2])
    contract = CLI_CONTRACT.get(ep.module)
    if contract is None:
        ep.errors.append(f"module {ep.module!r} has no known CLI contract")
        return ep
    rest = tokens[3:]
    i = 0
    while i < len(rest):
        tok = rest[i]
        flag, eq, inline = tok.partition("=")
        if flag not in contract:
            ep.errors.append(f"{ep.module}: unknown argument {tok!r}")
            i += 1
            continue
        if flag in ep.args:
            ep.errors.append(f"{ep.module}: {flag} given twice")
        if contract[flag]:
            if eq:
                ep.args[flag] = inline
            elif i + 1 < len(rest) and not rest[i + 1].startswith("--"):
                ep.args[flag] = rest[i + 1]
                i += 1
            else:
                ep.errors.append(f"{ep.module}: {flag} needs a value")
        else:
            if eq:
                ep.errors.append(f"{ep.module}: {flag} takes no value")
            ep.args[flag] = True
        i += 1
    for flag in sorted(REQUIRED_FLAGS.get(ep.module, set()) - set(ep.args)):
        ep.errors.append(f"{ep.module}: missing required {flag}")
    return ep


def module_candidates(module: str) -> list[str]:
    rel = module.replace(".", "/")
    return [f"{rel}/__main__.py", f"{rel}.py"]


def module_file(module: str, root: Path = REPO_ROOT) -> Path | None:
    for cand in module_candidates(module):
        if (root / cand).is_file():
            return root / cand
    return None


def implemented_flags(module: str, root: Path = REPO_ROOT) -> set[str]:
    """The ``--flags`` an argparse CLI in the module's directory can define.

    Empty when no ``add_argument`` call is found there (no argparse CLI to compare with). Flags are
    often kept in tables (``("--data", ...)``), so every ``"--name"`` string constant of the
    directory's sources counts once argparse is used: a loose superset, but it still catches a
    manifest passing a flag the CLI never heard of.
    """
    path = module_file(module, root)
    if path is None:
        return set()
    flags: set[str] = set()
    uses_argparse = False
    for py in path.parent.rglob("*.py"):
        try:
            tree = ast.parse(py.read_text(), filename=str(py))
        except SyntaxError:
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "add_argument":
                uses_argparse = True
            elif isinstance(node, ast.Constant) and isinstance(node.value, str) \
                    and re.fullmatch(r"--[a-z0-9][a-z0-9-]*", node.value):
                flags.add(node.value)
    return flags if uses_argparse else set()


def module_errors(entrypoint: str, root: Path = REPO_ROOT) -> list[str]:
    """The entrypoint's module must exist as a file in the repo (and accept the flags passed)."""
    ep = parse_entrypoint(entrypoint)
    if not ep.module:
        return ep.errors
    if module_file(ep.module, root) is None:
        return [f"`python -m {ep.module}` has no module file: expected one of {module_candidates(ep.module)}"]
    known = implemented_flags(ep.module, root)
    if known:  # an argparse CLI was found: the manifest must not pass flags it does not define
        return [f"{ep.module}: {f} is not defined by the module's argparse CLI" for f in sorted(set(ep.args) - known)]
    return []


# --------------------------------------------------------------------------- invariants


@dataclass
class Context:
    ray_version: str
    pvcs: dict[str, dict]  # claim name -> PVC object
    configmaps: dict[str, dict]  # name -> data


def context_for(docs: Iterable[dict], storage_docs: Iterable[dict]) -> Context:
    docs = list(docs)
    return Context(
        ray_version=ray_version(),
        pvcs={d["metadata"]["name"]: d for d in storage_docs if d.get("kind") == "PersistentVolumeClaim"},
        configmaps={d["metadata"]["name"]: d.get("data", {}) for d in docs if d.get("kind") == "ConfigMap"},
    )


def _env_source(container: dict, name: str) -> Any:
    for env in container.get("env", []) or []:
        if env.get("name") == name:
            return env.get("valueFrom", {"value": env.get("value")})
    return None


def _has_gpu_toleration(pod: dict) -> bool:
    for tol in pod.get("tolerations", []) or []:
        if tol.get("key") != GPU_RESOURCE:
            continue
        if tol.get("effect") not in (None, "", "NoSchedule"):
            continue
        if tol.get("operator", "Equal") == "Exists" or tol.get("operator", "Equal") == "Equal":
            return True
    return False


def invariant_errors(doc: dict, ctx: Context) -> list[str]:
    """Project rules for one RayJob/RayCluster (empty list = all hold)."""
    kind = doc.get("kind")
    name = doc.get("metadata", {}).get("name", "")
    where = f"{kind}/{name}"
    errs: list[str] = []
    spec = cluster_spec(doc)
    groups = ray_groups(doc)
    head, workers = groups[0], groups[1:]

    # names: KubeRay rejects these before creating anything
    if not DNS1035.match(name) or len(name) > MAX_NAME_LENGTH.get(kind, 63):
        errs.append(f"{where}: name must be a DNS-1035 label of at most {MAX_NAME_LENGTH.get(kind, 63)} characters")

    # Ray version and auth
    if spec.get("rayVersion") != ctx.ray_version:
        errs.append(f"{where}: rayVersion {spec.get('rayVersion')!r} != ray pin in pyproject.toml {ctx.ray_version!r}")
    if spec.get("authOptions", {}).get("mode") != "token":
        errs.append(f"{where}: authOptions.mode must be 'token' (Ray >= 2.59 expects token auth; KubeRay manages the token)")

    # worker groups (KubeRay validation)
    names = [g.name for g in workers]
    if len(set(names)) != len(names):
        errs.append(f"{where}: duplicate worker groupName in {names}")
    if not workers:
        errs.append(f"{where}: no worker group")
    for g in workers:
        lo, hi = g.spec.get("minReplicas", 0), g.spec.get("maxReplicas", 2**31 - 1)
        rep = g.spec.get("replicas", lo)
        if not (lo <= rep <= hi):
            errs.append(f"{where}/{g.name}: need minReplicas <= replicas <= maxReplicas, got {lo}/{rep}/{hi}")

    # images: our image, same everywhere, tag carries the Ray version, GPU <-> CUDA flavour
    images = {g.container.get("image", "") for g in groups}
    if len(images) != 1:
        errs.append(f"{where}: all Ray containers must use one image, found {sorted(images)}")
    any_gpu = any(g.gpus for g in workers)
    for g in groups:
        image = g.container.get("image", "")
        repo, tag = split_image(image)
        m = IMAGE_TAG.match(tag)
        if not repo.endswith("/jojoscl-dist") or not m:
            errs.append(f"{where}/{g.name}: image {image!r} is not jojoscl-dist:<ver>-ray<X.Y.Z>-{PYTHON_TAG}-<cpu|cuNNN>")
            continue
        if m["ray"] != ctx.ray_version:
            errs.append(f"{where}/{g.name}: image {image!r} is built for Ray {m['ray']}, pyproject pins {ctx.ray_version}")
        if m["py"] != PYTHON_TAG:
            errs.append(f"{where}/{g.name}: image {image!r} is not a {PYTHON_TAG} image")
        if any_gpu and m["flavor"] == "cpu":
            errs.append(f"{where}/{g.name}: cluster has GPU workers but image {image!r} is the CPU build")

    # head: no GPU, schedules nothing
    params = head.spec.get("rayStartParams", {}) or {}
    if head.gpus or params.get("num-gpus") != "0":
        errs.append(f"{where}: head must have no GPU (no {GPU_RESOURCE}, rayStartParams num-gpus '0')")

    # GPU groups: limits, toleration, consistent rayStartParams
    for g in workers:
        lim, req = g.resource("limits", GPU_RESOURCE), g.resource("requests", GPU_RESOURCE)
        if req and lim != req:
            errs.append(f"{where}/{g.name}: {GPU_RESOURCE} requests ({req}) must equal limits ({lim})")
        if not g.gpus:
            continue
        if not lim:
            errs.append(f"{where}/{g.name}: GPU group must set {GPU_RESOURCE} in resources.limits")
        if not _has_gpu_toleration(g.pod):
            errs.append(f"{where}/{g.name}: GPU group needs a toleration for the {GPU_RESOURCE} taint")
        ngpus = (g.spec.get("rayStartParams") or {}).get("num-gpus")
        if ngpus is not None and Decimal(ngpus) != lim:
            errs.append(f"{where}/{g.name}: rayStartParams num-gpus {ngpus} != {GPU_RESOURCE} limit {lim}")

    # resources: CPU/memory limits set (Ray sizes itself from them), requests <= limits
    for g in groups:
        res = g.container.get("resources", {})
        for r in ("cpu", "memory"):
            if r not in res.get("limits", {}):
                errs.append(f"{where}/{g.name}: resources.limits.{r} missing")
        for r, v in res.get("requests", {}).items():
            if r in res.get("limits", {}) and parse_quantity(v) > parse_quantity(res["limits"][r]):
                errs.append(f"{where}/{g.name}: requests.{r} {v} > limits.{r} {res['limits'][r]}")

    # shared storage: same PVC at the same path on every pod
    mounts: dict[str, str | None] = {}
    for g in groups:
        vols = {v.get("name"): v for v in g.pod.get("volumes", []) or []}
        path = None
        for vm in g.container.get("volumeMounts", []) or []:
            vol = vols.get(vm.get("name"), {})
            claim = vol.get("persistentVolumeClaim", {}).get("claimName")
            if claim in ctx.pvcs:
                path = vm.get("mountPath")
        if path is None:
            errs.append(f"{where}/{g.name}: does not mount the shared PVC ({sorted(ctx.pvcs)})")
        mounts[g.name] = path
    shared_path = mounts.get("head")
    if len(set(mounts.values())) > 1:
        errs.append(f"{where}: shared PVC mounted at different paths: {mounts}")
    for claim, pvc in ctx.pvcs.items():
        if "ReadWriteMany" not in pvc.get("spec", {}).get("accessModes", []) and len(groups) > 1:
            errs.append(f"PersistentVolumeClaim/{claim}: pods on several nodes need ReadWriteMany")

    # MLflow URI: env var on every Ray container, same source, resolvable ConfigMap
    sources = []
    for g in groups:
        src = _env_source(g.container, MLFLOW_ENV)
        sources.append(src)
        if src is None:
            errs.append(f"{where}/{g.name}: env {MLFLOW_ENV} missing")
            continue
        ref = src.get("configMapKeyRef")
        if ref and not ref.get("optional"):
            if ref.get("name") not in ctx.configmaps or ref.get("key") not in ctx.configmaps[ref.get("name")]:
                errs.append(f"{where}/{g.name}: {MLFLOW_ENV} refers to missing ConfigMap key {ref}")
        if not (ref or src.get("secretKeyRef") or src.get("value")):
            errs.append(f"{where}/{g.name}: {MLFLOW_ENV} must come from a ConfigMap, a Secret or a value")
    if any(s != sources[0] for s in sources):
        errs.append(f"{where}: {MLFLOW_ENV} differs between head and workers")

    if kind != "RayJob":
        return errs

    # RayJob: lifecycle, retry => resume, entrypoint consistency
    job = doc.get("spec", {})
    if job.get("clusterSelector"):
        errs.append(f"{where}: uses clusterSelector; these jobs must bring their own rayClusterSpec")
    if not job.get("shutdownAfterJobFinishes"):
        errs.append(f"{where}: shutdownAfterJobFinishes must be true (a finished job must not hold GPUs)")
    if job.get("ttlSecondsAfterFinished", 0) < 0:
        errs.append(f"{where}: ttlSecondsAfterFinished must be >= 0")
    if "activeDeadlineSeconds" in job and job["activeDeadlineSeconds"] <= 0:
        errs.append(f"{where}: activeDeadlineSeconds must be > 0")
    backoff = job.get("backoffLimit", 0)
    ep = parse_entrypoint(job.get("entrypoint", ""))
    errs += [f"{where}: {e}" for e in ep.errors]
    if ep.module == "jojoscl_dist.train" and backoff < 1:
        errs.append(f"{where}: training job needs backoffLimit >= 1 so a failed run is retried (and resumed)")
    if backoff >= 1:
        for flag in ("--storage-path", "--run-name"):
            if flag not in ep.args:
                errs.append(f"{where}: backoffLimit {backoff} but no {flag}: a retry would not resume")
    if shared_path:
        for flag in PATH_FLAGS:
            value = ep.args.get(flag)
            if isinstance(value, str) and not value.startswith(shared_path.rstrip("/") + "/"):
                errs.append(f"{where}: {flag} {value} is not on the shared PVC ({shared_path})")
    gpu_capacity = sum(g.gpus * g.pods for g in workers)
    if "--use-gpu" in ep.args and not gpu_capacity:
        errs.append(f"{where}: --use-gpu but no worker group with {GPU_RESOURCE}")
    if gpu_capacity and "--use-gpu" not in ep.args:
        errs.append(f"{where}: GPU workers requested but the entrypoint does not pass --use-gpu")
    if "--num-workers" in ep.args:
        try:
            n = int(ep.args["--num-workers"])
        except ValueError:
            errs.append(f"{where}: --num-workers {ep.args['--num-workers']!r} is not an integer")
        else:
            if "--use-gpu" in ep.args:
                capacity, unit = gpu_capacity, "GPUs"
            else:
                capacity = int(sum(g.resource("limits", "cpu") * g.pods for g in workers))
                unit = "worker CPUs"
            if n < 1 or n > capacity:
                errs.append(f"{where}: --num-workers {n} does not fit the {capacity} {unit} of the workers")
    return errs


# --------------------------------------------------------------------------- Dockerfiles


@dataclass
class Dockerfile:
    path: Path
    base_images: list[str]
    args: dict[str, str]
    pins: dict[str, str]  # canonical package name -> version string as written (after ARG expansion)
    text: str


def parse_dockerfile(path: Path, text: str | None = None) -> Dockerfile:
    text = path.read_text() if text is None else text
    logical = re.sub(r"\\\n", " ", text)
    args: dict[str, str] = {}
    bases: list[str] = []
    pins: dict[str, str] = {}
    for raw in logical.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        instr, _, rest = line.partition(" ")
        instr = instr.upper()
        if instr == "ARG":
            k, _, v = rest.strip().partition("=")
            args[k.strip()] = v.strip().strip('"')
        elif instr == "FROM":
            bases.append(_expand(rest.split()[0], args))
        elif instr == "RUN":
            for m in re.finditer(r"""["']?([A-Za-z0-9_.\-]+)(?:\[[^\]]*\])?==([^\s"';&|]+)""", rest):
                pins[canonicalize_name(m.group(1))] = _expand(m.group(2), args)
    return Dockerfile(path, bases, args, pins, text)


def _expand(value: str, args: dict[str, str]) -> str:
    return re.sub(r"\$\{?(\w+)\}?", lambda m: args.get(m.group(1), m.group(0)), value)


DOCKER_FLAVOURS = {
    # flavour: (project extras installed, faiss wanted, faiss forbidden)
    "cpu": ("cpu,tune", "faiss-cpu", "faiss-gpu"),
    "cuda": ("gpu,tune", "faiss-gpu", "faiss-cpu"),
}


def dockerfile_errors(df: Dockerfile, flavour: str) -> list[str]:
    """Pins of an infra Dockerfile against pyproject.toml (empty list = consistent)."""
    errs: list[str] = []
    extras_wanted, faiss_wanted, faiss_forbidden = DOCKER_FLAVOURS[flavour]
    ray, torch = ray_version(), exact_pin("torch")
    if len(df.base_images) != 1:
        return [f"expected one FROM, found {df.base_images}"]
    repo, tag = split_image(df.base_images[0])
    m = re.fullmatch(r"(?P<ray>\d+\.\d+\.\d+)-(?P<py>py\d+)-(?P<flavor>cpu|cu\d+)", tag)
    if repo != "rayproject/ray" or not m:
        return [f"base {df.base_images[0]!r} is not rayproject/ray:<ray>-py<xy>-<cpu|cuNNN>"]
    if m["ray"] != ray:
        errs.append(f"base image is Ray {m['ray']}, pyproject pins ray=={ray}")
    py = f"{m['py'][2]}.{m['py'][3:]}"
    if m["py"] != PYTHON_TAG or not SpecifierSet(pyproject()["project"]["requires-python"]).contains(py):
        errs.append(f"base image Python {py} is not the project's {PYTHON_TAG}")
    if df.args.get("TORCH_VERSION") != torch:
        errs.append(f"ARG TORCH_VERSION={df.args.get('TORCH_VERSION')} != pyproject torch=={torch}")
    pinned = df.pins.get("torch", "")
    local = pinned.partition("+")[2]
    if not pinned or not requirements()["torch"].contains(pinned):
        errs.append(f"torch=={pinned} does not satisfy pyproject torch=={torch}")
    index = df.args.get("TORCH_INDEX_URL", "")
    if not index.startswith("https://download.pytorch.org/whl/") or index.rsplit("/", 1)[-1] != local:
        errs.append(f"torch index {index!r} does not serve the +{local} build")
    if flavour == "cpu":
        if m["flavor"] != "cpu" or local != "cpu":
            errs.append(f"CPU image must use the -cpu base and torch +cpu (got {m['flavor']}, +{local})")
    else:
        if not re.fullmatch(r"cu12\d", local) or local != m["flavor"]:
            errs.append(f"torch +{local} and base -{m['flavor']} must be the same CUDA 12 build (faiss-gpu links CUDA 12)")
    installs = re.findall(r'pip install [^\n]*?"\./\[([a-z,]+)\]"', df.text)
    if installs != [extras_wanted]:
        errs.append(f'must install the project once as "./[{extras_wanted}]", found {installs}')
    chosen = {canonicalize_name(Requirement(r).name)
              for e in extras_wanted.split(",") for r in pyproject()["project"]["optional-dependencies"].get(e, [])}
    if faiss_wanted not in chosen or faiss_forbidden in chosen:
        errs.append(f"extras {extras_wanted} must bring {faiss_wanted} and not {faiss_forbidden}")
    if faiss_forbidden in df.pins or re.search(rf"pip install[^\n]*\b{faiss_forbidden}\b", df.text):
        errs.append(f"{faiss_forbidden} must never be installed in the {flavour} image")
    reqs = requirements()
    for name, version in df.pins.items():
        if name not in reqs:
            errs.append(f"pins {name}=={version}, which pyproject.toml does not list")
        elif not reqs[name].contains(version):
            errs.append(f"{name}=={version} violates pyproject's {name}{reqs[name]}")
    for needle in (f"v['ray'] == '{ray}'", "sys.version_info[:2] == (3, 11)", "pip check", f"'{faiss_forbidden}' not in"):
        if needle not in df.text:
            errs.append(f"build-time sanity check lacks {needle!r}")
    return errs


if __name__ == "__main__":  # pragma: no cover - convenience CLI
    target = Path(sys.argv[1] if len(sys.argv) > 1 else "k8s/overlays/gpu")
    sys.stdout.write(yaml.safe_dump_all(render(target), sort_keys=False))
