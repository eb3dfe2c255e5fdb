"""Which checkpoint a relaunched run resumes from: the newest complete one on disk, never a truncated one, and
the newer of Ray's registered checkpoint and the driver's."""

from __future__ import annotations

from pathlib import Path

import pytest

from jojoscl_dist.train.checkpoint import latest_checkpoint, latest_loadable, save_state


def write(root: Path, name: str, epoch: int) -> Path:
    d = root / name
    d.mkdir(parents=True)
    save_state(d, {"epoch": epoch})
    return d


def test_latest_loadable_skips_a_truncated_newest_checkpoint(tmp_path, capsys):
    write(tmp_path, "checkpoint_2026-01-01_00-00-01.000000", 3)
    newest = write(tmp_path, "checkpoint_2026-01-01_00-00-02.000000", 4)
    (newest / "state.pt").write_bytes((newest / "state.pt").read_bytes()[:100])  # upload cut short
    assert latest_checkpoint(tmp_path) == newest  # present, but unreadable
    path, st = latest_loadable(tmp_path)
    assert path.name.endswith("01.000000") and st["epoch"] == 3
    assert "does not match its checksum" in capsys.readouterr().out


def test_latest_loadable_on_an_empty_or_missing_root(tmp_path):
    assert latest_loadable(tmp_path / "nope") is None
    (tmp_path / "checkpoint_x").mkdir()  # a folder without state.pt
    assert latest_loadable(tmp_path) is None


@pytest.mark.parametrize("ray_newer", [True, False])
def test_ray_session_resumes_from_the_newer_of_ray_and_driver(tmp_path, monkeypatch, ray_newer):
    import ray.train

    from jojoscl_dist.train.ray_session import RaySession

    old = write(tmp_path, "checkpoint_2026-01-01_00-00-01.000000", 5)
    new = write(tmp_path, "checkpoint_2026-01-01_00-00-09.000000", 7)
    registered, announced = (new, old) if ray_newer else (old, new)
    monkeypatch.setattr(ray.train, "get_checkpoint", lambda: ray.train.Checkpoint.from_directory(str(registered)))
    session = RaySession.__new__(RaySession)  # no Ray Train context needed for resume_dir
    session.resume_from = str(announced)
    with session.resume_dir() as d:
        assert Path(d).resolve() == new.resolve()


def test_ray_session_without_any_checkpoint(monkeypatch):
    import ray.train

    from jojoscl_dist.train.ray_session import RaySession

    monkeypatch.setattr(ray.train, "get_checkpoint", lambda: None)
    session = RaySession.__new__(RaySession)
    session.resume_from = None
    with session.resume_dir() as d:
        assert d is None
