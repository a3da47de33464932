"""Modes, owners, times and xattrs of the tree's entries, and what is noted instead of applied.

Times: a file's utimes is applied when it comes (btrfs send sends it after the file's data). A
directory's is applied too, and remembered (following renames) and applied again when the link
ends, since later entries created in the directory change its mtime. The top directory's times
are carried from link to link and applied at the end of every link: an incremental creates each
new inode under a temporary name there and renames it into place, and re-sends the top
directory's times only when they changed in the source (``btrfs receive`` leaves that mtime at
the time of the receive; this restore, like ``btrsync receive``, does not).

Without privileges a directory's mode lacking ``u+rwx`` is held back until the whole chain is
applied (:meth:`Metadata.finish`). Not applied, noted instead
(:class:`btrsync.restore.meta.Notes`): owners and device nodes without privileges, xattrs the
destination filesystem refuses, FILEATTR (btrfs inode flags; the kernel does not send it and
btrfs receive ignores it), ENABLE_VERITY (needs fs-verity on the destination).
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from typing import Any

from btrsync.restore.apply.data import FileData
from btrsync.restore.apply.dirtimes import DirTimes
from btrsync.restore.apply.state import ApplyState
from btrsync.restore.apply.streambytes import StreamBytes
from btrsync.restore.meta import chown_noted, xattr_noted
from btrsync.restore.paths import PathRefused, split


def _ns(ts: Any) -> int:
    sec, nsec = ts
    return int(sec) * 1_000_000_000 + int(nsec)


class Metadata:
    def __init__(self, state: ApplyState, files: FileData) -> None:
        self.state = state
        self.files = files
        self.root_times: tuple[int, int] | None = None  # the top directory's, from the last link that sent them

    def start_link(self) -> None:
        """A new link: its own directory times, the top directory's carried over (unchanged unless
        this link sends them, and set again at its end)."""
        self.state.times = DirTimes()
        if self.root_times is not None:
            self.state.times.set([], self.root_times)

    def chmod(self, ev: Any, _w: StreamBytes) -> None:
        state = self.state
        mode = int(ev.attrs["mode"]) & 0o7777
        dfd, name = state.tree.parent(ev.path, allow_root=True)
        if name is None:
            if not state.privileged:
                state.dir_modes.set([], mode if mode & 0o700 != 0o700 else None)
                mode |= 0o700
            os.chmod(dfd, mode)
            return
        kind = stat.S_IFMT(os.stat(name, dir_fd=dfd, follow_symlinks=False).st_mode)
        if kind == stat.S_IFLNK:
            return  # a symlink has no mode of its own (btrfs send never sends this)
        if kind == stat.S_IFDIR and not state.privileged:
            # without CAP_DAC_OVERRIDE a read-only directory would refuse the entries later
            # commands make in it: keep it open to us until the whole chain is applied
            parts = split(ev.path)
            state.dir_modes.set(parts, mode if mode & 0o700 != 0o700 else None)
            mode |= 0o700
        os.chmod(name, mode, dir_fd=dfd)  # not a symlink: nothing to follow

    def chown(self, ev: Any, _w: StreamBytes) -> None:
        dfd, name = self.state.tree.parent(ev.path, allow_root=True)
        chown_noted(dfd, name, int(ev.attrs["uid"]), int(ev.attrs["gid"]), privileged=self.state.privileged,
                    notes=self.state.notes, rel=ev.path)

    def utimes(self, ev: Any, _w: StreamBytes) -> None:
        times = (_ns(ev.attrs["atime"]), _ns(ev.attrs["mtime"]))
        dfd, name = self.state.tree.parent(ev.path, allow_root=True)
        if name is None:
            os.utime(dfd, ns=times)
            self.state.times.set([], times)
            self.root_times = times
            return
        if self.files.path == ev.path:
            self.files.close()
        os.utime(name, ns=times, dir_fd=dfd, follow_symlinks=False)
        if stat.S_ISDIR(os.stat(name, dir_fd=dfd, follow_symlinks=False).st_mode):
            self.state.times.set(ev.path.split("/"), times)

    def replay_dir_times(self) -> None:
        """At the end of a link: every directory's last times again, where it is now."""
        for parts, times in self.state.times.items():
            path = "/".join(parts)
            try:
                dfd, name = self.state.tree.parent(path, allow_root=True)
                if name is None:
                    os.utime(dfd, ns=times)
                else:
                    os.utime(name, ns=times, dir_fd=dfd, follow_symlinks=False)
            except (FileNotFoundError, NotADirectoryError):
                continue

    def finish(self) -> None:
        """After the last link: the directory modes held back for an unprivileged restore,
        deepest first (a parent without u+x would keep us out of its children)."""
        for parts, mode in reversed(list(self.state.dir_modes.items())):
            if mode is None:
                continue
            try:
                dfd, name = self.state.tree.parent("/".join(parts), allow_root=True)
                os.chmod(dfd if name is None else name, mode, **({} if name is None else {"dir_fd": dfd}))
            except (FileNotFoundError, NotADirectoryError):
                continue
        self.state.dir_modes = DirTimes()

    def set_xattr(self, ev: Any, _w: StreamBytes) -> None:
        name, value = ev.attrs["xattr_name"], ev.attrs["xattr_data"]
        self._xattr(ev, lambda where: os.setxattr(where, name, value, follow_symlinks=isinstance(where, int)))

    def remove_xattr(self, ev: Any, _w: StreamBytes) -> None:
        name = ev.attrs["xattr_name"]
        self._xattr(ev, lambda where: os.removexattr(where, name, follow_symlinks=isinstance(where, int)))

    def _xattr(self, ev: Any, action: Callable[[str | int], None]) -> None:
        name = ev.attrs["xattr_name"]
        if "\0" in name or not name:
            raise PathRefused("invalid xattr name")
        xattr_noted(action, self.state.tree.xattr_path(ev.path), name, notes=self.state.notes, rel=ev.path)

    def fileattr(self, ev: Any, _w: StreamBytes) -> None:
        self.state.notes.add("fileattr ignored (btrfs inode flags; btrfs receive ignores them too)", ev.path or ".")

    def enable_verity(self, ev: Any, _w: StreamBytes) -> None:
        self.state.notes.add("fs-verity not enabled (the data is restored, without verity)", ev.path)
