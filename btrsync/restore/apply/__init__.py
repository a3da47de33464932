"""Apply btrfs send streams in user space, onto any filesystem, confined to one directory.

:class:`Applier` replays the commands of one backup chain (the full, then each incremental) into
one directory tree: the tree *is* the subvolume, and each incremental changes it in place, as
``btrfs receive`` changes its snapshot of the parent. Every path goes through
:class:`btrsync.restore.paths.Tree` (relative, no ``..``, nothing followed); a command that would
leave the tree or go through a symlink raises :class:`btrsync.errors.DamageError` naming the
command, its path and its byte offset.

One job per module: ``applier`` (the link loop, the stream's identity, the dispatch), ``names``
(make, link, rename, remove), ``data`` (writes, clones, truncate, fallocate), ``pins`` (the parent's
clone sources), ``metadata`` (modes, owners, times, xattrs, notes), ``streambytes`` (the chunk bytes
a command's data lives in), ``dirtimes`` (per-directory values that follow renames), ``state`` (what
they share).
"""

from __future__ import annotations

from btrsync.restore.apply.applier import Applier
from btrsync.restore.apply.pins import scan_parent_clones
from btrsync.restore.apply.state import LinkStats
from btrsync.restore.apply.streambytes import StreamBytes

__all__ = ["Applier", "LinkStats", "StreamBytes", "scan_parent_clones"]
