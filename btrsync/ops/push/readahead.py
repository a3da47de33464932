"""Reading a snapshot's file data ahead of ``btrfs send``, so that the send finds it in memory.

``btrfs send`` reads a file's data in the kernel, synchronously, extent after extent and file after
file: on a cold page cache it waits for the disk at a queue depth of one, and a push waits with it
(1 GiB, 5k files, two loopback disks on one virtio disk: ``btrfs send > /dev/null`` 3.4-4.3 s
cold, 1.7-1.9 s with this read-ahead; benchmarks/README.md).  No pipeline behind ``btrfs send``
can change that; btrsync can, because it knows what the send will read next:

``btrfs send --no-data`` of the same snapshot, parent and flags is the very stream without file
data, in the same order; each write is an UPDATE_EXTENT naming the file, the offset and the length
the real stream will carry there.  A thread walks that stream and asks the kernel to read each
range (``posix_fadvise(WILLNEED)``: asynchronous, many requests in flight; the first ``SLICE``
bytes of each, which the send's own sequential read-ahead takes on from), at most ``window``
bytes of file data ahead of the real send.  Both sides are counted in the same unit, logical
file bytes (``ChangeStats.data_bytes`` of the push's stream watch: writes, encoded writes by
the file range they write, clones), so a ``--compressed-data`` stream, whose writes carry fewer bytes
than they stand for, keeps them in step.  The watch parses what the push has read, a bounded
queue behind it (``lag`` bytes at most); a range that may lie in that stretch is not asked for:
the send may have read it and (see below) dropped it already, and asking again would read it
twice, which measured as 8 % more reads of the source when the read-ahead fell behind.

**The page cache is left as the send would leave it.**  Since Linux 6.0 ``btrfs send`` drops the
pages it read of a file that had none cached when it came to it; a file read ahead has them, so
the send keeps them.  The read-ahead does the send's part instead: once the send has passed a
file of ``DROP_FROM`` (1 MiB) or more, its pages go (``POSIX_FADV_DONTNEED``, the file opened
again as before) if it had none cached when it was first opened here (``cachestat(2)``; on a
kernel without it, before 6.5, the file is taken as uncached).  Smaller files keep theirs, as
every send did before 6.0: clean pages, read once, the first the kernel reclaims; dropping them
costs as much per file as for a large one, and on a tree of small files that measured 10 %
slower.  ``[push] read_ahead = "0"`` leaves the cache to the send alone.  Descriptors are closed
as soon as the stream moves on to the next file; at most ``MAX_PENDING`` files wait for the send
to pass them, the read-ahead waits beyond.

**Only regular files of the snapshot are opened.**  Paths come from the stream, and names in a
snapshot are the user's: an incremental names files at temporary names (``o257-7-0``) that the
snapshot may hold as anything, a device node of a backed-up chroot among them.  Each path is
resolved beneath the snapshot's directory with ``openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS |
RESOLVE_NO_MAGICLINKS | RESOLVE_NO_XDEV)`` as an ``O_PATH`` handle (which opens nothing), and
opened for reading only when that handle is a regular file of the snapshot's own subvolume (not
of one nested in it); the descriptor opened is checked to be that same file.  Without ``openat2``
(a kernel before 5.6, a seccomp filter that denies it) there is no read-ahead.

**Compressed extents are left alone** when the send passes them compressed
(``--compressed-data``): it reads them raw from the disk, past the page cache, so reading them
into the cache would only double the reads.  ``FIEMAP`` tells which extents those are (ENCODED;
a partly referenced one, which the send decompresses after all, is left alone too), and which
hold nothing on the disk to read (holes, inline, preallocated).

Best effort: any failure ends the read-ahead with a debug line, never the push.  ``close`` stops
the thread and kills its ``btrfs send --no-data`` at once, whatever the push's outcome.
"""

from __future__ import annotations

import collections
import ctypes
import errno
import fcntl
import logging
import os
import stat
import struct
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from btrsync.btrfs.nodata import MetadataSend
from btrsync.btrfs.send import SendOptions
from btrsync.fdio import libc
from btrsync.sendstream.nodata import NoDataWalk, Write

log = logging.getLogger(__name__)

