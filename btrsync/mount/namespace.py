"""The mount's names: ``/<subvolume>/<snapshot>/<path in the backup>``.

The top two levels come from the catalog read at mount time (restorable backups only: a broken
chain or a damaged manifest is left out and said once).  Below them, a backup's tree is replayed
from its chain's file indexes (``fileindex/tree.py``, with each inode's data commands) the first
time a path of it is looked up; the ``KEEP_TREES`` most recently used trees stay in memory.  A
backup's own directory needs none: its attributes come from its manifest where it recorded them
(``fileindex/root.py``), so listing the backups of a subvolume with ``ls -l`` replays no tree.

Inode numbers: a backup's ``n``-th place in the mount (from 1) gives it ``n << 40``, and each of
its inodes ``base + the inode number the send stream gave it``, so every name of a hard-linked
inode has the same number, numbers stay the same when a tree is replayed again, and two
backups never share one (``diff -r`` and ``cp -a`` across two snapshots take equal numbers on one
device for the same file).  The top directories have numbers below ``1 << 40``.
"""

from __future__ import annotations

import logging
import stat
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from btrsync.catalog.manifest import Manifest
from btrsync.catalog.reach import away, removed
from btrsync.catalog.repository import Catalog, Repository
from btrsync.errors import BtrsyncError, DamageError
from btrsync.fileindex.root import from_record as root_from_record
from btrsync.fileindex.store import NoFileIndex
from btrsync.fileindex.tree import FileTree, Inode, Node
from btrsync.mount.extents import allocated_blocks
from btrsync.read.chains import restore_chain

log = logging.getLogger(__name__)

KEEP_TREES = 4
INO_SHIFT = 40
TYPE_BITS = {"f": stat.S_IFREG, "d": stat.S_IFDIR, "l": stat.S_IFLNK, "c": stat.S_IFCHR, "b": stat.S_IFBLK,
             "p": stat.S_IFIFO, "s": stat.S_IFSOCK}

LoadTree = Callable[[Repository, list[Manifest]], tuple[FileTree, int]]  # the tree, stored index bytes read


class Unavailable(Exception):
    """A backup's tree cannot be read (damaged or missing file index): EIO below its directory."""


def dir_name(text: str) -> str:
    """A name from the catalog as one path component."""
    name = text.replace("/", "_").replace("\0", "_")
    return name if name not in ("", ".", "..") else f"_{name}"


@dataclass(eq=False)
class Backup:
    """One backup's directory: its chain and, once looked into, its tree."""

    name: str
    manifest: Manifest
    chain: list[Manifest]
    base: int  # inode numbers of its tree: base + stream inode number
    lock: threading.Lock = field(default_factory=threading.Lock)
    problem: str | None = None  # why its tree cannot be shown (said once, then EIO)
    # its top directory: as its manifest recorded it (fileindex/root.py), else from its tree once
    # replayed, and kept when the tree is dropped: ``ls -l`` of many backups replays none of them
    top: Inode | None = None

    def ino(self, inode: Inode) -> int:
        return self.base + (inode.ino % (1 << INO_SHIFT))


@dataclass(eq=False)
class Place:
    """What a path of the mount names: an inode, and for a directory its entries."""

    inode: Inode
    ino: int
    backup: Backup | None = None
    node: Node | None = None
    synthetic: dict[str, Place] | None = None  # the top two levels
    tree: FileTree | None = None  # the tree ``node`` is of (a file's data is rebuilt from that one)

    def names(self) -> list[str]:
        if self.synthetic is not None:
            return list(self.synthetic)
        assert self.node is not None
        return list(self.node.children or {})

    def child(self, name: str) -> Place | None:
        """An entry of this directory (for readdir's types and inode numbers)."""
        if self.synthetic is not None:
            return self.synthetic.get(name)
        node = (self.node.children or {}).get(name) if self.node is not None else None
        if node is None or self.backup is None:
            return None
        return Place(node.inode, self.backup.ino(node.inode), self.backup, node, tree=self.tree)


