"""Metadata a restore may not be able to set, and the notes that say so.

Owners need root, and some filesystems hold no xattrs of a namespace (``security.*`` on tmpfs,
``user.*`` on vfat): every restore path (a stream applied by ``apply/``, selected paths by
``selective.py``, a snapshot copied by ``snapcopy.py``) sets them through these helpers, so what
could not be set becomes one note (a count and examples) instead of a failure, and a failure
that is not "not supported here" still fails.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from btrsync.restore import fsutil

NOTE_EXAMPLES = 3


@dataclass
class Notes:
    """What could not be applied on this filesystem or without privileges: counts and examples."""

    counts: dict[str, int] = field(default_factory=dict)
    examples: dict[str, list[str]] = field(default_factory=dict)

    def add(self, kind: str, example: str) -> None:
        self.counts[kind] = self.counts.get(kind, 0) + 1
        shown = self.examples.setdefault(kind, [])
        if len(shown) < NOTE_EXAMPLES:
            shown.append(example)

    def as_list(self) -> list[dict[str, Any]]:
        return [{"kind": k, "count": n, "examples": self.examples.get(k, [])} for k, n in sorted(self.counts.items())]

    def lines(self) -> list[str]:
        return [f"{n} × {k} (e.g. {', '.join(self.examples.get(k, []))})" for k, n in sorted(self.counts.items())]


def chown_noted(dfd: int, name: str | None, uid: int, gid: int, *, privileged: bool, notes: Notes,
                rel: str) -> None:
    """The owner of ``dfd/name`` (of ``dfd`` itself where ``name`` is None), never following a
    symlink; refused without root, it is a note (``rel`` names it), with root an error."""
    try:
        if name is None:
            os.chown(dfd, uid, gid)
        else:
            os.chown(name, uid, gid, dir_fd=dfd, follow_symlinks=False)
    except PermissionError:
        if privileged:
            raise
        notes.add("owner not set (needs root)", rel or ".")


def xattr_noted(action: Callable[[str | int], None], where: str | int, name: str, *, notes: Notes, rel: str,
                verb: str | None = None) -> None:
    """``action(where)`` (a set or remove of xattr ``name``); where the filesystem or the
    privileges do not allow it, a note ``<namespace>.* xattr <verb> (<why>)``.  Without a
    ``verb``: "not permitted here" or "not supported here", as the error says."""
    try:
        action(where)
    except OSError as exc:
        if not fsutil.metadata_unsupported(exc, where):
            raise
        if verb is None:
            verb = ("not permitted" if exc.errno in (errno.EPERM, errno.EACCES) else "not supported") + " here"
        notes.add(f"{name.split('.', 1)[0]}.* xattr {verb} ({exc.strerror})", f"{rel or '.'}: {name}")


def setxattr_noted(where: str | int, name: str, value: bytes, *, notes: Notes, rel: str,
                   verb: str | None = None) -> None:
    """``setxattr`` of ``name`` on ``where`` (a path: not followed; a descriptor), as ``xattr_noted``."""
    xattr_noted(lambda w: os.setxattr(w, name, value, follow_symlinks=isinstance(w, int)), where, name,
                notes=notes, rel=rel, verb=verb)
