"""The commands that make, link, rename and remove names in the tree.

Every path goes through :class:`btrsync.restore.paths.Tree` (relative, no ``..``, nothing
followed); a name the stream gives that would leave the tree or go through a symlink raises
:class:`btrsync.restore.paths.PathRefused`. Renames and rmdirs move or drop what the link keeps per
directory (its times, the modes held back), so those follow the directory.
"""

from __future__ import annotations

import os
import stat
from typing import Any

from btrsync.restore.apply.data import FileData
from btrsync.restore.apply.state import ApplyState
from btrsync.restore.apply.streambytes import StreamBytes
from btrsync.restore.paths import PathRefused, Tree, split


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


class Names:
    def __init__(self, state: ApplyState, files: FileData) -> None:
        self.state = state
        self.files = files

    # -- creation -------------------------------------------------------------------------------
    def mkfile(self, ev: Any, _w: StreamBytes) -> None:
        dfd, name = self.state.tree.parent(ev.path)
        fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=dfd)
        os.close(fd)

    def mkdir(self, ev: Any, _w: StreamBytes) -> None:
        dfd, name = self.state.tree.parent(ev.path)
        os.mkdir(name, 0o700, dir_fd=dfd)

    def mknod(self, ev: Any, _w: StreamBytes) -> None:
        mode = int(ev.attrs["mode"])
        kind = stat.S_IFMT(mode)
        if kind not in (stat.S_IFCHR, stat.S_IFBLK, stat.S_IFIFO, stat.S_IFSOCK, stat.S_IFREG):
            raise PathRefused(f"mknod of file type {kind:o}")
        dfd, name = self.state.tree.parent(ev.path)
        try:
            os.mknod(name, kind | (mode & 0o7777), int(ev.attrs["rdev"]), dir_fd=dfd)
        except PermissionError:
            if self.state.privileged:
                raise
            self.state.notes.add("device node not created (needs root)", ev.path)

    def mkfifo(self, ev: Any, _w: StreamBytes) -> None:
        dfd, name = self.state.tree.parent(ev.path)
        os.mkfifo(name, 0o600, dir_fd=dfd)

    def mksock(self, ev: Any, _w: StreamBytes) -> None:
        dfd, name = self.state.tree.parent(ev.path)
        os.mknod(name, stat.S_IFSOCK | 0o600, dir_fd=dfd)

    def symlink(self, ev: Any, _w: StreamBytes) -> None:
        target = ev.attrs["path_link"]
        if "\0" in target:
            raise PathRefused("symlink target holds a NUL byte")
        dfd, name = self.state.tree.parent(ev.path)
        os.symlink(target, name, dir_fd=dfd)

    def link(self, ev: Any, _w: StreamBytes) -> None:
        with _TwoParents(self.state.tree, ev.attrs["path_link"], ev.path) as (sdfd, sname, ddfd, dname):
            os.link(sname, dname, src_dir_fd=sdfd, dst_dir_fd=ddfd, follow_symlinks=False)

    # -- namespace changes ----------------------------------------------------------------------
    def rename(self, ev: Any, _w: StreamBytes) -> None:
        src, dst = ev.path, ev.attrs["path_to"]
        tree = self.state.tree
        self.files.close()
        sparts, dparts = split(src), split(dst)
        tree.forget(src)
        tree.forget(dst)
        with _TwoParents(tree, src, dst) as (sdfd, sname, ddfd, dname):
            os.rename(sname, dname, src_dir_fd=sdfd, dst_dir_fd=ddfd)
        self.state.times.move(sparts, dparts)
        self.state.dir_modes.move(sparts, dparts)

    def unlink(self, ev: Any, _w: StreamBytes) -> None:
        self.files.close()
        dfd, name = self.state.tree.parent(ev.path)
        os.unlink(name, dir_fd=dfd)

    def rmdir(self, ev: Any, _w: StreamBytes) -> None:
        self.files.close()
        parts = split(ev.path)
        self.state.tree.forget(ev.path)
        dfd, name = self.state.tree.parent(ev.path)
        os.rmdir(name, dir_fd=dfd)
        self.state.times.detach(parts)
        self.state.dir_modes.detach(parts)
