"""One run per output folder and per run storage: an exclusive lock that works on shared volumes.

A file created atomically (``O_CREAT | O_EXCL``, which NFS v3+ and the usual CSI volumes honour, unlike ``flock``)
names its holder, who refreshes its mtime every ``HEARTBEAT_S``. It is stale when its process is gone (same host)
or its heartbeat is older than ``STALE_AFTER_S`` (another host, e.g. an evicted pod): then it is taken over.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from pathlib import Path

from jojoscl_dist.errors import JojoInputError

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
