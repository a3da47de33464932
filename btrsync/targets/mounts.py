"""A directory target on a mount point that is not mounted: ``btrsync init`` must not create a
repository in the empty directory under it (the next mount would hide it, and backups would
fill the root filesystem meanwhile).  The mount points are those of /etc/fstab (NixOS writes its
``fileSystems`` there); what is mounted is /proc/self/mountinfo."""

from __future__ import annotations

import os
from urllib.parse import unquote, urlsplit

from btrsync.errors import TargetMissingError
from btrsync.mountinfo import FSTAB, MOUNTINFO, fstab_mount_points, mount_points

def mounted(mountinfo: str = MOUNTINFO) -> set[str]:
    """What is mounted; nothing where the table cannot be read (then every fstab mount point
    counts as unmounted, and no repository is created under one)."""
    try:
        return mount_points(mountinfo)
    except OSError:
        return set()


def unmounted_mount_point(path: str, fstab: str = FSTAB, mountinfo: str = MOUNTINFO) -> str | None:
    """The fstab mount point holding ``path`` when it is not mounted (the innermost one), else None."""
    path = os.path.normpath(path)
    holding = [p for p in fstab_mount_points(fstab) if p != "/" and (path == p or path.startswith(p + "/"))]
    if not holding:
        return None
    innermost = max(holding, key=len)
    return None if innermost in mounted(mountinfo) else innermost


def refuse_unmounted(url: str, fstab: str = FSTAB, mountinfo: str = MOUNTINFO) -> None:
    """``TargetMissingError`` (exit 10) for a ``file://`` target under an unmounted fstab mount point."""
    parts = urlsplit(url)
    if parts.scheme.lower() != "file":
        return
    point = unmounted_mount_point(unquote(parts.path), fstab, mountinfo)
    if point is not None:
        raise TargetMissingError(f"{url} is on {point}, which /etc/fstab mounts, but it is not mounted: "
                                 f"mount it first (no repository is created on the filesystem below it)")
