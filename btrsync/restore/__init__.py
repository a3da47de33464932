"""File-level restore without btrfs: apply send streams in user space (``apply``), confined to one
directory (``paths``); copy out of and roll back to local snapshots (``snapcopy``, ``rollback``)."""

from __future__ import annotations

from btrsync.errors import BtrsyncError


class RestoreError(BtrsyncError):
    """A restore could not be completed (an I/O error, or the destination is in the way)."""
