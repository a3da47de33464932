"""Apply btrfs send streams in user space, onto any filesystem, confined to one directory.

:class:`Applier` replays the commands of one backup chain (the full, then each incremental) into
one directory tree: the tree *is* the subvolume, and each incremental changes it in place, as
``btrfs receive`` changes its snapshot of the parent. Every path goes through
:class:`btrsync.restore.paths.Tree` (relative, no ``..``, nothing followed); a command that would
leave the tree or go through a symlink raises :class:`btrsync.errors.DamageError` naming the
command, its path and its byte offset.

Data: WRITE data is written where it says and nothing else, so holes stay holes (a full stream
skips them and sets the size with TRUNCATE); ENCODED_WRITE extents are decompressed
(:mod:`btrsync.restore.decompress`); CLONE copies the range with :func:`fsutil.copy_range`
(reflink where the filesystem can, ``copy_file_range`` otherwise, holes kept).

Clones from the parent snapshot. In an incremental stream a CLONE whose ``clone_uuid`` is the
parent's names a path *of the parent* (btrfs receive opens the untouched parent subvolume). Here
the parent is the tree being changed, so before a link is applied its stream is scanned once
(:func:`scan_parent_clones`) and every such source is *pinned*: hard-linked into the work
directory while the tree still is the parent, so later renames and unlinks do not lose it; and
the first time the stream is about to change a pinned file's data, the byte ranges that the
clones need are copied aside first (:meth:`Applier._preserve`). Clones then read the parent's
bytes, whatever happened to the path since.

Times: a file's utimes is applied when it comes (btrfs send sends it after the file's data). A
directory's is applied too, and remembered (following renames) and applied again when the link
ends, since later entries created in the directory change its mtime. The top directory's times
are carried from link to link and applied at the end of every link: an incremental creates each
new inode under a temporary name there and renames it into place, and re-sends the top
directory's times only when they changed in the source (``btrfs receive`` leaves that mtime at
the time of the receive; this restore, like ``btrsync receive``, does not).

Not applied, noted instead (:class:`Notes`): owners and device nodes without privileges,
xattrs the destination filesystem refuses, FILEATTR (btrfs inode flags; the kernel does not send
it and btrfs receive ignores it), ENABLE_VERITY (needs fs-verity on the destination).
"""

from __future__ import annotations

import errno
import logging
import os
import stat
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from btrsync.errors import DamageError
from btrsync.fdio import pwrite_all
from btrsync.restore import RestoreError, fsutil
from btrsync.restore.decompress import NAMES as COMPRESSION_NAMES
from btrsync.restore.decompress import DecompressError, decompress
from btrsync.restore.meta import Notes, chown_noted, xattr_noted
from btrsync.restore.paths import PathRefused, Tree, split
from btrsync.sendstream.checker import check_parent_unchanged
from btrsync.sendstream.parser import StreamError, StreamParser

log = logging.getLogger(__name__)

OPEN_DATA = os.O_RDWR



# --------------------------------------------------------------------------------------------------
# the data of the chunk being applied


class StreamBytes:
    """The stream bytes a command's data may live in: the chunk just fed, and a carry of the bytes
    since the end of the last complete command (a command's data may begin in an earlier chunk)."""

    def __init__(self) -> None:
        self.carry = bytearray()
        self.carry_start = 0  # stream offset of carry[0]
        self.chunk: memoryview = memoryview(b"")
        self.chunk_start = 0

    def add(self, chunk: bytes) -> None:
        self.chunk_start = self.carry_start + len(self.carry)
        self.chunk = memoryview(chunk)

    def get(self, offset: int, length: int) -> bytes | memoryview:
        end = offset + length
        if offset >= self.chunk_start:
            lo = offset - self.chunk_start
            if end - self.chunk_start > len(self.chunk):
                raise DamageError(f"send stream data at byte {offset}+{length} is past the bytes read")
            return self.chunk[lo:lo + length]
        if offset < self.carry_start:
            raise DamageError(f"send stream data at byte {offset} was already released")
        head = self.carry[offset - self.carry_start:]
        if end <= self.chunk_start:
            return memoryview(head)[:length]
        return bytes(head) + self.chunk[:end - self.chunk_start]

    def consumed(self, upto: int) -> None:
        """Everything before stream offset ``upto`` is no longer needed."""
        fed_end = self.chunk_start + len(self.chunk)
        if upto >= self.chunk_start:
            self.carry = bytearray(self.chunk[upto - self.chunk_start:])
        else:
            del self.carry[:max(0, upto - self.carry_start)]
            self.carry += self.chunk
        self.carry_start = fed_end - len(self.carry)
        self.chunk = memoryview(b"")
        self.chunk_start = fed_end


