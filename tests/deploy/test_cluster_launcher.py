"""infra/cluster-launcher.yaml (Ray cluster launcher, plain VMs): schema and project invariants.

Validated against the JSON schema that ships inside the installed ray package
(ray/autoscaler/ray-schema.json, the one `ray up` validates with), without importing ray.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import shlex
import sys
from pathlib import Path

import jsonschema
import pytest
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
import deploy_lib as L  # noqa: E402

CONFIG = L.INFRA_DIR / "cluster-launcher.yaml"
SHARED = "/mnt/jojoscl"


def _ray_schema_path() -> Path | None:
    spec = importlib.util.find_spec("ray")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / "autoscaler" / "ray-schema.json"
    return path if path.is_file() else None


@pytest.fixture(scope="module")
def config() -> dict:
    return yaml.safe_load(CONFIG.read_text())


def launcher_errors(cfg: dict) -> list[str]:
    errs = []
    image = cfg.get("docker", {}).get("image", "")
    m = L.IMAGE_TAG.match(L.split_image(image)[1])
    if not m or m["ray"] != L.ray_version() or m["py"] != L.PYTHON_TAG:
        errs.append(f"docker.image {image!r} does not carry ray{L.ray_version()}-{L.PYTHON_TAG}")
    opts = shlex.split(" ".join(cfg.get("docker", {}).get("run_options", [])))
    if f"{SHARED}:{SHARED}" not in opts:
        errs.append(f"shared filesystem must be bind-mounted at the same path: -v {SHARED}:{SHARED}")
    if "RAY_AUTH_MODE=token" not in opts:
        errs.append("RAY_AUTH_MODE=token must be set in the containers")
    if len(cfg.get("provider", {}).get("worker_ips", [])) != cfg.get("max_workers"):
        errs.append("max_workers must equal the number of worker_ips for the local provider")
    head = " ".join(cfg.get("head_start_ray_commands", []))
    if "--head" not in head or "--num-gpus=0" not in head:
        errs.append("head must start with --head and --num-gpus=0")
    if not all(cmds and cmds[0] == "ray stop" for cmds in
               (cfg.get("head_start_ray_commands"), cfg.get("worker_start_ray_commands"))):
        errs.append("start commands must begin with `ray stop`")
    return errs


@pytest.mark.skipif(_ray_schema_path() is None, reason="ray is not installed (its ray-schema.json is needed)")
def test_matches_rays_own_schema(config):
    schema = json.loads(_ray_schema_path().read_text())
    errors = [f"{e.json_path}: {e.message}" for e in jsonschema.Draft7Validator(schema).iter_errors(config)]
    assert errors == []


@pytest.mark.skipif(_ray_schema_path() is None, reason="ray is not installed (its ray-schema.json is needed)")
def test_schema_rejects_unknown_docker_option(config):
    schema = json.loads(_ray_schema_path().read_text())
    bad = copy.deepcopy(config)
    bad["docker"]["gpus"] = "all"
    assert list(jsonschema.Draft7Validator(schema).iter_errors(bad))


def test_invariants(config):
    assert launcher_errors(config) == []


@pytest.mark.parametrize("mutate,expected", [
    (lambda c: c["docker"].__setitem__("image", "ghcr.io/your-org/jojoscl-dist:0.1.0-ray2.59.0-py311-cu128"), "does not carry"),
    (lambda c: c["docker"]["run_options"].remove("-v /mnt/jojoscl:/mnt/jojoscl"), "bind-mounted"),
    (lambda c: c["docker"]["run_options"].remove("-e RAY_AUTH_MODE=token"), "RAY_AUTH_MODE"),
    (lambda c: c.__setitem__("max_workers", 5), "max_workers"),
])
def test_invariants_reject_broken_config(config, mutate, expected):
    bad = copy.deepcopy(config)
    mutate(bad)
    assert any(expected in e for e in launcher_errors(bad))
