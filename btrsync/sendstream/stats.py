"""What a send stream changes, and what tree a full stream builds, computed from parser events as
the stream passes (no extra pass over the filesystem).

- ``ChangeStats``: counters per kind of change (created, deleted, renamed, linked, metadata
  changes, data bytes written); constant memory, for every backup; ``list`` shows them.
- ``TreeSummary``: for a *full* stream, the tree it builds: entry count, regular-file bytes and a
  SHA-256 over the sorted ``(path, type, size, mode, owner)`` records.  A restore drill without
  the original snapshot compares the restored tree's summary (``tree_summary_of``) with it.  It
  replays creations and renames on a tree of names (a directory rename is O(1)), so memory grows
  with the number of entries; past ``MAX_ENTRIES`` it gives up and says so rather than grow.
  An incremental's summary would need the parent's tree: it is not computed.
"""

from __future__ import annotations

import hashlib
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

MAX_ENTRIES = 500_000  # ~100 MB of nodes: beyond, no summary rather than more memory

_CREATE_TYPES = {"mkfile": "f", "mkdir": "d", "mknod": "n", "mkfifo": "p", "mksock": "s", "symlink": "l"}
_METADATA = {"chmod", "chown", "utimes", "set_xattr", "remove_xattr", "truncate", "fileattr", "fallocate",
             "enable_verity"}


@dataclass(slots=True)
class ChangeStats:
    created: int = 0  # files, symlinks, device nodes, fifos, sockets
    dirs_created: int = 0
    deleted: int = 0  # unlink and rmdir
    renamed: int = 0
    linked: int = 0  # hard links added
    metadata: int = 0  # chmod, chown, utimes, xattrs, truncate, ...
    data_bytes: int = 0  # file bytes written or cloned (logical, before compression)

    def add(self, ev: Any) -> None:
        cmd, attrs = ev.cmd, ev.attrs
        if cmd == "mkdir":
            self.dirs_created += 1
        elif cmd in _CREATE_TYPES:
            self.created += 1
        elif cmd in ("unlink", "rmdir"):
            self.deleted += 1
        elif cmd == "rename":
            self.renamed += 1
        elif cmd == "link":
            self.linked += 1
        elif cmd in _METADATA:
            self.metadata += 1
        elif cmd == "write":
            self.data_bytes += int(attrs.get("data_len", 0))
        elif cmd == "encoded_write":
            self.data_bytes += int(attrs.get("unencoded_len", attrs.get("data_len", 0)))
        elif cmd == "clone":
            self.data_bytes += int(attrs.get("clone_len", 0))

    def as_dict(self) -> dict[str, int]:
        return {"created": self.created, "dirs_created": self.dirs_created, "deleted": self.deleted,
                "renamed": self.renamed, "linked": self.linked, "metadata": self.metadata,
                "data_bytes": self.data_bytes}


@dataclass(slots=True)
class _Inode:
    kind: str
    size: int = 0
    mode: int | None = None
    uid: int = 0
    gid: int = 0


@dataclass(slots=True)
class _Node:
    inode: _Inode
    children: dict[str, _Node] | None = None  # directories only


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


