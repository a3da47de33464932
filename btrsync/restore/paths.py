"""Confinement: every path a send stream names resolves inside one directory, and no symlink is
ever followed on the way.

A stream path is validated first (:func:`split`: relative, no NUL, no empty, ``.`` or ``..``
component), then resolved one component at a time from a directory descriptor of the restore
root with ``openat(..., O_DIRECTORY | O_NOFOLLOW)`` (:class:`Tree`). The last component is then
acted on with an ``*at`` call that does not follow it (``unlinkat``, ``renameat``, ``linkat``
without ``AT_SYMLINK_FOLLOW``, ``fchownat``/``utimensat`` with ``AT_SYMLINK_NOFOLLOW``, ...) or
opened with ``O_NOFOLLOW`` after ``fstatat`` says it is a regular file. So a symlink that the
stream itself created inside the root (``symlink evil -> /tmp/outside``) can be created, renamed
and removed, but nothing is ever written, read, created or changed *through* it.

Resolved directories are cached (descriptors, LRU); a rename or rmdir drops the cache entries at
and below both of its paths, so a cached descriptor always names what the path names now.
"""

from __future__ import annotations

import errno
import os
import stat
from collections import OrderedDict

DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
CACHE_SIZE = 256


class PathRefused(Exception):
    """A stream path that would leave the restore root or go through a symlink (hostile stream)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def split(path: object, *, allow_root: bool = False) -> list[str]:
    """The components of a stream path; ``[]`` is the root itself (only with ``allow_root``)."""
    if not isinstance(path, str):
        raise PathRefused(f"path is not a string: {path!r}")
    if "\0" in path:
        raise PathRefused("path holds a NUL byte")
    if path == "":
        if allow_root:
            return []
        raise PathRefused("empty path")
    if path.startswith("/"):
        raise PathRefused("absolute path")
    parts = path.split("/")
    for part in parts:
        if part in ("", ".", ".."):
            raise PathRefused(f"path component {part!r} (only plain names are allowed)")
        if len(part.encode("utf-8", "surrogateescape")) > 255:
            raise PathRefused("path component longer than 255 bytes")
    return parts


class Tree:
    """A directory tree rooted at one descriptor; all access goes through :meth:`parent`/:meth:`dir`."""

    def __init__(self, root_fd: int) -> None:
        self.root_fd = os.dup(root_fd)
        self._cache: OrderedDict[str, int] = OrderedDict()

    # -- resolution ---------------------------------------------------------------------------
    def dir(self, parts: list[str]) -> int:
        """A descriptor of the directory ``parts`` (borrowed: valid until the cache drops it)."""
        if not parts:
            return self.root_fd
        key = "/".join(parts)
        fd = self._cache.get(key)
        if fd is not None:
            self._cache.move_to_end(key)
            return fd
        parent = self.dir(parts[:-1])
        try:
            fd = os.open(parts[-1], DIR_FLAGS, dir_fd=parent)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise PathRefused(f"{key!r} is a symlink (never followed)") from None
            if exc.errno == errno.ENOTDIR:
                try:
                    st = os.stat(parts[-1], dir_fd=parent, follow_symlinks=False)
                except OSError:
                    raise exc from None
                if stat.S_ISLNK(st.st_mode):
                    raise PathRefused(f"{key!r} is a symlink (never followed)") from None
            raise
        self._cache[key] = fd
        if len(self._cache) > CACHE_SIZE:
            _old, old_fd = self._cache.popitem(last=False)
            os.close(old_fd)
        return fd

    def parent(self, path: str, *, allow_root: bool = False) -> tuple[int, str | None]:
        """``(directory descriptor, last component)``; ``(root descriptor, None)`` for the root."""
        parts = split(path, allow_root=allow_root)
        if not parts:
            return self.root_fd, None
        return self.dir(parts[:-1]), parts[-1]

    def lstat(self, path: str, *, allow_root: bool = False) -> os.stat_result:
        dfd, name = self.parent(path, allow_root=allow_root)
        if name is None:
            return os.fstat(dfd)
        return os.stat(name, dir_fd=dfd, follow_symlinks=False)

    def open_file(self, path: str, flags: int) -> tuple[int, os.stat_result]:
        """Open a *regular file* (never a symlink, fifo or device: nothing with side effects)."""
        dfd, name = self.parent(path)
        assert name is not None
        st = os.stat(name, dir_fd=dfd, follow_symlinks=False)
        if stat.S_ISLNK(st.st_mode):
            raise PathRefused(f"{path!r} is a symlink (never followed)")
        if not stat.S_ISREG(st.st_mode):
            raise PathRefused(f"{path!r} is not a regular file")
        fd = os.open(name, flags | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK | os.O_NOCTTY, dir_fd=dfd)
        try:
            st2 = os.fstat(fd)
            if (st2.st_dev, st2.st_ino) != (st.st_dev, st.st_ino) or not stat.S_ISREG(st2.st_mode):
                raise PathRefused(f"{path!r} changed while it was opened")
        except BaseException:
            os.close(fd)
            raise
        return fd, st2

    def xattr_path(self, path: str) -> str | int:
        """What to hand ``os.*xattr`` for ``path`` (with ``follow_symlinks=False``): the root's
        descriptor, or ``/proc/self/fd/<parent descriptor>/<name>``, which resolves the parent
        through its descriptor (no path walk) and does not follow the last component."""
        dfd, name = self.parent(path, allow_root=True)
        if name is None:
            return dfd
        return f"/proc/self/fd/{dfd}/{name}"

    # -- cache maintenance --------------------------------------------------------------------
    def forget(self, path: str) -> None:
        """Drop cached descriptors of ``path`` and everything below it (after rename/rmdir)."""
        if not self._cache:
            return
        prefix = path + "/"
        for key in [k for k in self._cache if k == path or k.startswith(prefix)]:
            os.close(self._cache.pop(key))

    def close(self) -> None:
        for fd in self._cache.values():
            os.close(fd)
        self._cache.clear()
        if self.root_fd >= 0:
            os.close(self.root_fd)
            self.root_fd = -1

    def __enter__(self) -> Tree:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
