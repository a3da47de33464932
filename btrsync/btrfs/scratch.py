"""Throwaway btrfs filesystems on loop devices (for the demo and restore tests), always cleaned up."""

from __future__ import annotations

import contextlib
import logging
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from btrsync.errors import BtrfsError

log = logging.getLogger(__name__)


def _run(argv: list[str], what: str) -> str:
    proc = subprocess.run(argv, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise BtrfsError(f"{what} failed: {(proc.stderr or proc.stdout).strip()}")
    return proc.stdout.strip()


@contextlib.contextmanager
def scratch_btrfs(workdir: Path, size: str = "1G", label: str = "btrsync-scratch") -> Iterator[Path]:
    """Make, mount and yield a fresh btrfs on a sparse image in ``workdir``; unmount and detach
    it afterwards, whatever happens inside."""
    workdir.mkdir(parents=True, exist_ok=True)
    image = Path(tempfile.mkstemp(dir=workdir, prefix=f"{label}-", suffix=".img")[1])
    mnt = Path(tempfile.mkdtemp(dir=workdir, prefix=f"{label}-mnt-"))
    device = None
    try:
        _run(["truncate", "-s", size, str(image)], "creating the image")
        _run(["mkfs.btrfs", "-q", "-f", "-L", label, str(image)], "mkfs.btrfs")
        device = _run(["losetup", "--find", "--show", str(image)], "attaching a loop device")
        _run(["mount", "-t", "btrfs", device, str(mnt)], f"mounting {device}")
        yield mnt
    finally:
        _cleanup(mnt, device, image)


def _cleanup(mnt: Path, device: str | None, image: Path) -> None:
    if subprocess.run(["mountpoint", "-q", str(mnt)], check=False).returncode == 0:
        for _ in range(10):
            if subprocess.run(["umount", str(mnt)], capture_output=True, check=False).returncode == 0:
                break
            time.sleep(0.3)
        else:
            subprocess.run(["umount", "-l", str(mnt)], capture_output=True, check=False)
    if device:
        subprocess.run(["losetup", "-d", device], capture_output=True, check=False)
    with contextlib.suppress(OSError):
        mnt.rmdir()
    image.unlink(missing_ok=True)
