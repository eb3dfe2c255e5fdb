"""One run per output folder and per run storage: an exclusive lock that works on shared volumes.

The lock is a file created atomically (``O_CREAT | O_EXCL``, which NFS v3+ and the usual CSI volumes honour,
unlike ``flock``) holding who took it. The holder refreshes its mtime every ``HEARTBEAT_S``; a lock is stale
when its process is gone (same host) or its heartbeat is older than ``STALE_AFTER_S`` (another host, e.g. a pod
that was evicted). A stale lock is taken over; a live one refuses the second run at once with a line naming the
holder.
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
        self._held = False

    def acquire(self) -> "RunLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(3):  # a takeover races with at most a few other takers
            if self._try_create():
                self._start_heartbeat()
                return self
            holder = _read(self.path)
            if not _is_stale(self.path, holder):
                raise JojoInputError(f"{self.what} is in use by another run ({_who(holder)}; lock {self.path}): "
                                     f"wait for it to finish, or choose another --output / --run-name")
            _take_away(self.path)
        raise JojoInputError(f"could not take the lock {self.path} for {self.what}: another run keeps taking it")

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self._held and _read(self.path).get("token") == self._token:
            self.path.unlink(missing_ok=True)
        self._held = False

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()

    def _try_create(self) -> bool:
        self._token = f"{socket.gethostname()}:{os.getpid()}:{time.time_ns()}"
        info = {"host": socket.gethostname(), "pid": os.getpid(), "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
                "token": self._token}
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w") as f:
            json.dump(info, f)
            f.flush()
            os.fsync(f.fileno())
        self._held = True
        return True

    def _start_heartbeat(self) -> None:
        def beat() -> None:
            while not self._stop.wait(HEARTBEAT_S):
                try:
                    os.utime(self.path)
                except OSError:  # the folder went away; the run will fail on its own
                    return

        self._thread = threading.Thread(target=beat, name="jojoscl-lock-heartbeat", daemon=True)
        self._thread.start()


def _read(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _who(holder: dict) -> str:
    if not holder:
        return "holder unknown"
    return f"pid {holder.get('pid')} on {holder.get('host')} since {holder.get('started')}"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by another user
        return True
    return True


def _is_stale(path: Path, holder: dict) -> bool:
    try:
        age = time.time() - path.stat().st_mtime
    except FileNotFoundError:
        return True  # released meanwhile
    if holder.get("host") == socket.gethostname() and isinstance(holder.get("pid"), int):
        return not _pid_alive(holder["pid"])
    return age > STALE_AFTER_S


def _take_away(path: Path) -> None:
    """Move a stale lock aside (atomic rename: of several takers, one wins) and delete it."""
    aside = path.with_name(f"{path.name}.stale-{os.getpid()}-{time.time_ns()}")
    try:
        path.rename(aside)
    except FileNotFoundError:
        return
    aside.unlink(missing_ok=True)
