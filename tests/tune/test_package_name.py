"""The sweeps' top-level package is named ``tune``: another distribution's ``tune`` must not take its place."""

import subprocess
import sys
from pathlib import Path

import jojoscl_dist
import tune

ROOT = Path(__file__).resolve().parents[2]


def test_tests_import_this_checkouts_tune():
    assert Path(tune.__file__).resolve() == ROOT / "tune" / "__init__.py"
    assert Path(tune.__file__).resolve().parents[1] == Path(jojoscl_dist.__file__).resolve().parents[1]


def test_installed_tune_is_the_one_shipped_with_jojoscl_dist(tmp_path):
    # Outside the checkout (no cwd on sys.path) `tune` must come from where jojoscl_dist comes from: an installed
    # package named `tune` from another distribution would show up here as a different location.
    code = ("import importlib.util, pathlib, jojoscl_dist, tune; "
            "print(pathlib.Path(tune.__file__).resolve().parents[1]); "
            "print(pathlib.Path(jojoscl_dist.__file__).resolve().parents[1]); "
            "print(importlib.util.find_spec('tune.sweep') is not None)")
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, check=True)
    tune_root, pkg_root, has_sweep = out.stdout.split()
    assert tune_root == pkg_root and has_sweep == "True"
