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
from contextlib import nullcontext
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Any

from btrsync.audit import AuditLog
from btrsync.catalog import layout
from btrsync.catalog.lease import live_leases
from btrsync.catalog.manifest import Manifest
from btrsync.catalog.repository import Repository
from btrsync.errors import DamageError
from btrsync.ops import immutable
from btrsync.retention import Decision, Item, Policy, decide, deletion_order
from btrsync.retention.gfs import PARENT_PREFIX
from btrsync.snapshots.store import Snapshot, delete_snapshot, list_snapshots
from btrsync.state import anchors_in_force
from btrsync.targets.errors import ObjectLocked, PermissionDenied

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
    unrestorable: list[str] = field(default_factory=list)  # "id: why", kept and reported
    refused: dict[str, str] = field(default_factory=dict)  # subvolume -> why it was not pruned
    damaged: list[str] = field(default_factory=list)  # advice per damaged manifest
    remaining: list[Manifest] = field(default_factory=list)  # backups left (what the state records)
    locked: dict[str, str] = field(default_factory=dict)  # id -> why the store kept it (lock, no delete right)
    lock_extensions: dict[str, str] = field(default_factory=dict)  # id -> lock extended (ops/immutable.py)

    def raise_for_damage(self) -> None:
        """Exit 4 after a real prune that met unrestorable backups or damaged manifests."""
        if self.dry_run or not (self.unrestorable or self.refused):
            return
        parts = []
        if self.unrestorable:
            parts.append(f"{len(self.unrestorable)} backup(s) cannot be restored and were kept: "
                         + "; ".join(self.unrestorable[:5]))
        if self.refused:
            parts.append("not pruned: " + "; ".join(f"{k} ({v})" for k, v in sorted(self.refused.items())))
        raise DamageError(f"prune of {self.where}: " + ". ".join(parts))

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
    """Apply retention per subvolume to the restorable backups of a repository.

    Unrestorable backups (broken chains) never count toward a keep rule and are never deleted:
    they are kept and reported.  A subvolume with a damaged manifest is not pruned at all (its
    catalog is incomplete); when a damaged manifest's subvolume cannot be told, nothing is.
    """
    catalog = repo.catalog()
    result = PruneResult(repo.target.display_url, dry_run)
    result.damaged = [d.advice(repo.target.display_url) for d in catalog.damaged]
    damaged_subvolumes = catalog.damaged_subvolumes()
    if None in damaged_subvolumes:
        raise DamageError(f"not pruning {repo.target.display_url}: {result.damaged[0]}; its subvolume "
                          "cannot be told, so no subvolume's catalog is known to be complete")
    protected = {lease.parent_id: "parent of an upload in progress"
                 for lease in live_leases(repo.target) if lease.parent_id}
    by_id = {m.backup_id: m for m in catalog.manifests}
    locks = _LockCheck(repo, now, by_id, result)
    for subvolume in sorted({m.subvolume for m in catalog.manifests} | damaged_subvolumes):  # type: ignore[arg-type]
        group = [m for m in catalog.manifests if m.subvolume == subvolume]
        # a damaged manifest's subvolume is known only as its key spells it ('@home' as '_home')
        if subvolume in damaged_subvolumes or layout.id_safe(subvolume) in damaged_subvolumes:
            result.refused[subvolume] = "a manifest of this subvolume is damaged"
            result.decisions += [_kept(m, "not pruned: a manifest of this subvolume is damaged") for m in group]
            continue
        broken = [m for m in group if m.backup_id in catalog.broken]
        for m in broken:
            result.unrestorable.append(f"{m.backup_id}: {catalog.broken[m.backup_id].reason}")
            result.decisions.append(_kept(m, "unrestorable (chain broken): kept, counts toward no rule"))
        restorable = [m for m in group if m.backup_id not in catalog.broken]
        policy = policy_for(subvolume)
        # two hosts backing up a subvolume of the same name keep a history each: pooled, the first
        # backup of each day (or week...) would always be one host's, and the other's would go
        for host in sorted({m.host for m in restorable}):
            items = [Item(m.backup_id, m.snapshot_time, m.parent_id) for m in restorable if m.host == host]
            decisions = _decide(items, policy, now, protected)
            decided = {d.id: d for d in decisions}
            result.decisions += [_backup_decision(d, by_id[d.id], by_id) for d in decisions]
            doomed = deletion_order(decisions, items)
            if doomed and not dry_run:  # the decision may rest on a cache: check what it relies on
                parents = {by_id[d.id].parent_id for d in decisions if d.kept} & set(by_id)
                repo.reread([by_id[i] for i in sorted(set(doomed) | parents)])  # type: ignore[arg-type]
            for backup_id in doomed:  # children first: a locked child keeps its parents
                if locks.refused(backup_id):
                    continue
                try:
                    _delete_backup(repo, by_id[backup_id], result, dry_run, audit, decided[backup_id],
                                   policy_text(subvolume))
                except (ObjectLocked, PermissionDenied) as exc:
                    locks.keep(backup_id, _not_deleted(exc, repo.target.display_url))
    result.decisions.sort(key=lambda d: (d.subvolume, d.created, d.id))
    gone = set(result.deleted) if not dry_run else set()
    result.remaining = [m for m in catalog.manifests if m.backup_id not in gone]
    if not dry_run:  # the policy's dates may have grown since upload: locks follow them
        result.lock_extensions = immutable.extend_kept(repo.target, result.remaining, policy_for)
    if audit is not None:
        audit.record("prune", target=result.where, dry_run=dry_run, deleted=len(result.deleted),
                     kept=sum(d.action == "keep" for d in result.decisions), freed_bytes=result.freed,
                     now=now.isoformat(), unrestorable=len(result.unrestorable),
                     refused=sorted(result.refused))
    return result


