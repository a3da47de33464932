"""Which backups a copy moves, parents first, and which the destination already holds.

A backup is copied with its chain: each link the destination lacks (matched by backup id, and
then by snapshot uuid: the same id naming another snapshot is refused) is copied before the links
that build on it.  A link the destination holds must be restorable there; a damaged manifest of
that id on the destination is never overwritten.  Only restorable backups of the source are
copied: a damaged or broken one is named, never silently skipped.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from btrsync.catalog.manifest import Manifest
from btrsync.catalog.repository import Catalog
from btrsync.errors import BackupNotFoundError, DamageError, UsageError
from btrsync.read.chains import restore_chain
from btrsync.retention import Item, Policy, decide

PolicyFor = Callable[[str], Policy | None]  # a subvolume's retention policy on the destination


@dataclass
class CopyPlan:
    copy: list[Manifest] = field(default_factory=list)  # to copy, parents first
    present: list[Manifest] = field(default_factory=list)  # asked for (or a parent of one) and already there
    unusable: dict[str, str] = field(default_factory=dict)  # source backups that cannot be copied: why

    @property
    def bytes(self) -> int:
        """Stored bytes of what would move (the source's: a copy keeps each chunk's compression)."""
        return sum(m.stored_bytes for m in self.copy)


def plan_copy(source: Catalog, dest: Catalog, specs: Sequence[str] | None, source_url: str,
              dest_url: str) -> CopyPlan:
    """``specs`` as ``receive`` takes them (id, snapshot name, latest, SUBVOL@latest); None: every
    backup of the source (damaged and broken ones are listed in ``unusable``)."""
    plan = CopyPlan()
    chains: list[list[Manifest]] = []
    if specs is None:
        for d in source.damaged:
            plan.unusable[d.backup_id] = f"its manifest on {source_url} is damaged: {d.error}"
        for bid, broken in source.broken.items():
            plan.unusable[bid] = f"not restorable on {source_url}: {broken.reason}"
        for m in source.restorable:
            chains.append(restore_chain(source, m.backup_id, source_url))
    else:
        for spec in specs:
            try:
                chains.append(restore_chain(source, spec, source_url))  # damage in the chain: exit 4
            except BackupNotFoundError as exc:  # "the target": say which of the two
                raise BackupNotFoundError(f"{exc} (source {source_url})") from None
    there = {m.backup_id: m for m in dest.manifests}
    restorable_there = {m.backup_id for m in dest.restorable}
    damaged_there = {d.backup_id: d for d in dest.damaged}
    seen: set[str] = set()
    healed: set[str] = set()  # held there but broken only for ancestors this copy sends again
    for chain in chains:
        for link in chain:
            if link.backup_id in seen:
                continue
            seen.add(link.backup_id)
            if link.backup_id in damaged_there:
                raise DamageError(f"{dest_url} holds a damaged manifest of backup {link.backup_id} "
                                  f"({damaged_there[link.backup_id].error}); nothing was copied: move it aside "
                                  "or delete it there first")
            held = there.get(link.backup_id)
            if held is None:
                plan.copy.append(link)
                continue
            if held.snapshot_uuid != link.snapshot_uuid:
                raise DamageError(f"backup {link.backup_id} on {dest_url} is of snapshot {held.snapshot_uuid}, on "
                                  f"{source_url} of {link.snapshot_uuid}: not the same backup; nothing was copied")
            if link.backup_id not in restorable_there and not _healed_by(link, held, plan, healed):
                raise DamageError(f"backup {link.backup_id} is on {dest_url} but not restorable there "
                                  f"({dest.broken[link.backup_id].reason}); its children cannot be copied onto it")
            plan.present.append(link)
    return plan


def _healed_by(link: Manifest, held: Manifest, plan: CopyPlan, healed: set[str]) -> bool:
    """Whether ``held`` (the destination's copy of ``link``, not restorable there) becomes restorable
    once this plan has copied: it names the same parent as the source's, and that parent is copied
    now or is itself healed (the destination lost it: an operator's delete, a prune racing a copy).
    The chain is walked parents first, so the parent's fate is known."""
    parent = link.parent_id
    if parent is None or held.parent_id != parent or held.parent_uuid != link.parent_uuid:
        return False
    if parent in {m.backup_id for m in plan.copy} or parent in healed:
        healed.add(link.backup_id)
        return True
    return False


def wanted_by_policy(source: Catalog, dest: Catalog, subvolumes: set[str], policy_for: PolicyFor,
                     now: datetime) -> list[str]:
    """For ``run`` (``copy_from``): the ids of the source's restorable backups of ``subvolumes``
    that the destination lacks and its retention policy would keep beside what it holds, so that a
    copy never brings back what the destination's own prune removed (btrbk's rule, as for push).
    Decided for each host apart, as prune does.  Without a policy every backup the destination
    lacks is wanted."""
    there = {m.backup_id for m in dest.manifests}
    wanted: list[str] = []
    for sub in sorted(subvolumes):
        candidates = [m for m in source.restorable if m.subvolume == sub and m.backup_id not in there]
        if not candidates:
            continue
        policy = policy_for(sub)
        if policy is None:
            wanted += [m.backup_id for m in candidates]
            continue
        held = [m for m in dest.restorable if m.subvolume == sub]
        kept: set[str] = set()
        # per host, as prune decides (ops/prune.py): pooled, one host's backups would take every
        # day (or week...) and the other's would never be copied, though the prune there keeps them
        for host in sorted({m.host for m in candidates}):
            items = [Item(m.backup_id, m.snapshot_time, m.parent_id) for m in held + candidates if m.host == host]
            kept |= {d.id for d in decide(items, policy, now) if d.kept}
        wanted += [m.backup_id for m in candidates if m.backup_id in kept]
    return wanted


def check_distinct(source_id: str, dest_id: str, source_url: str, dest_url: str) -> None:
    if source_id == dest_id:
        raise UsageError(f"{source_url} and {dest_url} are the same repository (id {source_id}): a copy needs "
                         "another repository as its destination ('btrsync init --to URL' makes one)")
