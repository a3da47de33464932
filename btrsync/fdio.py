"""Whole writes to file descriptors, and ``syncfs``.

``write(2)`` may write less than it was given: to a pipe or socket when a stop (Ctrl-Z, ``kill
-STOP``, a cgroup freeze, a debugger or profiler attaching) or a handled signal interrupts it
part-way, to a file when the disk fills up mid-write (the next call then fails).  Every write of
btrsync's data goes through these loops, so no byte is ever dropped silently.
"""

from __future__ import annotations

import ctypes
import functools
import os

Bytes = bytes | bytearray | memoryview


def write_all(fd: int, data: Bytes) -> int:
    """Write all of ``data`` at ``fd``'s position; returns its length."""
    view = memoryview(data).cast("B")
    total = len(view)
    while view:
        view = view[os.write(fd, view):]
    return total


def pwrite_all(fd: int, data: Bytes, offset: int) -> int:
    """Write all of ``data`` at ``offset``; returns its length."""
    view = memoryview(data).cast("B")
    total = len(view)
    while view:
        n = os.pwrite(fd, view, offset)
        view, offset = view[n:], offset + n
    return total


@functools.cache
def libc() -> ctypes.CDLL:
    """The C library, by its glibc soname: ``ctypes.util.find_library`` would run ``ldconfig -p``
    in a child process, a fork of this whole process at every command's start."""
    return ctypes.CDLL("libc.so.6", use_errno=True)


def syncfs(fd: int) -> None:
    """Flush the filesystem holding ``fd`` (what ``sync -f`` does).  Through a descriptor opened
    before the writes, it reports every writeback error since (errseq), which ``fsync`` of another
    file or a plain ``sync`` would not."""
    if libc().syncfs(fd) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
