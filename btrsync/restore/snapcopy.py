"""Copy a tree out of a local snapshot with its metadata, confined on both sides.

Like ``cp -a --reflink=auto --sparse=always``, by descriptors: the source is walked from the
snapshot's root descriptor without following any symlink (a symlink is copied as a symlink), the
copy is made inside a private directory of the caller. Regular files are cloned (``FICLONE``)
when source and destination share a filesystem that can, else copied data segment by data
segment (``SEEK_DATA``/``SEEK_HOLE``: holes stay holes). Hard links among the copied files stay
hard links. Metadata per entry, in this order: owner, mode (after the owner: chown clears
set-id bits), xattrs (ACLs included), then times; a directory's once its contents are done.
Whatever the destination or the caller's privileges cannot hold is noted, not fatal.
"""

from __future__ import annotations

import errno
import os
import stat
from dataclasses import dataclass, field

from btrsync.restore import fsutil
from btrsync.restore.meta import Notes, chown_noted, setxattr_noted
from btrsync.restore.paths import DIR_FLAGS

MAX_LINK_GROUPS = 4096  # hard-linked inodes whose first copy's directory stays open
_SRC_FILE = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK | os.O_NOCTTY


@dataclass
class CopyStats:
    entries: int = 0
    files: int = 0
    bytes: int = 0
    hardlinks: int = 0
    caps: fsutil.Caps = field(default_factory=fsutil.Caps)


