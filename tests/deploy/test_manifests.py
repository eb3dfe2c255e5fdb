"""Offline checks of the KubeRay manifests under k8s/ (no cluster, no kustomize binary).

The base and both overlays are rendered with the small kustomize subset in deploy_lib.render,
then every RayJob/RayCluster is validated against the KubeRay v1.7.0 CRD schemas (read from
../shared/k8s-crds) and against the project's invariants. The negative tests break a good
manifest on purpose and check that the breakage is reported.
"""

from __future__ import annotations

import copy
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
import deploy_lib as L  # noqa: E402

NAMESPACE = "jojoscl"
VARIANTS = ("base", "overlays/cpu", "overlays/gpu")
RAY_OBJECTS = [
    ("RayJob", "jojoscl-train"),
    ("RayJob", "jojoscl-sweep"),
    ("RayCluster", "jojoscl-interactive"),
]

needs_crds = pytest.mark.skipif(
    not (L.crd_dir() / "ray.io_rayjobs.yaml").is_file(),
    reason=f"KubeRay CRDs not found in {L.crd_dir()} (set JOJOSCL_SHARED_DIR to the folder holding k8s-crds/)",
)


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def storage_docs() -> list[dict]:
    return L.render(L.K8S_DIR / "storage")


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[dict]]:
    return {v: L.render(L.K8S_DIR / v) for v in VARIANTS}


def get(docs: list[dict], kind: str, name: str) -> dict:
    found = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind}/{name}: found {len(found)}"
    return copy.deepcopy(found[0])


@pytest.fixture(scope="module")
def ctx(rendered, storage_docs) -> L.Context:
    return L.context_for(rendered["overlays/gpu"], storage_docs)


@pytest.fixture()
def gpu_job(rendered) -> dict:
    return get(rendered["overlays/gpu"], "RayJob", "jojoscl-train")


@pytest.fixture()
def cpu_job(rendered) -> dict:
    return get(rendered["overlays/cpu"], "RayJob", "jojoscl-train")


# --------------------------------------------------------------------------- files & rendering


@pytest.mark.parametrize("path", L.manifest_files(), ids=lambda p: str(p.relative_to(L.K8S_DIR)))
def test_yaml_files_parse(path):
    docs = L.load_docs(path) if not path.name.startswith("patch-") else None
    if docs is None:  # JSON patches are lists of operations
        ops = L.yaml.safe_load(path.read_text())
        assert isinstance(ops, list) and all({"op", "path"} <= set(op) for op in ops)
        return
    assert docs, f"{path} is empty"
    for doc in docs:
        assert doc.get("apiVersion") and doc.get("kind"), path
        if doc["kind"] != "Kustomization":
            assert doc.get("metadata", {}).get("name"), path


@pytest.mark.parametrize("kdir", L.KUSTOMIZATION_DIRS)
def test_kustomizations_render_and_reference_every_file(kdir):
    directory = L.K8S_DIR / kdir
    docs = L.render(directory)
    assert docs
    spec = L.load_docs(L.kustomization_file(directory))[0]
    referenced = set(spec.get("resources", [])) | {p["path"] for p in spec.get("patches", []) if "path" in p}
    local_files = {p.name for p in directory.glob("*.yaml") if p.name != "kustomization.yaml"}
    assert local_files <= referenced, f"files in {kdir} not used by its kustomization: {local_files - referenced}"


def test_overlays_render_the_same_objects_in_one_namespace(rendered, storage_docs):
    expected = {("ConfigMap", "jojoscl-mlflow"), *RAY_OBJECTS}
    for variant in ("overlays/cpu", "overlays/gpu"):
        docs = rendered[variant]
        assert {(d["kind"], d["metadata"]["name"]) for d in docs} == expected, variant
        assert {d["metadata"].get("namespace") for d in docs} == {NAMESPACE}, variant
    assert {d["metadata"].get("namespace") for d in storage_docs} == {NAMESPACE}


COMPONENT = "app.kubernetes.io/component"


def _select(docs, components):
    """What `kubectl apply -k ... -l 'app.kubernetes.io/component in (...)'` keeps."""
    return {(d["kind"], d["metadata"]["name"]) for d in docs if d["metadata"].get("labels", {}).get(COMPONENT) in components}