class _LockCheck:
    """Object Lock before a deletion (ops/immutable.py): a backup whose manifest is locked on the
    store's clock, or that a refused backup is sent on, is kept with the reason instead."""

    def __init__(self, repo: Repository, now: datetime, by_id: Mapping[str, Manifest], result: PruneResult) -> None:
        self.target, self.fallback, self.by_id, self.result = repo.target, now, by_id, result
        self.applies = hasattr(repo.target, "retention")
        self._now: datetime | None = None
        self.denied: str | None = None  # set once a delete was refused for want of the right

    def refused(self, backup_id: str) -> bool:
        if self.denied is not None:  # the key may not delete: no further attempt (docs/immutable.md)
            self.keep(backup_id, self.denied)
            return True
        if not self.applies:
            return False
        child = next((c for c, m in self.by_id.items() if m.parent_id == backup_id and c in self.result.locked), None)
        if child is not None:
            why = f"object lock: {child}, which is sent on it, is locked"
        else:
            if self._now is None:
                self._now = immutable.store_now(self.target, self.fallback)
            why = immutable.refusal(self.target, backup_id, self._now)  # type: ignore[assignment]
        if why is None:
            return False
        self.keep(backup_id, why)
        return True

    def keep(self, backup_id: str, why: str) -> None:
        """Keep ``backup_id`` for ``why`` (a refusal of the store: reported, not an error)."""
        if why.startswith(_DENIED):
            self.denied = (f"{_DENIED} of another backup in this prune, so this one was not tried: run prune "
                           f"of {self.target.display_url} where the key may delete")
        self.result.locked[backup_id] = why
        self.result.decisions = [replace(d, action="keep", reasons=(why, *d.reasons)) if d.id == backup_id else d
                                 for d in self.result.decisions]
        log.warning("prune kept backup %s: %s", backup_id, why)


_DENIED = "not deleted: the target refused the delete"


def _not_deleted(exc: BaseException, where: str) -> str:
    """The reason a backup prune meant to delete is kept after the store refused its delete."""
    if isinstance(exc, ObjectLocked):
        return f"object lock: {exc}"
    return (f"{_DENIED} ({exc}): if this host's key may not delete on purpose (a push host, "
            f"docs/immutable.md), run prune of {where} where the key may")


def _backup_decision(d: Decision, m: Manifest, by_id: Mapping[str, Manifest] | None = None) -> PruneDecision:
    reasons = d.reasons
    if by_id is not None and d.kept and reasons and all(r.startswith(PARENT_PREFIX) for r in reasons):
        reasons = (_which_chain(reasons[0], m, by_id),) + reasons[1:]
    return PruneDecision(d.id, m.snapshot, m.subvolume, m.snapshot_time, d.action, reasons, m.stored_bytes)


