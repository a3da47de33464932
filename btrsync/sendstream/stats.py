"""What a send stream changes, computed from parser events as the stream passes (no extra pass
over the filesystem): ``ChangeStats``, counters per kind of change (created, deleted, renamed,
linked, metadata changes, data bytes written); constant memory, for every backup; ``list`` shows
them.  The tree a full stream builds is summarised by ``fileindex/summary.py``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

_CREATES = frozenset({"mknod", "mkfifo", "mksock", "symlink", "mkfile"})
_METADATA = {"chmod", "chown", "utimes", "set_xattr", "remove_xattr", "truncate", "fileattr", "fallocate",
             "enable_verity"}


@dataclass(slots=True)
class ChangeStats:
    created: int = 0  # files, symlinks, device nodes, fifos, sockets
    dirs_created: int = 0
    deleted: int = 0  # unlink and rmdir
    renamed: int = 0
    linked: int = 0  # hard links added
    metadata: int = 0  # chmod, chown, utimes, xattrs, truncate, ...
    data_bytes: int = 0  # file bytes written or cloned (logical, before compression)

    def add(self, ev: Any) -> None:
        cmd, attrs = ev.cmd, ev.attrs
        if cmd == "mkdir":
            self.dirs_created += 1
        elif cmd in _CREATES:
            self.created += 1
        elif cmd in ("unlink", "rmdir"):
            self.deleted += 1
        elif cmd == "rename":
            self.renamed += 1
        elif cmd == "link":
            self.linked += 1
        elif cmd in _METADATA:
            self.metadata += 1
        elif cmd == "write":
            self.data_bytes += int(attrs.get("data_len", 0))
        elif cmd == "encoded_write":
            # the file range written (a write of part of a compressed extent carries all of it)
            self.data_bytes += int(attrs.get("unencoded_file_len", attrs.get("data_len", 0)))
        elif cmd == "clone":
            self.data_bytes += int(attrs.get("clone_len", 0))

    def as_dict(self) -> dict[str, int]:
        return {"created": self.created, "dirs_created": self.dirs_created, "deleted": self.deleted,
                "renamed": self.renamed, "linked": self.linked, "metadata": self.metadata,
                "data_bytes": self.data_bytes}
