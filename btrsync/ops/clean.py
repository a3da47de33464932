"""Clean: remove what interrupted pushes and prunes left behind, never what a live push writes.

Leftovers are: data of backups that have no manifest (an interrupted push, or a prune that
crashed between deleting a manifest and its data), stale upload leases, and the target's own
leftovers (temporary files, unfinished multipart uploads).  Anything belonging to a backup whose
upload lease is live is kept.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from datetime import UTC, datetime

from btrsync.audit import AuditLog
from btrsync.catalog import layout
from btrsync.catalog.lease import LeaseInfo, TargetClock, lease_key, read_lease, read_leases
from btrsync.catalog.repository import Repository
from btrsync.targets.base import Target
from btrsync.targets.errors import NotFound, ObjectLocked, TargetError

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


def _manifest_unreadable(target: Target, backup_id: str) -> str:
    """Why the absence of ``backup_id``'s manifest cannot be trusted ('' when it is truly absent)."""
    try:
        target.stat(layout.manifest_key(backup_id))
    except NotFound:
        return ""
    except TargetError as exc:
        return f"its manifest cannot be read ({exc})"
    return "its manifest appeared meanwhile"


def _backup_of(key: str) -> str | None:
    return layout.backup_id_of_data_key(key)


def _leased_now(target: Target, backup_id: str, clock: TargetClock) -> str | None:
    """Right before deleting a backup's data: why to keep it, if a push (of another host) that
    started since the leases were read, or resumed this very backup, holds a lease on it now."""
    try:
        lease = read_lease(target, lease_key(backup_id), clock=clock)
    except (TargetError, OSError) as exc:
        return f"kept: its upload lease cannot be read now ({exc}); the next clean decides"
    if lease is None:
        return None
    if not lease.valid:
        return _invalid_lease_keeps(lease)
    return "kept: upload in progress" if lease.is_live(datetime.now(UTC)) else None


def _taken_over(target: Target, stale: LeaseInfo, clock: TargetClock) -> str | None:
    """Right before deleting a stale lease: why not, if a push (a resume of that backup) has
    rewritten it since it was read.  Deleting its lease would leave its data unguarded."""
    try:
        now = read_lease(target, stale.key, clock=clock)
    except (TargetError, OSError) as exc:
        return f"kept: it cannot be read again now ({exc}); the next clean decides"
    if now is None:
        return "gone meanwhile"
    if now.token != stale.token or now.is_live(datetime.now(UTC)):
        return "kept: upload in progress"
    return None


def _invalid_lease_keeps(lease: LeaseInfo) -> str:
    """An upload lease this btrsync cannot parse (another version's, or damaged) may belong to a
    push that is running: its backup's data stays until the operator removes the lease."""
    key = lease.key or lease_key(lease.backup_id)
    return (f"kept: its upload lease {key} cannot be read ({lease.error}); a push of another btrsync "
            f"version may be running: if none is, delete {key} and run clean again")


def clean(repo: Repository, *, dry_run: bool = False, audit: AuditLog | None = None) -> CleanResult:
    """Remove leftovers; every listing it relies on fails closed, so an unreadable directory or a
    failed page is an error here, never an empty catalog whose data would all look orphaned."""
    target = repo.target
    where = target.display_url
    result = CleanResult()
    catalog = repo.catalog()
    # listings first, leases after: a push writes its lease before its first byte, so whatever the
    # listings show of a push that is running now is covered by a lease read after them
    orphans = repo.orphaned_data()
    leftovers = list(target.leftovers())
    now = datetime.now(UTC)
    clock = TargetClock(target)  # ages of leases on the target's clock, not their writers'
    leases = read_leases(target, now, clock)
    live = {lease.backup_id for lease in leases if lease.is_live(now)}
    invalid = {lease.backup_id: lease for lease in leases if not lease.valid}
    with_data = {_backup_of(obj.key) for obj in orphans} | {_backup_of(lo.key) for lo in leftovers}
    for d in catalog.damaged:
        result.items.append(CleanItem("damaged manifest", d.key, 0, "kept: " + d.advice(where)))

    def handle(kind: str, key: str, size: int, remove: Callable[[], None]) -> None:
        bid = _backup_of(key)
        if bid is not None:
            why = ("kept: upload in progress" if bid in live else
                   _invalid_lease_keeps(invalid[bid]) if bid in invalid else _leased_now(target, bid, clock))
            if why is not None:
                result.items.append(CleanItem(kind, key, size, why))
                return
        if not dry_run:
            try:
                with (audit.deletion("clean", target=where, kind=kind, key=key, bytes=size)
                      if audit is not None else nullcontext()):
                    remove()
            except ObjectLocked as exc:  # an orphan under S3 Object Lock: reported, not an error
                result.items.append(CleanItem(kind, key, size, f"kept: {exc}; a clean after that date removes it"))
                return
        result.items.append(CleanItem(kind, key, size, "would remove" if dry_run else "removed"))
        log.info("clean %s key=%s bytes=%d dry_run=%s", kind, key, size, dry_run)

    unreadable: dict[str, str] = {}
    for obj in orphans:
        bid = _backup_of(obj.key)
        if bid is not None and bid not in unreadable:
            unreadable[bid] = _manifest_unreadable(target, bid)
        if bid is not None and unreadable[bid]:  # e.g. a symlinked backups/<id>: not provably orphaned
            result.items.append(CleanItem("orphaned data?", obj.key, obj.size, f"kept: {unreadable[bid]}"))
            continue
        handle("orphaned data", obj.key, obj.size, lambda k=obj.key: target.delete(k))
    for leftover in leftovers:
        handle(leftover.kind, leftover.key, leftover.size, lambda lo=leftover: target.remove_leftover(lo))
    for lease in leases:
        if lease.backup_id in invalid and lease.backup_id in with_data:  # it keeps that data until the operator says
            result.items.append(CleanItem(f"invalid lease ({lease.error})", lease.key or lease_key(lease.backup_id),
                                          0, _invalid_lease_keeps(lease)))
            continue
        if lease.backup_id not in live:
            kind = "stale lease" if lease.valid else f"invalid lease ({lease.error})"
            key = lease.key or lease_key(lease.backup_id)
            if lease.valid and (why := _taken_over(target, lease, clock)):
                result.items.append(CleanItem(kind, key, 0, why))
                continue
            handle(kind, key, 0, lambda k=key: target.delete(k))
    return result
