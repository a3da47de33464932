"""A directory target on a mount point that is not mounted: ``btrsync init`` must not create a
repository in the empty directory under it (the next mount would hide it, and backups would
fill the root filesystem meanwhile).  The mount points are those of /etc/fstab (NixOS writes its
``fileSystems`` there); what is mounted is /proc/self/mountinfo."""

from __future__ import annotations

import os
from urllib.parse import unquote, urlsplit

from btrsync.errors import TargetMissingError

FSTAB = "/etc/fstab"
MOUNTINFO = "/proc/self/mountinfo"


def _unescape(field: str) -> str:
    """fstab and mountinfo write a blank in a path as \\040 (octal escapes)."""
    out, i = [], 0
    while i < len(field):
        if field[i] == "\\" and field[i + 1:i + 4].isdigit():
            out.append(chr(int(field[i + 1:i + 4], 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def fstab_mount_points(fstab: str = FSTAB) -> set[str]:
    points = set()
    try:
        with open(fstab, encoding="utf-8", errors="replace") as f:
            for line in f:
                fields = line.split()
                if len(fields) >= 2 and not fields[0].startswith("#") and fields[1].startswith("/"):
                    points.add(os.path.normpath(_unescape(fields[1])))
    except OSError:
        pass
    return points


def mounted(mountinfo: str = MOUNTINFO) -> set[str]:
    points = set()
    try:
        with open(mountinfo, encoding="utf-8", errors="replace") as f:
            for line in f:
                fields = line.split()
                if len(fields) >= 5:
                    points.add(os.path.normpath(_unescape(fields[4])))
    except OSError:
        pass
    return points


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
