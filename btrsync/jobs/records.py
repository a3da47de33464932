"""What runs leave behind: ``state_dir/jobs/<job>.json``, the input of ``status`` and the metrics.

One document per job, rewritten atomically (temp + fsync + rename) at the end of every run::

    {"job": "home", "updated": T,
     "last_run": {"started": T, "finished": T, "status": "ok|partial|failed|skipped|locked|terminated",
                  "exit_code": 0, "seconds": 12.5, "error": null, "reason": null, "snapshots": [...]},
     "last_success": T, "failures_since_success": 0,
     "runs_total": {"ok": 12, "failed": 1, ...}, "snapshots_deleted_total": 40,
     "targets": {"usb": {"url": U,
                         "last_run": {"time": T, "status": "ok|failed|skipped|stopped|locked|damaged",
                                      "seconds", "error", "reason", "backups", "stream_bytes", "stored_bytes"},
                         "last_success": T, "failures_since_success": 0, "deleted_total": 7,
                         "catalog": {"time": T, "backups": N, "stored_bytes": N, "used_bytes": N,
                                     "subvolumes": {"data": {"backups", "stored_bytes", "newest", "newest_time",
                                                    "oldest_time", "newest_stream_bytes", "newest_stored_bytes",
                                                    "chain_depth"}}},
                         "capacity": {"quota_bytes": N|null, "free_bytes": N|null},
                         "prune": {"time": T, "deleted": N, "freed_bytes": N, "skipped": reason|null},
                         "verify": {...}, "drill": {...}}}}

Times are ISO 8601 UTC strings.  The record is a memory for reports, never a reason to delete.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from btrsync.catalog.manifest import Manifest
from btrsync.state import write_json_atomic


def iso(t: datetime | None) -> str | None:
    return None if t is None else t.astimezone(UTC).isoformat().replace("+00:00", "Z")


def parse_iso(text: Any) -> datetime | None:
    if not text or not isinstance(text, str):
        return None
    try:
        t = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return t if t.tzinfo else t.replace(tzinfo=UTC)


class JobRecords:
    """The run records of a state directory (``state_dir/jobs``)."""

    def __init__(self, state_dir: Path) -> None:
        self.root = Path(state_dir) / "jobs"

    def path(self, job: str) -> Path:
        return self.root / f"{job}.json"

    def load(self, job: str) -> dict[str, Any]:
        try:
            doc = json.loads(self.path(job).read_text())
            if isinstance(doc, dict):
                doc.setdefault("targets", {})
                return doc
        except FileNotFoundError:
            pass
        except (OSError, ValueError):
            pass  # a damaged record starts afresh: the targets' manifests stay the truth
        return {"job": job, "targets": {}}

    def save(self, job: str, doc: dict[str, Any]) -> None:
        write_json_atomic(self.path(job), doc)


def catalog_summary(manifests: Iterable[Manifest], subvolumes: set[str] | None, now: datetime,
                    orphaned_bytes: int = 0) -> dict[str, Any]:
    """Counts, bytes, newest/oldest and chain depth per subvolume of a target (only ``subvolumes``
    when given); ``used_bytes`` is every backup on the target, whoever pushed it."""
    manifests = list(manifests)
    per: dict[str, dict[str, Any]] = {}
    for m in sorted(manifests, key=lambda m: (m.snapshot_time, m.backup_id)):
        if subvolumes is not None and m.subvolume not in subvolumes:
            continue
        s = per.setdefault(m.subvolume, {"backups": 0, "stored_bytes": 0, "stream_bytes": 0,
                                         "oldest_time": iso(m.snapshot_time)})
        s["backups"] += 1
        s["stored_bytes"] += m.stored_bytes
        s["stream_bytes"] += m.stream_bytes
        s.update(newest=m.backup_id, newest_time=iso(m.snapshot_time), newest_stream_bytes=m.stream_bytes,
                 newest_stored_bytes=m.stored_bytes, chain_depth=m.depth)
    return {"time": iso(now), "backups": sum(s["backups"] for s in per.values()),
            "stored_bytes": sum(s["stored_bytes"] for s in per.values()),
            "used_bytes": sum(m.stored_bytes for m in manifests) + orphaned_bytes, "subvolumes": per}


def newest_backup_time(target: dict[str, Any]) -> datetime | None:
    times = [parse_iso(s.get("newest_time")) for s in target.get("catalog", {}).get("subvolumes", {}).values()]
    times = [t for t in times if t is not None]
    return max(times) if times else None


def oldest_newest_backup_time(target: dict[str, Any]) -> datetime | None:
    """The newest backup of the subvolume that is furthest behind (what "stale" must look at)."""
    times = [parse_iso(s.get("newest_time")) for s in target.get("catalog", {}).get("subvolumes", {}).values()]
    times = [t for t in times if t is not None]
    return min(times) if times else None
