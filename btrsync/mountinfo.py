"""The mount table and fstab, read as the kernel and mount(8) write them (no btrsync imports:
used by targets/, btrfs/ and restore/ alike)."""

from __future__ import annotations

import os

FSTAB = "/etc/fstab"
MOUNTINFO = "/proc/self/mountinfo"


def unescape(field: str) -> str:
    """fstab and mountinfo write space, tab, newline and backslash in a path as ``\\ooo``."""
    out, i = [], 0
    while i < len(field):
        if field[i] == "\\" and field[i + 1:i + 4].isdigit():
            out.append(chr(int(field[i + 1:i + 4], 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def mount_points(mountinfo: str = MOUNTINFO) -> set[str]:
    """Every mount point of this mount namespace; ``OSError`` where the table cannot be read."""
    points = set()
    with open(mountinfo, encoding="utf-8", errors="surrogateescape") as f:
        for line in f:
            fields = line.split(" ")
            if len(fields) > 4:
                points.add(os.path.normpath(unescape(fields[4])))
    return points


def fstab_mount_points(fstab: str = FSTAB) -> set[str]:
    """The mount points /etc/fstab names (none where it cannot be read)."""
    points = set()
    try:
        with open(fstab, encoding="utf-8", errors="surrogateescape") as f:
            for line in f:
                fields = line.split()
                if len(fields) >= 2 and not fields[0].startswith("#") and fields[1].startswith("/"):
                    points.add(os.path.normpath(unescape(fields[1])))
    except OSError:
        pass
    return points
