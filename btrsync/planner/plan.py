"""Choose, for every snapshot a target lacks, the best incremental parent.

The parent of a snapshot is the newest older snapshot that exists locally (read-only, unmodified)
and as a committed backup on the target, identified by uuid, never by name.  A full is sent when
there is none, or when the chain would grow past ``max_chain`` incrementals, so that restoring any
backup replays at most ``max_chain + 1`` streams.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

DEFAULT_MAX_CHAIN = 30


class LocalSnapshot(Protocol):
    @property
    def name(self) -> str: ...
    @property
    def uuid(self) -> str: ...


class HeldBackup(Protocol):
    @property
    def backup_id(self) -> str: ...
    @property
    def snapshot_uuid(self) -> str: ...
    @property
    def depth(self) -> int: ...


@dataclass(frozen=True, slots=True)
class Step:
    snapshot: LocalSnapshot
    parent: LocalSnapshot | None
    parent_backup_id: str | None
    depth: int
    reason: str
    # chain = "tree" (planner/tree.py): the backup's tier, until when the policy keeps it, and
    # the estimated stream of the chosen send (None where it was not estimated)
    tier: str | None = None
    kept_until: datetime | None = None
    estimated_bytes: int | None = None

    @property
    def kind(self) -> str:
        return "full" if self.parent is None else "incremental"


@dataclass(frozen=True, slots=True)
class Skip:
    snapshot: LocalSnapshot
    reason: str


@dataclass(frozen=True, slots=True)
class Plan:
    steps: tuple[Step, ...]
    skipped: tuple[Skip, ...]
    up_to_date: tuple[LocalSnapshot, ...]


@dataclass(frozen=True, slots=True)
class _Base:
    snapshot: LocalSnapshot
    backup_id: str
    depth: int


def plan_push(
    snapshots: Sequence[LocalSnapshot],
    held: Iterable[HeldBackup],
    *,
    max_chain: int = DEFAULT_MAX_CHAIN,
    backup_id_for: Callable[[LocalSnapshot], str],
    skip: Mapping[str, str] | None = None,
) -> Plan:
    """Plan the push of ``snapshots`` (oldest first) to a target holding ``held``.

    ``skip`` maps snapshot names that must be neither sent nor used as parents to the reason
    (writable, damaged on the target, ...).  ``backup_id_for(snapshot)`` gives the id a new backup
    will get.
    """
    by_uuid = {b.snapshot_uuid: b for b in held}
    skip = skip or {}
    newest: _Base | None = None
    steps: list[Step] = []
    skipped: list[Skip] = []
    current: list[LocalSnapshot] = []
    for snap in snapshots:
        if snap.name in skip:
            skipped.append(Skip(snap, skip[snap.name]))
            continue
        existing = by_uuid.get(snap.uuid)
        if existing is not None:
            newest = _Base(snap, existing.backup_id, existing.depth)
            current.append(snap)
            continue
        step = _step_for(snap, newest, max_chain)
        steps.append(step)
        newest = _Base(snap, backup_id_for(snap), step.depth)
    return Plan(tuple(steps), tuple(skipped), tuple(current))


def _step_for(snap: LocalSnapshot, base: _Base | None, max_chain: int) -> Step:
    if base is None:
        return Step(snap, None, None, 0, "full: no snapshot is held both here and on the target")
    depth = base.depth + 1
    if depth > max_chain:
        return Step(snap, None, None, 0,
                    f"full: an incremental on {base.snapshot.name} would make the chain {depth} deep "
                    f"(max-chain {max_chain})")
    return Step(snap, base.snapshot, base.backup_id, depth,
                f"incremental on {base.snapshot.name}, the newest snapshot held on both sides "
                f"(chain depth {depth})")