# --------------------------------------------------------------------------------------------------
# pass 1 of an incremental: which parent files do its clones read?


def scan_parent_clones(chunks: Iterable[bytes], parent_uuid: str, where: str) -> dict[str, list[tuple[int, int]]]:
    """``{parent path: [(offset, length), ...]}`` of every CLONE from the parent snapshot."""
    parser = StreamParser()
    found: dict[str, list[tuple[int, int]]] = {}
    try:
        for chunk in chunks:
            for ev in parser.feed(chunk):
                if ev.cmd == "clone" and str(ev.attrs["clone_uuid"]) == parent_uuid:
                    found.setdefault(ev.attrs["clone_path"], []).append(
                        (int(ev.attrs["clone_offset"]), int(ev.attrs["clone_len"])))
        parser.finish()
    except StreamError as exc:
        raise DamageError(f"{where}: {exc}") from None
    return found


# --------------------------------------------------------------------------------------------------
# directory times, following renames


class _Node:
    __slots__ = ("children", "times")

    def __init__(self) -> None:
        self.children: dict[str, _Node] = {}
        self.times: Any = None  # the value kept for this path (times, or a mode)


class DirTimes:
    """The last utimes of each directory in this link, keyed by path, kept true across renames."""

    def __init__(self) -> None:
        self.root = _Node()

    def _walk(self, parts: list[str], create: bool) -> _Node | None:
        node = self.root
        for part in parts:
            nxt = node.children.get(part)
            if nxt is None:
                if not create:
                    return None
                nxt = node.children[part] = _Node()
            node = nxt
        return node

    def set(self, parts: list[str], times: Any) -> None:
        node = self._walk(parts, True)
        assert node is not None
        node.times = times

    def detach(self, parts: list[str]) -> _Node | None:
        if not parts:
            return None
        parent = self._walk(parts[:-1], False)
        return None if parent is None else parent.children.pop(parts[-1], None)

    def move(self, src: list[str], dst: list[str]) -> None:
        node = self.detach(src)
        self.detach(dst)
        if node is not None:
            parent = self._walk(dst[:-1], True)
            assert parent is not None
            parent.children[dst[-1]] = node

    def items(self) -> Iterable[tuple[list[str], Any]]:
        """Parents before their children."""
        stack: list[tuple[list[str], _Node]] = [([], self.root)]
        while stack:
            parts, node = stack.pop()
            if node.times is not None:
                yield parts, node.times
            for name, child in node.children.items():
                stack.append(([*parts, name], child))


# --------------------------------------------------------------------------------------------------
# the applier


@dataclass
class _Pin:
    path: str  # in the parent
    ranges: list[tuple[int, int]]
    name: str  # in the pins directory
    key: tuple[int, int] | None = None  # (st_dev, st_ino) of the pinned inode
    preserved: bool = False  # ``name`` now holds a copy of the ranges, not the inode itself


@dataclass
class LinkStats:
    commands: int = 0
    bytes_written: int = 0
    bytes_cloned: int = 0
    parent_clones: int = 0
    preserved_bytes: int = 0


class _TwoParents:
    """The parent directories of two paths, the first one's descriptor duplicated so that
    resolving the second cannot close it (the cache is bounded)."""

    def __init__(self, tree: Tree, first: str, second: str) -> None:
        self.tree, self.first, self.second = tree, first, second
        self.fd = -1

    def __enter__(self) -> tuple[int, str, int, str]:
        fd, name1 = self.tree.parent(self.first)
        self.fd = os.dup(fd)
        fd2, name2 = self.tree.parent(self.second)
        assert name1 is not None and name2 is not None
        return self.fd, name1, fd2, name2

    def __exit__(self, *exc: object) -> None:
        os.close(self.fd)


def _ns(ts: Any) -> int:
    sec, nsec = ts
    return int(sec) * 1_000_000_000 + int(nsec)


