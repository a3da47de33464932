"""Compare two directory trees by content and metadata (the demo and restore drills prove a restore).

Nested subvolumes are not part of a subvolume's tree: ``btrfs send`` stops at them, and a snapshot
shows each one as an empty placeholder directory (inode 2). So on btrfs both are left out: a
snapshot taken with its snapshot directory inside the subvolume (``/data/.snapshots``) equals its
own restore.

Modification times are compared for files and directories, the top directory's included (btrsync
receive and restore set it to the snapshot's; plain ``btrfs receive`` of an incremental leaves it
at the time of the receive).
"""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path
from typing import Any

from btrsync.btrfs.subvolume import is_on_btrfs

BTRFS_EMPTY_SUBVOL_DIR_INO = 2   # a nested subvolume as it appears inside a snapshot
BTRFS_FIRST_FREE_INO = 256       # the root directory of a subvolume


def describe_tree(root: Path) -> dict[str, dict[str, Any]]:
    """path -> type, mode, owner, size, mtime, sha256, link target, xattrs (no inode numbers)."""
    found: dict[str, dict[str, Any]] = {}
    btrfs = is_on_btrfs(root)
    root_dev = root.lstat().st_dev
    for dirpath, dirnames, filenames in os.walk(root):
        if btrfs:
            dirnames[:] = [d for d in dirnames if not _nested_subvolume(Path(dirpath) / d, root_dev)]
        dirnames.sort()
        for name in sorted(dirnames + filenames):
            path = Path(dirpath) / name
            found[str(path.relative_to(root))] = _entry(path)
    return found


def _nested_subvolume(path: Path, root_dev: int) -> bool:
    st = path.lstat()
    if not stat.S_ISDIR(st.st_mode):
        return False
    return st.st_ino == BTRFS_EMPTY_SUBVOL_DIR_INO or (st.st_ino == BTRFS_FIRST_FREE_INO and st.st_dev != root_dev)


def _entry(path: Path) -> dict[str, Any]:
    st = path.lstat()
    entry: dict[str, Any] = {"mode": oct(st.st_mode), "uid": st.st_uid, "gid": st.st_gid}
    if stat.S_ISLNK(st.st_mode):
        entry["target"] = os.readlink(path)
        return entry
    entry["xattrs"] = xattrs_of(path)
    if stat.S_ISREG(st.st_mode):
        entry.update(size=st.st_size, mtime_ns=st.st_mtime_ns, sha256=_sha256(path), links=st.st_nlink)
    elif stat.S_ISDIR(st.st_mode):
        entry["mtime_ns"] = st.st_mtime_ns
    return entry


def xattrs_of(path: str | Path) -> dict[str, str]:
    """Every extended attribute of ``path`` itself (not a symlink's target): name -> hex value."""
    return {k: os.getxattr(path, k, follow_symlinks=False).hex()
            for k in sorted(os.listxattr(path, follow_symlinks=False))}


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def diff_trees(a: Path, b: Path) -> list[str]:
    """Human-readable differences between two trees; empty when they are equal."""
    da, db = describe_tree(a), describe_tree(b)
    out = [f"only in {a}: {p}" for p in sorted(da.keys() - db.keys())]
    out += [f"only in {b}: {p}" for p in sorted(db.keys() - da.keys())]
    out += [f"differs: {p}" for p in sorted(da.keys() & db.keys()) if da[p] != db[p]]
    top_a, top_b = a.lstat().st_mtime_ns, b.lstat().st_mtime_ns
    if top_a != top_b:
        out.insert(0, f"differs: . (the top directory's mtime: {top_a} in {a}, {top_b} in {b})")
    return out