def _which_chain(reason: str, m: Manifest, by_id: Mapping[str, Manifest]) -> str:
    """``parent of kept X`` with the chain that causes it: the tree's base (a full a kept backup
    is sent on directly) or a longer chain of backups kept only as parents (a linear chain from
    before the tree, or from before a policy change), named from the kept backup up to this one."""
    child = by_id.get(reason[len(PARENT_PREFIX):])
    steps = [child] if child is not None else []
    while steps and steps[-1].parent_id not in (None, m.backup_id) and steps[-1].parent_id in by_id \
            and len(steps) < 64:
        steps.append(by_id[steps[-1].parent_id])  # type: ignore[index]
    if child is None or steps[-1].parent_id != m.backup_id:
        return reason
    if len(steps) == 1 and m.is_full:
        return f"{reason} (the base of the backup tree: {child.snapshot} is sent on this full)"
    path = " → ".join(s.snapshot for s in steps[:3]) + (" → …" if len(steps) > 3 else "")
    return (f"{reason} (a chain of {len(steps) + 1}: {path} → {m.snapshot}; from linear chains or an "
            "older policy, it goes when nothing kept is sent on it)")


def _kept(m: Manifest, reason: str) -> PruneDecision:
    return PruneDecision(m.backup_id, m.snapshot, m.subvolume, m.snapshot_time, "keep", (reason,), m.stored_bytes)


def _delete_backup(repo: Repository, m: Manifest, result: PruneResult, dry_run: bool,
                   audit: AuditLog | None, decision: Decision, policy: str) -> None:
    if not dry_run:
        where = repo.target.display_url
        with (audit.deletion("delete-backup", target=where, backup_id=m.backup_id, snapshot=m.snapshot,
                             subvolume=m.subvolume, reasons=list(decision.reasons),
                             freed_bytes=m.stored_bytes, policy=policy)
              if audit is not None else nullcontext()):
            repo.delete_backup(m.backup_id, audit.object_deletions(where, f"prune {m.backup_id}")
                               if audit is not None else None)
        log.info("pruned backup=%s target=%s bytes=%d", m.backup_id, where, m.stored_bytes)
    result.deleted.append(m.backup_id)


def protect_for_targets(snaps: list[Snapshot], held_by: Mapping[str, Iterable[str]],
                        now: datetime | None = None) -> dict[str, str]:
    """Per target that receives this subvolume (holds a backup of one of ``snaps``): its newest
    common snapshot, every newer one it has not received yet, and its tree's anchors (the
    snapshots its later backups are sent on, recorded by the last push: ``held_by[url]`` maps
    uuid -> {..., "anchor": {reason, until}}) until they lapse.  A target that holds none of
    them does not receive this subvolume and protects nothing (else one push of any subvolume
    would pin every other subvolume's snapshots forever)."""
    protected: dict[str, str] = {}
    for url, held in held_by.items():
        entries = {url: held} if isinstance(held, Mapping) else {}
        held = set(held)
        common = [i for i, s in enumerate(snaps) if s.uuid in held]
        if not common:
            continue
        start = common[-1]
        for s in snaps[start:]:
            reason = f"newest common with {url}" if s.uuid in held else f"not yet on {url}"
            protected.setdefault(s.name, reason)
        for s in snaps[:start]:
            if why := anchors_in_force(entries, s.uuid, now):
                protected.setdefault(s.name, why[0])
    return protected


def prune_snapshots(snapshot_dir: Path, subvolume: str, policy: Policy | None, now: datetime, *,
                    held_by: Mapping[str, Iterable[str]], dry_run: bool,
                    audit: AuditLog | None) -> PruneResult:
    snaps = list_snapshots(snapshot_dir, subvolume)
    protected = protect_for_targets(snaps, held_by, now)
    items = [Item(s.name, s.time, None) for s in snaps]
    decisions = _decide(items, policy, now, protected)
    result = PruneResult(str(snapshot_dir), dry_run)
    by_name = {s.name: s for s in snaps}
    decided = {d.id: d for d in decisions}
    for d in decisions:
        result.decisions.append(PruneDecision(d.id, d.id, subvolume, d.time, d.action, d.reasons))
    for name in deletion_order(decisions, items):
        if not dry_run:
            with (audit.deletion("delete-snapshot", path=str(by_name[name].path), snapshot=name,
                                 subvolume=subvolume, policy=policy.describe() if policy else None,
                                 reasons=list(decided[name].reasons))
                  if audit is not None else nullcontext()):
                delete_snapshot(by_name[name].path)
        result.deleted.append(name)
    if audit is not None:
        audit.record("snapshot-prune", snapshot_dir=str(snapshot_dir), subvolume=subvolume, dry_run=dry_run,
                     deleted=len(result.deleted), kept=len(snaps) - len(result.deleted), now=now.isoformat())
    return result