@pytest.mark.parametrize("variant", ("overlays/cpu", "overlays/gpu"))
def test_each_workload_is_selectable_by_label(rendered, variant):
    docs = rendered[variant]
    assert _select(docs, {"config", "train"}) == {("ConfigMap", "jojoscl-mlflow"), ("RayJob", "jojoscl-train")}
    assert _select(docs, {"config", "sweep"}) == {("ConfigMap", "jojoscl-mlflow"), ("RayJob", "jojoscl-sweep")}
    assert _select(docs, {"config", "interactive"}) == {("ConfigMap", "jojoscl-mlflow"),
                                                        ("RayCluster", "jojoscl-interactive")}


def test_no_secret_is_committed():
    for path in L.manifest_files():
        if path.name.startswith("patch-"):
            continue
        assert all(d.get("kind") != "Secret" for d in L.load_docs(path)), f"{path} commits a Secret"


def test_ray_version_literal_everywhere():
    """Every rayVersion under k8s/ (manifests and patches) equals the ray pin of pyproject.toml."""
    found = []

    def walk(node):
        if isinstance(node, dict):
            for k, v in node.items():
                if k == "rayVersion":
                    found.append(v)
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    for path in L.manifest_files():
        walk(list(L.yaml.safe_load_all(path.read_text())))
    assert found and set(found) == {L.ray_version()}, found


# --------------------------------------------------------------------------- schema & invariants


@needs_crds
@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("kind,name", RAY_OBJECTS)
def test_crd_schema(rendered, variant, kind, name):
    assert L.schema_errors(get(rendered[variant], kind, name)) == []


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("kind,name", RAY_OBJECTS)
def test_invariants(rendered, storage_docs, variant, kind, name):
    docs = rendered[variant]
    assert L.invariant_errors(get(docs, kind, name), L.context_for(docs, storage_docs)) == []


@needs_crds
def test_every_cel_rule_of_the_crds_is_known():
    """CEL rules are evaluated by hand (KNOWN_CEL_RULES); a new rule in the CRDs must be added there."""
    for kind in L.CRD_FILES:
        crd = L.crd_document(kind)
        v1 = next(v for v in crd["spec"]["versions"] if v["name"] == "v1")
        rules = set()

        def walk(node):
            if isinstance(node, dict):
                for rule in node.get("x-kubernetes-validations", []):
                    rules.add(rule["rule"])
                for v in node.values():
                    walk(v)
            elif isinstance(node, list):
                for v in node:
                    walk(v)

        walk(v1["schema"])
        assert rules and rules <= set(L.KNOWN_CEL_RULES), rules - set(L.KNOWN_CEL_RULES)


@pytest.mark.parametrize("module", sorted(L.CLI_CONTRACT))
def test_entrypoint_modules_exist(rendered, module):
    """`python -m X` of every RayJob resolves to a module file in the repo (and its argparse flags)."""
    entrypoints = [d["spec"]["entrypoint"] for v in VARIANTS for d in rendered[v] if d["kind"] == "RayJob"]
    mine = [e for e in entrypoints if L.parse_entrypoint(e).module == module]
    assert mine, f"no RayJob runs {module}"
    for entrypoint in mine:
        assert L.module_errors(entrypoint) == []


def test_gpu_overlay_shape(rendered):
    job = get(rendered["overlays/gpu"], "RayJob", "jojoscl-train")
    head, *workers = L.ray_groups(job)
    assert head.gpus == 0 and head.spec["rayStartParams"]["num-gpus"] == "0"
    gpu_groups = [g for g in workers if g.gpus]
    assert gpu_groups, "GPU overlay has no GPU worker group"
    for g in gpu_groups:
        assert g.resource("limits", L.GPU_RESOURCE) >= 1
        assert any(t.get("key") == L.GPU_RESOURCE for t in g.pod["tolerations"])
        assert L.IMAGE_TAG.match(L.split_image(g.container["image"])[1])["flavor"].startswith("cu")
    assert "--use-gpu" in L.parse_entrypoint(job["spec"]["entrypoint"]).args
    cluster = get(rendered["overlays/gpu"], "RayCluster", "jojoscl-interactive")
    assert [g.name for g in L.ray_groups(cluster) if g.gpus] == ["gpu-workers"]


