"""The sweep's search space: a YAML file of dotted JojoConfig keys -> distributions, turned into a Ray Tune space.

The Tune space is nested like JojoConfig.to_dict() ({"loss": {"alpha": ...}}) so a sampled trial config can be
applied with ``apply_trial_config`` and written back as a full JojoConfig.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from jojoscl_dist.config import JojoConfig
from jojoscl_dist.errors import JojoInputError

DEFAULT_SPACE = Path(__file__).with_name("space.yaml")
DISTS = ("loguniform", "uniform", "randint", "choice")


def load_space(path: str | Path | None = None) -> dict[str, dict[str, Any]]:
    """Read and validate a space file; returns {dotted key: spec}."""
    path = Path(path) if path else DEFAULT_SPACE
    if not path.is_file():
        raise JojoInputError(f"search space file {path} not found (pass --space FILE with a YAML mapping)")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise JojoInputError(f"search space file {path} is not valid YAML: {e}") from e
    if not isinstance(raw, dict) or not raw:
        raise JojoInputError(f"search space file {path} must be a non-empty mapping of 'section.field: {{dist: ...}}'")
    defaults = JojoConfig().to_dict()
    for key, spec in raw.items():
        section, _, name = str(key).partition(".")
        if section not in defaults or name not in defaults[section]:
            raise JojoInputError(f"search space {path}: unknown config key {key!r} (use section.field from "
                                 f"jojoscl_dist/config.py, e.g. loss.alpha)")
        if not isinstance(spec, dict) or spec.get("dist") not in DISTS:
            raise JojoInputError(f"search space {path}: {key} needs 'dist' set to one of {DISTS}")
        if spec["dist"] == "choice":
            if not isinstance(spec.get("values"), list) or not spec["values"]:
                raise JojoInputError(f"search space {path}: {key} (choice) needs a non-empty 'values' list")
        else:
            low, high = spec.get("low"), spec.get("high")
            if not isinstance(low, (int, float)) or not isinstance(high, (int, float)) or not low < high:
                raise JojoInputError(f"search space {path}: {key} needs numeric low < high, got {low!r}, {high!r}")
            if spec["dist"] == "loguniform" and low <= 0:
                raise JojoInputError(f"search space {path}: {key} is loguniform, so low must be > 0 (got {low})")
    return raw


def to_tune(space: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    from ray import tune

    out: dict[str, dict[str, Any]] = {}
    for key, spec in space.items():
        section, name = key.split(".", 1)
        d, cast = spec["dist"], int if spec["dist"] == "randint" else float
        # tune.loguniform / uniform / randint take (low, high), as the YAML does
        out.setdefault(section, {})[name] = tune.choice(list(spec["values"])) if d == "choice" else \
            getattr(tune, d)(cast(spec["low"]), cast(spec["high"]))
    return out


def apply_trial_config(base: JojoConfig, trial: dict[str, Any]) -> JojoConfig:
    """Base config with a trial's sampled values (nested or dotted keys) put in; numpy scalars (from samplers) become
    Python ones, so the config YAML stays plain."""
    flat: dict[str, Any] = {}
    for section, value in trial.items():
        if isinstance(value, dict):
            flat.update({f"{section}.{k}": v for k, v in value.items()})
        elif "." in section:
            flat[section] = value
    return base.override({k: v.item() if hasattr(v, "item") else v for k, v in flat.items()})
