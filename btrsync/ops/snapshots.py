"""Snapshot use cases: create, describe (with the targets that hold each), guarded delete."""

from __future__ import annotations

from contextlib import nullcontext
from datetime import datetime
from pathlib import Path
from typing import Any

from btrsync.audit import AuditLog
from btrsync.errors import SnapshotError
from btrsync.snapshots.naming import parse_name
from btrsync.snapshots.store import (
    Snapshot,
    create_snapshot,
    delete_snapshot,
    list_snapshots,
    subvolume_name,
)
from btrsync.state import State, anchors_in_force


def create(subvol: Path, snapshot_dir: Path, when: datetime | None) -> Snapshot:
    return create_snapshot(subvol, snapshot_dir, when)


def describe(snapshot_dir: Path, subvol: Path | None, state: State) -> list[dict[str, Any]]:
    held = state.targets()
    rows = []
    for s in list_snapshots(snapshot_dir, subvolume_name(subvol) if subvol else None):
        rows.append({
            "name": s.name, "path": str(s.path), "subvolume": s.parsed.base,
            "created": s.time.isoformat().replace("+00:00", "Z"),
            "uuid": s.uuid, "parent_uuid": s.info.parent_uuid, "received_uuid": s.info.received_uuid,
            "readonly": s.info.readonly,
            "targets": sorted(url for url, uuids in held.items() if s.uuid in uuids),
            "anchor": anchors_in_force(held, s.uuid),
        })
    return rows


def protecting_targets(snap: Snapshot, siblings: list[Snapshot], state: State) -> list[str]:
    """Targets for which ``snap`` is the newest snapshot held on both sides (the next parent)."""
    urls = []
    for url, uuids in state.targets(strict=True).items():
        common = [s for s in siblings if s.uuid in uuids]
        if common and common[-1].uuid == snap.uuid:
            urls.append(url)
    return urls


def delete(path: Path, state: State, *, force: bool, audit: AuditLog | None = None) -> None:
    parsed = parse_name(path.name)
    if parsed is None:
        raise SnapshotError(f"{path} is not a btrsync snapshot; refusing to delete it")
    siblings = list_snapshots(path.parent, parsed.base)
    snap = next((s for s in siblings if s.path == path), None)
    if snap is None:
        raise SnapshotError(f"{path} is not a snapshot")
    urls = protecting_targets(snap, siblings, state)
    if urls and not force:
        raise SnapshotError(
            f"{path.name} is the newest snapshot that {', '.join(urls)} also holds: the parent of the "
            "next incremental push; deleting it forces a full send (use --force to delete anyway)")
    if (why := anchors_in_force(state.targets(strict=True), snap.uuid)) and not force:
        raise SnapshotError(
            f"{path.name} is the {why[0]}; deleting it makes those pushes choose another parent or send "
            "a full (use --force to delete anyway)")
    with (audit.deletion("delete-snapshot", path=str(path), snapshot=path.name, subvolume=parsed.base,
                         reasons=["snapshot delete" + (" --force" if force else "")])
          if audit is not None else nullcontext()):
        delete_snapshot(path)
