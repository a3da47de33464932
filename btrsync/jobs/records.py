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
A record that cannot be parsed is not "never ran": writers (a run, the record update after a
command, the metrics) keep it aside as ``<job>.json.damaged-<UTC time>`` with a warning and
start a new one; ``status`` reports it (``read``), moving nothing, until a run has recorded since.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from btrsync.catalog.manifest import Manifest
from btrsync.state import kept_aside, set_aside, write_json_atomic

log = logging.getLogger(__name__)


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


def is_later(a: Any, b: Any) -> bool:
    """Whether the ISO time ``a`` is after ``b`` (any ``a`` is after a missing ``b``); compared as
    times, not strings (``isoformat`` leaves out zero microseconds)."""
    ta, tb = parse_iso(a), parse_iso(b)
    return ta is not None and (tb is None or ta > tb)


def latest_time(*times: Any) -> Any:
    """The latest of the ISO ``times`` that parse (None when none does)."""
    found = [t for t in times if parse_iso(t) is not None]
    return max(found, key=parse_iso) if found else None


class JobRecords:
    """The run records of a state directory (``state_dir/jobs``)."""

    def __init__(self, state_dir: Path) -> None:
        self.root = Path(state_dir) / "jobs"

    def path(self, job: str) -> Path:
        return self.root / f"{job}.json"

    def _parse(self, job: str) -> dict[str, Any]:
        """The record; FileNotFoundError when there is none, ValueError when it is damaged (other
        OSErrors, e.g. EACCES, are not damage and pass through)."""
        doc = json.loads(self.path(job).read_bytes())
        _check_shape(doc)
        doc.setdefault("targets", {})
        return doc

    def load(self, job: str) -> dict[str, Any]:
        """The record, to be updated and saved: a damaged one is kept aside with a warning and a
        new one begins (its history and failure count are in the copy); one that cannot be read
        or moved raises OSError rather than being overwritten."""
        try:
            return self._parse(job)
        except FileNotFoundError:
            pass
        except ValueError as exc:
            try:
                aside = set_aside(self.path(job))
            except FileNotFoundError:  # another process kept it aside first, and said so
                return {"job": job, "targets": {}}
            log.warning("the run record of job %s could not be read (%s): kept aside as %s, a new record "
                        "begins (the history and failure count so far are in that copy; the backups on "
                        "the targets are untouched)", job, _why(exc), aside)
            return {"job": job, "targets": {}, "damaged_record": {"kept_as": str(aside), "error": _why(exc)}}
        return {"job": job, "targets": {}}

    def read(self, job: str) -> tuple[dict[str, Any], str | None]:
        """The record for a report, moving nothing, and what is wrong with it: None when it is
        sound (or there is none and never was a damaged one)."""
        path = self.path(job)
        try:
            doc = self._parse(job)
            damaged = doc.get("damaged_record")
            if isinstance(damaged, dict) and not doc.get("last_run"):
                return doc, _since(job, damaged.get("kept_as"))
            return doc, None
        except FileNotFoundError:
            aside = kept_aside(path)
            if aside:
                return {"job": job, "targets": {}}, _since(job, aside[-1])
        except (OSError, ValueError) as exc:
            return {"job": job, "targets": {}}, (
                f"the run record {path} cannot be read ({_why(exc)}), so what the last runs did is unknown: "
                f"the next run of job {job} keeps it aside and begins a new one (btrsync run {job})"
                if isinstance(exc, ValueError) else
                f"the run record {path} cannot be read ({_why(exc)}): fix its permissions or the disk")
        return {"job": job, "targets": {}}, None

    def save(self, job: str, doc: dict[str, Any]) -> None:
        write_json_atomic(self.path(job), doc)


def _since(job: str, aside: Any) -> str:
    return (f"the run record of job {job} was damaged and is kept aside as {aside}; no run has recorded "
            f"since, so what the last runs did is unknown: run the job (btrsync run {job}) to record it anew")


def _why(exc: BaseException) -> str:
    if isinstance(exc, OSError):
        return exc.strerror or str(exc)
    return f"{type(exc).__name__}: {exc}"


def _check_shape(doc: Any) -> None:
    """ValueError unless ``doc`` has the shape of a record where reports look (a truncated or
    overwritten file that still parses as JSON is damage too, not a crash of ``status``)."""
    if not isinstance(doc, dict):
        raise ValueError(f"a JSON {type(doc).__name__}, not an object")
    for key in ("last_run", "targets", "runs_total"):
        if doc.get(key) is not None and not isinstance(doc[key], dict):
            raise ValueError(f"{key!r} is not an object")
    if not isinstance(doc.get("failures_since_success", 0), int):
        raise ValueError("'failures_since_success' is not a number")
    for name, rec in (doc.get("targets") or {}).items():
        if not isinstance(rec, dict):
            raise ValueError(f"target {name!r} is not an object")
        for key in ("last_run", "catalog", "verify", "drill", "prune", "capacity"):
            if rec.get(key) is not None and not isinstance(rec[key], dict):
                raise ValueError(f"target {name!r}: {key!r} is not an object")
        if not isinstance(rec.get("failures_since_success", 0), int):
            raise ValueError(f"target {name!r}: 'failures_since_success' is not a number")


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
