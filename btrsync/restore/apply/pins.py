"""Clones from the parent snapshot: find their sources, and keep the parent's bytes for them.

In an incremental stream a CLONE whose ``clone_uuid`` is the parent's names a path *of the parent*
(btrfs receive opens the untouched parent subvolume). Here the parent is the tree being changed,
so before a link is applied its stream is scanned once (:func:`scan_parent_clones`) and every such
source is *pinned* (:class:`ParentPins`): hard-linked into the work directory while the tree still
is the parent, so later renames and unlinks do not lose it; and the first time the stream is about
to change a pinned file's data, the byte ranges that the clones need are copied aside first
(:meth:`ParentPins.preserve`). Clones then read the parent's bytes, whatever happened to the path
since.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Iterable
from dataclasses import dataclass

from btrsync.errors import DamageError
from btrsync.restore import RestoreError, fsutil
from btrsync.restore.apply.state import ApplyState
from btrsync.restore.paths import PathRefused
from btrsync.sendstream.parser import StreamError, StreamParser


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


@dataclass
class Pin:
    path: str  # in the parent
    ranges: list[tuple[int, int]]
    name: str  # in the pins directory
    key: tuple[int, int] | None = None  # (st_dev, st_ino) of the pinned inode
    preserved: bool = False  # ``name`` now holds a copy of the ranges, not the inode itself


class ParentPins:
    """The parent's clone sources of one link, in ``pins-<n>`` of the work directory."""

    def __init__(self, state: ApplyState) -> None:
        self.state = state
        self.fd = -1  # the pins directory of the link being applied
        self._dir = ""
        self._by_path: dict[str, Pin] = {}
        self._by_inode: dict[tuple[int, int], Pin] = {}  # pins still holding the inode itself

    def get(self, path: str) -> Pin | None:
        return self._by_path.get(path)

    def before_change(self, key: tuple[int, int], fd: int) -> None:
        """The inode ``key`` (open as ``fd``) is about to change: preserve what clones need of it."""
        pin = self._by_inode.get(key)
        if pin is not None and not pin.preserved:
            self.preserve(pin, fd)

    def pin(self, sources: dict[str, list[tuple[int, int]]], link_index: int) -> None:
        state = self.state
        self._dir = f"pins-{link_index}"
        os.mkdir(self._dir, 0o700, dir_fd=state.work_fd)
        self.fd = os.open(self._dir, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC,
                          dir_fd=state.work_fd)
        for i, (path, ranges) in enumerate(sorted(sources.items())):
            pin = Pin(path, sorted(ranges), f"p{i}")
            try:
                fd, st = state.tree.open_file(path, os.O_RDONLY)
            except PathRefused as exc:
                raise DamageError(f"backup {state.backup}: clone source {path!r} in the parent: {exc.reason}") from None
            except FileNotFoundError:
                raise RestoreError(f"backup {state.backup}: clone source {path!r} is missing from the "
                                   "restored parent") from None
            try:
                pin.key = (st.st_dev, st.st_ino)
                dfd, fname = state.tree.parent(path)
                try:
                    os.link(fname, pin.name, src_dir_fd=dfd, dst_dir_fd=self.fd, follow_symlinks=False)
                except OSError as exc:
                    if exc.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.EMLINK):
                        raise
                    self.preserve(pin, fd)  # no hard links here: copy the ranges right away
            finally:
                os.close(fd)
            self._by_path[path] = pin
            if not pin.preserved:
                self._by_inode[pin.key] = pin

    def preserve(self, pin: Pin, src: int) -> None:
        """Copy the ranges clones need out of a pinned inode that is about to change."""
        copy = f"{pin.name}.ranges"
        dst = os.open(copy, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600,
                      dir_fd=self.fd)
        try:
            size = os.fstat(src).st_size
            for offset, length in pin.ranges:
                length = max(0, min(length, size - offset))
                fsutil.copy_range(src, offset, dst, offset, length, self.state.caps)
                self.state.stats.preserved_bytes += length
            if os.fstat(dst).st_size < size:
                os.ftruncate(dst, size)
        finally:
            os.close(dst)
        if not pin.preserved and pin.key is not None:
            self._by_inode.pop(pin.key, None)
            try:
                os.unlink(pin.name, dir_fd=self.fd)
            except FileNotFoundError:
                pass
        pin.name, pin.preserved = copy, True

    def unpin(self) -> None:
        if self.fd >= 0:
            for entry in os.listdir(self.fd):
                os.unlink(entry, dir_fd=self.fd)
            os.close(self.fd)
            os.rmdir(self._dir, dir_fd=self.state.work_fd)
        self.fd = -1
        self._by_path.clear()
        self._by_inode.clear()
