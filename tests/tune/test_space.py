"""The search space file, trial configs, resources and CLI errors (no Ray started)."""

import subprocess
import sys

import pytest
from ray import tune as ray_tune

from jojoscl_dist.config import JojoConfig
from jojoscl_dist.errors import JojoInputError
from tune.space import apply_trial_config, load_space, to_tune
from tune.sweep import default_point
from tune.trainable import TrialResources

SEARCHED = {"loss.alpha", "loss.beta", "loss.tau_instance", "loss.tau_cluster", "loss.w_sure", "optim.lr",
            "model.momentum", "model.mask_keep"}


def test_default_space_covers_the_issue_keys_and_holds_the_defaults():
    space = load_space()
    assert set(space) == SEARCHED
    t = to_tune(space)
    assert isinstance(t["loss"]["alpha"], ray_tune.search.sample.Float)
    # the default config lies inside the space, so it can run as the reference trial
    cfg = JojoConfig()
    point = default_point(cfg, space, nested=True)
    assert point is not None and point["loss"]["tau_instance"] == cfg.loss.tau_instance
    assert point["model"]["mask_keep"] == cfg.model.mask_keep


def test_trial_config_becomes_a_full_config(tmp_path):
    base = JojoConfig().override({"optim.epochs": 7})
    cfg = apply_trial_config(base, {"loss": {"alpha": 2.5}, "model": {"mask_keep": 0.3}})
    assert cfg.loss.alpha == 2.5 and cfg.model.mask_keep == 0.3 and cfg.optim.epochs == 7
    cfg.save(tmp_path / "c.yaml")
    back = JojoConfig.load(tmp_path / "c.yaml")
    assert back == cfg


@pytest.mark.parametrize("text,needle", [
    ("loss.alpa: {dist: uniform, low: 0, high: 1}\n", "unknown config key"),
    ("loss.alpha: {dist: normal, low: 0, high: 1}\n", "needs 'dist'"),
    ("loss.alpha: {dist: loguniform, low: 0, high: 1}\n", "low must be > 0"),
    ("loss.alpha: {dist: uniform, low: 2, high: 1}\n", "low < high"),
    ("loss.sure_variant: {dist: choice, values: []}\n", "non-empty 'values'"),
])
def test_bad_space_files_name_the_problem(tmp_path, text, needle):
    p = tmp_path / "space.yaml"
    p.write_text(text)
    with pytest.raises(JojoInputError, match=needle):
        load_space(p)


def test_resources_parse_and_concurrency():
    r = TrialResources.parse("workers=2,cpu=1.5")
    assert (r.workers, r.cpu, r.gpu) == (2, 1.5, 0.0)
    assert TrialResources.parse("").concurrency({"CPU": 3}) == 2  # 1 CPU per trial on 3 logical CPUs
    assert TrialResources.parse("gpu=0.5").concurrency({"CPU": 16, "GPU": 1}) == 2  # GPU-bound
    with pytest.raises(JojoInputError, match="resources-per-trial"):
        TrialResources.parse("cpus=1")


def test_cli_rejects_supervised_objective_without_labels(tmp_path, data_dir):
    r = subprocess.run([sys.executable, "-m", "tune.sweep", "--data", str(data_dir / "Yan.h5ad"), "--num-samples",
                        "2", "--objective", "ari", "--output", str(tmp_path / "o")],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2
    assert "jojoscl: error: --objective ari" in r.stderr and "--label-key" in r.stderr
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("flag", ["--storage-path", "--data"])
def test_sweep_refuses_an_object_storage_url(tmp_path, data_dir, monkeypatch, capsys, flag):
    from tune.sweep import main

    monkeypatch.chdir(tmp_path)
    args = {"--data": str(data_dir / "Yan.h5ad"), "--output": str(tmp_path / "o"), flag: "s3://runs/jojo"}
    assert main([x for kv in args.items() for x in kv] + ["--num-samples", "2"]) == 2
    err = capsys.readouterr().err
    assert f"jojoscl: error: {flag} 's3://runs/jojo' is a URL" in err and "mount the bucket" in err
    assert not (tmp_path / "o").exists() and not (tmp_path / "s3:").exists()
