"""Materialise the file tree of a backup from its chain's file indexes (no stream data).

The records of the full, then of each incremental, are replayed on a tree of names whose leaves
share inode objects (hard links), as ``btrfs receive`` would apply the commands: creations,
renames (a directory rename moves its subtree in O(1)), links, unlinks, metadata and the sizes
that writes, clones and truncates give.  ``with_ops`` also keeps, per inode, the data commands
in stream order (where they lie in which link's stream, clones resolved to their source inode):
what a restore of selected paths needs to fetch and apply.

Clones from the parent snapshot name the parent's paths: before an incremental is replayed its
records are scanned once for them and those paths resolved while the tree still is the parent.
"""

from __future__ import annotations

import gc
import stat
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from btrsync.errors import DamageError
from btrsync.sendstream.checker import check_parent_unchanged

_KIND = {"mkfile": "f", "mkdir": "d", "mknod": "n", "mkfifo": "p", "mksock": "s", "symlink": "l"}
FALLOC_FL_KEEP_SIZE = 0x01
_ON_INODE = frozenset({"chown", "chmod", "utimes", "write", "encoded_write", "clone", "truncate", "fallocate",
                       "set_xattr", "remove_xattr", "fileattr", "enable_verity"})


@dataclass(slots=True, eq=False)
class Inode:
    kind: str  # f d l c b p s
    ino: int
    size: int = 0
    mode: int = 0o600  # permission bits
    uid: int = 0
    gid: int = 0
    atime: tuple[int, int] | None = None
    mtime: tuple[int, int] | None = None
    target: str | None = None
    rdev: int = 0
    xattrs: dict[str, str] = field(default_factory=dict)  # name -> hex value
    nlink: int = 0
    changed: int = 0  # the link (0: the full) that last changed it
    ops: list[tuple[Any, ...]] | None = None
    parent_clones: int = 0  # links in which parent clones read it (restore pins it there)

    @property
    def mtime_ns(self) -> int:
        return 0 if self.mtime is None else self.mtime[0] * 1_000_000_000 + self.mtime[1]


ROOT_INO = 256  # the number btrfs send gives a subvolume's top directory
METADATA = frozenset({"chown", "chmod", "utimes"})
XATTRS = frozenset({"set_xattr", "remove_xattr"})


def new_root() -> Inode:
    """The top directory before a full stream sets its owner, mode and times."""
    return Inode("d", ROOT_INO, mode=0o755, nlink=1)


def set_metadata(ino: Inode, cmd: str, a: Any) -> None:
    """Apply a ``METADATA`` command's attributes (an index record's or a parser event's)."""
    if cmd == "chown":
        ino.uid, ino.gid = int(a["uid"]), int(a["gid"])
    elif cmd == "chmod":
        ino.mode = int(a["mode"]) & 0o7777
    else:  # utimes
        ino.atime, ino.mtime = tuple(a["atime"]), tuple(a["mtime"])  # type: ignore[assignment]


def set_xattrs(ino: Inode, cmd: str, a: Any) -> None:
    """Apply an ``XATTRS`` command (values kept as hex: an index record's already are, a parser
    event's are bytes)."""
    if cmd == "set_xattr":
        value = a["xattr_data"]
        ino.xattrs[str(a["xattr_name"])] = bytes(value).hex() if isinstance(value, bytes | bytearray | memoryview) \
            else str(value)
    else:  # remove_xattr
        ino.xattrs.pop(str(a["xattr_name"]), None)


@dataclass(slots=True, eq=False)
class Node:
    inode: Inode
    children: dict[str, Node] | None = None


@dataclass(slots=True)
class Entry:
    """One path of a materialised tree (what ``ls`` shows and the cache keeps)."""

    path: str
    kind: str
    size: int
    mode: int
    uid: int
    gid: int
    mtime_ns: int
    target: str | None
    ino: int
    nlink: int
    changed: int

    def to_list(self) -> list[Any]:
        return [self.path, self.kind, self.size, self.mode, self.uid, self.gid, self.mtime_ns, self.target,
                self.ino, self.nlink, self.changed]

    @classmethod
    def from_list(cls, row: list[Any]) -> Entry:
        return cls(*row)


