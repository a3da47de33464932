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
from collections.abc import Iterator
from pathlib import Path

from btrsync.errors import LockedError


@contextlib.contextmanager
def target_lock(state_dir: Path, name: str) -> Iterator[None]:
    directory = state_dir / "locks"
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    path = directory / (hashlib.sha256(name.encode()).hexdigest()[:16] + ".lock")
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
            raise LockedError(f"another btrsync process (pid {holder}) is working on {name}; "
                              "try again when it has finished") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)
