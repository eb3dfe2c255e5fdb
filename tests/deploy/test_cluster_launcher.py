"""infra/cluster-launcher.yaml (Ray cluster launcher, plain VMs): the JSON schema that `ray up` validates with
(ray/autoscaler/ray-schema.json of the installed ray, read without importing ray) and the project's rules."""

from __future__ import annotations

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
RAY_SCHEMA = Path(importlib.util.find_spec("ray").origin).parent / "autoscaler" / "ray-schema.json"
SHARED = "/mnt/jojoscl"


def launcher_errors(cfg: dict) -> list[str]:
    schema = json.loads(RAY_SCHEMA.read_text())
    errs = [f"{e.json_path}: {e.message}" for e in jsonschema.Draft7Validator(schema).iter_errors(cfg)]
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


def test_config_is_valid():
    assert launcher_errors(yaml.safe_load(CONFIG.read_text())) == []


@pytest.mark.parametrize("old,new,expected", [
    ("ray2.60.0-py311-cu128", "ray2.59.0-py311-cu128", "does not carry"),
    ("    - -v /mnt/jojoscl:/mnt/jojoscl\n", "", "bind-mounted"),
    ("    - -e RAY_AUTH_MODE=token\n", "", "RAY_AUTH_MODE"),
    ("max_workers: 2", "max_workers: 5", "max_workers"),
    ("  pull_before_run: true\n", "  pull_before_run: true\n  gpus: all\n", "'gpus' was unexpected"),  # Ray's schema
], ids=["image-ray-version", "no-shared-mount", "no-token-auth", "max-workers", "unknown-docker-option"])
def test_rejects_broken_config(old, new, expected):
    text = CONFIG.read_text()
    assert old in text
    errors = launcher_errors(yaml.safe_load(text.replace(old, new)))
    assert any(expected in e for e in errors), errors
