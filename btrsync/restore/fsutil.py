"""Byte-range copies that keep holes and share extents where the filesystem can, and the few
syscalls Python does not wrap (``fallocate`` with a mode, ``FICLONE``/``FICLONERANGE``,
``renameat2``).

:func:`copy_range` tries, in order: a reflink (``FICLONERANGE``, when the ranges are block
aligned and the filesystem supports it), then ``copy_file_range`` per data segment of the source
(found with ``SEEK_DATA``/``SEEK_HOLE``, so holes stay holes), then ``pread``/``pwrite``. What
failed once with "not supported" on a filesystem is not tried again (:class:`Caps`).
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import functools
import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field

from btrsync.fdio import libc, pwrite_all

FICLONE = 0x40049409
FICLONERANGE = 0x4020940D
FALLOC_FL_KEEP_SIZE = 0x01
FALLOC_FL_PUNCH_HOLE = 0x02
RENAME_NOREPLACE = 1 << 0
RENAME_EXCHANGE = 1 << 1
AT_FDCWD = -100
BLOCK = 4096
IO_SIZE = 1 << 20

_UNSUPPORTED = {errno.EOPNOTSUPP, errno.ENOTTY, errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EBADF}


@functools.cache
def _libc() -> ctypes.CDLL:
    lib = libc()
    lib.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
    lib.fallocate.restype = ctypes.c_int
    return lib


#: errors a destination filesystem gives for metadata it cannot hold, or a user for privileges
METADATA_UNSUPPORTED = frozenset({errno.EOPNOTSUPP, errno.ENOTSUP, errno.EPERM, errno.EACCES, errno.E2BIG,
                                  errno.ERANGE})
_ROOM = 1 << 20  # free bytes below which an ENOSPC is a full disk, not an inode without xattr room


def metadata_unsupported(exc: OSError, where: str | int) -> bool:
    """Whether a failed metadata call (an xattr, an owner) at ``where`` means the destination cannot
    hold that metadata (a note), not that the restore failed.  ``ENOSPC`` is both: ext4 answers it
    when an inode has no room for one more xattr, and a full disk answers it too, which must fail
    the restore rather than end it "restored" with a note."""
    if exc.errno in METADATA_UNSUPPORTED:
        return True
    if exc.errno != errno.ENOSPC:
        return False
    try:
        # the directory holding it: ``where`` may name a symlink, which statvfs would follow
        st = os.fstatvfs(where) if isinstance(where, int) else os.statvfs(os.path.dirname(where) or ".")
    except OSError:
        return False
    return st.f_bavail * st.f_frsize > _ROOM


def fallocate(fd: int, mode: int, offset: int, length: int) -> None:
    if _libc().fallocate(fd, mode, offset, length) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def renameat2(src_dir: int, src: str, dst_dir: int, dst: str, flags: int) -> None:
    """``renameat2``; ``OSError(EINVAL/ENOSYS)`` where the kernel or filesystem lacks ``flags``."""
    lib = _libc()
    fn = getattr(lib, "renameat2", None)
    if fn is None:
        raise OSError(errno.ENOSYS, "renameat2 is not available")
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    if fn(src_dir, os.fsencode(src), dst_dir, os.fsencode(dst), flags) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), src)


@dataclass
class Caps:
    """What the destination filesystem turned out to support (learned on first failure)."""

    reflink: bool = True
    copy_file_range: bool = True
    punch_hole: bool = True
    reflinked: int = field(default=0)  # bytes shared rather than copied
    copied: int = field(default=0)


def data_segments(fd: int, start: int, end: int) -> Iterator[tuple[int, int, bool]]:
    """``(start, end, is_data)`` pieces covering ``[start, end)``, from SEEK_DATA/SEEK_HOLE
    (a filesystem without them reports everything as data)."""
    pos = start
    while pos < end:
        try:
            data = os.lseek(fd, pos, os.SEEK_DATA)
        except OSError as exc:
            if exc.errno == errno.ENXIO:  # only a hole (or EOF) remains
                yield pos, end, False
                return
            if exc.errno in (errno.EINVAL, errno.EOPNOTSUPP):
                yield pos, end, True
                return
            raise
        if data > pos:
            yield pos, min(data, end), False
            pos = min(data, end)
            if pos >= end:
                return
        hole = os.lseek(fd, pos, os.SEEK_HOLE)
        stop = min(hole, end)
        if stop <= pos:  # defensive: never loop forever on an odd filesystem
            yield pos, end, True
            return
        yield pos, stop, True
        pos = stop


def _reflink(src: int, src_off: int, dst: int, dst_off: int, length: int) -> None:
    fcntl.ioctl(dst, FICLONERANGE, struct.pack("=qQQQ", src, src_off, length, dst_off))


def _plain_copy(src: int, src_off: int, dst: int, dst_off: int, length: int, backwards: bool) -> int:
    """pread/pwrite in blocks; ``backwards`` for an overlapping copy to a higher offset in one file."""
    done = 0
    steps = list(range(0, length, IO_SIZE))
    for rel in reversed(steps) if backwards else steps:
        n = min(IO_SIZE, length - rel)
        buf = os.pread(src, n, src_off + rel)
        if len(buf) < n:
            raise EOFError(f"source ended {src_off + rel + len(buf)} bytes in, within the range")
        pwrite_all(dst, buf, dst_off + rel)
        done += n
    return done


def copy_data(src: int, src_off: int, dst: int, dst_off: int, length: int, caps: Caps,
              same_file: bool = False) -> None:
    """Copy ``length`` bytes (all data, no hole logic): copy_file_range, else pread/pwrite."""
    overlap = same_file and src_off < dst_off + length and dst_off < src_off + length
    if caps.copy_file_range and not overlap:
        done = 0
        try:
            while done < length:
                n = os.copy_file_range(src, dst, length - done, src_off + done, dst_off + done)
                if n == 0:
                    raise EOFError(f"source ended {src_off + done} bytes in, within the range")
                done += n
            caps.copied += length
            return
        except OSError as exc:
            if exc.errno not in _UNSUPPORTED:
                raise
            if exc.errno != errno.EINVAL:
                caps.copy_file_range = False
            src_off, dst_off, length = src_off + done, dst_off + done, length - done
    _plain_copy(src, src_off, dst, dst_off, length, backwards=overlap and dst_off > src_off)
    caps.copied += length


def punch(fd: int, offset: int, length: int, caps: Caps) -> None:
    """Make ``[offset, offset + length)`` read as zeros, as a hole where the filesystem can."""
    if length <= 0:
        return
    if caps.punch_hole:
        try:
            fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, offset, length)
            return
        except OSError as exc:
            if exc.errno not in _UNSUPPORTED:
                raise
            caps.punch_hole = False
    zeros = bytes(min(IO_SIZE, length))
    pos = 0
    while pos < length:
        n = min(len(zeros), length - pos)
        pwrite_all(fd, zeros[:n], offset + pos)
        pos += n


def copy_range(src: int, src_off: int, dst: int, dst_off: int, length: int, caps: Caps, *,
               same_file: bool = False) -> None:
    """What ``FICLONERANGE`` does (the destination's bytes in the range become the source's and
    the destination grows to the range's end), by the cheapest means the filesystem offers,
    keeping the source's holes as holes. A source shorter than the range raises ``EOFError``."""
    if length <= 0:
        return
    src_size = os.fstat(src).st_size
    if src_off + length > src_size:
        raise EOFError(f"the range {src_off}+{length} goes past the source's end ({src_size})")
    aligned = src_off % BLOCK == 0 and dst_off % BLOCK == 0 and (
        length % BLOCK == 0 or src_off + length == src_size)
    if caps.reflink and aligned and not same_file:
        try:
            _reflink(src, src_off, dst, dst_off, length)
            caps.reflinked += length
            return
        except OSError as exc:
            if exc.errno not in _UNSUPPORTED:
                raise
            if exc.errno != errno.EINVAL:
                caps.reflink = False
    dst_size = os.fstat(dst).st_size
    pieces = list(data_segments(src, src_off, src_off + length))
    if same_file and dst_off > src_off:
        pieces.reverse()
    for start, end, is_data in pieces:
        at = dst_off + (start - src_off)
        if is_data:
            copy_data(src, start, dst, at, end - start, caps, same_file=same_file)
        elif at < dst_size:
            punch(dst, at, min(end, src_off + length) - start, caps)
    if os.fstat(dst).st_size < dst_off + length:
        os.ftruncate(dst, dst_off + length)


def copy_whole(src: int, dst: int, caps: Caps, *, reflink: bool = True) -> None:
    """A sparse (and, on one filesystem with reflinks, shared) copy of all of ``src`` into the
    empty ``dst``: what ``cp --reflink=auto --sparse=always`` would do with holes the source has."""
    size = os.fstat(src).st_size
    if reflink and caps.reflink:
        try:
            fcntl.ioctl(dst, FICLONE, src)
            caps.reflinked += size
            return
        except OSError as exc:
            if exc.errno not in _UNSUPPORTED:
                raise
            caps.reflink = False
    for start, end, is_data in data_segments(src, 0, size):
        if is_data:
            copy_data(src, start, dst, start, end - start, caps)
    os.ftruncate(dst, size)
