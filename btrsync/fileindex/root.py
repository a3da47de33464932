"""A backup's top directory, recorded with it: owner, mode, times, xattrs (the manifest's ``files.root``).

Listing the backups of a subvolume (``ls -l`` of a directory of ``btrsync mount``) shows each
backup's top directory, whose attributes are its chain's: a full stream sets them, and an
incremental changes them (``utimes`` whenever an entry at the top is added or removed).  Getting
them by replaying each chain's file indexes reads every index of every chain listed.  Instead the
file index's writer follows the top directory's ``chown``, ``chmod``, ``utimes`` and xattrs (ACLs,
an SELinux label) as the stream passes, with the replay's own code (``tree.set_metadata``,
``tree.set_xattrs``), starting from ``tree.new_root`` (a full) or the attributes the parent
recorded (an incremental), and the manifest records them.  A backup whose parent recorded none
(pushed before this existed), or whose top directory's xattrs exceed ``XATTR_LIMIT`` (manifests
stay small: every listing reads them), records none, and is replayed as before.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from btrsync.fileindex.tree import METADATA, XATTRS, Inode, new_root, set_metadata, set_xattrs

_NSEC = 1_000_000_000
XATTR_LIMIT = 16 * 1024  # characters of names and hex values recorded at most


class RootTracker:
    """``add_many`` every parser event of a stream; ``record()`` is then its top directory's
    attributes (None where the seed was None: not known)."""

    def __init__(self, seed: Inode | None) -> None:
        self.root = seed

    def add_many(self, events: Iterable[Any]) -> None:
        root = self.root
        if root is None:
            return
        for ev in events:
            if not ev.path:
                if ev.cmd in METADATA:
                    set_metadata(root, ev.cmd, ev.attrs)
                elif ev.cmd in XATTRS:
                    set_xattrs(root, ev.cmd, ev.attrs)

    def record(self) -> dict[str, Any] | None:
        if self.root is None or sum(len(k) + len(v) for k, v in self.root.xattrs.items()) > XATTR_LIMIT:
            return None
        return record(self.root)


def record(ino: Inode) -> dict[str, Any]:
    return {"mode": ino.mode, "uid": ino.uid, "gid": ino.gid,
            "atime": None if ino.atime is None else list(ino.atime),
            "mtime": None if ino.mtime is None else list(ino.mtime), "xattrs": dict(ino.xattrs)}


def from_record(doc: Any) -> Inode | None:
    """The top directory ``record`` described, as an ``Inode``; None for no record or one that is
    not valid (then the chain is replayed: a manifest is authenticated, so this is a bug's guard)."""
    if not isinstance(doc, dict):
        return None
    ino = new_root()
    ids = (doc.get("mode"), doc.get("uid"), doc.get("gid"))
    if not all(_int(v, 1 << 32) for v in ids) or ids[0] > 0o7777:  # type: ignore[operator]
        return None
    ino.mode, ino.uid, ino.gid = ids  # type: ignore[assignment]
    times = []
    for name in ("atime", "mtime"):
        t = doc.get(name)
        if t is not None and not (isinstance(t, list) and len(t) == 2 and _int(t[0], 1 << 63, -(1 << 63))
                                  and _int(t[1], _NSEC)):
            return None
        times.append(None if t is None else (t[0], t[1]))
    ino.atime, ino.mtime = times  # type: ignore[assignment]
    xattrs = doc.get("xattrs")  # hex values; a record without them (none is older) is not taken
    if not isinstance(xattrs, dict) or not all(isinstance(k, str) and _hex(v) for k, v in xattrs.items()):
        return None
    ino.xattrs = dict(xattrs)
    return ino


def _hex(v: Any) -> bool:
    if not isinstance(v, str):
        return False
    try:
        bytes.fromhex(v)
    except ValueError:
        return False
    return True


def _int(v: Any, below: int, low: int = 0) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and low <= v < below
