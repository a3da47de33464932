"""Non-btrfs filesystems for restore tests: ext4 on a loop device, tmpfs; always unmounted (and
detached) on the way out. Loop images live under the test's temporary directory, so the session
safety net (``detach_loops_under``) also catches a crashed test's devices."""

from __future__ import annotations

import errno
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.support.loopfs import _run, attach_loop, detach_loop, unmount


@contextmanager
def loop_ext4(workdir: Path, size: str = "256M") -> Iterator[Path]:
    workdir.mkdir(parents=True, exist_ok=True)
    base = Path(tempfile.mkdtemp(prefix="ext4-", dir=workdir))
    image, mnt = base / "fs.img", base / "mnt"
    mnt.mkdir()
    device = None
    mounted = False
    try:
        _run(["truncate", "-s", size, image])
        _run(["mkfs.ext4", "-q", "-F", "-b", "4096", "-E", "lazy_itable_init=1,lazy_journal_init=1", image])
        device = attach_loop(image)
        _run(["mount", "-t", "ext4", device, mnt])
        mounted = True
        yield mnt
    finally:
        if mounted:
            unmount(mnt)
        if device:
            detach_loop(device)
        image.unlink(missing_ok=True)


@contextmanager
def tmpfs(workdir: Path, size: str = "256M") -> Iterator[Path]:
    workdir.mkdir(parents=True, exist_ok=True)
    mnt = Path(tempfile.mkdtemp(prefix="tmpfs-", dir=workdir))
    _run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", mnt])
    try:
        yield mnt
    finally:
        unmount(mnt)


def user_xattrs_supported(directory: Path) -> str | None:
    """None if ``user.*`` xattrs work on regular files in ``directory``, else why not."""
    probe = directory / ".xattr-probe"
    probe.write_bytes(b"")
    try:
        os.setxattr(probe, "user.probe", b"1")
    except OSError as exc:
        if exc.errno in (errno.EOPNOTSUPP, errno.ENOTSUP, errno.EPERM):
            return f"user.* xattrs are not supported here ({exc.strerror}; tmpfs needs Linux >= 6.6)"
        raise
    finally:
        probe.unlink()
    return None
