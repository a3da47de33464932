"""Reading a snapshot's file data ahead of ``btrfs send``, so that the send finds it in memory.

``btrfs send`` reads a file's data in the kernel, synchronously, extent after extent and file after
file: on a cold page cache it waits for the disk at a queue depth of one, and a push waits with it
(1 GiB, 5k files, two loopback disks on one virtio disk: ``btrfs send > /dev/null`` 3.4-4.3 s
cold, 1.7-1.9 s with this read-ahead; benchmarks/README.md).  No pipeline behind ``btrfs send``
can change that; btrsync can, because it knows what the send will read next:

``btrfs send --no-data`` of the same snapshot, parent and flags is the very stream without file
data, in the same order; each write is an UPDATE_EXTENT naming the file, the offset and the size
the real stream will carry there.  A thread walks that stream and asks the kernel to read each
range (``posix_fadvise(WILLNEED)``: asynchronous, many requests in flight), staying at most
``window`` bytes of stream ahead of what the push has read of the real send, so the page cache
holds what the send reads next and never fills with what it reads much later.  Where each range
lies in the real stream is the estimate's arithmetic (``ops/estimate.py``): the command's offset
in the metadata stream plus the data of the writes before it.

**Only regular files inside the snapshot are opened.**  Paths come from the stream, and names in a
snapshot are the user's: an incremental names files at temporary names (``o257-7-0``) that the
snapshot may hold as anything, a device node of a backed-up chroot among them.  Each path is
resolved beneath the snapshot's directory with ``openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS |
RESOLVE_NO_MAGICLINKS | RESOLVE_NO_XDEV)`` as an ``O_PATH`` handle (which opens nothing), and
opened for reading only when that handle is a regular file; the snapshot is read-only (btrfs
refuses to make it writable while a send runs), so what was checked cannot change.  Without
``openat2`` (a kernel before 5.6, a seccomp filter) there is no read-ahead.

**Compressed extents are left alone** when the send passes them compressed
(``--compressed-data``): it reads them raw from the disk, past the page cache, so reading them
into the cache would only double the reads.  ``FIEMAP`` tells which extents those are (ENCODED),
and which hold nothing on the disk to read (inline, preallocated, delayed).

Best effort: any failure ends the read-ahead with a debug line, never the push.  ``close`` stops
the thread and kills its ``btrfs send --no-data`` at once, whatever the push's outcome.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import logging
import os
import stat
import struct
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

from btrsync.btrfs.nodata import MetadataSend
from btrsync.btrfs.send import SendOptions
from btrsync.fdio import libc
from btrsync.sendstream.parser import StreamParser

log = logging.getLogger(__name__)

DEFAULT_WINDOW = 64 << 20  # bytes of stream read ahead of the send
POLL = 0.01  # seconds between looks at the send's position while the window is full
JOIN_TIMEOUT = 10.0  # seconds ``close`` waits for the thread

_SYS_OPENAT2 = 437  # the same number on every architecture (the unified table since Linux 5.1)
_RESOLVE = 0x01 | 0x02 | 0x04 | 0x08  # NO_XDEV | NO_MAGICLINKS | NO_SYMLINKS | BENEATH
_O_PATH = getattr(os, "O_PATH", 0o10000000)

_FS_IOC_FIEMAP = 0xC020660B  # _IOWR('f', 11, struct fiemap)
_FIEMAP = struct.Struct("=QQIIII")  # start, length, flags, mapped extents, extent count, reserved
_EXTENT = struct.Struct("=QQQ16xI12x")  # logical, physical, length, (reserved), flags, (reserved)
_EXTENTS_PER_CALL = 32
_LAST = 0x1
_NOTHING_TO_READ = 0x2 | 0x4 | 0x200 | 0x800  # UNKNOWN | DELALLOC | DATA_INLINE | UNWRITTEN
_ENCODED = 0x8


class _OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64), ("resolve", ctypes.c_uint64)]


class Unsupported(OSError):
    """``openat2`` is not available here: no read-ahead."""


def open_beneath(dirfd: int, path: str, flags: int) -> int:
    """``path`` opened beneath ``dirfd`` without following a symlink, crossing a mount or leaving
    the directory; ``OSError`` (``Unsupported`` without ``openat2``)."""
    how = _OpenHow(flags | os.O_CLOEXEC | os.O_NOFOLLOW, 0, _RESOLVE)
    fd = libc().syscall(ctypes.c_long(_SYS_OPENAT2), ctypes.c_long(dirfd), os.fsencode(path), ctypes.byref(how),
                        ctypes.c_size_t(ctypes.sizeof(how)))
    if fd < 0:
        err = ctypes.get_errno()
        if err in (errno.ENOSYS, errno.EPERM):  # EPERM: a seccomp filter that denies it
            raise Unsupported(err, f"openat2: {os.strerror(err)}")
        raise OSError(err, os.strerror(err), path)
    return int(fd)


def open_regular_beneath(dirfd: int, path: str) -> int | None:
    """A read-only descriptor of ``path`` beneath ``dirfd`` when it is a regular file, else None.
    Nothing else is ever opened for reading (that could be a device's open, or block on a FIFO)."""
    try:
        handle = open_beneath(dirfd, path, _O_PATH)
    except Unsupported:
        raise
    except OSError:
        return None  # not there (a temporary name of the stream), or beyond a symlink
    try:
        if not stat.S_ISREG(os.fstat(handle).st_mode):
            return None
        return open_beneath(dirfd, path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY)
    except Unsupported:
        raise
    except OSError:
        return None
    finally:
        os.close(handle)


def disk_ranges(fd: int, offset: int, length: int, *, skip_encoded: bool) -> Iterator[tuple[int, int]]:
    """The parts of ``[offset, offset + length)`` of ``fd`` whose data a read takes from the disk
    through the page cache: no holes, inline, preallocated or (``skip_encoded``) compressed
    extents.  ``OSError`` where the filesystem has no FIEMAP."""
    end = offset + length
    pos = offset
    while pos < end:
        buf = bytearray(_FIEMAP.size + _EXTENTS_PER_CALL * _EXTENT.size)
        _FIEMAP.pack_into(buf, 0, pos, end - pos, 0, 0, _EXTENTS_PER_CALL, 0)
        fcntl.ioctl(fd, _FS_IOC_FIEMAP, buf)
        mapped = _FIEMAP.unpack_from(buf, 0)[3]
        if not mapped:
            return
        for i in range(mapped):
            logical, _physical, size, flags = _EXTENT.unpack_from(buf, _FIEMAP.size + i * _EXTENT.size)
            start, stop = max(logical, pos), min(logical + size, end)
            if stop > start and not flags & _NOTHING_TO_READ and not (skip_encoded and flags & _ENCODED):
                yield start, stop - start
            if flags & _LAST or logical + size >= end:
                return
            pos = max(pos, logical + size)


class SendReadAhead:
    """``with SendReadAhead(snapshot, parent, options, position): ...`` beside the real send;
    ``position()`` says how many bytes of the real stream the push has read so far."""

    def __init__(self, snapshot: Path, parent: Path | None, options: SendOptions,
                 position: Callable[[], int], window: int = DEFAULT_WINDOW) -> None:
        self.snapshot, self.parent, self.options = snapshot, parent, options
        self.position, self.window = position, window
        self.requested = 0  # bytes asked for (WILLNEED)
        self.passed_over = 0  # bytes of writes not asked for: compressed, inline, holes, unopenable
        self._stop = threading.Event()
        self._meta: MetadataSend | None = None
        self._thread = threading.Thread(target=self._run, name="btrsync-readahead", daemon=True)

    def __enter__(self) -> SendReadAhead:
        if self.window > 0:
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._stop.set()
        meta = self._meta
        if meta is not None:
            meta.stop()
        if self._thread.is_alive():
            # bounded: a request stuck on a failing disk must not hold up the push's own ending
            self._thread.join(timeout=JOIN_TIMEOUT)
            if self._thread.is_alive():
                log.warning("the read-ahead of %s did not stop within %.0fs (a disk not answering?); "
                            "left behind", self.snapshot, JOIN_TIMEOUT)

    def _run(self) -> None:
        try:
            dirfd = os.open(self.snapshot, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as exc:
            log.debug("read-ahead of %s: %s", self.snapshot, exc)
            return
        try:
            self._walk(dirfd)
        except Exception as exc:  # noqa: BLE001 - a read-ahead never fails a push
            if not self._stop.is_set():
                log.debug("read-ahead of %s ended: %s", self.snapshot, exc)
        finally:
            os.close(dirfd)
        log.debug("read-ahead of %s: %d bytes asked for, %d passed over", self.snapshot, self.requested,
                  self.passed_over)

    def _walk(self, dirfd: int) -> None:
        current: tuple[str, int | None] | None = None
        try:
            for path, offset, length, at in self._extents():
                if not self._wait_for_room(at):
                    return
                if current is None or current[0] != path:
                    if current is not None and current[1] is not None:
                        os.close(current[1])
                    current = (path, open_regular_beneath(dirfd, path))
                fd = current[1]
                if fd is None:
                    self.passed_over += length
                    continue
                self._ask(fd, offset, length)
        finally:
            if current is not None and current[1] is not None:
                os.close(current[1])

    def _ask(self, fd: int, offset: int, length: int) -> None:
        asked = 0
        if self.options.compressed_data:
            for start, size in disk_ranges(fd, offset, length, skip_encoded=True):
                os.posix_fadvise(fd, start, size, os.POSIX_FADV_WILLNEED)
                asked += size
        else:
            os.posix_fadvise(fd, offset, length, os.POSIX_FADV_WILLNEED)
            asked = length
        self.requested += asked
        self.passed_over += length - asked

    def _wait_for_room(self, at: int) -> bool:
        """Until the range starting ``at`` bytes into the real stream is within the window; False
        once stopped."""
        while at > self.position() + self.window:
            if self._stop.wait(POLL):
                return False
        return not self._stop.is_set()

    def _extents(self) -> Iterator[tuple[str, int, int, int]]:
        """``(path, file offset, length, position in the real stream)`` of each write, in order."""
        parser = StreamParser()
        data_before = 0
        with MetadataSend(self.snapshot, self.parent, self.options) as meta:
            self._meta = meta
            if self._stop.is_set():  # closed while it started
                meta.stop()
            for chunk in meta.chunks(1 << 16):
                for ev in parser.feed(chunk):
                    if ev.cmd == "update_extent":
                        size = ev.attrs["size"]
                        yield ev.path, ev.attrs["file_offset"], size, ev.offset + data_before
                        data_before += size
                if self._stop.is_set():
                    raise _Stopped
            parser.finish()


class _Stopped(Exception):
    pass

