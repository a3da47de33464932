"""Coordination of runs on one host.

- **Job lock**: ``flock`` on ``state_dir/locks/<hash of "job NAME">.lock`` for the whole run of a
  job, so two runs of one job never overlap (a timer run and a manual one); the kernel releases
  it when the process dies.  Held: exit 11, or wait (``run --wait``, ``lock_wait``).
- **Target lock**: the repository lock of push/prune/clean (``"repository <id>"``), taken by the
  runner for each target with the same wait, so a run meets a manual ``push`` to the same
  repository the same way.
- **Push slots**: at most ``max_parallel_jobs`` jobs do their work at once on a host.  Slot ``i``
  is ``flock`` on ``state_dir/locks/slot-i.lock``; a job takes the first free one and otherwise
  queues (polling once a second, interruptible by SIGTERM) rather than failing.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
from collections.abc import Iterator
from pathlib import Path

from btrsync.jobs.clock import Clock
from btrsync.locking import target_lock

log = logging.getLogger(__name__)


def job_lock_name(job: str) -> str:
    return f"job {job}"


@contextlib.contextmanager
def job_lock(state_dir: Path, job: str, *, wait: float, clock: Clock) -> Iterator[None]:
    with target_lock(state_dir, job_lock_name(job), wait=wait, sleep=clock.sleep, monotonic=clock.monotonic):
        yield


@contextlib.contextmanager
def repository_lock(state_dir: Path, repo_id: str, *, wait: float, clock: Clock) -> Iterator[None]:
    """The same lock as ``App.repository(lock=True)`` (push, prune, clean), with a wait."""
    with target_lock(state_dir, f"repository {repo_id}", wait=wait, sleep=clock.sleep,
                     monotonic=clock.monotonic):
        yield


@contextlib.contextmanager
def push_slot(state_dir: Path, slots: int, *, clock: Clock, job: str = "") -> Iterator[int]:
    """One of ``slots`` host-wide slots; waits (queues) until one is free."""
    directory = Path(state_dir) / "locks"
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    fds = [os.open(directory / f"slot-{i}.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
           for i in range(slots)]
    held: int | None = None
    try:
        waited = False
        while held is None:
            for i, fd in enumerate(fds):
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    continue
                held = i
                break
            if held is None:
                if not waited:
                    log.info("waiting for a free slot job=%s max_parallel_jobs=%d", job, slots)
                    waited = True
                clock.sleep(1.0)
        os.ftruncate(fds[held], 0)
        os.pwrite(fds[held], f"{os.getpid()} {job}\n".encode(), 0)
        yield held
    finally:
        for fd in fds:
            os.close(fd)
