"""A real ``btrsync mount`` process over real backups: pushed from loopback btrfs snapshots (the
``world`` of tests/integration), mounted with libfuse3 at a directory of the test, and always
unmounted afterwards (the process stopped, then ``fusermount3 -u`` whatever state it left)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from btrsync.mountinfo import mount_points
from tests.integration.conftest import World, world  # noqa: F401 - the fixture, for the tests here

READY_TIMEOUT = 60.0


def mounted(path: Path) -> bool:
    return str(path) in mount_points()


def force_unmount(path: Path) -> None:
    if mounted(path):
        subprocess.run(["fusermount3", "-u", "-z", str(path)], capture_output=True, check=False)


@dataclass
class MountProc:
    proc: subprocess.Popen[str]
    mountpoint: Path
    stderr_path: Path
    closed: bool = field(default=False)

    def stderr(self) -> str:
        return self.stderr_path.read_text()

    def wait(self, timeout: float = 60.0) -> int:
        return self.proc.wait(timeout)

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)


def start_mount(of: World, mountpoint: Path, *extra: str, key: Path | None = None,
                wait: bool = True) -> MountProc:
    """``btrsync mount`` as its own process (signals reach it as they reach a user's), ready once
    the mount point is in the mount table, or failed when the process ends first."""
    err = mountpoint.parent / f"{mountpoint.name}.stderr"
    argv = [sys.executable, "-m", "btrsync", "--config", str(of.config), "--state-dir", str(of.state),
            "--key-file", str(key or of.key), "mount", "--from", of.url, str(mountpoint), *extra]
    with open(err, "w") as f:
        proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=f, text=True, start_new_session=True)
    mp = MountProc(proc, mountpoint, err)
    if wait:
        deadline = time.monotonic() + READY_TIMEOUT
        while not (mounted(mountpoint) and "mounted" in mp.stderr()):
            if proc.poll() is not None:
                raise AssertionError(f"btrsync mount exited {proc.returncode}: {mp.stderr()}")
            if time.monotonic() > deadline:
                proc.kill()
                raise AssertionError(f"btrsync mount not ready: {mp.stderr()}")
            time.sleep(0.05)
    return mp


@pytest.fixture
def mounter(tmp_path: Path) -> Iterator:
    """``mounter(world, *extra)`` starts a mount at a fresh directory; every mount is stopped and
    unmounted at teardown, whatever the test did to it."""
    started: list[MountProc] = []

    def start(of: World, *extra: str, mountpoint: Path | None = None, **kw) -> MountProc:
        mp_dir = mountpoint or tmp_path / f"mnt{len(started)}"
        mp_dir.mkdir(exist_ok=True)
        mp = start_mount(of, mp_dir, *extra, **kw)
        started.append(mp)
        return mp

    yield start
    for mp in started:
        if mp.proc.poll() is None:
            os.killpg(mp.proc.pid, signal.SIGTERM)
            try:
                mp.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(mp.proc.pid, signal.SIGKILL)
                mp.proc.wait(30)
        force_unmount(mp.mountpoint)
        assert not mounted(mp.mountpoint)


def two_backups_mounted(of: World, mounter) -> tuple[MountProc, Path, Path]:  # noqa: ANN001
    """Two backups of ``of`` (a.txt and c.txt, then b.txt too) mounted, the first's a.txt read
    (so cached): the mount and the two backups' directories in it."""
    (of.subvol / "a.txt").write_text("first\n")
    (of.subvol / "c.txt").write_text("not read before\n")
    of.snapshot()
    (of.subvol / "b.txt").write_text("second\n")
    of.snapshot()
    assert of.push().code == 0
    m = mounter(of)
    first, second = (m.mountpoint / "data" / s.name for s in of.snapshots)
    assert (first / "a.txt").read_text() == "first\n"
    return m, first, second
