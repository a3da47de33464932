"""A local lock per repository, so two btrsync processes on this host never write one at once.

``flock`` on ``<state_dir>/locks/<hash of name>.lock`` (the name is the repository id, so two
spellings of one URL share a lock): released by the kernel when the process
dies, so a killed run never leaves a lock behind.  The holder's pid is written for the message.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from btrsync.errors import LockedError
from btrsync.fdio import pwrite_all


def lock_path(state_dir: Path, name: str) -> Path:
    return Path(state_dir) / "locks" / (hashlib.sha256(name.encode()).hexdigest()[:16] + ".lock")


@contextlib.contextmanager
def target_lock(state_dir: Path, name: str, *, wait: float = 0.0, sleep: Callable[[float], None] = time.sleep,
                monotonic: Callable[[], float] = time.monotonic) -> Iterator[None]:
    """Hold the lock ``name``; when another process holds it, retry for ``wait`` seconds, then exit 11."""
    path = lock_path(state_dir, name)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        deadline = monotonic() + wait
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                left = deadline - monotonic()
                if left <= 0:
                    holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
                    waited = f" (waited {wait:.0f}s)" if wait else ""
                    raise LockedError(f"another btrsync process (pid {holder}) is working on {name}{waited}; "
                                      "try again when it has finished") from None
                sleep(min(0.5, left))
        os.ftruncate(fd, 0)
        pwrite_all(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)
