"""The tree summary of a backup: entry count, regular-file bytes and a SHA-256 over the sorted
``(path, type, size, mode, owner)`` records.

One replay for everything: the summary of a tree is computed from a ``FileTree`` (``tree.py``), the
same tree of names ``ls``, ``find`` and a selective restore materialise from the file indexes.

- At push, ``StreamSummary`` feeds a *full* stream's parser events into a ``FileTree`` as they pass
  (no extra pass over the filesystem) and the manifest records the result.  Memory grows with the
  number of entries; past ``MAX_ENTRIES`` it gives up and says so rather than grow.  An
  incremental's tree needs its parent's: a drill materialises it from the chain's file indexes.
- ``summary_of_disk`` gives the same summary of a tree on disk (a restored snapshot) by lstat.
"""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path
from typing import Any

from btrsync.errors import DamageError
from btrsync.fileindex.tree import FileTree

MAX_ENTRIES = 250_000  # ~420 bytes a node (measured): ~100 MB; beyond, no summary rather than more memory

_GROWS = frozenset({"mkfile", "mkdir", "mknod", "mkfifo", "mksock", "symlink", "link"})
# what no summary field depends on: left out of the replay (a third of a small-file stream's events)
_IRRELEVANT = frozenset({"utimes", "set_xattr", "remove_xattr", "update_extent", "fileattr", "enable_verity", "end"})


def summary_record(path: str, kind: str, size: int, mode: int | None, uid: int, gid: int) -> bytes:
    """One line of the summary: symlinks have no meaningful mode, directories no size."""
    shown_mode = "-" if kind == "l" or mode is None else format(mode & 0o7777, "o")
    shown_size = 0 if kind == "d" else size
    return f"{path}\0{kind}\0{shown_size}\0{shown_mode}\0{uid}\0{gid}\n".encode("utf-8", "surrogateescape")


def digest_records(records: list[tuple[str, bytes]]) -> dict[str, Any]:
    records.sort(key=lambda r: r[0].encode("utf-8", "surrogateescape"))
    h = hashlib.sha256()
    total = 0
    for _path, line in records:
        h.update(line)
        parts = line.split(b"\0")
        if parts[1] == b"f":
            total += int(parts[2])
    return {"entries": len(records), "bytes": total, "sha256": h.hexdigest()}


def summary_of_tree(tree: FileTree) -> dict[str, Any]:
    """The summary of a materialised tree (its root directory is not an entry)."""
    records = [(path, summary_record(path, n.inode.kind, n.inode.size, n.inode.mode, n.inode.uid, n.inode.gid))
               for path, n in tree.walk() if path]
    return digest_records(records)


_KINDS = {stat.S_IFDIR: "d", stat.S_IFREG: "f", stat.S_IFLNK: "l", stat.S_IFCHR: "c", stat.S_IFBLK: "b",
          stat.S_IFIFO: "p", stat.S_IFSOCK: "s"}


def disk_kind(mode: int) -> str:
    """The one-letter type of an ``st_mode``, as ``FileTree`` names types."""
    return _KINDS[stat.S_IFMT(mode)]


def summary_of_disk(root: Path) -> dict[str, Any]:
    """The same summary of a tree on disk (a restored snapshot), by lstat alone."""
    records: list[tuple[str, bytes]] = []
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            full = os.path.join(dirpath, name)
            rel = os.path.relpath(full, root)
            records.append((rel, disk_record(rel, full, os.lstat(full))))
    return digest_records(records)


def disk_record(rel: str, full: str, st: os.stat_result) -> bytes:
    """The summary line of one path on disk (``full``, lstat ``st``), named ``rel``."""
    kind = disk_kind(st.st_mode)
    size = len(os.fsencode(os.readlink(full))) if kind == "l" else st.st_size if kind == "f" else 0
    return summary_record(rel, kind, size, st.st_mode, st.st_uid, st.st_gid)


class StreamSummary:
    """A full stream's tree, built from parser events; ``result()`` is the summary, or None with
    ``.reason`` (not a full stream, a command the replay refuses, more than ``MAX_ENTRIES``)."""

    def __init__(self) -> None:
        self.tree: FileTree | None = FileTree()
        self.started = False
        self.grown = 0
        self.reason: str | None = None

    def _give_up(self, reason: str) -> None:
        if self.reason is None:
            self.reason = reason
            self.tree = None  # the memory goes now, not at the end of the push
            self.add = self._ignore  # type: ignore[method-assign]

    def _ignore(self, ev: Any) -> None:
        pass

    def add(self, ev: Any) -> None:
        """The first command: a full stream begins with SUBVOL (then ``add`` is ``_add``)."""
        if ev.cmd != "subvol" or self.tree is None:
            self._give_up(f"the stream does not begin a full subvolume ({ev.cmd})")
            return
        self.tree.begin_link(where="the send stream", uuid=str(ev.attrs.get("uuid")), parent_uuid=None)
        self.started = True
        self.add = self._add  # type: ignore[method-assign]

    def _add(self, ev: Any) -> None:
        cmd = ev.cmd
        if cmd in _IRRELEVANT:
            return
        if cmd in _GROWS:
            self.grown += 1
            if self.grown > MAX_ENTRIES:
                self._give_up(f"more than {MAX_ENTRIES} entries")
                return
        try:
            self.tree.add([cmd, ev.offset, ev.size, ev.path, ev.attrs])  # type: ignore[union-attr]
        except DamageError as exc:
            self._give_up(str(exc))

    def result(self) -> dict[str, Any] | None:
        if self.tree is None or not self.started:
            return None
        return summary_of_tree(self.tree)
