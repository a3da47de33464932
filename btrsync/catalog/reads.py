"""Reading small objects whole, with a cap: what a target serves is input, never trusted.

Markers, leases, manifests, segment indexes and file-index parts are read whole into memory
(and authenticated after): a target that serves a 100 GB "manifest" (a hostile server, a sparse
file on a USB disk) would otherwise exhaust the memory of every command that lists it.  Each
kind has a size no btrsync object of it comes near; more is damage, found after ``limit + 1``
bytes, whatever the target's listing or ``stat`` said.  (The marker's and a lease's caps are
their modules' own: ``repository.MARKER_MAX_BYTES``, ``lease.MAX_LEASE_BYTES``.)
"""

from __future__ import annotations

from btrsync.errors import DamageError
from btrsync.targets.base import Target, read_head

# one chunk record is about 93 bytes; a chunk of zeros stores in about 200, so a 128 MiB segment
# of them holds some 670,000 records (60 MB of index), and segment_size may be set far larger;
# format 1 manifests held every record of the backup.  The caps bound memory, not the format.
MANIFEST_LIMIT = 1 << 30  # format 2: a few KiB
INDEX_LIMIT = 1 << 30
FILES_PART_LIMIT = (4 << 20) + (64 << 10)  # fileindex.store.PART_SIZE and its frame


def read_whole(target: Target, key: str, limit: int, what: str) -> bytes:
    """All of ``key``; ``DamageError`` once it holds more than ``limit`` bytes (nothing more is read)."""
    data = read_head(target, key, limit)
    if len(data) > limit:
        raise DamageError(f"{key} on {target.display_url} holds more than {limit} bytes, more than any "
                          f"btrsync {what} does: damaged, or not written by btrsync")
    return data
