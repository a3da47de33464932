"""What a restore drill killed with SIGKILL leaves behind: its image, attached and mounted."""

from __future__ import annotations

import subprocess
from pathlib import Path


def plant_dead_drill(scratch: Path) -> tuple[Path, Path, str]:
    """A formatted ``btrsync-drill-dead.img`` in ``scratch`` on a loop device, mounted on
    ``btrsync-drill-mnt-dead``; returns (image, mount point, loop device)."""
    image = scratch / "btrsync-drill-dead.img"
    subprocess.run(["truncate", "-s", "300M", str(image)], check=True)
    subprocess.run(["mkfs.btrfs", "-q", str(image)], check=True)
    mnt = scratch / "btrsync-drill-mnt-dead"
    mnt.mkdir()
    dev = subprocess.run(["losetup", "--find", "--show", str(image)], check=True, capture_output=True,
                         text=True).stdout.strip()
    subprocess.run(["mount", dev, str(mnt)], check=True)
    return image, mnt, dev
