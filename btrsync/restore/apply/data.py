"""File data: WRITE, ENCODED_WRITE, CLONE, TRUNCATE, FALLOCATE, through one cached descriptor.

WRITE data is written where it says and nothing else, so holes stay holes (a full stream skips them
and sets the size with TRUNCATE); ENCODED_WRITE extents are decompressed
(:mod:`btrsync.restore.decompress`); CLONE copies the range with :func:`fsutil.copy_range`
(reflink where the filesystem can, ``copy_file_range`` otherwise, holes kept), from this snapshot
as the tree holds it now, or from the parent's bytes the pins keep (:mod:`.pins`).
"""

from __future__ import annotations

import errno
import os
from typing import Any

from btrsync.errors import DamageError
from btrsync.fdio import pwrite_all
from btrsync.restore import RestoreError, fsutil
from btrsync.restore.apply.pins import ParentPins
from btrsync.restore.apply.state import ApplyState
from btrsync.restore.apply.streambytes import StreamBytes
from btrsync.restore.decompress import NAMES as COMPRESSION_NAMES
from btrsync.restore.decompress import DecompressError, decompress

OPEN_DATA = os.O_RDWR


class FileData:
    """The data commands; the file they change is kept open until another file's turn (or a
    command that needs it closed: rename, unlink, rmdir, utimes)."""

    def __init__(self, state: ApplyState, pins: ParentPins) -> None:
        self.state = state
        self.pins = pins
        self.path: str | None = None  # the file open for writing
        self._fd = -1
        self._key: tuple[int, int] | None = None

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
        self._fd, self.path, self._key = -1, None, None

    def _file(self, path: str) -> int:
        """The (cached) read-write descriptor of regular file ``path``; preserves pinned ranges
        before the first change to a pinned inode."""
        if self.path == path:
            return self._fd
        self.close()
        fd, st = self.state.tree.open_file(path, OPEN_DATA)
        self._fd, self.path, self._key = fd, path, (st.st_dev, st.st_ino)
        self.pins.before_change(self._key, fd)
        return fd

    def write(self, ev: Any, window: StreamBytes) -> None:
        fd = self._file(ev.path)
        data = window.get(int(ev.attrs["data_offset"]), int(ev.attrs["data_len"]))
        self._pwrite(fd, data, int(ev.attrs["file_offset"]))

    def _pwrite(self, fd: int, data: bytes | memoryview, offset: int) -> None:
        self.state.stats.bytes_written += pwrite_all(fd, data, offset)

    def encoded_write(self, ev: Any, window: StreamBytes) -> None:
        a = ev.attrs
        if int(a.get("encryption", 0)) != 0:
            raise DamageError(f"backup {self.state.backup}: encoded_write {ev.path!r}: encrypted extents "
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

    def truncate(self, ev: Any, _w: StreamBytes) -> None:
        os.ftruncate(self._file(ev.path), int(ev.attrs["size"]))

    def fallocate(self, ev: Any, _w: StreamBytes) -> None:
        mode, offset, length = int(ev.attrs["fallocate_mode"]), int(ev.attrs["file_offset"]), int(ev.attrs["size"])
        fd = self._file(ev.path)
        if mode & fsutil.FALLOC_FL_PUNCH_HOLE:
            fsutil.punch(fd, offset, length, self.state.caps)
            return
        try:
            fsutil.fallocate(fd, mode, offset, length)
        except OSError as exc:
            if exc.errno not in (errno.EOPNOTSUPP, errno.ENOTSUP):
                raise
            if not mode & fsutil.FALLOC_FL_KEEP_SIZE and os.fstat(fd).st_size < offset + length:
                os.ftruncate(fd, offset + length)  # the size is what matters; the allocation is not
            self.state.notes.add("preallocation not supported by the filesystem", ev.path)

    def clone(self, ev: Any, _w: StreamBytes) -> None:
        a, state = ev.attrs, self.state
        dst = self._file(ev.path)
        src_uuid, src_path = str(a["clone_uuid"]), a["clone_path"]
        offset, length, at = int(a["clone_offset"]), int(a["clone_len"]), int(a["file_offset"])
        if src_uuid == state.expect_uuid:  # a file of this snapshot, as the tree holds it now
            if src_path == ev.path:
                fsutil.copy_range(dst, offset, dst, at, length, state.caps, same_file=True)
            else:
                src, st = state.tree.open_file(src_path, os.O_RDONLY)
                try:
                    same = (st.st_dev, st.st_ino) == self._key
                    fsutil.copy_range(src, offset, dst, at, length, state.caps, same_file=same)
                finally:
                    os.close(src)
        elif state.expect_parent is not None and src_uuid == state.expect_parent:
            pin = self.pins.get(src_path)
            if pin is None:
                raise RestoreError(f"clone from the parent's {src_path!r}, which the scan of this "
                                   "stream did not find")
            state.stats.parent_clones += 1
            src = os.open(pin.name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=self.pins.fd)
            try:
                fsutil.copy_range(src, offset, dst, at, length, state.caps)
            finally:
                os.close(src)
        else:
            raise DamageError(f"backup {state.backup}: clone {ev.path!r} from subvolume {src_uuid}, which "
                              "is neither this snapshot nor its parent (btrsync never sends with -c)")
        state.stats.bytes_cloned += length
