"""Fixtures of the systemd tests: one booted container per test module (tests/systemd/harness.py)."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest

from tests.support.loopfs import detach_loops_under, loop_btrfs, require_loop_btrfs
from tests.systemd.harness import Container, require_container


class Booted:
    """A booted container, its data directory (bound at the same path) and a btrfs mounted in it."""

    def __init__(self, container: Container, data: Path, fs: Path) -> None:
        self.container = container
        self.data = data
        self.fs = fs


@pytest.fixture(scope="module")
def booted(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Booted]:
    require_container()
    require_loop_btrfs()
    work = tmp_path_factory.mktemp("systemd-container")
    with ExitStack() as stack:
        # not under /tmp or /var/tmp: PrivateTmp= hides them from the units
        data = Path(tempfile.mkdtemp(prefix="btrsync-systemd-test-", dir="/var/lib"))
        stack.callback(shutil.rmtree, data, ignore_errors=True)
        # run last: whatever loop device is left under the data directory (drills inside)
        stack.callback(detach_loops_under, [data])
        fs = stack.enter_context(loop_btrfs(data / "fs", "400M"))
        container = Container(work, [data])
        stack.callback(container.stop)
        container.start()
        yield Booted(container, data, fs)