@pytest.mark.parametrize("variant", ("base", "overlays/cpu"))
def test_cpu_variants_request_no_gpu(rendered, variant):
    assert L.GPU_RESOURCE not in L.yaml.safe_dump_all(rendered[variant])
    for d in rendered[variant]:
        if d["kind"] == "RayJob":
            assert "--use-gpu" not in d["spec"]["entrypoint"]


def test_train_job_retries_and_resumes_from_shared_storage(rendered, storage_docs):
    pvc = storage_docs[0]
    assert pvc["kind"] == "PersistentVolumeClaim" and "ReadWriteMany" in pvc["spec"]["accessModes"]
    runs = set()
    for variant in ("overlays/cpu", "overlays/gpu"):
        job = get(rendered[variant], "RayJob", "jojoscl-train")
        assert job["spec"]["backoffLimit"] >= 1
        assert job["spec"]["shutdownAfterJobFinishes"] is True
        args = L.parse_entrypoint(job["spec"]["entrypoint"]).args
        mount = {g.name: g.container["volumeMounts"][0]["mountPath"] for g in L.ray_groups(job)}
        assert len(set(mount.values())) == 1
        assert args["--storage-path"].startswith(mount["head"] + "/")
        runs.add((args["--run-name"], args["--storage-path"]))
    assert len(runs) == 1, "CPU and GPU overlays should resume the same run layout"


def test_pvc_shell_tool_mounts_the_same_claim_at_the_same_path(rendered, storage_docs):
    pod = L.load_docs(L.K8S_DIR / "tools" / "pvc-shell.yaml")[0]
    job = get(rendered["base"], "RayJob", "jojoscl-train")
    head = L.ray_groups(job)[0]
    claim = storage_docs[0]["metadata"]["name"]
    assert pod["spec"]["volumes"][0]["persistentVolumeClaim"]["claimName"] == claim
    assert pod["spec"]["containers"][0]["volumeMounts"][0]["mountPath"] == head.container["volumeMounts"][0]["mountPath"]
    assert pod["spec"]["containers"][0]["image"] == head.container["image"]


def test_mlflow_uri_comes_from_configmap(rendered):
    cm = get(rendered["overlays/gpu"], "ConfigMap", "jojoscl-mlflow")
    uri = cm["data"]["tracking-uri"]
    # "" is allowed: the package then falls back to SQLite inside --output (on the PVC)
    assert uri == "" or uri.split(":", 1)[0] in {"http", "https", "databricks", "sqlite"}, uri


# --------------------------------------------------------------------------- negative: schema


def _rc(d):
    return d["spec"]["rayClusterSpec"]


def _worker(d, i=0):
    return _rc(d)["workerGroupSpecs"][i]


def _wcontainer(d):
    return _worker(d)["template"]["spec"]["containers"][0]


def _hcontainer(d):
    return _rc(d)["headGroupSpec"]["template"]["spec"]["containers"][0]


SCHEMA_BREAKS = {
    "replicas-wrong-type": (lambda d: _worker(d).__setitem__("replicas", "two"), "is not of type 'integer'"),
    "rayStartParams-not-string": (lambda d: _rc(d)["headGroupSpec"]["rayStartParams"].__setitem__("num-gpus", 0),
                                  "is not of type 'string'"),
    "unknown-field-typo": (lambda d: d["spec"].__setitem__("shutdownAfterJobFinish", True), "was unexpected"),
    "missing-required-groupName": (lambda d: _worker(d).pop("groupName"), "'groupName' is a required property"),
    "missing-required-container-name": (lambda d: _wcontainer(d).pop("name"), "'name' is a required property"),
    "missing-required-template": (lambda d: _rc(d)["headGroupSpec"].pop("template"), "'template' is a required"),
    "enum": (lambda d: _rc(d).__setitem__("authOptions", {"mode": "tokens"}), "is not one of"),
    "int32-overflow": (lambda d: d["spec"].__setitem__("backoffLimit", 2**40), "is not a 'int32'"),
    "bad-quantity": (lambda d: _wcontainer(d)["resources"]["limits"].__setitem__("memory", "lots"), "does not match"),
    "duplicate-env-name": (lambda d: _hcontainer(d)["env"].append({"name": "MLFLOW_TRACKING_URI", "value": "x"}),
                           "duplicate list-map key"),
    "cel-deletion-strategy": (lambda d: d["spec"].__setitem__("deletionStrategy", {"onSuccess": {"policy": "DeleteCluster"}}),
                              "CEL rule failed"),
    "bad-metadata-name": (lambda d: d["metadata"].__setitem__("name", "Jojo_SCL"), "does not match"),
    "deprecated-apiVersion": (lambda d: d.__setitem__("apiVersion", "ray.io/v1alpha1"), "deprecated"),
}


