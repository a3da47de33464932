"""Metrics after the manual commands (push, prune, verify, clean), not only after ``run``.

``after_command`` updates the catalog summary of every job target at that URL (when the command
knows the target's backups: push and prune) and rewrites the metrics file.  It never fails the
command: a problem here is logged.  A job running meanwhile keeps its own record (its lock is
held): it writes the metrics itself when it finishes.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path

from btrsync.catalog.manifest import Manifest
from btrsync.config.model import Config
from btrsync.errors import LockedError
from btrsync.jobs.clock import SystemClock
from btrsync.jobs.coordination import job_lock
from btrsync.jobs.metrics import write_metrics_safely
from btrsync.jobs.records import JobRecords, catalog_summary
from btrsync.snapshots.store import subvolume_name

log = logging.getLogger(__name__)


def after_command(config: Config, state_dir: Path, url: str | None = None, *,
                  manifests: Iterable[Manifest] | None = None, deleted: int = 0) -> None:
    try:
        _update_records(config, state_dir, url, None if manifests is None else list(manifests), deleted)
    except Exception as exc:  # noqa: BLE001 - reporting must never fail the command that did the work
        log.warning("could not update the job records after the command: %s", exc)
    write_metrics_safely(config, state_dir, SystemClock())


def _update_records(config: Config, state_dir: Path, url: str | None, manifests: list[Manifest] | None,
                    deleted: int) -> None:
    if url is None or (manifests is None and not deleted):
        return
    records, clock = JobRecords(state_dir), SystemClock()
    for job in config.jobs.jobs.values():
        known = records.load(job.name).get("targets", {})
        names = [t.name for t in job.targets
                 if url in (t.name, config.target(t.name)[0], known.get(t.name, {}).get("url"))]
        if not names:
            continue
        try:
            with job_lock(state_dir, job.name, wait=0, clock=clock):
                doc = records.load(job.name)
                for name in names:
                    rec = doc.setdefault("targets", {}).setdefault(name, {})
                    rec["url"] = url
                    if manifests is not None:
                        used = (rec.get("catalog") or {}).get("used_bytes")
                        rec["catalog"] = catalog_summary(manifests, {subvolume_name(s) for s in job.subvolumes},
                                                         clock.now())
                        if used is None:
                            rec["catalog"]["used_bytes"] = sum(m.stored_bytes for m in manifests)
                    rec["deleted_total"] = int(rec.get("deleted_total", 0)) + deleted
                records.save(job.name, doc)
        except LockedError:
            log.debug("job %s is running: its record is its own", job.name)
