"""Which backups can be restored: every chain link resolved, checked and acyclic.

A backup is *restorable* when following ``parent_id`` from it reaches a full backup through
manifests that are present, authenticate, and whose snapshot uuid is the ``parent_uuid`` the child
recorded, without visiting a backup twice.  Anything else is *broken*, with the reason of the first
bad link.  Retention counts only restorable backups, ``list --check`` and ``prune`` report broken
ones, and ``receive`` refuses them with exit 4.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from btrsync.catalog.manifest import Manifest
from btrsync.errors import DamageError


@dataclass(frozen=True, slots=True)
class BrokenChain:
    backup_id: str
    reason: str


def walk_chain(by_id: Mapping[str, Manifest], last: Manifest, damaged: Iterable[str] = ()) -> list[Manifest]:
    """The links to replay for ``last``, full first; ``DamageError`` naming the first bad link."""
    damaged = set(damaged)
    chain = [last]
    seen = {last.backup_id}
    while chain[-1].parent_id is not None:
        child = chain[-1]
        pid = child.parent_id
        if pid in damaged:
            raise DamageError(f"backup {child.backup_id} needs parent {pid}, whose manifest is damaged: "
                              f"{last.backup_id} cannot be restored")
        parent = by_id.get(pid)  # type: ignore[arg-type]
        if parent is None:
            raise DamageError(f"backup {child.backup_id} needs parent {pid}, which is missing from the "
                              f"target: {last.backup_id} cannot be restored")
        if parent.snapshot_uuid != child.parent_uuid:
            raise DamageError(f"backup {child.backup_id}: parent {pid} has snapshot uuid "
                              f"{parent.snapshot_uuid}, the manifest expects {child.parent_uuid}")
        if parent.backup_id in seen:
            raise DamageError(f"backup {last.backup_id}: its chain loops back to {parent.backup_id}")
        seen.add(parent.backup_id)
        chain.append(parent)
    return chain[::-1]


def broken_chains(manifests: Iterable[Manifest], damaged: Iterable[str] = ()) -> dict[str, BrokenChain]:
    """Backup id -> why it cannot be restored, for every backup whose chain is broken."""
    by_id = {m.backup_id: m for m in manifests}
    damaged = set(damaged)
    broken: dict[str, BrokenChain] = {}
    for m in by_id.values():
        try:
            walk_chain(by_id, m, damaged)
        except DamageError as exc:
            broken[m.backup_id] = BrokenChain(m.backup_id, str(exc))
    return broken