@needs_crds
@pytest.mark.parametrize("case", sorted(SCHEMA_BREAKS))
def test_schema_rejects_broken_manifest(gpu_job, case):
    mutate, expected = SCHEMA_BREAKS[case]
    assert L.schema_errors(gpu_job) == []
    mutate(gpu_job)
    errors = L.schema_errors(gpu_job)
    assert any(expected in e for e in errors), errors


# --------------------------------------------------------------------------- negative: invariants


def _set_entry(d, old, new):
    d["spec"]["entrypoint"] = d["spec"]["entrypoint"].replace(old, new)
    assert old != new


INVARIANT_BREAKS = {
    "ray-version-mismatch": (lambda d: _rc(d).__setitem__("rayVersion", "2.59.0"), "rayVersion '2.59.0'"),
    "image-ray-version-mismatch": (
        lambda d: [c.__setitem__("image", c["image"].replace("ray2.60.0", "ray2.59.0")) for c in (_hcontainer(d), _wcontainer(d))],
        "is built for Ray 2.59.0"),
    "image-differs-head-worker": (
        lambda d: _hcontainer(d).__setitem__("image", "ghcr.io/your-org/jojoscl-dist:0.1.0-ray2.60.0-py311-cu126"),
        "must use one image"),
    "cpu-image-on-gpu-group": (
        lambda d: [c.__setitem__("image", "ghcr.io/your-org/jojoscl-dist:0.1.0-ray2.60.0-py311-cpu") for c in (_hcontainer(d), _wcontainer(d))],
        "is the CPU build"),
    "gpu-requests-without-limits": (lambda d: _wcontainer(d)["resources"]["limits"].pop("nvidia.com/gpu"),
                                    "must set nvidia.com/gpu in resources.limits"),
    "gpu-group-without-toleration": (lambda d: _worker(d)["template"]["spec"].pop("tolerations"), "needs a toleration"),
    "use-gpu-without-gpu-group": (
        lambda d: [_wcontainer(d)["resources"][s].pop("nvidia.com/gpu") for s in ("limits", "requests")],
        "--use-gpu but no worker group"),
    "gpu-group-without-use-gpu": (lambda d: _set_entry(d, " --use-gpu", ""), "does not pass --use-gpu"),
    "head-with-gpu": (lambda d: _hcontainer(d)["resources"]["limits"].__setitem__("nvidia.com/gpu", 1), "head must have no GPU"),
    "num-workers-exceed-gpus": (lambda d: _set_entry(d, "--num-workers 2", "--num-workers 8"), "does not fit the 2 GPUs"),
    "worker-mount-path-differs": (lambda d: _wcontainer(d)["volumeMounts"][0].__setitem__("mountPath", "/mnt/other"),
                                  "mounted at different paths"),
    "worker-without-pvc": (lambda d: _worker(d)["template"]["spec"].pop("volumes"), "does not mount the shared PVC"),
    "data-outside-shared-storage": (lambda d: _set_entry(d, "--data /mnt/jojoscl/data", "--data /tmp"), "is not on the shared PVC"),
    "mlflow-env-missing-on-worker": (lambda d: _wcontainer(d).pop("env"), "env MLFLOW_TRACKING_URI missing"),
    "mlflow-configmap-key-wrong": (
        lambda d: [c["env"][0]["valueFrom"]["configMapKeyRef"].__setitem__("key", "uri") for c in (_hcontainer(d), _wcontainer(d))],
        "missing ConfigMap key"),
    "no-retry": (lambda d: d["spec"].__setitem__("backoffLimit", 0), "needs backoffLimit >= 1"),
    "retry-without-run-name": (lambda d: _set_entry(d, "--run-name jojoscl-train", ""), "no --run-name"),
    "unknown-cli-flag": (lambda d: _set_entry(d, "--seed 0", "--seeed 0"), "unknown argument '--seeed'"),
    "not-python-m": (lambda d: d["spec"].__setitem__("entrypoint", "bash run.sh"), "is not `python -m MODULE"),
    "name-too-long": (lambda d: d["metadata"].__setitem__("name", "jojoscl-train-" + "x" * 40), "at most 47 characters"),
    "cluster-kept-after-job": (lambda d: d["spec"].__setitem__("shutdownAfterJobFinishes", False), "shutdownAfterJobFinishes"),
    "no-token-auth": (lambda d: _rc(d).pop("authOptions"), "authOptions.mode"),
    "duplicate-group-name": (lambda d: _rc(d)["workerGroupSpecs"].append(copy.deepcopy(_worker(d))), "duplicate worker groupName"),
    "replicas-above-max": (lambda d: _worker(d).__setitem__("replicas", 5), "minReplicas <= replicas <= maxReplicas"),
    "requests-above-limits": (lambda d: _wcontainer(d)["resources"]["requests"].__setitem__("memory", "64Gi"), "requests.memory"),
}


