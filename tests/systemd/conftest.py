"""Fixtures of the systemd tests: one booted container per test module (tests/systemd/harness.py)."""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest

from btrsync.procs import pid_alive
from tests.support.loopfs import detach_loops_under, loop_btrfs, require_loop_btrfs
from tests.systemd.harness import Container, require_container


class Booted:
    """A booted container, its data directory (bound at the same path) and a btrfs mounted in it."""

    def __init__(self, container: Container, data: Path, fs: Path) -> None:
        self.container = container
        self.data = data
        self.fs = fs


DATA_PREFIX = "btrsync-systemd-test-"
OWNER = ".owner-pid"  # the pid of the test process whose container uses the directory


def sweep_dead_data_dirs(parent: Path = Path("/var/lib")) -> list[Path]:
    """Remove the data directories (their btrfs unmounted, their loop devices detached) that a
    killed test run left: the fixture's own teardown never ran.  A directory whose owner is alive
    is left alone; one without an owner file (older code) only when it is over an hour old."""
    removed = []
    for data in parent.glob(f"{DATA_PREFIX}*"):
        try:
            owner: int | None = int((data / OWNER).read_text())
        except (OSError, ValueError):
            owner = None
        if owner is not None and pid_alive(owner):
            continue
        if owner is None and time.time() - data.stat().st_mtime < 3600:
            continue
        detach_loops_under([data])
        with open("/proc/self/mounts", encoding="utf-8", errors="replace") as mounts:
            if any(line.split()[1].startswith(f"{data}/") for line in mounts):
                continue  # still mounted: never delete through a mount
        shutil.rmtree(data, ignore_errors=True)
        removed.append(data)
    return removed


@pytest.fixture(scope="module")
def booted(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Booted]:
    require_container()
    require_loop_btrfs()
    work = tmp_path_factory.mktemp("systemd-container")
    with ExitStack() as stack:
        # not under /tmp or /var/tmp: PrivateTmp= hides them from the units
        sweep_dead_data_dirs()
        data = Path(tempfile.mkdtemp(prefix=DATA_PREFIX, dir="/var/lib"))
        stack.callback(shutil.rmtree, data, ignore_errors=True)
        (data / OWNER).write_text(str(os.getpid()))
        # run last: whatever loop device is left under the data directory (drills inside)
        stack.callback(detach_loops_under, [data])
        fs = stack.enter_context(loop_btrfs(data / "fs", "400M"))
        container = Container(work, [data])
        stack.callback(container.stop)
        container.start()
        yield Booted(container, data, fs)