class TreeSummary:
    """Replays a full stream's tree; ``result()`` is the summary dict, or None with ``.reason``."""

    def __init__(self) -> None:
        self.root = _Node(_Inode("d"), {})
        self.count = 0
        self.reason: str | None = None

    def _lookup(self, path: str) -> _Node | None:
        node = self.root
        for part in path.split("/") if path else ():
            if node.children is None:
                return None
            nxt = node.children.get(part)
            if nxt is None:
                return None
            node = nxt
        return node

    def _parent(self, path: str) -> tuple[_Node | None, str]:
        head, _, name = path.rpartition("/")
        return self._lookup(head), name

    def _attach(self, path: str, node: _Node) -> None:
        parent, name = self._parent(path)
        if parent is None or parent.children is None:
            self._give_up(f"{path!r} is created in a directory the stream never made")
            return
        if name not in parent.children:
            self.count += 1
        parent.children[name] = node
        if self.count > MAX_ENTRIES:
            self._give_up(f"more than {MAX_ENTRIES} entries")

    def _detach(self, path: str) -> _Node | None:
        parent, name = self._parent(path)
        if parent is None or parent.children is None or name not in parent.children:
            return None
        self.count -= 1
        return parent.children.pop(name)

    def _give_up(self, reason: str) -> None:
        if self.reason is None:
            self.reason = reason
            self.root = _Node(_Inode("d"), {})

    def add(self, ev: Any) -> None:
        if self.reason is not None:
            return
        cmd, path, attrs = ev.cmd, ev.path, ev.attrs
        if cmd in _CREATE_TYPES:
            kind = _CREATE_TYPES[cmd]
            inode = _Inode(kind)
            if cmd == "symlink":
                inode.size = len(str(attrs.get("path_link", "")).encode("utf-8", "surrogateescape"))
            if cmd == "mknod":
                mode = int(attrs.get("mode", 0))
                inode.kind = "c" if stat.S_ISCHR(mode) else "b" if stat.S_ISBLK(mode) else "n"
                inode.mode = mode
            self._attach(path, _Node(inode, {} if kind == "d" else None))
        elif cmd == "rename":
            node = self._detach(path)
            if node is None:
                self._give_up(f"rename of unknown {path!r}")
                return
            self._detach(attrs["path_to"])
            self._attach(attrs["path_to"], node)
        elif cmd == "link":
            target = self._lookup(str(attrs.get("path_link", "")))
            if target is None:
                self._give_up(f"link to unknown {attrs.get('path_link')!r}")
                return
            self._attach(path, _Node(target.inode))
        elif cmd in ("unlink", "rmdir"):
            self._detach(path)
        elif cmd in ("write", "clone", "encoded_write", "truncate", "chmod", "chown"):
            node = self._lookup(path)
            if node is None:
                self._give_up(f"{cmd} of unknown {path!r}")
                return
            ino = node.inode
            if cmd == "write":
                ino.size = max(ino.size, int(attrs["file_offset"]) + int(attrs.get("data_len", 0)))
            elif cmd == "clone":
                ino.size = max(ino.size, int(attrs["file_offset"]) + int(attrs["clone_len"]))
            elif cmd == "encoded_write":
                ino.size = max(ino.size, int(attrs["file_offset"]) + int(attrs["unencoded_file_len"]))
            elif cmd == "truncate":
                ino.size = int(attrs["size"])
            elif cmd == "chmod":
                ino.mode = int(attrs["mode"])
            else:
                ino.uid, ino.gid = int(attrs["uid"]), int(attrs["gid"])

    def result(self) -> dict[str, Any] | None:
        if self.reason is not None:
            return None
        records: list[tuple[str, bytes]] = []
        stack: list[tuple[str, _Node]] = [("", self.root)]
        while stack:
            prefix, node = stack.pop()
            for name, child in (node.children or {}).items():
                path = f"{prefix}{name}"
                ino = child.inode
                records.append((path, summary_record(path, ino.kind, ino.size, ino.mode, ino.uid, ino.gid)))
                if child.children is not None:
                    stack.append((path + "/", child))
        return digest_records(records)


def tree_summary_of(root: Path) -> dict[str, Any]:
    """The same summary of a tree on disk (a restored snapshot), by lstat alone."""
    records: list[tuple[str, bytes]] = []
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            full = os.path.join(dirpath, name)
            st = os.lstat(full)
            rel = os.path.relpath(full, root)
            mode = st.st_mode
            if stat.S_ISDIR(mode):
                kind = "d"
            elif stat.S_ISREG(mode):
                kind = "f"
            elif stat.S_ISLNK(mode):
                kind = "l"
            elif stat.S_ISCHR(mode):
                kind = "c"
            elif stat.S_ISBLK(mode):
                kind = "b"
            elif stat.S_ISFIFO(mode):
                kind = "p"
            else:
                kind = "s"
            size = len(os.fsencode(os.readlink(full))) if kind == "l" else st.st_size if kind == "f" else 0
            records.append((rel, summary_record(rel, kind, size, mode, st.st_uid, st.st_gid)))
    return digest_records(records)


@dataclass(slots=True)
class StreamFacts:
    """What push records from the parser: change statistics always, the tree summary of a full."""

    stats: ChangeStats = field(default_factory=ChangeStats)
    tree: TreeSummary | None = None

    def add(self, ev: Any) -> None:
        self.stats.add(ev)
        if self.tree is not None:
            self.tree.add(ev)