@pytest.mark.parametrize("case", sorted(INVARIANT_BREAKS))
def test_invariants_reject_broken_manifest(gpu_job, ctx, case):
    mutate, expected = INVARIANT_BREAKS[case]
    assert L.invariant_errors(gpu_job, ctx) == []
    mutate(gpu_job)
    errors = L.invariant_errors(gpu_job, ctx)
    assert any(expected in e for e in errors), errors


def test_rwo_claim_is_rejected_for_multi_node_clusters(cpu_job, rendered, storage_docs):
    pvc = copy.deepcopy(storage_docs[0])
    pvc["spec"]["accessModes"] = ["ReadWriteOnce"]
    ctx = L.context_for(rendered["overlays/cpu"], [pvc])
    assert any("need ReadWriteMany" in e for e in L.invariant_errors(cpu_job, ctx))


def test_num_workers_checked_against_cpus_on_cpu_overlay(cpu_job, rendered, storage_docs):
    ctx = L.context_for(rendered["overlays/cpu"], storage_docs)
    assert L.invariant_errors(cpu_job, ctx) == []
    _set_entry(cpu_job, "--num-workers 2", "--num-workers 64")
    assert any("does not fit the 8 worker CPUs" in e for e in L.invariant_errors(cpu_job, ctx))


# --------------------------------------------------------------------------- entrypoint module lookup


def test_module_errors_with_fake_repo(tmp_path):
    entry = "python -m jojoscl_dist.train --data /mnt/x/in.h5ad --use-gpu"
    assert "has no module file" in L.module_errors(entry, tmp_path)[0]
    main = tmp_path / "jojoscl_dist" / "train" / "__main__.py"
    main.parent.mkdir(parents=True)
    main.write_text("def main():\n    pass\n")  # no argparse found: only the file is checked
    assert L.module_errors(entry, tmp_path) == []
    (main.parent / "cli.py").write_text(
        "import argparse\np = argparse.ArgumentParser()\np.add_argument('--data')\n")
    assert L.module_errors(entry, tmp_path) == [
        "jojoscl_dist.train: --use-gpu is not defined by the module's argparse CLI"]
    (tmp_path / "tune").mkdir()
    (tmp_path / "tune" / "sweep.py").write_text("")
    assert L.module_errors("python -m tune.sweep --data /d --num-samples 2", tmp_path) == []


# --------------------------------------------------------------------------- the loader itself


def test_json_patch_operations():
    doc = {"a": {"b": [1, 2]}, "x~/y": 1}
    out = L.apply_json_patch(doc, [
        {"op": "test", "path": "/a/b/0", "value": 1},
        {"op": "add", "path": "/a/b/-", "value": 3},
        {"op": "add", "path": "/a/b/0", "value": 0},
        {"op": "replace", "path": "/x~0~1y", "value": 2},
        {"op": "copy", "from": "/a/b", "path": "/c"},
        {"op": "move", "from": "/c", "path": "/d"},
        {"op": "remove", "path": "/a/b/1"},
    ])
    assert out == {"a": {"b": [0, 2, 3]}, "x~/y": 2, "d": [0, 1, 2, 3]}
    assert doc == {"a": {"b": [1, 2]}, "x~/y": 1}, "input must not be mutated"
    for bad in ({"op": "test", "path": "/a/b/0", "value": 9}, {"op": "replace", "path": "/nope", "value": 1},
                {"op": "remove", "path": "/a/b/5"}, {"op": "add", "path": "/a/b/01", "value": 1}):
        with pytest.raises(L.PatchError):
            L.apply_json_patch(doc, [bad])