DEFAULT_WINDOW = 64 << 20  # bytes of file data read ahead of the send
SLICE = 4 << 20  # bytes per WILLNEED: btrfs's read-ahead size is at least 4 MiB, and one call reads no more
MAX_PENDING = 16384  # files read ahead that the send has not passed yet (a path each: <= 3 MiB)
DROP_FROM = 1 << 20  # files of this size or more have their pages dropped once the send passed them
BUFFER = 32768  # writes of the metadata stream read ahead of their use (~250 bytes each: <= 8 MiB)
POLL = 0.01  # seconds between looks at the send's position while the read-ahead waits for it
JOIN_TIMEOUT = 10.0  # seconds ``close`` waits for the thread

# syscall numbers of the unified table (x86_64, arm64, riscv, ...; not alpha or mips: no read-ahead there)
_SYS_OPENAT2 = 437
_SYS_CACHESTAT = 451
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


class _CachestatRange(ctypes.Structure):
    _fields_ = [("off", ctypes.c_uint64), ("len", ctypes.c_uint64)]


class _Cachestat(ctypes.Structure):
    _fields_ = [("nr_cache", ctypes.c_uint64), ("nr_dirty", ctypes.c_uint64), ("nr_writeback", ctypes.c_uint64),
                ("nr_evicted", ctypes.c_uint64), ("nr_recently_evicted", ctypes.c_uint64)]


class Unsupported(OSError):
    """``openat2`` is not available here: no read-ahead."""


def open_beneath(dirfd: int, path: str, flags: int) -> int:
    """``path`` opened beneath ``dirfd`` without following a symlink, crossing a mount or leaving
    the directory; ``OSError`` (whether ``openat2`` works at all, ``check_openat2`` tells)."""
    how = _OpenHow(flags | os.O_CLOEXEC | os.O_NOFOLLOW, 0, _RESOLVE)
    fd = libc().syscall(ctypes.c_long(_SYS_OPENAT2), ctypes.c_long(dirfd), os.fsencode(path), ctypes.byref(how),
                        ctypes.c_size_t(ctypes.sizeof(how)))
    if fd < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), path)
    return int(fd)


def check_openat2(dirfd: int) -> None:
    """``Unsupported`` unless ``openat2`` works here (a seccomp filter may answer EPERM or ENOSYS)."""
    try:
        os.close(open_beneath(dirfd, ".", _O_PATH))
    except OSError as exc:
        raise Unsupported(exc.errno, f"openat2: {exc.strerror}") from None


def open_regular_beneath(dirfd: int, path: str, device: int | None = None) -> int | None:
    """A read-only descriptor of ``path`` beneath ``dirfd`` when it is a regular file (on
    ``device``, when given: of that subvolume), else None.  Nothing else is ever opened for reading
    (that could be a device's open, or a FIFO's)."""
    try:
        handle = open_beneath(dirfd, path, _O_PATH)
    except OSError:
        return None  # not there (a temporary name of the stream), or beyond a symlink
    try:
        seen = os.fstat(handle)
        if not stat.S_ISREG(seen.st_mode) or (device is not None and seen.st_dev != device):
            return None
        fd = open_beneath(dirfd, path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY)
    except OSError:
        return None
    finally:
        os.close(handle)
    opened = os.fstat(fd)
    if (opened.st_dev, opened.st_ino) != (seen.st_dev, seen.st_ino):
        os.close(fd)
        return None
    return fd


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
        advanced = pos
        for i in range(mapped):
            logical, _physical, size, flags = _EXTENT.unpack_from(buf, _FIEMAP.size + i * _EXTENT.size)
            start, stop = max(logical, pos), min(logical + size, end)
            if stop > start and not flags & _NOTHING_TO_READ and not (skip_encoded and flags & _ENCODED):
                yield start, stop - start
            if flags & _LAST or logical + size >= end:
                return
            advanced = max(advanced, logical + size)
        if advanced <= pos:  # nothing mapped, or nothing past where it asked: done
            return
        pos = advanced


class _PageCache:
    """``cachestat(2)`` (Linux 6.5): whether a file has pages in the page cache."""

    supported = True

    @classmethod
    def holds(cls, fd: int) -> bool | None:
        """True or False; None where the kernel cannot tell."""
        if not cls.supported:
            return None
        rng, out = _CachestatRange(0, 0), _Cachestat()
        if libc().syscall(ctypes.c_long(_SYS_CACHESTAT), ctypes.c_long(fd), ctypes.byref(rng), ctypes.byref(out),
                          ctypes.c_long(0)) != 0:
            if ctypes.get_errno() in (errno.ENOSYS, errno.EPERM):
                cls.supported = False
            return None
        return out.nr_cache > 0


