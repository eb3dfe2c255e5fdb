"""What pip installs: console scripts that resolve to our entry points, and the declared licence on disk."""

import importlib
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


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
