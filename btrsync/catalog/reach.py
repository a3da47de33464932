"""Whether the repository is still there, asked before a read failure is taken for damage.

A USB disk unplugged under a directory target leaves its mount point: an empty directory where
every object is "not found", which the read path rightly calls damage (a missing segment, a
missing file index).  Remembered by the mount, it would fail that file or backup for the rest of
the mount although the disk comes back; reported by a copy, it would send the operator to look
for damage that is not there.  So both first look for the repository's marker: gone (or the
target failing), the failure is the target's, and the next attempt tries again.
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


def removed(repo: Repository, backup_id: str) -> str | None:
    """Why ``backup_id``'s objects are missing when its manifest is gone too (a prune or delete
    since it was listed: not damage), else None."""
    try:
        if repo.has_manifest(backup_id):
            return None
    except BtrsyncError:
        return None
    return (f"backup {backup_id} was removed from {repo.target.display_url} (by a prune or delete) after "
            "it was listed")