@dataclass(slots=True)
class _File:
    """A file the stream writes: its descriptor while it does; its pages dropped once the send has
    passed ``end`` (in file data bytes) if ``drop``."""

    path: str
    fd: int
    drop: bool  # it had no pages cached when first opened here
    end: int = 0
    asked: bool = False  # anything of it was asked for


class SendReadAhead:
    """``with SendReadAhead(snapshot, parent, options, position): ...`` beside the real send;
    ``position()`` says how many bytes of file data of the real stream the push has passed so far
    (``ChangeStats.data_bytes`` of its stream watch), ``lag`` how far the send may be ahead of
    that (what the push has read and the watch not parsed yet)."""

    def __init__(self, snapshot: Path, parent: Path | None, options: SendOptions,
                 position: Callable[[], int], window: int = DEFAULT_WINDOW, lag: int = 0,
                 on_sized: Callable[[int | None], None] | None = None) -> None:
        self.snapshot, self.parent, self.options = snapshot, parent, options
        self.position, self.window, self.lag, self.on_sized = position, window, lag, on_sized
        self._told = False
        self._told_lock = threading.Lock()
        self.requested = 0  # bytes asked for (WILLNEED)
        self.passed_over = 0  # bytes of writes not asked for: compressed, inline, holes, unopenable, passed
        self.dropped = 0  # files whose pages went once the send had passed them
        self.walked = threading.Event()  # the metadata stream was walked to its end
        self._stop = threading.Event()
        self._meta: MetadataSend | None = None
        self._pending: collections.deque[_File] = collections.deque()
        self._device = 0
        self._stream: _MetadataStream | None = None
        self._thread = threading.Thread(target=self._run, name="btrsync-readahead", daemon=True)

    def __enter__(self) -> SendReadAhead:
        if self.window <= 0:
            self._tell_size(None)
            return self
        try:
            self._thread.start()
        except RuntimeError as exc:  # no thread to be had: the push goes on without
            log.debug("no read-ahead of %s: %s", self.snapshot, exc)
            self._tell_size(None)
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
            log.debug("no read-ahead of %s: %s", self.snapshot, exc)
            self._tell_size(None)
            return
        try:
            check_openat2(dirfd)
            self._device = os.fstat(dirfd).st_dev
            self._walk(dirfd)
            if not self._stop.is_set():
                self.walked.set()
                self._wait_until_passed(dirfd)
        except Exception as exc:  # noqa: BLE001 - a read-ahead never fails a push
            if not self._stop.is_set():
                log.debug("read-ahead of %s ended: %s", self.snapshot, exc)
        finally:
            self._tell_size(None)  # when it ended before the measure (told already otherwise)
            self._release(dirfd, None)
            os.close(dirfd)
        log.debug("read-ahead of %s: %d bytes asked for, %d passed over, %d files dropped from the cache, "
                  "%.2f CPU s", self.snapshot, self.requested, self.passed_over, self.dropped, time.thread_time())

    def _walk(self, dirfd: int) -> None:
        with MetadataSend(self.snapshot, self.parent, self.options) as meta:
            self._meta = meta
            if self._stop.is_set():  # closed while it started
                meta.stop()
            self._stream = _MetadataStream(meta, self._stop, self._tell_size)
            self._request(dirfd, self._stream.extents())

    def _request(self, dirfd: int, extents: Iterator[Write]) -> None:
        current: _File | None = None  # the file the stream writes now
        try:
            for path, offset, length, at in extents:
                if current is None or path != current.path:
                    self._done_with(current)
                    current = self._open(dirfd, path)
                if current.fd < 0:
                    self.passed_over += length
                    continue
                for start, size in self._ranges(current.fd, offset, length):
                    slice_at = at + start - offset
                    if not self._room(dirfd, slice_at):
                        return
                    if self._behind(slice_at + size):
                        self.passed_over += size  # the send may have read it already
                        continue
                    os.posix_fadvise(current.fd, start, size, os.POSIX_FADV_WILLNEED)
                    self.requested += size
                    current.asked = True
                current.end = at + length
        finally:
            self._done_with(current)

    def _open(self, dirfd: int, path: str) -> _File:
        fd = open_regular_beneath(dirfd, path, self._device)
        if fd is None:
            return _File(path, -1, drop=False)
        # dropping a file's pages costs the same for 4 KiB as for 4 GiB (reopen, cachestat,
        # DONTNEED: ~20 us): done for large files, which hold most bytes, and not for the many
        # small ones, where it measured 10 % slower (the read-ahead fell behind the send)
        drop = os.fstat(fd).st_size >= DROP_FROM and not _PageCache.holds(fd)
        return _File(path, fd, drop=drop)

    def _done_with(self, file: _File | None) -> None:
        """The stream has moved on from ``file``: its descriptor goes; it waits for the send to
        pass it if anything of it was asked for."""
        if file is None or file.fd < 0:
            return
        os.close(file.fd)
        file.fd = -1
        if file.asked:
            self._pending.append(file)

    def _ranges(self, fd: int, offset: int, length: int) -> Iterator[tuple[int, int]]:
        """The start of each part of the write that is read from the disk through the page cache:
        ``SLICE`` bytes (one WILLNEED reads no more).  The send's own sequential read-ahead takes
        a longer extent on from there; asking for all of it measured slower (a request blocks
        once the device's queue is full, and the read-ahead falls behind the send)."""
        asked = 0
        found = (disk_ranges(fd, offset, length, skip_encoded=True) if self.options.compressed_data
                 else iter([(offset, length)]))
        for start, size in found:
            size = min(size, SLICE)
            asked += size
            yield start, size
        self.passed_over += length - asked

    def _behind(self, end: int) -> bool:
        """Data up to ``end`` may have been read by the send already (before it has read anything,
        nothing has)."""
        position = self.position()
        return end <= position + (self.lag if position else 0)

    def _room(self, dirfd: int, at: int) -> bool:
        """Wait until the data ``at`` bytes into the stream's file data is within the window of
        the send, and fewer than ``MAX_PENDING`` files wait for it; those the send has passed
        meanwhile are released.  False once stopped."""
        while True:
            position = self.position()
            self._release(dirfd, position)
            if at <= position + self.lag + self.window and len(self._pending) < MAX_PENDING:
                return not self._stop.is_set()
            if self._stream is not None and self._stream.read_on():
                continue  # the wait reads the metadata stream on (the estimate's measure sooner)
            if self._stop.wait(POLL):
                return False

    def _wait_until_passed(self, dirfd: int) -> None:
        """The metadata stream has ended: release the last files as the send passes them."""
        while self._pending:
            self._release(dirfd, self.position())
            if self._pending and self._stop.wait(POLL):
                return

    def _release(self, dirfd: int, position: int | None) -> None:
        """Forget the files the send has passed (all of them for None), dropping their pages where
        the read-ahead brought them in."""
        pending = self._pending
        while pending and (position is None or pending[0].end <= position):
            file = pending.popleft()
            if file.drop:
                fd = open_regular_beneath(dirfd, file.path, self._device)
                if fd is not None:
                    try:
                        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
                        self.dropped += 1
                    finally:
                        os.close(fd)

    def _tell_size(self, size: int | None) -> None:
        """Tell ``on_sized`` the metadata stream's measure (None: not known), once."""
        with self._told_lock:
            if self._told:
                return
            self._told = True
        if self.on_sized is not None:
            self.on_sized(size)


