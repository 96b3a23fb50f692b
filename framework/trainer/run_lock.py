"""One training process per run directory.

Two runs writing the same checkpoint names, index and TensorBoard folder destroy each
other's work. ``RunLock`` holds an exclusive ``flock`` on ``<run dir>/.lock`` for the run's
lifetime; the file names the owner (host, pid, start time) for the message the second
run prints. The kernel drops the lock when its process dies, so a lock left by a killed run
never blocks a restart: it is taken over with a warning naming the dead owner.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import socket
import time
from pathlib import Path

from framework.errors import UserError

log = logging.getLogger(__name__)


class RunDirBusy(UserError):
    pass


class RunLock:
    def __init__(self, run_dir: str | Path) -> None:
        self.path = Path(run_dir) / ".lock"
        self._fd: int | None = None

    def _busy(self, fd: int) -> str:
        return (f"{self.path.parent} is in use by another training run ({_describe(_read(fd))}); wait for it to end, "
                "stop it, or choose another hydra.run.dir")

    def held_by(self) -> str | None:
        """The message :meth:`acquire` would fail with, or None when the lock is free;
        changes nothing."""
        if not self.path.is_file():
            return None
        fd = os.open(self.path, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return self._busy(fd)
        finally:
            os.close(fd)  # closing drops a lock taken here
        return None

    def acquire(self) -> RunLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            message = self._busy(fd)
            os.close(fd)
            raise RunDirBusy(message) from None
        previous = _read(fd)
        if previous:
            log.warning("%s: taking over the lock of a run that is gone (%s)", self.path.parent, _describe(previous))
        mine = {"host": socket.gethostname(), "pid": os.getpid(), "started": time.strftime("%Y-%m-%d %H:%M:%S")}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(mine).encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            os.ftruncate(self._fd, 0)  # an empty lock file: the run ended cleanly
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def _read(fd: int) -> dict:
    try:
        return json.loads(os.pread(fd, 4096, 0) or b"{}")
    except (OSError, ValueError):
        return {}


def _describe(owner: dict) -> str:
    if not owner:
        return "owner unknown"
    return f"pid {owner.get('pid')} on {owner.get('host')}, started {owner.get('started')}"