def _kustomization(tmp_path, body: str, files: dict[str, str]):
    (tmp_path / "kustomization.yaml").write_text(body)
    for name, text in files.items():
        (tmp_path / name).write_text(text)


CM = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: c\ndata:\n  k: v\n"


def test_render_applies_patches_and_namespace(tmp_path):
    _kustomization(tmp_path, "resources: [cm.yaml]\nnamespace: ns\npatches:\n- path: p.yaml\n  target: {kind: ConfigMap, name: c}\n",
                   {"cm.yaml": CM, "p.yaml": "- {op: replace, path: /data/k, value: w}\n"})
    [doc] = L.render(tmp_path)
    assert doc["data"] == {"k": "w"} and doc["metadata"]["namespace"] == "ns"


@pytest.mark.parametrize("body,files,message", [
    ("resources: [cm.yaml]\nreplicas: [{name: x, count: 2}]\n", {"cm.yaml": CM}, "not understood"),
    ("resources: [cm.yaml]\npatches:\n- path: p.yaml\n", {"cm.yaml": CM, "p.yaml": "data: {k: w}\n"}, "only RFC 6902"),
    ("resources: [cm.yaml]\npatches:\n- path: p.yaml\n  target: {kind: Secret}\n",
     {"cm.yaml": CM, "p.yaml": "- {op: remove, path: /data}\n"}, "matches no resource"),
    ("resources: [cm.yaml]\npatches:\n- path: p.yaml\n",
     {"cm.yaml": CM, "p.yaml": "- {op: test, path: /data/k, value: other}\n"}, "test failed"),
    ("resources: [cm.yaml, missing.yaml]\n", {"cm.yaml": CM}, "does not exist"),
    ("resources: [cm.yaml, cm2.yaml]\n", {"cm.yaml": CM, "cm2.yaml": CM}, "duplicate resource"),
])
def test_render_refuses_what_it_cannot_do(tmp_path, body, files, message):
    _kustomization(tmp_path, body, files)
    with pytest.raises(L.RenderError, match=message):
        L.render(tmp_path)


def test_render_images_transformer_reaches_nested_containers(tmp_path):
    """What `kustomize edit set image` produces: the RayJob's nested containers are rewritten."""
    (tmp_path / "kustomization.yaml").write_text(
        f"resources: [{L.K8S_DIR / 'overlays' / 'gpu'}]\n"
        "images:\n- name: ghcr.io/your-org/jojoscl-dist\n  newName: registry.example.com/ml/jojoscl-dist\n")
    job = get(L.render(tmp_path), "RayJob", "jojoscl-train")
    images = {g.container["image"] for g in L.ray_groups(job)}
    assert images == {"registry.example.com/ml/jojoscl-dist:0.1.0-ray2.60.0-py311-cu128"}


def _kustomize_command() -> list[str] | None:
    if shutil.which("kustomize"):
        return ["kustomize", "build"]
    if shutil.which("kubectl"):
        return ["kubectl", "kustomize"]
    return None


@pytest.mark.skipif(_kustomize_command() is None, reason="neither kustomize nor kubectl is installed")
@pytest.mark.parametrize("kdir", L.KUSTOMIZATION_DIRS)
def test_render_matches_real_kustomize(kdir):
    """The Python renderer and `kustomize build` give the same objects."""
    proc = subprocess.run([*_kustomize_command(), str(L.K8S_DIR / kdir)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    key = lambda d: (d["kind"], d["metadata"]["name"])  # noqa: E731
    real = {key(d): d for d in L.yaml.safe_load_all(proc.stdout) if d}
    mine = {key(d): d for d in L.render(L.K8S_DIR / kdir)}
    assert real == mine


def test_quantities():
    assert L.parse_quantity("500m") == L.Decimal("0.5")
    assert L.parse_quantity("16Gi") == 16 * 2**30
    assert L.parse_quantity("1e3") == 1000
    assert L.parse_quantity(2) == 2
    with pytest.raises(ValueError):
        L.parse_quantity("lots")
