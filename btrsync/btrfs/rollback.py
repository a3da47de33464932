"""What a rollback needs from btrfs: the filesystem id (one ioctl), mount points, nested
subvolumes, a writable snapshot."""

from __future__ import annotations

import fcntl
import os
import uuid as uuidlib
from pathlib import Path

from btrsync.btrfs.runner import run_btrfs
from btrsync.errors import BtrfsError
from btrsync.mountinfo import mount_points

# struct btrfs_ioctl_fs_info_args (1 KiB): max_id u64, num_devices u64, fsid[16], ...
_FS_INFO_SIZE = 1024
_IOC_FS_INFO = (2 << 30) | (_FS_INFO_SIZE << 16) | (0x94 << 8) | 31


def filesystem_uuid(path: Path) -> str:
    """The btrfs filesystem's fsid (the same for every subvolume of one filesystem)."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        buf = bytearray(_FS_INFO_SIZE)
        fcntl.ioctl(fd, _IOC_FS_INFO, buf)
    except OSError as exc:
        raise BtrfsError(f"cannot read the filesystem id of {path}: {exc.strerror}") from None
    finally:
        os.close(fd)
    return str(uuidlib.UUID(bytes=bytes(buf[16:32])))


def is_mount_point(path: Path) -> bool:
    """Whether ``path`` is itself mounted (a subvolume mounted with ``subvol=``, a bind mount).
    ``os.path.ismount`` cannot tell: every btrfs subvolume has a device number of its own."""
    return os.path.realpath(path) in mount_points()


def nested_subvolumes(path: Path) -> list[str]:
    """Subvolumes anywhere below ``path`` (``btrfs subvolume list -o``), as btrfs names them."""
    out = run_btrfs(["subvolume", "list", "-o", str(path)], what=f"listing the subvolumes inside {path}")
    found = []
    for line in out.splitlines():
        if " path " in line:
            found.append(line.split(" path ", 1)[1])
    return found


def create_writable_snapshot(source: Path, dest: Path) -> None:
    run_btrfs(["subvolume", "snapshot", str(source), str(dest)],
              what=f"writable snapshot of {source} at {dest}")
