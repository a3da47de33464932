"""Which snapshots of a subvolume a push sends, and on which parents.

``plan_for`` reads the local snapshots and the target's catalog and hands them to the linear
planner or, for ``chain = "tree"``, the retention-aware tree planner (``planner/``).
"""

from __future__ import annotations

import dataclasses
import logging
import socket
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path

from btrsync.catalog.layout import backup_id_for
from btrsync.catalog.manifest import Manifest
from btrsync.catalog.repository import Catalog
from btrsync.errors import PushError
from btrsync.ops.estimate import stream_size
from btrsync.planner.plan import LocalSnapshot, Plan, plan_push
from btrsync.planner.tree import DEFAULT_FULL_THRESHOLD, Anchor, Held, Pricer, anchors, plan_tree, uses_tree
from btrsync.retention import Item, Policy, decide
from btrsync.snapshots.store import Snapshot, list_snapshots, subvolume_name

log = logging.getLogger(__name__)


def plan_for(subvol: Path, snapshot_dir: Path, catalog: Catalog, max_chain: int, *,
             backfill: bool = False, policy: Policy | None = None, now: datetime | None = None,
             planned: Snapshot | None = None, chain: str = "linear",
             full_threshold: float = DEFAULT_FULL_THRESHOLD, estimate: Pricer | None = None,
             no_parent: Mapping[str, str] | None = None) -> Plan:
    """The plan for ``subvol``: which snapshots to send, on which parents, and why others are not.

    Only restorable backups serve as parents.  A snapshot whose backup is on the target but
    damaged or unrestorable is skipped (never overwritten: an operator looks at it first).  A
    snapshot older than the newest backup of the subvolume on the target is sent only with
    ``backfill`` or when the target's retention ``policy`` would keep it (btrbk's rule), so
    snapshots that retention already removed from the target are not sent again every run.
    ``planned`` is a snapshot not taken yet (``store.planned_snapshot``), planned as if it were.

    ``chain = "tree"`` chooses parents by the target's retention ``policy`` (planner/tree.py),
    pricing candidates with ``estimate``; a policy without calendar rules (or none) gets the
    linear chain, and the plan says why.  ``no_parent`` backups (a verification found them
    damaged or affected) are no parents of the tree.
    """
    name = subvolume_name(subvol)
    snaps = list_snapshots(snapshot_dir, name) + ([planned] if planned is not None else [])
    if not snaps:
        raise PushError(f"no snapshots of subvolume {name!r} in {snapshot_dir} (looked for "
                        f"{name}.<YYYYMMDDTHHMMSSZ>): create one with 'btrsync snapshot create {subvol} "
                        f"--snapshot-dir {snapshot_dir}'; nothing was pushed")
    skip = {s.name: "writable, or changed after it was taken or received: never sent, never a parent"
            for s in snaps if not s.info.is_trusted_parent}
    unusable = {d.backup_id: f"its manifest on the target is damaged ({d.error}); move it aside first"
                for d in catalog.damaged}
    unusable.update({bid: f"on the target but not restorable: {b.reason}" for bid, b in catalog.broken.items()})
    held = [m for m in catalog.restorable if m.subvolume == name]
    ids = {s.name: backup_id_for(s.name, s.uuid) for s in snaps}
    held_uuids = {m.snapshot_uuid for m in held}
    # "older than the newest backup" counts this host's backups only (of its snapshots, or pushed
    # under its name): another host backing up a subvolume of the same name to the same
    # repository is another history, and its newer backups must not hold this one's back
    local_uuids = {s.uuid for s in snaps}
    mine = [m for m in held if m.snapshot_uuid in local_uuids or m.host == socket.gethostname()]
    newest_held = max((m.snapshot_time for m in mine), default=None)
    older = [s for s in snaps if newest_held is not None and s.time < newest_held
             and s.uuid not in held_uuids and s.name not in skip and ids[s.name] not in unusable]
    kept = _kept_by_retention(older, mine, policy, now) if older and not backfill else set()
    older_names = {s.name for s in older}
    for s in snaps:
        if s.name in skip:
            continue
        if ids[s.name] in unusable:
            skip[s.name] = unusable[ids[s.name]]
        elif s.name in older_names and not backfill and s.name not in kept:
            skip[s.name] = ("older than the newest backup on the target and not kept by its retention "
                            "(use --backfill to send it anyway)")
    if chain == "tree" and uses_tree(policy) is None:
        assert policy is not None
        mine_held = [_held(m) for m in mine]
        fulls = [m for m in mine if m.depth == 0]
        if estimate is not None and fulls:  # a full's size changes slowly: the newest full's, not a
            newest_full = max(fulls, key=lambda m: m.snapshot_time).stream_bytes  # metadata walk
            priced = estimate

            def estimate(snap: LocalSnapshot, parent: LocalSnapshot | None) -> int | None:  # type: ignore[misc]
                return newest_full if parent is None else priced(snap, parent)
        return plan_tree(snaps, mine_held, policy, time_of=lambda s: s.time, max_chain=max_chain,
                         backup_id_for=lambda s: ids[s.name], skip=skip, estimate=estimate,
                         full_threshold=full_threshold, unusable=no_parent)
    plan = plan_push(snaps, held, max_chain=max_chain, backup_id_for=lambda s: ids[s.name], skip=skip)
    if chain == "tree" and (why := uses_tree(policy)) is not None:
        plan = dataclasses.replace(plan, steps=tuple(dataclasses.replace(s, reason=f"{s.reason}; {why}")
                                                     for s in plan.steps))
    return plan


def delta_estimator(budget: float = 5.0) -> Pricer:
    """Prices a send for the tree planner with ``btrfs send --no-data`` (cached per pair)."""
    cache: dict[tuple[str, str | None], int | None] = {}

    def estimate(snap: LocalSnapshot, parent: LocalSnapshot | None) -> int | None:
        key = (str(snap.path), str(parent.path) if parent is not None else None)  # type: ignore[attr-defined]
        if key not in cache:
            cache[key] = (stream_size(snap.path, parent.path if parent is not None else None, budget)  # type: ignore[attr-defined]
                          if snap.path.exists() else None)  # type: ignore[attr-defined]
        return cache[key]

    return estimate


def _kept_by_retention(older: list[Snapshot], held: list[Manifest], policy: Policy | None,
                       now: datetime | None) -> set[str]:
    """Names of ``older`` snapshots the target's retention would keep if they were there."""
    if policy is None:
        return set()
    items = [Item(m.backup_id, m.snapshot_time, m.parent_id) for m in held]
    items += [Item(f"candidate:{s.name}", s.time, None) for s in older]
    decisions = decide(items, policy, now or datetime.now(UTC))
    return {d.id.removeprefix("candidate:") for d in decisions if d.kept and d.id.startswith("candidate:")}


def tree_anchors(held: list[Manifest], subvolume: str, policy: Policy | None, now: datetime,
                 target: str) -> list[Anchor]:
    """The anchors (planner/tree.py) of this host's backups of ``subvolume`` among ``held``."""
    host = socket.gethostname()
    return anchors([_held(m) for m in held if m.subvolume == subvolume and m.host == host], policy, now, target)


def _held(m: Manifest) -> Held:
    """A backup as the tree planner sees it."""
    return Held(m.backup_id, m.snapshot_uuid, m.snapshot_time, m.depth, m.parent_id, m.stored_bytes, m.snapshot)
