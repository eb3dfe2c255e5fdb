"""A run directory, written atomically: staged in ``.<output>.partial-<pid>`` and renamed at the end, so a crash
never leaves a folder that looks like a finished run (its files: README "Outputs").

``RunLock`` keeps one run per output folder and per run storage, also on shared volumes: a file created atomically
(``O_CREAT | O_EXCL``, which NFS v3+ and the usual CSI volumes honour, unlike ``flock``) names its holder, who
refreshes its mtime every ``HEARTBEAT_S``. It is stale when its process is gone (same host) or its heartbeat is
older than ``STALE_AFTER_S`` (another host, e.g. an evicted pod): then it is taken over.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import threading
import time
from pathlib import Path

import numpy as np

from jojoscl_dist.data.zarr_store import refuse_unsafe_target
from jojoscl_dist.errors import JojoInputError

RUN_MARKER = ".jojoscl-run"  # written last into a finished run: lists what the run wrote (see is_our_run)
# While the outputs wait for their MLflow logging the run is not finished: the same command may replace it.
PENDING_MARKER = ".tracking-pending"
STORE_ENTRIES = ("mlflow.db", "mlartifacts")  # the embedded MLflow store: live from the start of training
LATE_ENTRIES = (*STORE_ENTRIES, PENDING_MARKER, RUN_MARKER)  # not in the staged run

log = logging.getLogger(__name__)


def is_our_run(out: Path) -> tuple[bool, list[str]]:
    """(True, []) when ``out`` holds a run this tool wrote, or only the MLflow store of a run still training, and
    nothing else; else (False, names not ours)."""
    marker = out / RUN_MARKER
    if not marker.exists() and all(p.name in STORE_ENTRIES for p in out.iterdir()):
        return True, []
    try:
        written = set(json.loads(marker.read_text())["entries"])
    except (OSError, ValueError, KeyError, TypeError):
        return False, sorted(p.name for p in out.iterdir())[:3]
    foreign = sorted(p.name for p in out.iterdir() if p.name not in written | set(LATE_ENTRIES))
    return not foreign, foreign[:3]


def check_output(output: str | Path, overwrite: bool, inputs: list[str | Path] = ()) -> Path:
    out = Path(output)
    if out.exists() and not out.is_dir():
        raise JojoInputError(f"--output {out} exists and is a file (choose a directory path)")
    refuse_unsafe_target(out, list(inputs))
    if not out.exists() or not any(out.iterdir()):
        return out
    ours, foreign = is_our_run(out)
    if not ours:
        raise JojoInputError(f"--output {out} holds files jojoscl did not write (e.g. {', '.join(foreign)}): "
                             f"choose another --output (only a finished jojoscl run is ever replaced)")
    if (out / PENDING_MARKER).exists() and not overwrite:
        log.warning("%s holds a run whose tracking step did not finish: replacing it", out)
        return out
    if not (out / RUN_MARKER).exists():  # the store of an unfinished run: its relaunch continues it
        return out
    if not overwrite:
        raise JojoInputError(f"--output {out} already holds an earlier run (pass --overwrite to replace it, "
                             f"or choose another --output)")
    return out


def staging_dir(output: str | Path) -> Path:
    out = Path(output)
    stage = out.parent / f".{out.name}.partial-{os.getpid()}"
    if stage.exists():  # our own pid's leftover
        shutil.rmtree(stage)
    stage.mkdir(parents=True)
    return stage


def write_marker(stage: Path, entries: list[str] | None = None) -> None:
    """The last file staged: what this run wrote (a sweep: may write), so --overwrite tells our folder from a user's."""
    from jojoscl_dist.version import __version__

    entries = sorted(entries if entries is not None else (p.name for p in stage.iterdir())) + [RUN_MARKER]
    (stage / RUN_MARKER).write_text(json.dumps({"tool": "jojoscl-dist", "version": __version__,
                                                "entries": entries}, indent=1))


