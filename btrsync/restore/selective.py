"""Restore selected paths of a backup, fetching only the chunks that carry them.

The file indexes of the chain give, per inode, its data commands in stream order
(``fileindex/tree.py``): writes and encoded writes (where the command lies in which link's
stream), clones (resolved to their source inode: a clone source outside the selection is
rebuilt too, in a scratch file), truncates and preallocations. Those of the selected inodes and
of their clone sources are replayed in stream order, each inode into its own scratch file:

- the chunks covering each needed command are fetched (in parallel, in order) through the one
  read path (``read/chunks.RangeReader``), authenticated and hash-checked as for a whole restore;
  nothing else is read;
- each command is parsed from its recorded boundary: its header must give the recorded size
  and its CRC32C must match, then its data is taken from the recorded offset;
- a clone from the parent reads the source as it was when the link began (a copy is kept
  aside for the sources of such clones at each link boundary).

Then the selected paths are built under ``tree/`` with every ancestor directory, from the
index's metadata: scratch files are renamed into place (hard links for further names of the
same inode), symlinks, fifos, device nodes and sockets created, owners, modes, xattrs and times
set (directories last, deepest first). Every path goes through :class:`Tree` (confined, nothing
followed).
"""

from __future__ import annotations

import errno
import os
import stat
import struct
from dataclasses import dataclass
from typing import Any

from btrsync.catalog.manifest import Manifest
from btrsync.errors import DamageError, UsageError
from btrsync.fdio import pwrite_all
from btrsync.fileindex.tree import FileTree, Inode, Node
from btrsync.read.chunks import RangeReader, ReadStats
from btrsync.restore import RestoreError, fsutil
from btrsync.restore.meta import Notes, chown_noted, setxattr_noted
from btrsync.restore.decompress import NAMES as COMPRESSION_NAMES
from btrsync.restore.decompress import DecompressError, decompress
from btrsync.restore.paths import PathRefused, Tree
from btrsync.sendstream.format import CMD_HEADER_SIZE, COMMANDS
from btrsync.sendstream.parser import crc32c

_HEADER = struct.Struct("<IHI")
_CMD_OF = {"w": "write", "e": "encoded_write"}
_NUMBER = {name: num for num, (name, _) in COMMANDS.items()}


def _checked(buf: bytes, name: str, where: str) -> None:
    """The command at a recorded boundary: its header and CRC32C, as the parser checks them."""
    if len(buf) < CMD_HEADER_SIZE:
        raise DamageError(f"{where}: short command")
    length, cmd, crc = _HEADER.unpack_from(buf)
    if length != len(buf) - CMD_HEADER_SIZE or cmd != _NUMBER[name]:
        raise DamageError(f"{where}: the stream holds another command than the file index records there")
    if crc32c(buf[:6] + b"\0\0\0\0" + buf[CMD_HEADER_SIZE:]) != crc:
        raise DamageError(f"{where}: bad CRC32C")


@dataclass
class SelectiveStats:
    files: int = 0
    entries: int = 0
    bytes_written: int = 0
    bytes_cloned: int = 0


