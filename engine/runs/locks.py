"""One trainer per run folder at a time, across processes and cluster jobs.

``RunLock`` holds an exclusive ``fcntl.flock`` on ``<run dir>/run.lock`` for as long as the
run trains. The kernel releases the lock when the holding process exits for any reason
(SIGKILL, out-of-memory kill, preemption), so a lock never outlives its owner and an
interrupted run can be resumed at once. A second process that finds the lock held does not
wait: it reports the run as locked and goes on with its other runs.

The lock file holds the owner's host and process id, only so that the message can say who
holds it; the lock itself is the flock, never the file's content or existence. On Linux,
flock on NFS (v4, and v3 with a lock manager) is honoured across machines.
"""
from __future__ import annotations

import fcntl
import os
import socket
from pathlib import Path

from engine.errors import UserError

LOCK_FILE = "run.lock"


class RunLocked(Exception):
    """Another process holds the run's lock."""

    def __init__(self, run_dir: Path, holder: str):
        super().__init__(f"{run_dir} is being trained by another process ({holder or 'unknown'})")
        self.run_dir, self.holder = run_dir, holder


class RunLock:
    """``with RunLock(run_dir):`` trains the run; raises RunLocked if someone else does."""

    def __init__(self, run_dir: Path):
        self.path = run_dir / LOCK_FILE
        self._fd: int | None = None

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:  # a folder in its place, no permission, a read-only mount
            raise UserError(f"cannot open the lock file {self.path}: {exc.strerror or exc}; "
                            f"it must be a writable file (remove whatever is there)") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 256, 0).decode(errors="replace").strip()
            os.close(fd)
            raise RunLocked(self.path.parent, holder) from None
        except OSError as exc:  # a file system without flock (some FUSE or NFS mounts)
            os.close(fd)
            raise UserError(f"cannot lock {self.path}: {exc.strerror or exc}; the results "
                            f"folder must be on a file system that supports flock "
                            f"(see docs/sweeps.md)") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{socket.gethostname()} pid {os.getpid()}\n".encode(), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            # Truncate first: once unlocked, the file may be claimed by the next owner.
            os.ftruncate(self._fd, 0)
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()
