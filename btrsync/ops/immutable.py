"""Immutable backups: what the push, prune and clean do on a target with S3 Object Lock.

The target (``targets/s3/objectlock.py``) writes every object of a backup locked; this module
tells it until when, and keeps prune from failing on what it may not delete yet (docs/immutable.md):

* **push** (:func:`hold_for_step`): before a backup is sent, the target is told the date until
  which the retention policy keeps it (the tree planner's ``kept_until``; unknown for a linear
  chain, then the lock is the margin alone), and every backup it is sent on (its parent, and
  theirs) is extended to at least that date: a parent is locked as long as its longest-lived
  child needs it.
* **prune** (:func:`refusal`, :func:`extend_kept`): a backup whose manifest is still locked on
  the store's clock is not deleted, with the reason; nor is a backup a refused one is sent on.
  After pruning, every kept backup's lock is extended to its current policy date (its own, or its
  longest-lived child's, plus the margin): the date may have grown since upload (a backup
  became the month's, a linear chain's date became known).
* **clean**: an orphan that is still locked is reported as kept until its date, not an error.

Targets without Object Lock (no ``hold_backup``/``retention``) are left alone.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from datetime import datetime

from btrsync.catalog import layout
from btrsync.catalog.manifest import Manifest
from btrsync.errors import BtrsyncError
from btrsync.planner.plan import Step
from btrsync.planner.tree import tiers
from btrsync.retention import Policy
from btrsync.targets.base import Target
from btrsync.targets.errors import NotFound

log = logging.getLogger(__name__)


def locking(target: Target) -> bool:
    """Whether ``target`` writes backups locked (an S3 target with ``object_lock``)."""
    return getattr(target, "lock_mode", None) is not None


def ancestors(parent_id: str | None, held: Iterable[Manifest]) -> list[str]:
    """``parent_id`` and the backups it is sent on, nearest first (a cycle or gap ends it)."""
    by_id = {m.backup_id: m for m in held}
    chain: list[str] = []
    while parent_id is not None and parent_id not in chain:
        chain.append(parent_id)
        parent = by_id.get(parent_id)
        parent_id = parent.parent_id if parent is not None else None
    return chain


def hold_for_step(target: Target, backup_id: str, step: Step, held: Iterable[Manifest]) -> None:
    """Before ``step`` is sent as ``backup_id``: lock its objects until its policy date, and
    extend the backups it is sent on to that date (their manifest tells; see the module doc)."""
    if not locking(target):
        return
    target.hold_backup(backup_id, step.kept_until)  # type: ignore[attr-defined]
    if step.kept_until is None:
        return  # its lock is the margin from now, which any parent's already covers or prune extends
    want = target.lock_until(step.kept_until)  # type: ignore[attr-defined]
    for parent in ancestors(step.parent_backup_id, held):
        try:
            if locked_long_enough(target, parent, step.kept_until):
                continue
        except NotFound:
            continue
        count = target.extend_retention(parent, step.kept_until)  # type: ignore[attr-defined]
        log.info("extended the lock of %d objects of backup %s to %s (a child kept until %s is sent on it)",
                 count, parent, f"{want:%Y-%m-%d %H:%MZ}", f"{step.kept_until:%Y-%m-%d %H:%MZ}")


def locked_long_enough(target: Target, backup_id: str, until: datetime) -> bool:
    """Whether every object of ``backup_id`` is locked until ``until`` plus the margin already:
    its manifest, which is extended last, tells for all (``NotFound`` when it is gone)."""
    held = target.retention(layout.manifest_key(backup_id))  # type: ignore[attr-defined]
    return held is not None and held.until >= target.lock_until(until)  # type: ignore[attr-defined, no-any-return]


def store_now(target: Target, fallback: datetime) -> datetime:
    """The store's time (``Target.clock``), or ``fallback`` when it gives none."""
    try:
        now = target.clock()
    except BtrsyncError:
        now = None
    return now if now is not None else fallback


def refusal(target: Target, backup_id: str, now: datetime) -> str | None:
    """Why ``backup_id`` may not be deleted yet (its manifest's lock has not expired at ``now``,
    the store's time), or ``None``.  Asked of any target that reports retention, whatever its
    settings say: a bucket locked by another configuration refuses as well."""
    retention = getattr(target, "retention", None)
    if retention is None:
        return None
    try:
        held = retention(layout.manifest_key(backup_id))
    except NotFound:
        return None
    if held is None or held.until <= now:
        return None
    return f"object lock: its objects are under a {held.describe()}; prune deletes it after that"


def kept_until(manifests: list[Manifest], policy_for: Callable[[str], Policy | None]) -> dict[str, datetime]:
    """Per backup: until when the policy needs it, its own date or its longest-lived child's
    (children of children included), for the backups whose policy has calendar rules."""
    lives = tiers(((m.backup_id, (m.host, m.subvolume), m.snapshot_time) for m in manifests), policy_for)
    need = {bid: life.until for bid, life in lives.items()}
    by_id = {m.backup_id: m for m in manifests}
    for m in sorted(manifests, key=lambda m: m.snapshot_time, reverse=True):  # children before parents
        if m.backup_id not in need:
            continue
        for parent in ancestors(m.parent_id, by_id.values()):
            if parent in need and need[parent] < need[m.backup_id]:
                need[parent] = need[m.backup_id]
    return need


def extend_kept(target: Target, kept: list[Manifest], policy_for: Callable[[str], Policy | None]) -> dict[str, str]:
    """After a prune: extend each kept backup's lock to its policy date (see :func:`kept_until`)
    plus the margin.  Returns backup id -> what was done or why not (never raises for one)."""
    if not locking(target):
        return {}
    done: dict[str, str] = {}
    for backup_id, until in kept_until(kept, policy_for).items():
        try:
            if locked_long_enough(target, backup_id, until):
                continue
            count = target.extend_retention(backup_id, until)  # type: ignore[attr-defined]
        except BtrsyncError as exc:
            done[backup_id] = f"lock not extended: {exc}"
            log.warning("could not extend the lock of backup %s on %s: %s", backup_id, target.display_url, exc)
            continue
        if count:
            done[backup_id] = f"lock of {count} objects extended for {until:%Y-%m-%d %H:%MZ}"
            log.info("extended the lock of backup %s on %s: %s", backup_id, target.display_url, done[backup_id])
    return done
