"""Clean: remove what interrupted pushes and prunes left behind, never what a live push writes.

Leftovers are: data of backups that have no manifest (an interrupted push, or a prune that
crashed between deleting a manifest and its data), stale upload leases, and the target's own
leftovers (temporary files, unfinished multipart uploads).  Anything belonging to a backup whose
upload lease is live is kept.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from btrsync.catalog import layout
from btrsync.catalog.lease import lease_key, live_backup_ids, read_leases
from btrsync.catalog.repository import Repository

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class CleanItem:
    kind: str
    key: str
    size: int
    action: str  # "removed", "would remove", "kept: upload in progress"


@dataclass(slots=True)
class CleanResult:
    items: list[CleanItem] = field(default_factory=list)

    @property
    def freed(self) -> int:
        return sum(i.size for i in self.items if i.action in ("removed", "would remove"))


def _backup_of(key: str) -> str | None:
    return layout.backup_id_of_data_key(key)


def clean(repo: Repository, *, dry_run: bool = False) -> CleanResult:
    target = repo.target
    live = live_backup_ids(target)
    result = CleanResult()

    def handle(kind: str, key: str, size: int, remove: object) -> None:
        bid = _backup_of(key)
        if bid is not None and bid in live:
            result.items.append(CleanItem(kind, key, size, "kept: upload in progress"))
            return
        if not dry_run:
            remove()  # type: ignore[operator]
        result.items.append(CleanItem(kind, key, size, "would remove" if dry_run else "removed"))
        log.info("clean %s key=%s bytes=%d dry_run=%s", kind, key, size, dry_run)

    for obj in repo.orphaned_data():
        handle("orphaned data", obj.key, obj.size, lambda k=obj.key: target.delete(k))
    for leftover in target.leftovers():
        handle(leftover.kind, leftover.key, leftover.size, lambda lo=leftover: target.remove_leftover(lo))
    for lease in read_leases(target):
        if lease.backup_id not in live:
            key = lease_key(lease.backup_id)
            handle("stale lease", key, 0, lambda k=key: target.delete(k))
    return result