class FileTree:
    """The tree a chain builds; ``apply_link`` once per link, full first."""

    def __init__(self, *, with_ops: bool = False) -> None:
        self.with_ops = with_ops
        self.root = Node(new_root(), {})
        self.links = 0
        self.pins: list[list[Inode]] = []  # per link: inodes its parent clones read
        self._link, self._where, self._uuid, self._parent_uuid = 0, "", "", None  # the link being replayed
        self._pmap: dict[str, Inode] = {}
        self._dirs: dict[str, Node] = {}  # directory path -> its node, while replaying (see _dir)
        self._last: tuple[str, Node] | None = None  # the path last attached or found, while replaying
        self._seq = 0
        self._ctransid: Any = None  # of the last link's SUBVOL/SNAPSHOT: what the next one must be sent on

    # -- lookups --------------------------------------------------------------------------------
    def lookup(self, path: str) -> Node | None:
        node = self.root
        for part in path.split("/") if path else ():
            if node.children is None:
                return None
            nxt = node.children.get(part)
            if nxt is None:
                return None
            node = nxt
        return node

    def _dir(self, path: str) -> Node | None:
        """The directory at ``path`` during a replay, remembered: the records of a stream name the
        same few directories over and over.  A remembered path stays right until a directory is
        detached or replaced (``_attach``/``_detach`` forget them all then); a creation or a
        file's rename changes no directory's path."""
        node = self._dirs.get(path)
        if node is None:
            node = self.lookup(path)
            if node is not None and node.children is not None:
                if len(self._dirs) >= 65536:
                    self._dirs.clear()  # bounded: a tree of very many directories looks them up again
                self._dirs[path] = node
        return node

    def _find(self, path: str) -> Node | None:
        """``lookup`` for the replay, through the remembered directories."""
        if not path:
            return self.root
        head, _, name = path.rpartition("/")
        parent = self._dir(head)
        if parent is None or parent.children is None:
            return None
        return parent.children.get(name)

    def _need(self, path: str, where: str) -> Node:
        """The node at ``path`` (the last one found or attached when it is the same path: a new
        inode's commands follow its creation; any detach forgets it)."""
        last = self._last
        if last is not None and last[0] == path:
            return last[1]
        node = self._find(path)
        if node is None:
            raise DamageError(f"{where}: {path!r} does not exist in the tree the chain built")
        self._last = (path, node)
        return node

    def _attach(self, path: str, node: Node, where: str) -> None:
        head, _, name = path.rpartition("/")
        parent = self._dir(head)
        if parent is None or parent.children is None or not name:
            raise DamageError(f"{where}: {path!r} is created in a directory the chain never made")
        old = parent.children.get(name)
        if old is not None:
            old.inode.nlink -= 1
            if old.children is not None:
                self._dirs.clear()
        parent.children[name] = node
        node.inode.nlink += 1
        self._last = (path, node)

    def _detach(self, path: str) -> Node | None:
        head, _, name = path.rpartition("/")
        parent = self._dir(head)
        if parent is None or parent.children is None:
            return None
        node = parent.children.pop(name, None)
        if node is not None:
            self._last = None
            node.inode.nlink -= 1
            if node.children is not None:
                self._dirs.clear()
        return node

    # -- replay ---------------------------------------------------------------------------------
    def apply_link(self, recs: Iterable[list[Any]], *, where: str, uuid: str, parent_uuid: str | None,
                   parent_clone_paths: Iterable[str] = ()) -> None:
        self.begin_link(where=where, uuid=uuid, parent_uuid=parent_uuid, parent_clone_paths=parent_clone_paths)
        add = self.add
        for rec in recs:
            add(rec)
        self._dirs.clear()  # the tree kept (a mount's) keeps no lookup memory
        self._last = None

    def begin_link(self, *, where: str, uuid: str, parent_uuid: str | None,
                   parent_clone_paths: Iterable[str] = ()) -> None:
        """Start replaying the next link; then ``add`` its records in stream order."""
        link = self.links
        self.links += 1
        if parent_uuid is None:
            if link:
                raise DamageError(f"{where}: a full backup in the middle of a chain")
            self.root = Node(new_root(), {})
        self._dirs.clear()
        self._last = None
        pmap: dict[str, Inode] = {}
        for path in parent_clone_paths:
            node = self.lookup(path)
            if node is not None:
                pmap[path] = node.inode
                node.inode.parent_clones += 1
        self.pins.append(list({id(i): i for i in pmap.values()}.values()))
        self._link, self._where, self._uuid, self._parent_uuid, self._pmap = link, where, uuid, parent_uuid, pmap
        self._seq = 0

    def add(self, rec: list[Any]) -> None:
        """Apply one record ``[cmd, offset, size, path, attrs]`` of the current link (hot: once per
        command of every stream replayed, and of a full push's stream)."""
        seq = self._seq
        self._seq = seq + 1
        try:
            if rec[0] in _ON_INODE:
                self._on_inode(seq, rec)
            else:
                self._on_names(rec)
        except (KeyError, TypeError, ValueError) as exc:
            raise DamageError(f"{self._where}: record {seq} of the file index is malformed ({exc})") from None

    def _on_names(self, rec: list[Any]) -> None:
        """A command that changes the tree of names: create, rename, link, unlink, rmdir."""
        cmd, _, _, path, a = rec
        where, link = self._where, self._link
        if cmd in _KIND:
            kind = _KIND[cmd]
            inode = Inode(kind, int(a.get("ino", 0)), changed=link, ops=[] if self.with_ops else None)
            if cmd == "mknod":
                mode = int(a["mode"])
                inode.kind = ("c" if stat.S_ISCHR(mode) else "b" if stat.S_ISBLK(mode) else
                              "p" if stat.S_ISFIFO(mode) else "s" if stat.S_ISSOCK(mode) else "f")
                inode.mode, inode.rdev = mode & 0o7777, int(a.get("rdev", 0))
            elif cmd == "symlink":
                inode.target = str(a["path_link"])
                inode.mode = 0o777
                inode.size = len(inode.target.encode("utf-8", "surrogateescape"))
            elif kind == "d":
                inode.mode = 0o700
            self._attach(path, Node(inode, {} if kind == "d" else None), where)
        elif cmd == "rename":
            node = self._detach(path)
            if node is None:
                raise DamageError(f"{where}: rename of {path!r}, which does not exist")
            node.inode.nlink += 1
            self._detach(a["path_to"])
            node.inode.nlink -= 1
            self._attach(a["path_to"], node, where)
        elif cmd == "link":
            target = self._need(a["path_link"], where)
            self._attach(path, Node(target.inode), where)
            target.inode.changed = link
        elif cmd in ("unlink", "rmdir"):
            node = self._detach(path)
            if node is not None:
                node.inode.changed = link
        elif cmd in ("subvol", "snapshot"):
            if cmd == "snapshot" and self._ctransid is not None:
                check_parent_unchanged(where, a.get("clone_ctransid"), self._ctransid)
            self._ctransid = a.get("ctransid")
        elif cmd not in ("end", "update_extent"):
            self._on_inode(self._seq - 1, rec)  # a command of a newer stream version: on its inode

    def _on_inode(self, seq: int, rec: list[Any]) -> None:
        """A command that changes the inode at its path: metadata, size, data."""
        cmd, off, size, path, a = rec
        link = self._link
        ino = self._need(path or "", self._where).inode
        ino.changed = link
        if cmd in METADATA:  # the commonest first: every new inode gets chown, chmod and utimes
            set_metadata(ino, cmd, a)
        elif cmd == "write":
            fo, dl = int(a["file_offset"]), int(a["data_len"])
            ino.size = max(ino.size, fo + dl)
            if ino.ops is not None:
                ino.ops.append((link, seq, "w", off, size, int(a["data_offset"]), dl, fo))
        elif cmd == "encoded_write":
            fo, ufl = int(a["file_offset"]), int(a["unencoded_file_len"])
            ino.size = max(ino.size, fo + ufl)
            if ino.ops is not None:
                ino.ops.append((link, seq, "e", off, size, int(a["data_offset"]), int(a["data_len"]), fo,
                                int(a.get("compression", 0)), int(a["unencoded_len"]), int(a["unencoded_offset"]),
                                ufl, int(a.get("encryption", 0))))
        elif cmd == "clone":
            fo, cl = int(a["file_offset"]), int(a["clone_len"])
            ino.size = max(ino.size, fo + cl)
            src_uuid = str(a["clone_uuid"])
            where = self._where
            if src_uuid == self._uuid:
                src, from_parent = self._need(a["clone_path"], where).inode, False
            elif self._parent_uuid is not None and src_uuid == self._parent_uuid:
                src, from_parent = self._pmap.get(a["clone_path"]), True
                if src is None:
                    raise DamageError(f"{where}: clone from the parent's {a['clone_path']!r}, which it lacks")
            else:
                raise DamageError(f"{where}: clone {path!r} from subvolume {src_uuid}, neither this snapshot "
                                  "nor its parent")
            if ino.ops is not None:
                ino.ops.append((link, seq, "c", src, from_parent, int(a["clone_offset"]), cl, fo))
        elif cmd == "truncate":
            ino.size = int(a["size"])
            if ino.ops is not None:
                ino.ops.append((link, seq, "t", ino.size))
        elif cmd == "fallocate":
            mode, fo, ln = int(a["fallocate_mode"]), int(a["file_offset"]), int(a["size"])
            if not mode & FALLOC_FL_KEEP_SIZE:
                ino.size = max(ino.size, fo + ln)
            if ino.ops is not None:
                ino.ops.append((link, seq, "a", mode, fo, ln))
        elif cmd in XATTRS:
            set_xattrs(ino, cmd, a)

    # -- results --------------------------------------------------------------------------------
    def walk(self, top: str = "") -> Iterator[tuple[str, Node]]:
        """``(path, node)`` of ``top`` and everything under it, parents first."""
        start = self.lookup(top)
        if start is None:
            return
        stack: list[tuple[str, Node]] = [(top, start)]
        while stack:
            path, node = stack.pop()
            yield path, node
            for name, child in (node.children or {}).items():
                stack.append((f"{path}/{name}" if path else name, child))

    def entries(self) -> list[Entry]:
        out = [Entry(p, n.inode.kind, 0 if n.inode.kind == "d" else n.inode.size, n.inode.mode, n.inode.uid,
                     n.inode.gid, n.inode.mtime_ns, n.inode.target, n.inode.ino, n.inode.nlink, n.inode.changed)
               for p, n in self.walk()]
        out.sort(key=lambda e: e.path.encode("utf-8", "surrogateescape"))
        return out


def parent_clone_paths(recs: Iterable[list[Any]], parent_uuid: str | None) -> set[str]:
    """Paths of the parent that an incremental's clones read (scanned before it is replayed)."""
    if parent_uuid is None:
        return set()
    return {str(r[4]["clone_path"]) for r in recs if r[0] == "clone" and str(r[4].get("clone_uuid")) == parent_uuid}


_gc_lock = threading.Lock()
_gc_pausers = 0
_gc_was_on = False


@contextmanager
def gc_paused() -> Iterator[None]:
    """The cyclic garbage collector held off while a tree is built: a replay makes millions of
    objects and no garbage cycles, and each collection of the older generations would walk all
    of them again (a third of a large replay's time).  Counted, so overlapping replays in two
    threads (a mount) turn it back on when the last ends, and only if it was on; reference
    counting frees as before."""
    global _gc_pausers, _gc_was_on
    with _gc_lock:
        if _gc_pausers == 0:
            _gc_was_on = gc.isenabled()
            gc.disable()
        _gc_pausers += 1
    try:
        yield
    finally:
        with _gc_lock:
            _gc_pausers -= 1
            if _gc_pausers == 0 and _gc_was_on:
                gc.enable()
