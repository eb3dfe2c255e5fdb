"""What pip installs: console scripts that resolve to our entry points, the declared licence on disk, and
dependency ranges that install beside an existing scanpy without downgrading it."""

import importlib
import json
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = (ROOT / "pyproject.toml").read_text()
PROJECT = tomllib.loads(PYPROJECT)["project"]
REQUIREMENTS = [Requirement(r) for r in [*PROJECT["dependencies"], *sum(PROJECT["optional-dependencies"].values(), [])]]
CONSTRAINTS = [Requirement(line) for line in (ROOT / "constraints.txt").read_text().splitlines() if line[:1].isalnum()]
TESTED = {canonicalize_name(r.name): r.specifier for r in CONSTRAINTS}


def test_every_console_script_resolves_to_a_main_with_help_and_version(capsys):
    scripts = PROJECT["scripts"]
    assert set(scripts) == {"jojoscl-train", "jojoscl-predict", "jojoscl-prepare", "jojoscl-sweep"}
    for name, target in scripts.items():
        module, func = target.split(":")
        main = getattr(importlib.import_module(module), func)
        try:
            main(["--help"])
        except SystemExit as e:
            assert e.code == 0, name
        assert "usage:" in capsys.readouterr().out, name
        with pytest.raises(SystemExit) as e:
            main(["--version"])
        assert e.value.code == 0 and capsys.readouterr().out.strip() == f"jojoscl-dist {PROJECT['version']}", name


def test_the_license_file_is_the_one_pyproject_declares():
    assert PROJECT["license"]["text"] == "MIT"
    assert (ROOT / "LICENSE").read_text().startswith("MIT License")


def test_only_torch_is_pinned_and_every_requirement_has_a_tested_lower_bound():
    """Exact pins force downgrades in an existing environment; the tested set lives in constraints.txt instead."""
    for req in REQUIREMENTS:
        name, ops = canonicalize_name(req.name), {s.operator: s.version for s in req.specifier}
        if name == "torch":
            assert str(req.specifier) == "==2.13.0" == str(TESTED["torch"]), req
            continue
        assert not {"==", "===", "~="} & set(ops) and ">=" in ops, f"{req}: want a lower bound, not a pin"
        # faiss-gpu is never installed here; its bound follows faiss-cpu's (tests/deploy checks they agree)
        if name != "faiss-gpu":
            assert str(TESTED[name]) == f"=={ops['>=']}", f"{req}: lower bound is not the tested {TESTED[name]}"
    capped = [line for line in PYPROJECT.splitlines() if line.lstrip().startswith('"') and "<" in line.split("#")[0]]
    assert all("#" in line for line in capped), f"an upper bound without the known break named: {capped}"


def test_constraints_are_exact_pins_of_released_packages_only():
    assert all([s.operator for s in r.specifier] == ["=="] and not r.url for r in CONSTRAINTS)
    assert "jojoscl-dist" not in TESTED and len(TESTED) == len(CONSTRAINTS)


def _pip_report(tmp_path, *args) -> dict[str, str]:
    """What `pip install ARGS` would install (name -> version), resolved without installing; fails loudly offline."""
    report = tmp_path / "report.json"
    cmd = [sys.executable, "-m", "pip", "install", "--dry-run", "--quiet", "--report", str(report), *args]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    why = "a dependency conflict, or the package index is unreachable"
    assert done.returncode == 0, f"pip install --dry-run {args} failed ({why}):\n{done.stderr[-3000:]}"
    installs = json.loads(report.read_text())["install"]
    return {canonicalize_name(i["metadata"]["name"]): i["metadata"]["version"] for i in installs}


def test_installs_beside_the_newest_scanpy_and_anndata_without_downgrading_them(tmp_path):
    """Resolves `pip install -e . scanpy==NEWEST anndata==NEWEST` against the index (~15 s; needs the network)."""
    newest = _pip_report(tmp_path, "--ignore-installed", "--no-deps", "scanpy", "anndata")
    assert set(newest) == {"scanpy", "anndata"}, newest
    installs = _pip_report(tmp_path, "-e", str(ROOT), *(f"{name}=={version}" for name, version in newest.items()))
    for name, version in newest.items():
        assert installs.get(name, version) == version, f"pip install -e . turns {name} {version} into {installs[name]}"
