"""The run record of a job (``state_dir/jobs/JOB.json``): what one run of it did, per target,
added to the totals the earlier runs left.  Never used to decide a deletion."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from btrsync.config.jobs import Job
from btrsync.jobs.outcome import BAD_TARGET, JobOutcome
from btrsync.jobs.records import JobRecords, iso


def record_run(records: JobRecords, job: Job, out: JobOutcome, doc: dict[str, Any], now: datetime) -> None:
    """Fold ``out`` into the job's record ``doc`` (as loaded at the run's start) and save it."""
    doc = doc or records.load(job.name)
    doc["job"] = job.name
    doc["updated"] = iso(now)
    doc["last_run"] = {"started": iso(out.started), "finished": iso(now), "status": out.status,
                       "exit_code": out.exit_code,
                       "seconds": round(out.seconds, 3), "error": out.error, "reason": out.reason,
                       "snapshots": out.snapshots}
    runs = doc.setdefault("runs_total", {})
    runs[out.status] = int(runs.get(out.status, 0)) + 1
    if out.status == "ok":
        doc["last_success"] = iso(now)
        doc["failures_since_success"] = 0
    elif out.status in ("failed", "partial"):
        doc["failures_since_success"] = int(doc.get("failures_since_success", 0)) + 1
    doc["snapshots_deleted_total"] = int(doc.get("snapshots_deleted_total", 0)) + len(out.local_pruned)
    targets = doc.setdefault("targets", {})
    for t in out.targets:
        rec = targets.setdefault(t.name, {})
        rec["last_run"] = {"time": iso(now), "status": t.status, "seconds": round(t.seconds, 3),
                           "error": t.error, "reason": t.reason, "backups": len(t.backups),
                           "stream_bytes": t.stream_bytes, "stored_bytes": t.stored_bytes}
        if t.url:
            rec["url"] = t.url
        if t.status == "ok":
            rec["last_success"] = iso(now)
            rec["failures_since_success"] = 0
        elif t.status in BAD_TARGET:
            rec["failures_since_success"] = int(rec.get("failures_since_success", 0)) + 1
    for name in list(targets):  # targets removed from the job are forgotten
        if name not in {t.name for t in job.targets}:
            del targets[name]
    records.save(job.name, doc)
