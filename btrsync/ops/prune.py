"""Prune: apply retention to a target's backups or to local snapshots, chain-safely, with reasons.

Backups: per subvolume, ``retention.decide`` over (id, snapshot time, parent id); parents of kept
backups and of uploads in progress are kept; deletions run children first, each manifest before
its data, so a crash at any point leaves no manifest pointing at missing data (only orphans that
``clean`` removes).  Local snapshots: the newest snapshot each target also holds, and every newer
one that target has not received yet, are protected.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from btrsync.audit import AuditLog
from btrsync.catalog.lease import live_leases
from btrsync.catalog.manifest import Manifest
from btrsync.catalog.repository import Repository
from btrsync.retention import Decision, Item, Policy, decide, deletion_order
from btrsync.snapshots.store import Snapshot, delete_snapshot, list_snapshots

log = logging.getLogger(__name__)

PolicyFor = Callable[[str], Policy | None]  # subvolume name -> policy (None: keep everything)


@dataclass(frozen=True, slots=True)
class PruneDecision:
    id: str
    snapshot: str
    subvolume: str
    created: datetime
    action: str
    reasons: tuple[str, ...]
    bytes: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {"id": self.id, "snapshot": self.snapshot, "subvolume": self.subvolume,
                "created": self.created.isoformat().replace("+00:00", "Z"), "action": self.action,
                "reasons": list(self.reasons), "bytes": self.bytes}


@dataclass(slots=True)
class PruneResult:
    where: str
    dry_run: bool
    decisions: list[PruneDecision] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)

    @property
    def freed(self) -> int:
        gone = set(self.deleted)
        return sum(d.bytes for d in self.decisions if d.id in gone)


def _decide(items: list[Item], policy: Policy | None, now: datetime,
            protected: Mapping[str, str]) -> list[Decision]:
    if policy is None:
        return [Decision(i.id, i.time, "keep", (protected.get(i.id) or "no policy",)) for i in items]
    return decide(items, policy, now, protected=protected)


def prune_backups(repo: Repository, policy_for: PolicyFor, now: datetime, *, dry_run: bool,
                  audit: AuditLog | None, policy_text: Callable[[str], str] = str) -> PruneResult:
    manifests = repo.manifests()
    protected = {lease.parent_id: "parent of an upload in progress"
                 for lease in live_leases(repo.target) if lease.parent_id}
    result = PruneResult(repo.target.display_url, dry_run)
    by_id = {m.backup_id: m for m in manifests}
    for subvolume in sorted({m.subvolume for m in manifests}):
        group = [m for m in manifests if m.subvolume == subvolume]
        items = [Item(m.backup_id, m.snapshot_time, m.parent_id) for m in group]
        policy = policy_for(subvolume)
        decisions = _decide(items, policy, now, protected)
        decided = {d.id: d for d in decisions}
        result.decisions += [_backup_decision(d, by_id[d.id]) for d in decisions]
        for backup_id in deletion_order(decisions, items):
            _delete_backup(repo, by_id[backup_id], result, dry_run, audit, decided[backup_id],
                           policy_text(subvolume))
    result.decisions.sort(key=lambda d: (d.subvolume, d.created, d.id))
    if audit is not None:
        audit.record("prune", target=result.where, dry_run=dry_run, deleted=len(result.deleted),
                     kept=sum(d.action == "keep" for d in result.decisions), freed_bytes=result.freed,
                     now=now.isoformat())
    return result


def _backup_decision(d: Decision, m: Manifest) -> PruneDecision:
    return PruneDecision(d.id, m.snapshot, m.subvolume, m.snapshot_time, d.action, d.reasons, m.stored_bytes)


def _delete_backup(repo: Repository, m: Manifest, result: PruneResult, dry_run: bool,
                   audit: AuditLog | None, decision: Decision, policy: str) -> None:
    if not dry_run:
        repo.delete_backup(m.backup_id)
        if audit is not None:
            audit.record("delete-backup", target=repo.target.display_url, backup_id=m.backup_id,
                         snapshot=m.snapshot, subvolume=m.subvolume, reasons=list(decision.reasons),
                         freed_bytes=m.stored_bytes, policy=policy)
        log.info("pruned backup=%s target=%s bytes=%d", m.backup_id, repo.target.display_url, m.stored_bytes)
    result.deleted.append(m.backup_id)


def protect_for_targets(snaps: list[Snapshot], held_by: Mapping[str, Iterable[str]]) -> dict[str, str]:
    """Per target: its newest common snapshot, and every newer one it has not received yet."""
    protected: dict[str, str] = {}
    for url, held in held_by.items():
        held = set(held)
        common = [i for i, s in enumerate(snaps) if s.uuid in held]
        start = common[-1] if common else 0
        for s in snaps[start:]:
            reason = f"newest common with {url}" if s.uuid in held else f"not yet on {url}"
            protected.setdefault(s.name, reason)
    return protected


def prune_snapshots(snapshot_dir: Path, subvolume: str, policy: Policy | None, now: datetime, *,
                    held_by: Mapping[str, Iterable[str]], dry_run: bool,
                    audit: AuditLog | None) -> PruneResult:
    snaps = list_snapshots(snapshot_dir, subvolume)
    protected = protect_for_targets(snaps, held_by)
    items = [Item(s.name, s.time, None) for s in snaps]
    decisions = _decide(items, policy, now, protected)
    result = PruneResult(str(snapshot_dir), dry_run)
    by_name = {s.name: s for s in snaps}
    decided = {d.id: d for d in decisions}
    for d in decisions:
        result.decisions.append(PruneDecision(d.id, d.id, subvolume, d.time, d.action, d.reasons))
    for name in deletion_order(decisions, items):
        if not dry_run:
            delete_snapshot(by_name[name].path)
            if audit is not None:
                audit.record("delete-snapshot", path=str(by_name[name].path), snapshot=name,
                             subvolume=subvolume, policy=policy.describe() if policy else None,
                             reasons=list(decided[name].reasons))
        result.deleted.append(name)
    if audit is not None:
        audit.record("snapshot-prune", snapshot_dir=str(snapshot_dir), subvolume=subvolume, dry_run=dry_run,
                     deleted=len(result.deleted), kept=len(snaps) - len(result.deleted), now=now.isoformat())
    return result
