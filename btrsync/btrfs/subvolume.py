"""Facts about subvolumes (one ioctl, no parsing of human output) and snapshot create/delete."""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import struct
import uuid as uuidlib
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from btrsync.btrfs.runner import run_btrfs
from btrsync.errors import BtrfsError
from btrsync.fdio import libc

BTRFS_SUPER_MAGIC = 0x9123683E
BTRFS_FIRST_FREE_OBJECTID = 256
ROOT_SUBVOL_RDONLY = 1 << 0

# struct btrfs_ioctl_get_subvol_info_args (linux/btrfs.h, kernel >= 4.18)
_SUBVOL_INFO = struct.Struct("=Q256sQQQQ16s16s16sQQQQ" + "QI4x" * 4 + "64x")
_IOC_GET_SUBVOL_INFO = (2 << 30) | (_SUBVOL_INFO.size << 16) | (0x94 << 8) | 60


@dataclass(frozen=True, slots=True)
class SubvolumeInfo:
    path: Path
    name: str
    subvol_id: int
    uuid: str
    parent_uuid: str | None
    received_uuid: str | None
    generation: int
    ctransid: int
    otransid: int
    stransid: int
    rtransid: int
    readonly: bool
    created: datetime

    @property
    def stream_uuid(self) -> str:
        """The uuid ``btrfs send`` writes for this subvolume (received_uuid when it has one)."""
        return self.received_uuid or self.uuid

    @property
    def is_trusted_parent(self) -> bool:
        """Read-only, and unchanged since it was made.  A received subvolume made writable is never
        trusted: while writable it fails this test, and btrfs-progs >= 5.14 refuses to flip it to
        read-write unless forced, and the forced flip clears its received_uuid, so it no longer
        matches any backup (its transids cannot tell: receiving ends with changes after rtransid).
        A snapshot taken here takes its ctransid from its source, so at most the transaction that
        made it (otransid); made writable, changed and made read-only again, its ctransid is later
        (flipping the flag alone, snapshotting or sending it leave ctransid alone: Linux 6.18), and a
        stream sent on it would be a diff from what no backup holds."""
        return self.readonly and (self.received_uuid is not None or self.ctransid <= self.otransid)


def _uuid(raw: bytes) -> str | None:
    return None if raw == bytes(16) else str(uuidlib.UUID(bytes=raw))


def subvolume_info(path: str | os.PathLike[str]) -> SubvolumeInfo:
    """Read a subvolume's uuid, parent/received uuid, transids and read-only flag."""
    p = Path(path)
    try:
        fd = os.open(p, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as exc:
        raise BtrfsError(f"cannot open subvolume {p}: {exc.strerror}") from None
    try:
        buf = bytearray(_SUBVOL_INFO.size)
        fcntl.ioctl(fd, _IOC_GET_SUBVOL_INFO, buf)
    except OSError as exc:
        if exc.errno in (errno.ENOTTY, errno.EINVAL):
            raise BtrfsError(f"{p} is not on a btrfs filesystem") from None
        raise BtrfsError(f"cannot read subvolume facts of {p}: {exc.strerror}") from None
    finally:
        os.close(fd)
    if not is_subvolume(p):
        raise BtrfsError(f"{p} is a directory, not a btrfs subvolume")
    f = _SUBVOL_INFO.unpack(buf)
    treeid, name, _parent_id, _dirid, generation, flags, u, pu, ru = f[:9]
    ctransid, otransid, stransid, rtransid = f[9:13]
    otime_sec = f[15]
    return SubvolumeInfo(
        path=p, name=name.rstrip(b"\0").decode(errors="surrogateescape"), subvol_id=treeid,
        uuid=_uuid(u) or "", parent_uuid=_uuid(pu), received_uuid=_uuid(ru), generation=generation,
        ctransid=ctransid, otransid=otransid, stransid=stransid, rtransid=rtransid,
        readonly=bool(flags & ROOT_SUBVOL_RDONLY), created=datetime.fromtimestamp(otime_sec, UTC),
    )


def is_subvolume(path: str | os.PathLike[str]) -> bool:
    """A subvolume root is a directory with inode 256 on btrfs."""
    try:
        st = os.stat(path, follow_symlinks=False)
    except OSError:
        return False
    return st.st_ino == BTRFS_FIRST_FREE_OBJECTID and is_on_btrfs(path)


def is_on_btrfs(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` lives on a btrfs filesystem (statfs f_type)."""
    buf = _Statfs()
    if libc().statfs(os.fsencode(os.fspath(path)), ctypes.byref(buf)) != 0:
        return False
    return (buf.f_type & 0xFFFFFFFF) == BTRFS_SUPER_MAGIC


class _Statfs(ctypes.Structure):
    _fields_ = [("f_type", ctypes.c_long), ("_rest", ctypes.c_byte * 120)]


def child_subvolumes(directory: Path) -> list[SubvolumeInfo]:
    """Subvolumes directly inside ``directory`` (not recursive), by name."""
    found = []
    for entry in sorted(os.scandir(directory), key=lambda e: e.name):
        # readdir's d_ino of a subvolume entry is its tree id; stat() shows the root inode 256
        if entry.is_dir(follow_symlinks=False) and is_subvolume(entry.path):
            found.append(subvolume_info(entry.path))
    return found


def create_readonly_snapshot(source: Path, dest: Path) -> SubvolumeInfo:
    run_btrfs(["subvolume", "snapshot", "-r", str(source), str(dest)],
              what=f"read-only snapshot of {source} at {dest}")
    return subvolume_info(dest)


def delete_subvolume(path: Path) -> None:
    run_btrfs(["subvolume", "delete", str(path)], what=f"deleting subvolume {path}")
