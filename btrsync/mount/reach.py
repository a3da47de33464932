"""Whether the repository is still there, asked before a read failure is remembered as damage.

A USB disk unplugged under a directory target leaves its mount point: an empty directory where
every object is "not found", which the read path rightly calls damage (a missing segment, a
missing file index).  Remembered, it would fail that file or backup for the rest of the mount
although the disk comes back; so the mount first looks for the repository's marker: gone (or the
target failing), the failure is the target's, and the next read tries again.
"""

from __future__ import annotations

from btrsync.catalog import layout
from btrsync.catalog.repository import Repository
from btrsync.errors import BtrsyncError


def away(repo: Repository) -> str | None:
    """Why the repository cannot be reached now (its marker gone, the target failing), else None."""
    try:
        repo.target.stat(layout.REPO_MARKER)
    except BtrsyncError as exc:
        return (f"the repository at {repo.target.display_url} cannot be reached ({exc}): is its disk "
                "mounted, its server up?")
    return None