class Applier:
    """Applies the links of one chain, in order, to ``tree``; ``work_fd`` is a private directory
    on the same filesystem (pins and preserved ranges live there)."""

    def __init__(self, tree: Tree, work_fd: int, notes: Notes, *, privileged: bool | None = None) -> None:
        self.tree = tree
        self.work_fd = work_fd
        self.notes = notes
        self.privileged = os.geteuid() == 0 if privileged is None else privileged
        self.caps = fsutil.Caps()
        self.stream_uuid: str | None = None  # the uuid of the last link applied
        self._ctransid: Any = None  # the ctransid its stream named: what the next link must be sent on
        self._wpath: str | None = None
        self._wfd = -1
        self._wkey: tuple[int, int] | None = None
        self._pins: dict[str, _Pin] = {}
        self._pinned: dict[tuple[int, int], _Pin] = {}
        self._pins_fd = -1
        self._times = DirTimes()
        self._root_times: tuple[int, int] | None = None  # the top directory's, from the last link that sent them
        self._dir_modes = DirTimes()  # unprivileged: directory modes without u+rwx, set at the end
        self._where = ""
        self._link_index = 0
        self.stats = LinkStats()
        self._handlers: dict[str, Callable[[Any, StreamBytes], None]] = {
            "subvol": self._subvol, "snapshot": self._snapshot, "mkfile": self._mkfile,
            "mkdir": self._mkdir, "mknod": self._mknod, "mkfifo": self._mkfifo, "mksock": self._mksock,
            "symlink": self._symlink, "rename": self._rename, "link": self._link, "unlink": self._unlink,
            "rmdir": self._rmdir, "write": self._write, "clone": self._clone, "truncate": self._truncate,
            "chmod": self._chmod, "chown": self._chown, "utimes": self._utimes,
            "set_xattr": self._set_xattr, "remove_xattr": self._remove_xattr,
            "update_extent": self._nothing, "fallocate": self._fallocate, "fileattr": self._fileattr,
            "encoded_write": self._encoded_write, "enable_verity": self._enable_verity, "end": self._nothing,
        }

    # -- one link ---------------------------------------------------------------------------------
    def apply_link(self, chunks: Iterable[bytes], *, backup_id: str, snapshot_uuid: str,
                   parent_uuid: str | None, parent_clones: dict[str, list[tuple[int, int]]] | None = None,
                   on_chunk: Callable[[int], None] | None = None) -> LinkStats:
        """Apply one link's stream (the chunks in order, each already authenticated)."""
        self._backup = backup_id
        self._expect_uuid, self._expect_parent = snapshot_uuid, parent_uuid
        self._first = True
        self.stats = LinkStats()
        self._times = DirTimes()
        if self._root_times is not None:  # unchanged unless this link sends them: set again at its end
            self._times.set([], self._root_times)
        self._link_index += 1
        try:
            if parent_clones:
                self._pin(parent_clones)
            parser = StreamParser()
            window = StreamBytes()
            upto = 0
            for chunk in chunks:
                window.add(chunk)
                try:
                    events = parser.feed(chunk)
                except StreamError as exc:
                    raise DamageError(f"backup {backup_id}: {exc}") from None
                for ev in events:
                    self._apply(ev, window)
                if events:
                    upto = events[-1].offset + events[-1].size
                window.consumed(upto)
                if on_chunk is not None:
                    on_chunk(len(chunk))
            try:
                parser.finish()
            except StreamError as exc:
                raise DamageError(f"backup {backup_id}: {exc}") from None
            self._close_file()
            self._replay_dir_times()
        finally:
            self._close_file()
            self._unpin()
        self.stream_uuid = snapshot_uuid
        return self.stats

    def _apply(self, ev: Any, window: StreamBytes) -> None:
        self.stats.commands += 1
        where = f"backup {self._backup}: {ev.cmd} {ev.path!r} (command at byte {ev.offset})"
        if self._first and ev.cmd not in ("subvol", "snapshot"):
            raise DamageError(f"{where}: the stream does not start with subvol or snapshot")
        try:
            self._handlers[ev.cmd](ev, window)
        except PathRefused as exc:
            raise DamageError(f"{where} refused: {exc.reason}; the stream tries to reach outside the "
                              "restore directory or through a symlink (nothing was written outside it)") from None
        except DecompressError as exc:
            raise DamageError(f"{where}: cannot decompress the extent: {exc}") from None
        except EOFError as exc:
            raise DamageError(f"{where}: {exc}") from None
        except OSError as exc:
            raise RestoreError(f"{where} failed: {exc.strerror or exc}"
                               + (f" ({exc.filename})" if exc.filename else "")) from None

    # -- subvolume ------------------------------------------------------------------------------
    def _subvol(self, ev: Any, _w: StreamBytes) -> None:
        self._start(ev, incremental=False)

    def _snapshot(self, ev: Any, _w: StreamBytes) -> None:
        self._start(ev, incremental=True)

    def _start(self, ev: Any, *, incremental: bool) -> None:
        where = f"backup {self._backup}: {ev.cmd} {ev.path!r}"
        if not self._first:
            raise DamageError(f"{where}: a second subvol/snapshot command in one stream")
        self._first = False
        if str(ev.attrs["uuid"]) != self._expect_uuid:
            raise DamageError(f"{where}: the stream sends snapshot {ev.attrs['uuid']}, the manifest "
                              f"says {self._expect_uuid}")
        if incremental != (self._expect_parent is not None):
            raise DamageError(f"{where}: a {'incremental' if incremental else 'full'} stream where "
                              f"the manifest says {'incremental' if self._expect_parent else 'full'}")
        if incremental:
            parent = str(ev.attrs["clone_uuid"])
            if parent != self._expect_parent or parent != self.stream_uuid:
                raise DamageError(f"{where}: the stream's parent is {parent}, but the tree holds "
                                  f"{self.stream_uuid} (the manifest says {self._expect_parent})")
            check_parent_unchanged(where, ev.attrs.get("clone_ctransid"), self._ctransid)
        elif self.stream_uuid is not None:
            raise DamageError(f"{where}: a full stream in the middle of a chain")
        self._ctransid = ev.attrs.get("ctransid")

    # -- creation -------------------------------------------------------------------------------
    def _mkfile(self, ev: Any, _w: StreamBytes) -> None:
        dfd, name = self.tree.parent(ev.path)
        fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=dfd)
        os.close(fd)

    def _mkdir(self, ev: Any, _w: StreamBytes) -> None:
        dfd, name = self.tree.parent(ev.path)
        os.mkdir(name, 0o700, dir_fd=dfd)

    def _mknod(self, ev: Any, _w: StreamBytes) -> None:
        mode = int(ev.attrs["mode"])
        kind = stat.S_IFMT(mode)
        if kind not in (stat.S_IFCHR, stat.S_IFBLK, stat.S_IFIFO, stat.S_IFSOCK, stat.S_IFREG):
            raise PathRefused(f"mknod of file type {kind:o}")
        dfd, name = self.tree.parent(ev.path)
        try:
            os.mknod(name, kind | (mode & 0o7777), int(ev.attrs["rdev"]), dir_fd=dfd)
        except PermissionError:
            if self.privileged:
                raise
            self.notes.add("device node not created (needs root)", ev.path)

    def _mkfifo(self, ev: Any, _w: StreamBytes) -> None:
        dfd, name = self.tree.parent(ev.path)
        os.mkfifo(name, 0o600, dir_fd=dfd)

    def _mksock(self, ev: Any, _w: StreamBytes) -> None:
        dfd, name = self.tree.parent(ev.path)
        os.mknod(name, stat.S_IFSOCK | 0o600, dir_fd=dfd)

    def _symlink(self, ev: Any, _w: StreamBytes) -> None:
        target = ev.attrs["path_link"]
        if "\0" in target:
            raise PathRefused("symlink target holds a NUL byte")
        dfd, name = self.tree.parent(ev.path)
        os.symlink(target, name, dir_fd=dfd)

    def _link(self, ev: Any, _w: StreamBytes) -> None:
        with _TwoParents(self.tree, ev.attrs["path_link"], ev.path) as (sdfd, sname, ddfd, dname):
            os.link(sname, dname, src_dir_fd=sdfd, dst_dir_fd=ddfd, follow_symlinks=False)

    # -- namespace changes ----------------------------------------------------------------------
    def _rename(self, ev: Any, _w: StreamBytes) -> None:
        src, dst = ev.path, ev.attrs["path_to"]
        self._close_file()
        sparts, dparts = split(src), split(dst)
        self.tree.forget(src)
        self.tree.forget(dst)
        with _TwoParents(self.tree, src, dst) as (sdfd, sname, ddfd, dname):
            os.rename(sname, dname, src_dir_fd=sdfd, dst_dir_fd=ddfd)
        self._times.move(sparts, dparts)
        self._dir_modes.move(sparts, dparts)

    def _unlink(self, ev: Any, _w: StreamBytes) -> None:
        self._close_file()
        dfd, name = self.tree.parent(ev.path)
        os.unlink(name, dir_fd=dfd)

    def _rmdir(self, ev: Any, _w: StreamBytes) -> None:
        self._close_file()
        parts = split(ev.path)
        self.tree.forget(ev.path)
        dfd, name = self.tree.parent(ev.path)
        os.rmdir(name, dir_fd=dfd)
        self._times.detach(parts)
        self._dir_modes.detach(parts)

    # -- data -----------------------------------------------------------------------------------
    def _close_file(self) -> None:
        if self._wfd >= 0:
            os.close(self._wfd)
        self._wfd, self._wpath, self._wkey = -1, None, None

    def _file(self, path: str) -> int:
        """The (cached) read-write descriptor of regular file ``path``; preserves pinned ranges
        before the first change to a pinned inode."""
        if self._wpath == path:
            return self._wfd
        self._close_file()
        fd, st = self.tree.open_file(path, OPEN_DATA)
        self._wfd, self._wpath, self._wkey = fd, path, (st.st_dev, st.st_ino)
        pin = self._pinned.get(self._wkey)
        if pin is not None and not pin.preserved:
            self._preserve(pin, fd)
        return fd

    def _write(self, ev: Any, window: StreamBytes) -> None:
        fd = self._file(ev.path)
        data = window.get(int(ev.attrs["data_offset"]), int(ev.attrs["data_len"]))
        self._pwrite(fd, data, int(ev.attrs["file_offset"]))

    def _pwrite(self, fd: int, data: bytes | memoryview, offset: int) -> None:
        self.stats.bytes_written += pwrite_all(fd, data, offset)

    def _encoded_write(self, ev: Any, window: StreamBytes) -> None:
        a = ev.attrs
        if int(a.get("encryption", 0)) != 0:
            raise DamageError(f"backup {self._backup}: encoded_write {ev.path!r}: encrypted extents "
                              f"(encryption {a['encryption']}) cannot be decoded")
        kind = int(a.get("compression", 0))
        if kind not in COMPRESSION_NAMES:
            raise DecompressError(f"unknown compression type {kind}")
        unencoded_len, offset, length = int(a["unencoded_len"]), int(a["unencoded_offset"]), int(a["unencoded_file_len"])
        if offset + length > unencoded_len:
            raise DecompressError(f"unencoded range {offset}+{length} is beyond the extent's {unencoded_len} bytes")
        fd = self._file(ev.path)
        raw = window.get(int(a["data_offset"]), int(a["data_len"]))
        plain = decompress(kind, raw, unencoded_len)
        self._pwrite(fd, memoryview(plain)[offset:offset + length], int(a["file_offset"]))

    def _truncate(self, ev: Any, _w: StreamBytes) -> None:
        os.ftruncate(self._file(ev.path), int(ev.attrs["size"]))

    def _fallocate(self, ev: Any, _w: StreamBytes) -> None:
        mode, offset, length = int(ev.attrs["fallocate_mode"]), int(ev.attrs["file_offset"]), int(ev.attrs["size"])
        fd = self._file(ev.path)
        if mode & fsutil.FALLOC_FL_PUNCH_HOLE:
            fsutil.punch(fd, offset, length, self.caps)
            return
        try:
            fsutil.fallocate(fd, mode, offset, length)
        except OSError as exc:
            if exc.errno not in (errno.EOPNOTSUPP, errno.ENOTSUP):
                raise
            if not mode & fsutil.FALLOC_FL_KEEP_SIZE and os.fstat(fd).st_size < offset + length:
                os.ftruncate(fd, offset + length)  # the size is what matters; the allocation is not
            self.notes.add("preallocation not supported by the filesystem", ev.path)

    def _clone(self, ev: Any, _w: StreamBytes) -> None:
        a = ev.attrs
        dst = self._file(ev.path)
        src_uuid, src_path = str(a["clone_uuid"]), a["clone_path"]
        offset, length, at = int(a["clone_offset"]), int(a["clone_len"]), int(a["file_offset"])
        if src_uuid == self._expect_uuid:  # a file of this snapshot, as the tree holds it now
            if src_path == ev.path:
                fsutil.copy_range(dst, offset, dst, at, length, self.caps, same_file=True)
            else:
                src, st = self.tree.open_file(src_path, os.O_RDONLY)
                try:
                    same = (st.st_dev, st.st_ino) == self._wkey
                    fsutil.copy_range(src, offset, dst, at, length, self.caps, same_file=same)
                finally:
                    os.close(src)
        elif self._expect_parent is not None and src_uuid == self._expect_parent:
            pin = self._pins.get(src_path)
            if pin is None:
                raise RestoreError(f"clone from the parent's {src_path!r}, which the scan of this "
                                   "stream did not find")
            self.stats.parent_clones += 1
            src = os.open(pin.name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=self._pins_fd)
            try:
                fsutil.copy_range(src, offset, dst, at, length, self.caps)
            finally:
                os.close(src)
        else:
            raise DamageError(f"backup {self._backup}: clone {ev.path!r} from subvolume {src_uuid}, which "
                              "is neither this snapshot nor its parent (btrsync never sends with -c)")
        self.stats.bytes_cloned += length

    # -- parent clone sources -------------------------------------------------------------------
    def _pin(self, sources: dict[str, list[tuple[int, int]]]) -> None:
        name = f"pins-{self._link_index}"
        os.mkdir(name, 0o700, dir_fd=self.work_fd)
        self._pins_fd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC,
                                dir_fd=self.work_fd)
        for i, (path, ranges) in enumerate(sorted(sources.items())):
            pin = _Pin(path, sorted(ranges), f"p{i}")
            try:
                fd, st = self.tree.open_file(path, os.O_RDONLY)
            except PathRefused as exc:
                raise DamageError(f"backup {self._backup}: clone source {path!r} in the parent: {exc.reason}") from None
            except FileNotFoundError:
                raise RestoreError(f"backup {self._backup}: clone source {path!r} is missing from the "
                                   "restored parent") from None
            try:
                pin.key = (st.st_dev, st.st_ino)
                dfd, fname = self.tree.parent(path)
                try:
                    os.link(fname, pin.name, src_dir_fd=dfd, dst_dir_fd=self._pins_fd, follow_symlinks=False)
                except OSError as exc:
                    if exc.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.EMLINK):
                        raise
                    self._preserve(pin, fd)  # no hard links here: copy the ranges right away
            finally:
                os.close(fd)
            self._pins[path] = pin
            if not pin.preserved:
                self._pinned[pin.key] = pin

    def _preserve(self, pin: _Pin, src: int) -> None:
        """Copy the ranges clones need out of a pinned inode that is about to change."""
        copy = f"{pin.name}.ranges"
        dst = os.open(copy, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600,
                      dir_fd=self._pins_fd)
        try:
            size = os.fstat(src).st_size
            for offset, length in pin.ranges:
                length = max(0, min(length, size - offset))
                fsutil.copy_range(src, offset, dst, offset, length, self.caps)
                self.stats.preserved_bytes += length
            if os.fstat(dst).st_size < size:
                os.ftruncate(dst, size)
        finally:
            os.close(dst)
        if not pin.preserved and pin.key is not None:
            self._pinned.pop(pin.key, None)
            try:
                os.unlink(pin.name, dir_fd=self._pins_fd)
            except FileNotFoundError:
                pass
        pin.name, pin.preserved = copy, True

    def _unpin(self) -> None:
        if self._pins_fd >= 0:
            for entry in os.listdir(self._pins_fd):
                os.unlink(entry, dir_fd=self._pins_fd)
            os.close(self._pins_fd)
            os.rmdir(f"pins-{self._link_index}", dir_fd=self.work_fd)
        self._pins_fd = -1
        self._pins.clear()
        self._pinned.clear()

    # -- metadata -------------------------------------------------------------------------------
    def _chmod(self, ev: Any, _w: StreamBytes) -> None:
        mode = int(ev.attrs["mode"]) & 0o7777
        dfd, name = self.tree.parent(ev.path, allow_root=True)
        if name is None:
            if not self.privileged:
                self._dir_modes.set([], mode if mode & 0o700 != 0o700 else None)
                mode |= 0o700
            os.chmod(dfd, mode)
            return
        kind = stat.S_IFMT(os.stat(name, dir_fd=dfd, follow_symlinks=False).st_mode)
        if kind == stat.S_IFLNK:
            return  # a symlink has no mode of its own (btrfs send never sends this)
        if kind == stat.S_IFDIR and not self.privileged:
            # without CAP_DAC_OVERRIDE a read-only directory would refuse the entries later
            # commands make in it: keep it open to us until the whole chain is applied
            parts = split(ev.path)
            self._dir_modes.set(parts, mode if mode & 0o700 != 0o700 else None)
            mode |= 0o700
        os.chmod(name, mode, dir_fd=dfd)  # not a symlink: nothing to follow

    def _chown(self, ev: Any, _w: StreamBytes) -> None:
        dfd, name = self.tree.parent(ev.path, allow_root=True)
        chown_noted(dfd, name, int(ev.attrs["uid"]), int(ev.attrs["gid"]), privileged=self.privileged,
                    notes=self.notes, rel=ev.path)

    def _utimes(self, ev: Any, _w: StreamBytes) -> None:
        times = (_ns(ev.attrs["atime"]), _ns(ev.attrs["mtime"]))
        dfd, name = self.tree.parent(ev.path, allow_root=True)
        if name is None:
            os.utime(dfd, ns=times)
            self._times.set([], times)
            self._root_times = times
            return
        if self._wpath == ev.path:
            self._close_file()
        os.utime(name, ns=times, dir_fd=dfd, follow_symlinks=False)
        if stat.S_ISDIR(os.stat(name, dir_fd=dfd, follow_symlinks=False).st_mode):
            self._times.set(ev.path.split("/"), times)

    def finish(self) -> None:
        """After the last link: the directory modes held back for an unprivileged restore,
        deepest first (a parent without u+x would keep us out of its children)."""
        for parts, mode in reversed(list(self._dir_modes.items())):
            if mode is None:
                continue
            try:
                dfd, name = self.tree.parent("/".join(parts), allow_root=True)
                os.chmod(dfd if name is None else name, mode, **({} if name is None else {"dir_fd": dfd}))
            except (FileNotFoundError, NotADirectoryError):
                continue
        self._dir_modes = DirTimes()

    def _replay_dir_times(self) -> None:
        for parts, times in self._times.items():
            path = "/".join(parts)
            try:
                dfd, name = self.tree.parent(path, allow_root=True)
                if name is None:
                    os.utime(dfd, ns=times)
                else:
                    os.utime(name, ns=times, dir_fd=dfd, follow_symlinks=False)
            except (FileNotFoundError, NotADirectoryError):
                continue

    def _set_xattr(self, ev: Any, _w: StreamBytes) -> None:
        name, value = ev.attrs["xattr_name"], ev.attrs["xattr_data"]
        self._xattr(ev, lambda where: os.setxattr(where, name, value, follow_symlinks=isinstance(where, int)))

    def _remove_xattr(self, ev: Any, _w: StreamBytes) -> None:
        name = ev.attrs["xattr_name"]
        self._xattr(ev, lambda where: os.removexattr(where, name, follow_symlinks=isinstance(where, int)))

    def _xattr(self, ev: Any, action: Callable[[str | int], None]) -> None:
        name = ev.attrs["xattr_name"]
        if "\0" in name or not name:
            raise PathRefused("invalid xattr name")
        xattr_noted(action, self.tree.xattr_path(ev.path), name, notes=self.notes, rel=ev.path)

    def _fileattr(self, ev: Any, _w: StreamBytes) -> None:
        self.notes.add("fileattr ignored (btrfs inode flags; btrfs receive ignores them too)", ev.path or ".")

    def _enable_verity(self, ev: Any, _w: StreamBytes) -> None:
        self.notes.add("fs-verity not enabled (the data is restored, without verity)", ev.path)

    def _nothing(self, _ev: Any, _w: StreamBytes) -> None:
        return
