"""Compare two directory trees by content and metadata (used by the demo to prove a restore)."""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path
from typing import Any


def describe_tree(root: Path) -> dict[str, dict[str, Any]]:
    """path -> type, mode, owner, size, mtime, sha256, link target, xattrs (no inode numbers)."""
    found: dict[str, dict[str, Any]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(dirnames + filenames):
            path = Path(dirpath) / name
            found[str(path.relative_to(root))] = _entry(path)
    return found


def _entry(path: Path) -> dict[str, Any]:
    st = path.lstat()
    entry: dict[str, Any] = {"mode": oct(st.st_mode), "uid": st.st_uid, "gid": st.st_gid}
    if stat.S_ISLNK(st.st_mode):
        entry["target"] = os.readlink(path)
        return entry
    entry["xattrs"] = {k: os.getxattr(path, k, follow_symlinks=False).hex()
                       for k in sorted(os.listxattr(path, follow_symlinks=False))}
    if stat.S_ISREG(st.st_mode):
        entry.update(size=st.st_size, mtime_ns=st.st_mtime_ns, sha256=_sha256(path), links=st.st_nlink)
    return entry


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
    return out
