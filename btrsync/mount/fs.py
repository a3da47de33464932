"""The filesystem the kernel talks to: mfusepy's high-level API over libfuse3 (libfuse2 works too).

Read-only (mounted ``ro``: the kernel refuses every write before it reaches us), with the
kernel checking modes and owners (``default_permissions``) and taking our inode numbers
(``use_ino``).  Paths resolve through ``namespace.py``; contents come from ``content.py`` on
the first ``read`` or ``lseek`` of an open file, never on ``open`` or ``stat`` (``ls -l``,
``find`` and ``rsync``'s file list fetch nothing).  ``lseek`` answers ``SEEK_DATA``/``SEEK_HOLE``
from the rebuilt file, so ``cp --sparse`` and ``rsync -S`` keep holes.  Errors: a missing path
is ENOENT, a damaged file or a backup whose file index cannot be read EIO (logged once, with
what to do), nothing else of the mount is affected.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import itertools
import logging
import os
import threading
from dataclasses import dataclass, field
from typing import Any

from btrsync.mount.content import ContentCache
from btrsync.mount.extents import seek
from btrsync.mount.namespace import TYPE_BITS, Namespace, Place, Unavailable

log = logging.getLogger(__name__)


def load_binding() -> Any:
    """mfusepy, on libfuse3 where it is installed (mfusepy itself would take libfuse2 first)."""
    chosen = None
    if "FUSE_LIBRARY_PATH" not in os.environ and "FUSE_LIBRARY_NAME" not in os.environ:
        chosen = ctypes.util.find_library("fuse3")
        if chosen is not None:
            os.environ["FUSE_LIBRARY_PATH"] = chosen  # read once, when mfusepy is imported
    try:
        import mfusepy
    finally:
        # not inherited by the processes this one starts (hooks, a fusepy filesystem on libfuse2)
        if chosen is not None:
            os.environ.pop("FUSE_LIBRARY_PATH", None)
    return mfusepy


@dataclass
class _Open:
    place: Place
    fd: int = -1  # the cached content, once read
    lock: threading.Lock = field(default_factory=threading.Lock)


def operations(binding: Any, ns: Namespace, cache: ContentCache) -> Any:
    """An ``Operations`` object of ``binding`` (mfusepy) serving ``ns`` and ``cache``."""

    class BackupFS(binding.Operations):  # type: ignore[misc,name-defined]
        use_ns = True

        def __init__(self) -> None:
            self._handles: dict[int, _Open] = {}
            self._next = itertools.count(1)
            self._lock = threading.Lock()

        # -- names and attributes ---------------------------------------------------------
        def _place(self, path: str, *, entries: bool = False) -> Place:
            try:
                place = ns.locate(path, entries=entries)
            except Unavailable:
                raise OSError(errno.EIO, "the backup's file index cannot be read") from None
            if place is None:
                raise OSError(errno.ENOENT, path)
            return place

        def getattr(self, path: str, fh: int | None = None) -> dict[str, int]:
            if fh:
                handle = self._handles.get(fh)
                if handle is not None:
                    return ns.attrs(handle.place)
            return ns.attrs(self._place(path))

        def readdir(self, path: str, fh: int) -> Any:
            place = self._place(path, entries=True)
            if place.inode.kind != "d":
                raise OSError(errno.ENOTDIR, path)
            yield ".", {"st_mode": TYPE_BITS["d"], "st_ino": place.ino}, 0
            yield "..", {"st_mode": TYPE_BITS["d"]}, 0
            for name in place.names():
                child = place.child(name)
                if child is not None:
                    yield name, {"st_mode": TYPE_BITS.get(child.inode.kind, 0), "st_ino": child.ino}, 0

        def readlink(self, path: str) -> str:
            place = self._place(path)
            if place.inode.kind != "l" or place.inode.target is None:
                raise OSError(errno.EINVAL, path)
            return place.inode.target

        def getxattr(self, path: str, name: str, *args: Any) -> bytes:
            value = self._place(path).inode.xattrs.get(name)
            if value is None:
                raise OSError(errno.ENODATA, name)
            return bytes.fromhex(value)

        def listxattr(self, path: str) -> list[str]:
            return sorted(self._place(path).inode.xattrs)

        def statfs(self, path: str) -> dict[str, int]:
            return {"f_bsize": 4096, "f_frsize": 4096, "f_blocks": 0, "f_bfree": 0, "f_bavail": 0,
                    "f_files": 0, "f_ffree": 0, "f_namemax": 255}

        # -- contents ---------------------------------------------------------------------
        def open(self, path: str, flags: int) -> int:
            if flags & os.O_ACCMODE != os.O_RDONLY:
                raise OSError(errno.EROFS, path)
            place = self._place(path)
            if place.inode.kind != "f" or place.backup is None or place.tree is None:
                raise OSError(errno.EISDIR if place.inode.kind == "d" else errno.EACCES, path)
            with self._lock:
                fh = next(self._next)
                self._handles[fh] = _Open(place)
            return fh

        def _fd(self, fh: int) -> int:
            handle = self._handles.get(fh)
            if handle is None:
                raise OSError(errno.EBADF, "no such handle")
            with handle.lock:
                if handle.fd < 0:
                    place = handle.place
                    assert place.backup is not None and place.tree is not None
                    # the tree the inode is of, even when the namespace has dropped it since: a
                    # replay makes new inode objects, and the rebuild matches clone sources by object
                    handle.fd = cache.acquire(place.ino, place.backup, place.tree, place.inode)
                return handle.fd

        def read(self, path: str, size: int, offset: int, fh: int) -> bytes:
            fd = self._fd(fh)
            place = self._handles[fh].place
            cache.fill(place.ino, place.backup, place.tree, place.inode, offset, size)  # type: ignore[arg-type]
            return os.pread(fd, size, offset)

        def lseek(self, path: str, offset: int, whence: int, fh: int) -> int:
            fd = self._fd(fh)
            if cache.is_windowed(self._handles[fh].place.ino):  # not all there yet: the index knows
                return seek(self._handles[fh].place.inode, offset, whence)
            return os.lseek(fd, offset, whence)

        def release(self, path: str, fh: int) -> int:
            with self._lock:
                handle = self._handles.pop(fh, None)
            if handle is not None and handle.fd >= 0:
                os.close(handle.fd)
                cache.release(handle.place.ino)
            return 0

        def destroy(self, path: str) -> None:
            with self._lock:
                handles, self._handles = list(self._handles.values()), {}
            for handle in handles:
                if handle.fd >= 0:
                    os.close(handle.fd)
                    cache.release(handle.place.ino)

    return BackupFS()


def fuse_class(binding: Any) -> Any:
    """mfusepy's ``FUSE`` with libfuse3's ``lseek`` wired to ``Operations.lseek`` (mfusepy
    declares the callback but has no wrapper for it)."""

    class Fuse(binding.FUSE):  # type: ignore[misc,name-defined]
        def lseek(self, path: bytes | None, offset: int, whence: int, fip: Any) -> int:
            fh = fip.contents.fh
            return self.operations.lseek(None if path is None else path.decode(self.encoding, self.errors),
                                         offset, whence, fh)

    return Fuse