class Namespace:
    """Resolves mount paths; thread-safe (FUSE calls in from several threads)."""

    def __init__(self, repo: Repository, catalog: Catalog, load_tree: LoadTree, *, keep_trees: int = KEEP_TREES) -> None:
        self.repo, self._load, self.keep_trees = repo, load_tree, keep_trees
        self.skipped: list[str] = []  # backups not shown, with the reason
        self._trees: OrderedDict[int, FileTree] = OrderedDict()
        self._lock = threading.Lock()
        self._blocks: dict[int, int] = {}
        self.index_bytes = 0  # stored bytes of file indexes read (each replay of a tree counts)
        self.backups: list[Backup] = []
        url = repo.target.display_url
        for d in catalog.damaged:
            self.skipped.append(f"{d.backup_id}: its manifest is damaged ({d.advice(url)})")
        broken = catalog.broken
        by_subvol: dict[str, list[Manifest]] = {}
        for m in catalog.manifests:
            if m.backup_id in broken:
                self.skipped.append(f"{m.backup_id}: its chain is broken ({broken[m.backup_id]})")
                continue
            by_subvol.setdefault(dir_name(m.subvolume), []).append(m)
        # the root is as new as the newest backup; an empty repository's root as the mount
        newest = max((m.snapshot_time for m in catalog.manifests), default=None) or datetime.now(UTC)
        self.root = Place(self._dir_inode(1, newest), 1, synthetic={})
        for n, (sub, manifests) in enumerate(sorted(by_subvol.items()), start=2):
            manifests.sort(key=lambda m: (m.snapshot_time, m.backup_id))
            place = Place(self._dir_inode(n, manifests[-1].snapshot_time), n, synthetic={})
            assert self.root.synthetic is not None and place.synthetic is not None
            self.root.synthetic[sub] = place
            names = [dir_name(m.snapshot) for m in manifests]
            for m, name in zip(manifests, names, strict=True):
                if names.count(name) > 1:  # two hosts' snapshots of one name: their ids tell them apart
                    name = dir_name(m.backup_id)
                try:
                    chain = restore_chain(catalog, m.backup_id, url)
                except BtrsyncError as exc:
                    self.skipped.append(f"{m.backup_id}: {exc}")
                    continue
                backup = Backup(name, m, chain, (len(self.backups) + 1) << INO_SHIFT,
                                top=root_from_record((m.files or {}).get("root")))
                self.backups.append(backup)
                place.synthetic[name] = Place(Inode("d", 256, mode=0o755, nlink=1), backup.base + 256, backup,
                                              synthetic=None)

    @staticmethod
    def _dir_inode(ino: int, when: object) -> Inode:
        t = (int(when.timestamp()), 0) if when is not None else None  # type: ignore[attr-defined]
        return Inode("d", ino, mode=0o555, nlink=1, atime=t, mtime=t)

    # -- trees ----------------------------------------------------------------------------------
    def tree(self, backup: Backup) -> FileTree:
        """The backup's tree, replayed on first use (``Unavailable`` when its index cannot be read)."""
        with self._lock:
            tree = self._trees.get(backup.base)
            if tree is not None:
                self._trees.move_to_end(backup.base)
                return tree
        with backup.lock:  # one replay per backup at a time; others wait for it
            with self._lock:
                tree = self._trees.get(backup.base)
            if tree is None:
                if backup.problem is not None:
                    raise Unavailable(backup.problem)
                try:
                    tree, read = self._load(self.repo, backup.chain)
                except (DamageError, NoFileIndex) as exc:  # for good: said once, EIO from then on
                    gone = away(self.repo)
                    if gone is not None:  # the disk unplugged, not damage: the next look tries again
                        log.error("backup %s cannot be shown now: %s", backup.manifest.backup_id, gone)
                        raise Unavailable(gone) from None
                    gone = removed(self.repo, backup.manifest.backup_id)
                    backup.problem = gone or str(exc)
                    log.error("backup %s cannot be shown: %s", backup.manifest.backup_id, backup.problem)
                    raise Unavailable(backup.problem) from None
                except BtrsyncError as exc:  # the target (unplugged, offline): the next look tries again
                    log.error("backup %s cannot be shown now: %s", backup.manifest.backup_id, exc)
                    raise Unavailable(str(exc)) from None
            backup.top = tree.root.inode
            with self._lock:
                self.index_bytes += read
                self._trees[backup.base] = tree
                self._trees.move_to_end(backup.base)
                while len(self._trees) > self.keep_trees:
                    self._trees.popitem(last=False)
            return tree

    # -- lookups --------------------------------------------------------------------------------
    def locate(self, path: str, *, entries: bool = False) -> Place | None:
        """The place ``path`` (``/`` separated, from the mount's root) names, or None; with
        ``entries``, a backup's directory with its tree (else its kept attributes may do)."""
        parts = [p for p in path.split("/") if p]
        place = self.root
        for depth, part in enumerate(parts):
            if place.synthetic is None:
                break
            nxt = place.synthetic.get(part)
            if nxt is None:
                return None
            place = nxt
            if depth == 1:  # a backup's directory: the rest is in its tree
                assert place.backup is not None
                backup = place.backup
                if len(parts) == 2 and backup.top is not None and not entries:
                    return Place(backup.top, backup.ino(backup.top), backup)
                tree = self.tree(backup)
                node = tree.lookup("/".join(parts[2:]))
                if node is None:
                    return None
                return Place(node.inode, backup.ino(node.inode), backup, node, tree=tree)
        return place

    def attrs(self, place: Place) -> dict[str, int]:
        """``stat`` of a place, as mfusepy takes it (times in nanoseconds)."""
        ino = place.inode
        mtime = ino.mtime_ns
        atime = mtime if ino.atime is None else ino.atime[0] * 1_000_000_000 + ino.atime[1]
        size = 0 if ino.kind == "d" else ino.size
        blocks = 0
        if ino.kind == "f":
            blocks = self._blocks.get(place.ino, -1)
            if blocks < 0:
                blocks = self._blocks[place.ino] = allocated_blocks(ino)
        return {"st_mode": TYPE_BITS.get(ino.kind, stat.S_IFREG) | ino.mode, "st_ino": place.ino,
                "st_nlink": max(ino.nlink, 1), "st_uid": ino.uid, "st_gid": ino.gid, "st_size": size,
                "st_blocks": blocks, "st_blksize": 4096, "st_rdev": ino.rdev,
                "st_atime": atime, "st_mtime": mtime, "st_ctime": mtime}