class Copier:
    def __init__(self, notes: Notes, *, privileged: bool | None = None) -> None:
        self.notes = notes
        self.privileged = os.geteuid() == 0 if privileged is None else privileged
        self.stats = CopyStats()
        self._links: dict[tuple[int, int], tuple[int, str]] = {}  # inode -> (dir fd dup, name) of its copy

    def close(self) -> None:
        for fd, _name in self._links.values():
            os.close(fd)
        self._links.clear()

    def placed(self, work_fd: int, name: str, dest_fd: int | None) -> None:
        """The copy ``work/name`` has moved to ``dest/name`` (``None``: it was dropped, the
        destination kept what it had): later hard links to it must find it there, or not at all.
        Entries below ``name`` moved with their directory and need nothing."""
        work = os.fstat(work_fd)
        for key, (fd, entry) in list(self._links.items()):
            st = os.fstat(fd)
            if entry != name or (st.st_dev, st.st_ino) != (work.st_dev, work.st_ino):
                continue
            os.close(fd)
            if dest_fd is None:
                del self._links[key]
            else:
                self._links[key] = (os.dup(dest_fd), name)

    # -- metadata -----------------------------------------------------------------------------
    def _xattrs_of(self, where: str | int) -> dict[str, bytes]:
        follow = isinstance(where, int)
        try:
            names = os.listxattr(where, follow_symlinks=follow)
        except OSError as exc:
            if exc.errno in (errno.EOPNOTSUPP, errno.ENOTSUP):
                return {}
            raise
        out = {}
        for name in names:
            try:
                out[name] = os.getxattr(where, name, follow_symlinks=follow)
            except OSError as exc:
                if exc.errno != errno.ENODATA:
                    raise
        return out

    def _meta(self, st: os.stat_result, xattrs: dict[str, bytes], *, fd: int | None = None,
              dir_fd: int | None = None, name: str | None = None, rel: str) -> None:
        """Owner, mode, xattrs, times of one copied entry (by descriptor, or by name in dir_fd)."""
        is_link = stat.S_ISLNK(st.st_mode)
        chown_noted(fd if fd is not None else dir_fd, None if fd is not None else name,  # type: ignore[arg-type]
                    st.st_uid, st.st_gid, privileged=self.privileged, notes=self.notes, rel=rel)
        if not is_link:
            if fd is not None:
                os.chmod(fd, stat.S_IMODE(st.st_mode))
            else:
                os.chmod(name, stat.S_IMODE(st.st_mode), dir_fd=dir_fd)  # just created, not a symlink
        where: str | int = fd if fd is not None else f"/proc/self/fd/{dir_fd}/{name}"
        for key, value in xattrs.items():
            setxattr_noted(where, key, value, notes=self.notes, rel=rel, verb="not copied")
        times = (st.st_atime_ns, st.st_mtime_ns)
        if fd is not None:
            os.utime(fd, ns=times)
        else:
            os.utime(name, ns=times, dir_fd=dir_fd, follow_symlinks=False)

    # -- entries ------------------------------------------------------------------------------
    def copy_entry(self, sdir: int, name: str, ddir: int, dname: str, rel: str) -> None:
        """Copy ``sdir/name`` (any type; a directory with everything below it) to ``ddir/dname``."""
        st = os.stat(name, dir_fd=sdir, follow_symlinks=False)
        if stat.S_ISDIR(st.st_mode):
            self._copy_dir(sdir, name, ddir, dname, rel, st)
        else:
            self._copy_leaf(sdir, name, ddir, dname, rel, st)

    def _copy_leaf(self, sdir: int, name: str, ddir: int, dname: str, rel: str, st: os.stat_result) -> None:
        self.stats.entries += 1
        mode = st.st_mode
        if stat.S_ISREG(mode):
            key = (st.st_dev, st.st_ino)
            if st.st_nlink > 1 and key in self._links:  # another name of a file copied already
                first_dir, first_name = self._links[key]
                os.link(first_name, dname, src_dir_fd=first_dir, dst_dir_fd=ddir, follow_symlinks=False)
                self.stats.hardlinks += 1
                return
            src = os.open(name, _SRC_FILE, dir_fd=sdir)
            try:
                if not stat.S_ISREG(os.fstat(src).st_mode):
                    raise OSError(errno.EINVAL, "changed type while copied", rel)
                dst = os.open(dname, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600,
                              dir_fd=ddir)
                try:
                    fsutil.copy_whole(src, dst, self.stats.caps)
                    self._meta(st, self._xattrs_of(src), fd=dst, rel=rel)
                finally:
                    os.close(dst)
            finally:
                os.close(src)
            self.stats.files += 1
            self.stats.bytes += st.st_size
            if st.st_nlink > 1:
                if len(self._links) < MAX_LINK_GROUPS:
                    self._links[key] = (os.dup(ddir), dname)
                else:
                    self.notes.add("hard link copied as a separate file (too many link groups)", rel)
            return
        if stat.S_ISLNK(mode):
            os.symlink(os.readlink(name, dir_fd=sdir), dname, dir_fd=ddir)
        elif stat.S_ISFIFO(mode):
            os.mkfifo(dname, 0o600, dir_fd=ddir)
        elif stat.S_ISSOCK(mode):
            os.mknod(dname, stat.S_IFSOCK | 0o600, dir_fd=ddir)
        elif stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
            try:
                os.mknod(dname, stat.S_IFMT(mode) | 0o600, st.st_rdev, dir_fd=ddir)
            except PermissionError:
                if self.privileged:
                    raise
                self.notes.add("device node not created (needs root)", rel)
                return
        else:
            self.notes.add("unknown file type not copied", rel)
            return
        self._meta(st, self._xattrs_of(f"/proc/self/fd/{sdir}/{name}"), dir_fd=ddir, name=dname, rel=rel)

    def _copy_dir(self, sdir: int, name: str, ddir: int, dname: str, rel: str, st: os.stat_result) -> None:
        """Iteratively: (source fd, destination fd, relative path, names left, stat)."""
        os.mkdir(dname, 0o700, dir_fd=ddir)
        self.stats.entries += 1
        stack = [(os.open(name, DIR_FLAGS, dir_fd=sdir), os.open(dname, DIR_FLAGS, dir_fd=ddir), rel, None, st)]
        try:
            while stack:
                sfd, dfd, drel, todo, dst_st = stack[-1]
                if todo is None:
                    todo = sorted(os.listdir(sfd), reverse=True)
                    stack[-1] = (sfd, dfd, drel, todo, dst_st)
                descended = False
                while todo:
                    child = todo.pop()
                    crel = f"{drel}/{child}" if drel else child
                    cst = os.stat(child, dir_fd=sfd, follow_symlinks=False)
                    if stat.S_ISDIR(cst.st_mode):
                        os.mkdir(child, 0o700, dir_fd=dfd)
                        self.stats.entries += 1
                        stack.append((os.open(child, DIR_FLAGS, dir_fd=sfd), os.open(child, DIR_FLAGS, dir_fd=dfd),
                                      crel, None, cst))
                        descended = True
                        break
                    self._copy_leaf(sfd, child, dfd, child, crel, cst)
                if descended:
                    continue
                stack.pop()
                try:
                    self._meta(dst_st, self._xattrs_of(sfd), fd=dfd, rel=drel or ".")
                finally:
                    os.close(sfd)
                    os.close(dfd)
        finally:
            for sfd, dfd, *_ in stack:
                os.close(sfd)
                os.close(dfd)
