"""The snapshots of one subvolume in its snapshot directory."""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path

from btrsync.btrfs import subvolume as sv
from btrsync.errors import SnapshotError
from btrsync.snapshots.naming import SnapshotName, format_stamp, parse_name

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Snapshot:
    path: Path
    parsed: SnapshotName
    info: sv.SubvolumeInfo

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def time(self) -> datetime:
        return self.parsed.time

    @property
    def uuid(self) -> str:
        """Identity across hosts: what ``btrfs send`` calls this snapshot."""
        return self.info.stream_uuid


def subvolume_name(subvol: Path) -> str:
    return Path(subvol).resolve().name or "root"


def list_snapshots(snapshot_dir: Path, base: str | None = None) -> list[Snapshot]:
    """btrsync-named subvolumes in ``snapshot_dir`` (of ``base`` only, if given), oldest first."""
    if not snapshot_dir.is_dir():
        raise SnapshotError(f"snapshot directory {snapshot_dir} does not exist")
    found = []
    for entry in sorted(snapshot_dir.iterdir()):
        parsed = parse_name(entry.name)
        if parsed is None or (base is not None and parsed.base != base) or not sv.is_subvolume(entry):
            continue
        found.append(Snapshot(entry, parsed, sv.subvolume_info(entry)))
    return sorted(found, key=lambda s: (s.parsed.time, s.parsed.serial, s.name))


def create_snapshot(subvol: Path, snapshot_dir: Path, when: datetime | None = None) -> Snapshot:
    """A read-only snapshot named ``<subvol>.<UTC stamp>``, ``_N`` on collision."""
    subvol = Path(subvol)
    sv.subvolume_info(subvol)  # raises a clear error if it is not a subvolume
    if not snapshot_dir.is_dir():
        raise SnapshotError(f"snapshot directory {snapshot_dir} does not exist; create it first "
                            f"(it must be on the same btrfs filesystem as {subvol})")
    path, parsed = _free_name(subvol, snapshot_dir, when)
    created = sv.create_readonly_snapshot(subvol, path)
    log.info("snapshot created source=%s snapshot=%s uuid=%s", subvol, path, created.uuid)
    return Snapshot(path, parsed, created)


def planned_snapshot(subvol: Path, snapshot_dir: Path, when: datetime | None = None) -> Snapshot:
    """The snapshot ``create_snapshot`` would make at ``when``, without making it: a plan of a
    run (``run --dry-run``) includes it.  Checked as ``create_snapshot`` checks (a subvolume, an
    existing snapshot directory); its uuid is a placeholder that no backup holds."""
    subvol = Path(subvol)
    source = sv.subvolume_info(subvol)
    if not snapshot_dir.is_dir():
        raise SnapshotError(f"snapshot directory {snapshot_dir} does not exist; create it first "
                            f"(it must be on the same btrfs filesystem as {subvol})")
    path, parsed = _free_name(subvol, snapshot_dir, when)
    info = replace(source, path=path, name=path.name, uuid=f"planned:{path.name}", parent_uuid=source.uuid,
                   received_uuid=None, readonly=True, otransid=source.ctransid)
    return Snapshot(path, parsed, info)


def _free_name(subvol: Path, snapshot_dir: Path, when: datetime | None) -> tuple[Path, SnapshotName]:
    """``<subvol>.<UTC stamp>`` in ``snapshot_dir``, ``_N`` where that exists."""
    when = (when or datetime.now(UTC)).astimezone(UTC).replace(microsecond=0)
    base = subvolume_name(subvol)
    stamp = format_stamp(when)
    name, serial = f"{base}.{stamp}", 0
    while (snapshot_dir / name).exists():
        serial += 1
        name = f"{base}.{stamp}_{serial}"
    return snapshot_dir / name, SnapshotName(when, serial, base)


def delete_snapshot(path: Path) -> None:
    if parse_name(path.name) is None or not sv.is_subvolume(path):
        raise SnapshotError(f"{path} is not a btrsync snapshot; refusing to delete it")
    sv.delete_subvolume(path)
    log.info("snapshot deleted path=%s", path)