def commit(stage: Path, output: str | Path) -> Path:
    """Move the staged run into place; an earlier run (ours, checked again) is deleted once the new one is in place.
    The embedded MLflow store, which holds this run's live MLflow run too, moves into the new run."""
    out = Path(output)
    old = None
    if out.exists() and any(out.iterdir()):
        ours, foreign = is_our_run(out)
        if not ours:
            raise JojoInputError(f"--output {out} now holds files jojoscl did not write (e.g. "
                                 f"{', '.join(foreign)}): the new run stays in {stage}")
        for name in STORE_ENTRIES:
            if (out / name).exists():
                (out / name).rename(stage / name)
        old = out.parent / f".{out.name}.replaced-{os.getpid()}"
        out.rename(old)
    elif out.exists():
        out.rmdir()  # empty
    stage.rename(out)
    if old is not None:
        shutil.rmtree(old)
    return out


def write_json(path: Path, obj) -> None:
    numeric = (np.integer, np.floating, np.ndarray)  # as numbers and lists; anything else as text
    path.write_text(json.dumps(obj, indent=2, default=lambda o: o.tolist() if isinstance(o, numeric) else str(o)))


def mark_finished(output: str | Path) -> None:
    (Path(output) / PENDING_MARKER).unlink(missing_ok=True)


HEARTBEAT_S = 15.0
STALE_AFTER_S = 120.0


class RunLock:
    def __init__(self, path: str | Path, what: str):
        self.path = Path(path)
        self.what = what  # e.g. "--output runs/pbmc", for the message
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._token: str | None = None  # set while held

    def acquire(self) -> "RunLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(3):  # a takeover races with at most a few other takers
            if self._try_create():
                self._thread = threading.Thread(target=self._beat, name="jojoscl-lock-heartbeat", daemon=True)
                self._thread.start()
                return self
            holder = _read(self.path)
            if not _is_stale(self.path, holder):
                who = (f"pid {holder.get('pid')} on {holder.get('host')} since {holder.get('started')}" if holder
                       else "holder unknown")
                raise JojoInputError(f"{self.what} is in use by another run ({who}; lock {self.path}): "
                                     f"wait for it to finish, or choose another --output / --run-name")
            # Moved aside (an atomic rename: of several takers, one wins), then deleted.
            aside = self.path.with_name(f"{self.path.name}.stale-{os.getpid()}-{time.time_ns()}")
            try:
                self.path.rename(aside)
                aside.unlink(missing_ok=True)
            except FileNotFoundError:
                pass
        raise JojoInputError(f"could not take the lock {self.path} for {self.what}: another run keeps taking it")

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self._token is not None and _read(self.path).get("token") == self._token:
            self.path.unlink(missing_ok=True)
        self._token = None

    __enter__ = acquire

    def __exit__(self, *exc) -> None:
        self.release()

    def _try_create(self) -> bool:
        token = f"{socket.gethostname()}:{os.getpid()}:{time.time_ns()}"
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w") as f:
            json.dump({"host": socket.gethostname(), "pid": os.getpid(),
                       "started": time.strftime("%Y-%m-%dT%H:%M:%S"), "token": token}, f)
            f.flush()
            os.fsync(f.fileno())
        self._token = token
        return True

    def _beat(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            try:
                os.utime(self.path)
            except OSError:  # the folder went away; the run will fail on its own
                return


def _read(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _is_stale(path: Path, holder: dict) -> bool:
    try:
        age = time.time() - path.stat().st_mtime
    except FileNotFoundError:
        return True  # released meanwhile
    if holder.get("host") == socket.gethostname() and isinstance(holder.get("pid"), int):
        try:
            os.kill(holder["pid"], 0)
        except ProcessLookupError:
            return True
        except PermissionError:  # alive, owned by another user
            pass
        return False
    return age > STALE_AFTER_S