class SelectiveRestore:
    """Builds the selected paths of ``ftree`` (materialised with ops) under ``tree``."""

    def __init__(self, repo: Any, chain: list[Manifest], ftree: FileTree, tree: Tree, work_fd: int,
                 notes: Notes, *, workers: int = 2) -> None:
        self.repo, self.chain, self.ftree, self.tree = repo, chain, ftree, tree
        self.work_fd, self.notes, self.workers = work_fd, notes, workers
        self.privileged = os.geteuid() == 0
        self.caps = fsutil.Caps()
        self.stats = SelectiveStats()
        self.fetched = ReadStats()
        self._names: dict[int, str] = {}  # id(inode) -> scratch file name in data/
        self._pins: dict[tuple[int, int], str] = {}  # (link, id(inode)) -> pinned copy

    # -- what to restore ------------------------------------------------------------------------
    def select(self, paths: list[str]) -> list[tuple[str, Node]]:
        chosen: dict[str, Node] = {}
        for p in paths:
            node = self.ftree.lookup(p)
            if node is None:
                raise UsageError(f"no {p!r} in backup {self.chain[-1].backup_id} ('btrsync ls' shows what it holds)")
            parts = p.split("/") if p else []
            for i in range(len(parts)):  # every ancestor, with its own metadata
                anc = "/".join(parts[:i])
                chosen.setdefault(anc, self.ftree.lookup(anc))  # type: ignore[arg-type]
            for path, n in self.ftree.walk(p):
                chosen[path] = n
        return sorted(chosen.items(), key=lambda kv: (kv[0].count("/") if kv[0] else -1, kv[0]))

    @staticmethod
    def closure(inodes: list[Inode]) -> list[Inode]:
        """The inodes whose data must be rebuilt: the selected files and their clone sources."""
        out: dict[int, Inode] = {}
        stack = [i for i in inodes if i.kind == "f"]
        while stack:
            ino = stack.pop()
            if id(ino) in out:
                continue
            out[id(ino)] = ino
            for op in ino.ops or ():
                if op[2] == "c":
                    stack.append(op[3])
        return list(out.values())

    # -- data -----------------------------------------------------------------------------------
    def rebuild(self, inodes: list[Inode]) -> None:
        os.mkdir("data", 0o700, dir_fd=self.work_fd)
        self._data_fd = os.open("data", os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC,
                                dir_fd=self.work_fd)
        closure = self.closure(inodes)
        for n, ino in enumerate(closure):
            self._names[id(ino)] = f"i{n}"
            fd = os.open(f"i{n}", os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600,
                         dir_fd=self._data_fd)
            os.close(fd)
        ops = sorted((op + (ino,) for ino in closure for op in (ino.ops or ())), key=lambda op: (op[0], op[1]))
        needs = [(op[0], op[3], op[4]) for op in ops if op[2] in ("w", "e")]
        in_closure = {id(i) for i in closure}
        reader = RangeReader(self.repo, self.chain, needs, workers=self.workers)
        try:
            link = -1
            for op in ops:
                if op[0] != link:
                    link = op[0]
                    self._pin(link, [i for i in self.ftree.pins[link] if id(i) in in_closure])
                self._op(op, reader)
        finally:
            reader.close()
            self.fetched = reader.fetched

    def rebuilt(self, inode: Inode) -> tuple[int, str]:
        """Where ``rebuild`` left ``inode``'s data: the scratch directory (a descriptor, open until
        ``close``) and the file's name in it."""
        return self._data_fd, self._names[id(inode)]

    def _pin(self, link: int, sources: list[Inode]) -> None:
        """Sources of this link's parent clones, as they are when the link begins."""
        for ino in sources:
            name = f"{self._names[id(ino)]}.pin{link}"
            src = os.open(self._names[id(ino)], os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=self._data_fd)
            try:
                dst = os.open(name, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600,
                              dir_fd=self._data_fd)
                try:
                    fsutil.copy_whole(src, dst, self.caps)
                finally:
                    os.close(dst)
            finally:
                os.close(src)
            self._pins[(link, id(ino))] = name

    def _open(self, name: str, flags: int) -> int:
        return os.open(name, flags | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=self._data_fd)

    def _op(self, op: tuple[Any, ...], reader: RangeReader) -> None:
        link, kind, ino = op[0], op[2], op[-1]
        where = f"backup {self.chain[link].backup_id}: command at byte {op[3] if kind in 'we' else '?'}"
        fd = self._open(self._names[id(ino)], os.O_RDWR)
        try:
            if kind in ("w", "e"):
                _, _, _, off, size, data_off, data_len, file_off = op[:8]
                buf = reader.read(link, off, size)
                _checked(buf, _CMD_OF[kind], where)
                if not (off + CMD_HEADER_SIZE <= data_off and data_off + data_len <= off + size):
                    raise DamageError(f"{where}: the file index places data outside its command")
                data = memoryview(buf)[data_off - off:data_off - off + data_len]
                if kind == "e":
                    compression, unencoded_len, unencoded_off, ufl, encryption = op[8:13]
                    if encryption != 0:
                        raise DamageError(f"{where}: encrypted extents cannot be decoded")
                    if compression not in COMPRESSION_NAMES or unencoded_off + ufl > unencoded_len:
                        raise DamageError(f"{where}: cannot decode the extent")
                    try:
                        plain = decompress(compression, bytes(data), unencoded_len)
                    except DecompressError as exc:
                        raise DamageError(f"{where}: cannot decompress the extent: {exc}") from None
                    data = memoryview(plain)[unencoded_off:unencoded_off + ufl]
                self._pwrite(fd, data, file_off)
            elif kind == "c":
                src_ino, from_parent, src_off, length, file_off = op[3:8]
                name = self._pins.get((link, id(src_ino))) if from_parent else self._names[id(src_ino)]
                if name is None:
                    raise RestoreError(f"{where}: clone source from the parent was not pinned")
                if src_ino is ino and not from_parent:
                    fsutil.copy_range(fd, src_off, fd, file_off, length, self.caps, same_file=True)
                else:
                    src = self._open(name, os.O_RDONLY)
                    try:
                        fsutil.copy_range(src, src_off, fd, file_off, length, self.caps)
                    finally:
                        os.close(src)
                self.stats.bytes_cloned += length
            elif kind == "t":
                os.ftruncate(fd, op[3])
            elif kind == "a":
                mode, file_off, length = op[3:6]
                if mode & fsutil.FALLOC_FL_PUNCH_HOLE:
                    fsutil.punch(fd, file_off, length, self.caps)
                else:
                    try:
                        fsutil.fallocate(fd, mode, file_off, length)
                    except OSError as exc:
                        if exc.errno not in (errno.EOPNOTSUPP, errno.ENOTSUP):
                            raise
                        if not mode & fsutil.FALLOC_FL_KEEP_SIZE and os.fstat(fd).st_size < file_off + length:
                            os.ftruncate(fd, file_off + length)
        except EOFError as exc:
            raise DamageError(f"{where}: {exc}") from None
        finally:
            os.close(fd)

    def _pwrite(self, fd: int, data: memoryview, offset: int) -> None:
        self.stats.bytes_written += pwrite_all(fd, data, offset)

    # -- the tree -------------------------------------------------------------------------------
    def build(self, chosen: list[tuple[str, Node]]) -> None:
        placed: dict[int, str] = {}
        dirs: list[tuple[str, Inode]] = []
        for path, node in chosen:
            ino = node.inode
            try:
                self._entry(path, ino, placed, dirs)
            except PathRefused as exc:
                raise DamageError(f"backup {self.chain[-1].backup_id}: {path!r} refused: {exc.reason}; the "
                                  "file index names a path outside the restore directory") from None
            self.stats.entries += 1
        for path, ino in sorted(dirs, key=lambda d: d[0].count("/") if d[0] else -1, reverse=True):
            dfd, name = self.tree.parent(path, allow_root=True)
            if name is None:
                os.chmod(dfd, ino.mode)
            else:
                os.chmod(name, ino.mode, dir_fd=dfd)
            self._times(path, ino, allow_root=True)

    def _entry(self, path: str, ino: Inode, placed: dict[int, str], dirs: list[tuple[str, Inode]]) -> None:
        if not path:
            self._meta(path, ino)
            dirs.append((path, ino))
            return
        dfd, name = self.tree.parent(path)
        assert name is not None
        if ino.kind == "d":
            os.mkdir(name, 0o700, dir_fd=dfd)
            self._meta(path, ino)
            dirs.append((path, ino))
            return
        if id(ino) in placed:  # a further name of a restored inode
            sdfd, sname = self.tree.parent(placed[id(ino)])
            sfd = os.dup(sdfd)
            try:
                dfd, name = self.tree.parent(path)
                os.link(sname, name, src_dir_fd=sfd, dst_dir_fd=dfd, follow_symlinks=False)
            finally:
                os.close(sfd)
            return
        if ino.kind == "f":
            os.rename(self._names[id(ino)], name, src_dir_fd=self._data_fd, dst_dir_fd=dfd)
            self.stats.files += 1
        elif ino.kind == "l":
            if ino.target is None or "\0" in ino.target:
                raise PathRefused("symlink without a valid target")
            os.symlink(ino.target, name, dir_fd=dfd)
        elif ino.kind == "p":
            os.mkfifo(name, 0o600, dir_fd=dfd)
        elif ino.kind == "s":
            os.mknod(name, stat.S_IFSOCK | 0o600, dir_fd=dfd)
        elif ino.kind in ("c", "b"):
            try:
                os.mknod(name, (stat.S_IFCHR if ino.kind == "c" else stat.S_IFBLK) | 0o600, ino.rdev, dir_fd=dfd)
            except PermissionError:
                if self.privileged:
                    raise
                self.notes.add("device node not created (needs root)", path)
                return
        placed[id(ino)] = path
        self._meta(path, ino)
        self._times(path, ino)

    def _meta(self, path: str, ino: Inode) -> None:
        dfd, name = self.tree.parent(path, allow_root=True)
        chown_noted(dfd, name, ino.uid, ino.gid, privileged=self.privileged, notes=self.notes, rel=path)
        if ino.kind not in ("l", "d"):  # directories: at the end, so they still take their entries
            if name is None:
                os.chmod(dfd, ino.mode)
            else:
                os.chmod(name, ino.mode, dir_fd=dfd)
        for xname, value in sorted(ino.xattrs.items()):
            setxattr_noted(self.tree.xattr_path(path), xname, bytes.fromhex(value), notes=self.notes, rel=path,
                           verb="not supported here")

    def _times(self, path: str, ino: Inode, *, allow_root: bool = False) -> None:
        if ino.mtime is None:
            return
        atime = ino.atime or ino.mtime
        times = (atime[0] * 1_000_000_000 + atime[1], ino.mtime[0] * 1_000_000_000 + ino.mtime[1])
        dfd, name = self.tree.parent(path, allow_root=allow_root)
        if name is None:
            os.utime(dfd, ns=times)
        else:
            os.utime(name, ns=times, dir_fd=dfd, follow_symlinks=False)

    def close(self) -> None:
        if getattr(self, "_data_fd", -1) >= 0:
            os.close(self._data_fd)
            self._data_fd = -1

