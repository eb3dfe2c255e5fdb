"""Offline checks of the KubeRay manifests under k8s/, rendered by `kubectl kustomize` (no cluster).

The negative cases break a good rendered manifest with a JSON patch and check that the breakage is reported.
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

import cel
import jsonpatch
import pytest
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
import deploy_lib as L  # noqa: E402

NAMESPACE = "jojoscl"
VARIANTS = ("base", *L.OVERLAYS)
WORKLOADS = {"train": ("RayJob", "jojoscl-train"), "sweep": ("RayJob", "jojoscl-sweep"),
             "interactive": ("RayCluster", "jojoscl-interactive")}
RAY_OBJECTS = list(WORKLOADS.values())
PVC_SHELL = L.K8S_DIR / "tools" / "pvc-shell.yaml"

needs_crds = pytest.mark.skipif(
    not (L.crd_dir() / "ray.io_rayjobs.yaml").is_file(),
    reason=f"KubeRay CRDs not found in {L.crd_dir()} (set JOJOSCL_SHARED_DIR to the folder holding k8s-crds/)",
)


@pytest.fixture(scope="module")
def storage_docs() -> list[dict]:
    return L.render("k8s/storage")


def rendered(variant: str, kind: str | None = None, name: str | None = None):
    docs = L.render(f"k8s/{variant}")
    return L.find(docs, kind, name) if kind else docs


@pytest.fixture(scope="module")
def ctx(storage_docs) -> L.Context:
    return L.context_for(rendered("overlays/gpu"), storage_docs)


# JSON patch ops on the rendered GPU training job
RC = "/spec/rayClusterSpec"
H, W = f"{RC}/headGroupSpec", f"{RC}/workerGroupSpecs/0"
HC, WC = f"{H}/template/spec/containers/0", f"{W}/template/spec/containers/0"
SC = "/spec/submitterPodTemplate/spec"


def rep(path, value):
    return {"op": "replace", "path": path, "value": value}


def add(path, value):
    return {"op": "add", "path": path, "value": value}


def rm(path):
    return {"op": "remove", "path": path}


def entry(old, new):
    """An op rewriting part of the entrypoint."""
    def ops(doc):
        assert old in doc["spec"]["entrypoint"], old
        return [rep("/spec/entrypoint", doc["spec"]["entrypoint"].replace(old, new))]
    return ops


def images(old, new):
    """Ops rewriting part of the head's and the first worker's image."""
    return lambda d: [rep(f"{c}/image", g.container["image"].replace(old, new)) for c, g in zip((HC, WC), L.ray_groups(d))]


def overlay_on(tmp_path, variant: str, image_entries: str) -> list[dict]:
    """Render a kustomization in tmp_path that takes k8s/<variant> and adds an `images:` list."""
    base = os.path.relpath(L.K8S_DIR / variant, tmp_path)
    (tmp_path / "kustomization.yaml").write_text(f"resources: [{base}]\nimages:\n{image_entries}")
    return L.render(tmp_path)


def broken(doc: dict, ops) -> dict:
    return jsonpatch.apply_patch(doc, ops(doc) if callable(ops) else ops)


def all_errors(check, docs) -> list[str]:
    return [e for d in docs for e in check(d)]


# --------------------------------------------------------------------------- files & rendering


@pytest.mark.parametrize("path", L.manifest_files(), ids=lambda p: str(p.relative_to(L.K8S_DIR)))
def test_yaml_files(path):
    """Each file parses; its rayVersion literals are the ray pin; each backoffLimit has a comment above it."""
    text = path.read_text()
    assert set(re.findall(r"rayVersion:\s*\"?([\w.]+)", text)) <= {L.ray_version()}
    lines = text.splitlines()
    assert all(lines[i - 1].strip().startswith("#") for i, ln in enumerate(lines) if ln.strip().startswith("backoffLimit:"))
    docs = list(yaml.safe_load_all(text))
    if path.name.startswith("patch-"):  # JSON patches are lists of operations
        assert len(docs) == 1 and all({"op", "path"} <= set(op) for op in docs[0])
        return
    assert docs and all(d.get("apiVersion") and d.get("kind") for d in docs), path
    assert all(d["metadata"].get("name") for d in docs if d["kind"] != "Kustomization"), path
    assert all(d["kind"] != "Secret" for d in docs), f"{path} commits a Secret"


@pytest.mark.parametrize("kdir", L.KUSTOMIZATION_DIRS)
def test_kustomizations_render_and_reference_every_file(kdir):
    assert rendered(kdir)
    spec = yaml.safe_load((L.K8S_DIR / kdir / "kustomization.yaml").read_text())
    referenced = set(spec.get("resources", [])) | {p["path"] for p in spec.get("patches", [])}
    local = {p.name for p in (L.K8S_DIR / kdir).glob("*.yaml")} - {"kustomization.yaml"}
    assert local <= referenced, f"files in {kdir} not used by its kustomization: {local - referenced}"


def test_render_fails_loudly(tmp_path):
    (tmp_path / "kustomization.yaml").write_text("resources: [missing.yaml]\n")
    with pytest.raises(L.RenderError, match="missing.yaml"):
        L.render(tmp_path)


def test_overlays_render_the_same_objects_in_one_namespace(storage_docs):
    expected = {("ConfigMap", "jojoscl-mlflow"), *RAY_OBJECTS, *(("NetworkPolicy", f"jojoscl-{w}") for w in WORKLOADS)}
    for variant in L.OVERLAYS:
        docs = rendered(variant)
        assert {(d["kind"], d["metadata"]["name"]) for d in docs} == expected, variant
        assert {d["metadata"].get("namespace") for d in docs} == {NAMESPACE}, variant
    assert {d["metadata"].get("namespace") for d in storage_docs} == {NAMESPACE}


@pytest.mark.parametrize("variant", L.OVERLAYS)
@pytest.mark.parametrize("workload", WORKLOADS)
def test_each_workload_is_selectable_by_label(variant, workload):
    """What `kubectl apply -k ... -l 'app.kubernetes.io/component in (config,<workload>)'` keeps."""
    kept = {(d["kind"], d["metadata"]["name"]) for d in rendered(variant)
            if d["metadata"].get("labels", {}).get("app.kubernetes.io/component") in ("config", workload)}
    assert kept == {("ConfigMap", "jojoscl-mlflow"), WORKLOADS[workload], ("NetworkPolicy", f"jojoscl-{workload}")}


def test_registry_override_keeps_digests(tmp_path):
    """`images: newName` over an overlay renames the containers nested in RayJob/RayCluster, digests kept."""
    docs = overlay_on(tmp_path, "overlays/gpu",
                      "- name: ghcr.io/your-org/jojoscl-dist\n  newName: registry.example.com/ml/jojoscl-dist\n")
    refs = {c["image"].split("@")[0] for d in docs for _, _, c in L.containers(d) if "image" in c}
    assert refs == {"registry.example.com/ml/jojoscl-dist:0.1.0-ray2.60.0-py311-cu128",
                    "registry.example.com/ml/jojoscl-dist:0.1.0-ray2.60.0-py311-cpu"}
    assert all_errors(L.pin_errors, docs) == []


def test_digest_check_on_a_real_render(tmp_path):
    """An overlay that re-tags without a digest renders unpinned images, and the check says so."""
    docs = overlay_on(tmp_path, "overlays/cpu", "- name: ghcr.io/your-org/jojoscl-dist\n  newTag: 0.1.0-ray2.60.0-py311-cpu\n")
    errors = all_errors(L.pin_errors, docs)
    assert len(errors) >= 5 and all("is not pinned by digest" in e for e in errors)


# --------------------------------------------------------------------------- schema, rules, security, network


@needs_crds
@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("kind,name", RAY_OBJECTS)
def test_crd_schema(variant, kind, name):
    assert L.schema_errors(rendered(variant, kind, name)) == []


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("kind,name", RAY_OBJECTS)
def test_invariants(storage_docs, variant, kind, name):
    docs = rendered(variant)
    assert L.invariant_errors(L.find(docs, kind, name), L.context_for(docs, storage_docs)) == []


@needs_crds
@pytest.mark.parametrize("kind", L.CRD_FILES)
def test_every_cel_rule_of_the_crds_compiles(kind):
    def rules(node):
        if isinstance(node, dict):
            yield from (r["rule"] for r in node.get("x-kubernetes-validations", []))
            node = list(node.values())
        for child in node if isinstance(node, list) else ():
            yield from rules(child)

    found = set(rules(L.crd_document(kind)["spec"]["versions"]))
    assert found and all(cel.compile(r) for r in found), found


def test_gpu_overlay():
    """GPU workers (limits, toleration, CUDA image and no GPU on the head: test_invariants) for training and the
    interactive cluster; the GPU training command is the CPU one plus --use-gpu."""
    cpu, gpu = (L.parse_entrypoint(rendered(v, "RayJob", "jojoscl-train")["spec"]["entrypoint"]) for v in L.OVERLAYS)
    assert gpu.args == {**cpu.args, "--use-gpu": True} and not gpu.errors
    for kind, name in (("RayJob", "jojoscl-train"), ("RayCluster", "jojoscl-interactive")):
        assert [g.name for g in L.ray_groups(rendered("overlays/gpu", kind, name)) if g.gpus] == ["gpu-workers"]


@pytest.mark.parametrize("variant", ("base", "overlays/cpu"))
def test_cpu_variants_request_no_gpu(variant):
    assert L.GPU_RESOURCE not in yaml.safe_dump_all(rendered(variant))
    assert all("--use-gpu" not in d["spec"]["entrypoint"] for d in rendered(variant) if d["kind"] == "RayJob")


def test_train_job_resumes_the_same_run_on_both_overlays():
    """Retry and resume on the shared PVC are rules of test_invariants; both overlays use one run layout."""
    runs = {(args["--run-name"], args["--storage-path"]) for args in
            (L.parse_entrypoint(rendered(v, "RayJob", "jojoscl-train")["spec"]["entrypoint"]).args for v in L.OVERLAYS)}
    assert len(runs) == 1, runs


def test_pvc_shell_tool_mounts_the_same_claim_at_the_same_path(storage_docs):
    pod = yaml.safe_load(PVC_SHELL.read_text())
    head = L.ray_groups(rendered("base", "RayJob", "jojoscl-train"))[0]
    assert pod["spec"]["volumes"][0]["persistentVolumeClaim"]["claimName"] == storage_docs[0]["metadata"]["name"]
    assert pod["spec"]["containers"][0]["volumeMounts"][0]["mountPath"] == head.container["volumeMounts"][0]["mountPath"]
    assert pod["spec"]["containers"][0]["image"] == head.container["image"]


def test_mlflow_uri_comes_from_configmap():
    uri = rendered("overlays/gpu", "ConfigMap", "jojoscl-mlflow")["data"]["tracking-uri"]
    # "" is allowed: the package then falls back to SQLite inside --output (on the PVC)
    assert uri == "" or uri.split(":", 1)[0] in {"http", "https", "databricks", "sqlite"}, uri


@pytest.mark.parametrize("variant", VARIANTS)
def test_every_container_is_hardened(variant):
    docs = [d for d in rendered(variant) if any(L.pod_specs(d))] + [yaml.safe_load(PVC_SHELL.read_text())]
    checked = {f"{d['metadata']['name']}{path}" for d in docs for path, _, _ in L.containers(d)}
    # head, workers and submitter of each RayJob, head, workers and autoscaler of the RayCluster, the shell
    assert {"jojoscl-train/spec/submitterPodTemplate/spec/ray-job-submitter", "jojoscl-pvc-shell/spec/shell",
            "jojoscl-interactive/spec/headGroupSpec/template/spec/autoscaler"} <= checked, checked
    assert len(checked) >= 3 + 3 + 3 + 1
    assert all_errors(L.security_errors, docs) == []


@pytest.mark.parametrize("variant", L.OVERLAYS)
def test_overlay_images_are_pinned_by_digest(variant):
    docs = rendered(variant)
    assert sum(1 for d in docs for _, _, c in L.containers(d) if "image" in c) >= 8
    assert all_errors(L.pin_errors, docs) == []
    for pin in yaml.safe_load((L.K8S_DIR / variant / "kustomization.yaml").read_text())["images"]:
        assert L.DIGEST.match(pin["digest"]) and L.IMAGE_TAG.match(pin["newTag"]), pin


@pytest.mark.parametrize("variant", VARIANTS)
def test_network_policies(variant):
    docs = rendered(variant)
    assert L.network_errors(docs) == []
    policies = [d for d in docs if d["kind"] == "NetworkPolicy"]
    for kind, name in RAY_OBJECTS:  # the head, with the labels KubeRay gives it, is isolated by one policy
        head = L.kuberay_pods(L.find(docs, kind, name))["head"]
        assert head.labels["ray.io/node-type"] == "head" and head.labels["ray.io/cluster"].startswith(name)
        assert [p["metadata"]["name"] for p in policies if L.selects(p["spec"]["podSelector"], head.labels)] == [name]


# --------------------------------------------------------------------------- negative cases

CPU_IMAGE = "ghcr.io/your-org/jojoscl-dist:0.1.0-ray2.60.0-py311-cpu"
NOT_PINNED = "is not pinned by digest"
# check: {case: ([workload,] ops on its object (None deletes it), expected message)}; the object is the
# workload's NetworkPolicy for the network check, the workload's RayJob/RayCluster otherwise (default: train).
BREAKS = {
    "security": {
        "no-seccomp": ([rm(f"{HC}/securityContext/seccompProfile"), rm(f"{H}/template/spec/securityContext/seccompProfile")],
                       "ray-head: securityContext.seccompProfile.type must be RuntimeDefault"),
        "seccomp-unconfined": ([rep(f"{WC}/securityContext/seccompProfile/type", "Unconfined")], "seccompProfile"),
        "privilege-escalation": ([rep(f"{WC}/securityContext/allowPrivilegeEscalation", True)], "allowPrivilegeEscalation"),
        "privileged": ([add(f"{WC}/securityContext/privileged", True)], "allowPrivilegeEscalation"),
        "root-in-container": ([add(f"{WC}/securityContext/runAsUser", 0)], "runAsUser/runAsGroup must be 1000/100"),
        "runAsNonRoot-false": ([rep(f"{HC}/securityContext/runAsNonRoot", False)], "runAsNonRoot must be true"),
        "capabilities-kept": ([rm(f"{SC}/containers/0/securityContext/capabilities")],
                              'ray-job-submitter: securityContext.capabilities must drop ["ALL"]'),
        "capability-added": ([add(f"{WC}/securityContext/capabilities/add", ["NET_ADMIN"])], "add none"),
        "pod-fsGroup-missing": ([rm(f"{W}/template/spec/securityContext/fsGroup")], "pod securityContext.fsGroup must be 100"),
        "pod-runs-as-root": ([rep(f"{SC}/securityContext/runAsUser", 0)], "pod securityContext.runAsUser must be 1000"),
        "unhardened-init-container": ([add(f"{W}/template/spec/initContainers", [{"name": "fetch", "image": "busybox"}])],
                                      "fetch: securityContext.allowPrivilegeEscalation"),
        "autoscaler-unhardened": ("interactive", [rm("/spec/autoscalerOptions/securityContext")],
                                  "autoscaler: securityContext.allowPrivilegeEscalation"),
    },
    "pin": {
        "tag-only": ([rep(f"{HC}/image", "ghcr.io/your-org/jojoscl-dist:0.1.0-ray2.60.0-py311-cu128")], NOT_PINNED),
        "short-digest": (images("@sha256:9ef25e88", "@sha256:9ef2"), NOT_PINNED),
        "digest-without-tag": (images(":0.1.0-ray2.60.0-py311-cu128@", "@"), NOT_PINNED),
        "other-algorithm": (images("@sha256:", "@sha512:"), NOT_PINNED),
    },
    "network": {
        "selector-typo": ([rep("/spec/podSelector/matchLabels/app.kubernetes.io~1name", "jojoscl")],
                          "RayJob/jojoscl-train: head port 6379 is open to an unlabelled pod"),
        "selector-not-kuberay-label": ("interactive", [rep("/spec/podSelector/matchLabels/ray.io~1cluster", "interactive")],
                                       "RayCluster/jojoscl-interactive: head port 10001 is open to"),
        "policy-missing": ("sweep", None, "RayJob/jojoscl-sweep: head port 8265 is open to jojoscl-train/head"),
        "egress-only": ([rep("/spec/policyTypes", ["Egress"])], "head port 6379 is open to a pod of another namespace"),
        "any-source": ([rm("/spec/ingress/0/from")], "head port 6379 is open to a pod of another namespace"),
        "any-namespace": ([add("/spec/ingress/0/from/0/namespaceSelector", {})], "open to a pod of another namespace"),
        "own-pods-gcs-only": ([add("/spec/ingress/0/ports", [{"protocol": "TCP", "port": 6379}])],
                              "port 12345 is closed to jojoscl-train/head of the same cluster"),
        "no-operator": ("sweep", [rm("/spec/ingress/1/from/1")], "head port 8265 is closed to the KubeRay operator"),
        "submitter-on-all-ports": ([rm("/spec/ingress/1/ports")], "head port 6379 is open to jojoscl-train/submitter"),
        "wrong-submitter": ([rep("/spec/ingress/1/from/0/podSelector/matchLabels/ray.io~1originated-from-cr-name",
                                 "jojoscl-sweep")], "head port 8265 is closed to jojoscl-train/submitter"),
    },
    "schema": {
        "replicas-wrong-type": ([rep(f"{W}/replicas", "two")], "is not of type 'integer'"),
        "rayStartParams-not-string": ([rep(f"{H}/rayStartParams/num-gpus", 0)], "is not of type 'string'"),
        "unknown-field-typo": ([add("/spec/shutdownAfterJobFinish", True)], "was unexpected"),
        "missing-required-groupName": ([rm(f"{W}/groupName")], "'groupName' is a required property"),
        "missing-required-container-name": ([rm(f"{WC}/name")], "'name' is a required property"),
        "missing-required-template": ([rm(f"{H}/template")], "'template' is a required"),
        "enum": ([rep(f"{RC}/authOptions", {"mode": "tokens"})], "is not one of"),
        "int32-overflow": ([rep("/spec/backoffLimit", 2**40)], "is not a 'int32'"),
        "bad-quantity": ([rep(f"{WC}/resources/limits/memory", "lots")], "does not match"),
        "duplicate-env-name": ([add(f"{HC}/env/-", {"name": "MLFLOW_TRACKING_URI", "value": "x"})], "duplicate list-map key"),
        "cel-deletion-strategy": ([add("/spec/deletionStrategy", {"onSuccess": {"policy": "DeleteCluster"}})], "CEL rule failed"),
        "bad-metadata-name": ([rep("/metadata/name", "Jojo_SCL")], "does not match"),
        "deprecated-apiVersion": ([rep("/apiVersion", "ray.io/v1alpha1")], "deprecated"),
    },
    "invariant": {
        "ray-version-mismatch": ([rep(f"{RC}/rayVersion", "2.59.0")], "rayVersion '2.59.0'"),
        "image-ray-version-mismatch": (images("ray2.60.0", "ray2.59.0"), "is built for Ray 2.59.0"),
        "image-differs-head-worker": ([rep(f"{HC}/image", CPU_IMAGE.replace("cpu", "cu126"))], "must use one image"),
        "cpu-image-on-gpu-group": ([rep(f"{HC}/image", CPU_IMAGE), rep(f"{WC}/image", CPU_IMAGE)], "is the CPU build"),
        "gpu-requests-without-limits": ([rm(f"{WC}/resources/limits/nvidia.com~1gpu")],
                                        "must set nvidia.com/gpu in resources.limits"),
        "gpu-group-without-toleration": ([rm(f"{W}/template/spec/tolerations")], "needs a toleration"),
        "use-gpu-without-gpu-group": ([rm(f"{WC}/resources/{s}/nvidia.com~1gpu") for s in ("limits", "requests")],
                                      "--use-gpu but no worker group"),
        "gpu-group-without-use-gpu": (entry(" --use-gpu", ""), "does not pass --use-gpu"),
        "head-with-gpu": ([add(f"{HC}/resources/limits/nvidia.com~1gpu", 1)], "head must have no GPU"),
        "num-workers-exceed-gpus": (entry("--num-workers 2", "--num-workers 8"), "does not fit the 2 GPUs"),
        "worker-mount-path-differs": ([rep(f"{WC}/volumeMounts/0/mountPath", "/mnt/other")], "mounted at different paths"),
        "worker-without-pvc": ([rm(f"{W}/template/spec/volumes")], "does not mount the shared PVC"),
        "data-outside-shared-storage": (entry("--data /mnt/jojoscl/data", "--data /tmp"), "is not on the shared PVC"),
        "mlflow-env-missing-on-worker": ([rm(f"{WC}/env")], "env MLFLOW_TRACKING_URI missing"),
        "mlflow-configmap-key-wrong": ([rep(f"{c}/env/0/valueFrom/configMapKeyRef/key", "uri") for c in (HC, WC)],
                                       "missing ConfigMap key"),
        "no-retry": ([rep("/spec/backoffLimit", 0)], "needs backoffLimit >= 1"),
        "retry-without-run-name": (entry("--run-name jojoscl-train", ""), "no --run-name"),
        "unknown-cli-flag": (entry("--seed 0", "--seeed 0"), "unrecognized arguments: --seeed"),
        "bad-cli-value": (entry("--epochs 100", "--epochs many"), "invalid int value: 'many'"),
        "flag-given-twice": (entry("--seed 0", "--seed 0 --seed 1"), "--seed given twice"),
        "unknown-module": (entry("jojoscl_dist.train", "jojoscl_dist.trainer"), "no such module"),
        "not-python-m": ([rep("/spec/entrypoint", "bash run.sh")], "is not `python -m MODULE"),
        "name-too-long": ([rep("/metadata/name", "jojoscl-train-" + "x" * 40)], "at most 47 characters"),
        "cluster-kept-after-job": ([rep("/spec/shutdownAfterJobFinishes", False)], "shutdownAfterJobFinishes"),
        "no-token-auth": ([rm(f"{RC}/authOptions")], "authOptions.mode"),
        "duplicate-group-name": ([{"op": "copy", "from": W, "path": f"{RC}/workerGroupSpecs/-"}], "duplicate worker groupName"),
        "replicas-above-max": ([rep(f"{W}/replicas", 5)], "minReplicas <= replicas <= maxReplicas"),
        "requests-above-limits": ([rep(f"{WC}/resources/requests/memory", "64Gi")], "requests.memory"),
    },
}
CHECKS = {  # (rendered GPU overlay with the broken object, that object or None if deleted, ctx) -> errors
    "security": lambda docs, doc, ctx: L.security_errors(doc),
    "pin": lambda docs, doc, ctx: L.pin_errors(doc),
    "network": lambda docs, doc, ctx: L.network_errors(docs),
    "schema": lambda docs, doc, ctx: L.schema_errors(doc),
    "invariant": lambda docs, doc, ctx: L.invariant_errors(doc, ctx),
}


@pytest.mark.parametrize("check,case", [pytest.param(check, case, id=f"{check}-{case}",
                                                     marks=[needs_crds] if check == "schema" else [])
                                        for check, cases in BREAKS.items() for case in sorted(cases)])
def test_check_rejects_broken_manifest(ctx, check, case):
    spec = BREAKS[check][case]
    workload, ops, expected = spec if len(spec) == 3 else ("train", *spec)
    docs = rendered("overlays/gpu")
    target = ("NetworkPolicy", f"jojoscl-{workload}") if check == "network" else WORKLOADS[workload]
    i = docs.index(L.find(docs, *target))
    assert CHECKS[check](docs, docs[i], ctx) == []
    doc = None if ops is None else broken(docs[i], ops)
    docs[i:i + 1] = [] if doc is None else [doc]
    errors = CHECKS[check](docs, doc, ctx)
    assert any(expected in e for e in errors), errors


def test_rwo_claim_is_rejected_for_multi_node_clusters(storage_docs):
    pvc = broken(storage_docs[0], [rep("/spec/accessModes", ["ReadWriteOnce"])])
    ctx = L.context_for(rendered("overlays/cpu"), [pvc])
    assert any("need ReadWriteMany" in e for e in L.invariant_errors(rendered("overlays/cpu", "RayJob", "jojoscl-train"), ctx))


def test_num_workers_checked_against_cpus_on_cpu_overlay(storage_docs):
    job = rendered("overlays/cpu", "RayJob", "jojoscl-train")
    ctx = L.context_for(rendered("overlays/cpu"), storage_docs)
    assert L.invariant_errors(job, ctx) == []
    errors = L.invariant_errors(broken(job, entry("--num-workers 2", "--num-workers 64")), ctx)
    assert any("does not fit the 8 worker CPUs" in e for e in errors), errors


def test_quantities():
    assert L.parse_quantity("500m") == L.Decimal("0.5")
    assert L.parse_quantity("16Gi") == 16 * 2**30
    assert L.parse_quantity("1e3") == 1000 and L.parse_quantity("2k") == 2000
    assert L.parse_quantity(2) == 2
    with pytest.raises(ValueError):
        L.parse_quantity("lots")