class _Stopped(Exception):
    pass


class _MetadataStream:
    """The ``--no-data`` stream's writes (``sendstream/nodata.py``), in order; clones count as file
    data (the stream watch counts them) but are not read.  Read ahead of their use up to ``BUFFER``
    writes (``read_on``, while the read-ahead waits for the send): one that fits is read whole
    early, and its measure (what ``ops/estimate.py`` would find with a walk of its own) is told; a
    longer one is read as its writes are used, and nothing (None) is told."""

    def __init__(self, meta: MetadataSend, stop: threading.Event, tell: Callable[[int | None], None]) -> None:
        self._chunks = meta.chunks(1 << 16)
        self._stop, self._tell = stop, tell
        self._walk = NoDataWalk()
        self.queue: collections.deque[Write] = collections.deque()
        self.ended = False

    def read_on(self) -> bool:
        """Read the next piece of the stream into the queue, if it has room; False when there
        was nothing to read (the end, or a full queue)."""
        if self.ended or len(self.queue) >= BUFFER:
            return False
        chunk = next(self._chunks, None)
        if chunk is None:
            self._walk.finish()
            self.ended = True
            self._tell(self._walk.size)
            return False
        self.queue.extend(self._walk.feed(chunk))
        if len(self.queue) >= BUFFER:
            self._tell(None)  # longer than the buffer: the estimate measures it itself
        if self._stop.is_set():
            raise _Stopped
        return True

    def extents(self) -> Iterator[Write]:
        while True:
            if self.queue:
                yield self.queue.popleft()
            elif not self.read_on() and not self.queue:
                return
