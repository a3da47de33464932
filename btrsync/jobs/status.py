"""``btrsync status``: one line per job and target, from the local records (no network).

Verdicts, worst first:

- ``stale``: the newest backup on the target (of the subvolume furthest behind) is older than
  ``stale_after`` (per job, default 26h; ``--stale-after`` overrides);
- ``failing``: the last run of the target (or of the whole job: a pre hook, the snapshot)
  failed, and it has not succeeded since; the newest backup is still fresh;
- ``unknown``: the job's run record cannot be read (damaged, kept aside, unreadable), or what
  this host remembers of the target is damaged: what happened cannot be told;
- ``never``: no backup of the job on the target yet (or the job never ran);
- ``ok``.

Each target's verdict is its own: what the last run recorded for it (a target skipped as not due
is not failing because another one failed); a failure of the whole job (a pre hook, the
snapshot) counts for the targets that did not run in that run.  A verification or drill that
could not run is a failure of its target, never damage: ``verify_ok`` is the data verification,
``drill_ok`` the drill, and each says DAMAGE only when something was found damaged.

``--check`` prints one line in the monitoring-plugin format and exits 0 OK, 1 WARNING (failing
while the newest backup is fresh), 2 CRITICAL (stale, or failing without any backup), 3 UNKNOWN
(no job configured, a job that never ran, a record that cannot be read, or any error evaluating
the check).  ``--refresh`` first re-reads each target's catalog (network) so the ages and sizes
are the targets' own.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from btrsync.catalog.repository import Repository
from btrsync.config.jobs import Job
from btrsync.config.model import Config
from btrsync.errors import BtrsyncError, LockedError
from btrsync.jobs.clock import Clock
from btrsync.jobs.coordination import job_lock
from btrsync.jobs.records import (
    JobRecords,
    catalog_summary,
    is_later,
    iso,
    oldest_newest_backup_time,
    parse_iso,
)
from btrsync.snapshots.store import subvolume_name
from btrsync.state import State
from btrsync.units import parse_size

log = logging.getLogger(__name__)
FUTURE_TOLERANCE = timedelta(minutes=5)  # clocks of hosts that write the records differ a little

OK, WARNING, CRITICAL, UNKNOWN = 0, 1, 2, 3
PLUGIN_WORDS = {OK: "OK", WARNING: "WARNING", CRITICAL: "CRITICAL", UNKNOWN: "UNKNOWN"}
SEVERITY = {"ok": 0, "never": 1, "unknown": 2, "failing": 3, "stale": 4}


@dataclass
class StatusRow:
    job: str
    target: str
    url: str | None
    enabled: bool
    last_run: datetime | None
    last_run_status: str | None
    last_success: datetime | None
    newest: datetime | None
    newest_age: timedelta | None
    newest_bytes: int | None
    stored_bytes: int | None
    backups: int | None
    duration: float | None
    chain_depth: int | None
    last_verify: datetime | None
    verify_ok: bool | None
    verify_damaged: int | None  # backups found damaged (or affected): verify_ok false with 0 did not complete
    last_drill: datetime | None
    drill_ok: bool | None
    drill_damaged: int | None
    failures: int
    stale_after: timedelta
    verdict: str
    note: str | None

    def as_dict(self) -> dict[str, Any]:
        return {
            "job": self.job, "target": self.target, "url": self.url, "enabled": self.enabled,
            "last_run": iso(self.last_run), "last_run_status": self.last_run_status,
            "last_success": iso(self.last_success), "newest_backup": iso(self.newest),
            "newest_age_seconds": None if self.newest_age is None else int(self.newest_age.total_seconds()),
            "newest_in_future": None if self.newest_age is None else self.newest_age < timedelta(0),
            "newest_bytes": self.newest_bytes, "stored_bytes": self.stored_bytes, "backups": self.backups,
            "duration_seconds": self.duration, "chain_depth": self.chain_depth,
            "last_verify": iso(self.last_verify), "verify_ok": self.verify_ok, "verify_damaged": self.verify_damaged,
            "last_drill": iso(self.last_drill), "drill_ok": self.drill_ok, "drill_damaged": self.drill_damaged,
            "failures_since_success": self.failures,
            "stale_after_seconds": int(self.stale_after.total_seconds()), "verdict": self.verdict,
            "note": self.note,
        }


def status_rows(config: Config, state_dir: Path, now: datetime, *, stale_after: timedelta | None = None,
                jobs: list[Job] | None = None) -> list[StatusRow]:
    records = JobRecords(state_dir)
    state = State(state_dir)
    rows = []
    for job in jobs if jobs is not None else list(config.jobs.jobs.values()):
        doc, problem = records.read(job.name)
        threshold = job.stale_after if stale_after is None else stale_after
        if not job.targets:
            rows.append(_snapshot_only_row(job, doc, now, threshold))
        for jt in job.targets:
            rows.append(_row(job, jt.name, doc, doc.get("targets", {}).get(jt.name, {}), now, threshold, state))
        if problem is not None:
            for row in rows:
                if row.job == job.name:
                    row.verdict, row.note = "unknown", problem
    return rows


def _took_part(last: dict[str, Any], job_last: dict[str, Any]) -> bool:
    """Whether the target's own record is of the job's last run (it ran, or was skipped as not
    due, in that run) rather than of an earlier one (the job failed before reaching targets)."""
    mine = parse_iso(last.get("time"))
    if mine is None:
        return False
    started = parse_iso(job_last.get("started"))
    if started is not None:
        return mine >= started
    finished = parse_iso(job_last.get("finished"))  # a record without the start: only a later time says so
    return finished is None or mine > finished


def _verifications(rec: dict[str, Any], known: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """The newest data verification and drill of the target: by a run of the job (its record) or
    by a manual ``btrsync verify`` (the target's state).  A verification at the restore level is
    both: its drill part counts as the drill, the rest as the verification."""
    verify = dict(rec.get("verify") or {})
    drill = dict(rec.get("drill") or {})
    if known is None:
        return verify, drill
    v = known.verification or {}
    if v and is_later(v.get("started"), verify.get("time")):
        damaged = int(v.get("damaged") or 0) + int(v.get("affected") or 0)
        verify = {"time": v.get("started"), "damaged": damaged,
                  # a restore-level run's ok includes its drill, which is reported on its own
                  "ok": (damaged == 0 and not v.get("incomplete")) if v.get("drill") else v.get("ok")}
    d = known.drill or {}
    if d and is_later(d.get("time"), drill.get("time")):
        found = [o for o in d.get("drills", []) if not o.get("ok") and not o.get("unavailable")]
        drill = {"time": d.get("time"), "ok": d.get("ok"), "damaged": len(found)}
    return verify, drill


def _row(job: Job, target: str, doc: dict[str, Any], rec: dict[str, Any], now: datetime,
         threshold: timedelta, state: State) -> StatusRow:
    last = rec.get("last_run") or {}
    cat = rec.get("catalog") or {}
    subs = cat.get("subvolumes", {})
    newest = oldest_newest_backup_time(rec)
    age = now - newest if newest else None
    newest_bytes = sum(int(s.get("newest_stored_bytes", 0)) for s in subs.values()) if subs else None
    depth = max((int(s.get("chain_depth", 0)) for s in subs.values()), default=None)
    url = rec.get("url")
    known = state.target(url, strict=False) if url else None
    verify, drill = _verifications(rec, known)
    failures = int(rec.get("failures_since_success", 0))
    job_last = doc.get("last_run") or {}
    note = last.get("error") or last.get("reason")
    # the job failed before reaching its targets (a pre hook, the snapshot): a target that had no
    # part in that run is failing with it; one that ran (or was skipped as not due) tells its own
    job_failed = job_last.get("status") == "failed" and int(doc.get("failures_since_success", 0)) > 0 and \
        not _took_part(last, job_last)
    if job_failed:
        note = job_last.get("error") or note
    verdict = _verdict(bool(job_last), newest, age, threshold, failures > 0 or job_failed)
    damaged_state = state.damaged(url) if url else []
    if damaged_state and SEVERITY[verdict] < SEVERITY["unknown"]:
        verdict = "unknown"
        note = (f"what this host remembers of {url} is damaged ({damaged_state[-1]}): its next run fails "
                f"until it is checked and 'btrsync state forget {url}' is run")
    return StatusRow(
        job=job.name, target=target, url=url, enabled=job.enabled,
        last_run=parse_iso(last.get("time")) or parse_iso(job_last.get("finished")),
        last_run_status=last.get("status") or job_last.get("status"), last_success=parse_iso(rec.get("last_success")),
        newest=newest, newest_age=age, newest_bytes=newest_bytes,
        stored_bytes=cat.get("stored_bytes"), backups=cat.get("backups"), duration=last.get("seconds"),
        chain_depth=depth, last_verify=parse_iso(verify.get("time")), verify_ok=verify.get("ok"),
        verify_damaged=_count(verify.get("damaged")), last_drill=parse_iso(drill.get("time")),
        drill_ok=drill.get("ok"), drill_damaged=_count(drill.get("damaged")), failures=failures,
        stale_after=threshold, verdict=verdict, note=note,
    )


def _count(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _snapshot_only_row(job: Job, doc: dict[str, Any], now: datetime, threshold: timedelta) -> StatusRow:
    last = doc.get("last_run") or {}
    success = parse_iso(doc.get("last_success"))
    age = now - success if success else None
    failures = int(doc.get("failures_since_success", 0))
    return StatusRow(
        job=job.name, target="-", url=None, enabled=job.enabled, last_run=parse_iso(last.get("finished")),
        last_run_status=last.get("status"), last_success=success, newest=success, newest_age=age,
        newest_bytes=None, stored_bytes=None, backups=None, duration=last.get("seconds"), chain_depth=None,
        last_verify=None, verify_ok=None, verify_damaged=None, last_drill=None, drill_ok=None, drill_damaged=None,
        failures=failures, stale_after=threshold, verdict=_verdict(bool(last), success, age, threshold, failures > 0),
        note=last.get("error") or last.get("reason"),
    )


def _verdict(ran: bool, newest: datetime | None, age: timedelta | None, threshold: timedelta,
             failing: bool) -> str:
    if newest is None or age is None:
        return "failing" if ran and failing else "never"
    if age > threshold or age < -FUTURE_TOLERANCE:  # dated in the future: its age cannot be told
        return "stale"
    return "failing" if failing else "ok"


def check(rows: list[StatusRow], now: datetime) -> tuple[int, str]:
    """(monitoring-plugin code, the one line it prints)."""
    watched = [r for r in rows if r.enabled]
    if not watched:
        return UNKNOWN, "BTRSYNC UNKNOWN - no enabled job in the configuration"
    problems: list[tuple[int, str]] = []
    for r in watched:
        where = f"{r.job}/{r.target}" if r.target != "-" else r.job
        if r.verdict == "stale" and r.newest_age is not None and r.newest_age < timedelta(0):
            problems.append((CRITICAL, f"{where} stale: newest backup dated {_age(-r.newest_age)} in the "
                                       "future (a clock was ahead when it was taken; see docs/scheduling.md, "
                                       "'Clocks')"))
        elif r.verdict == "stale":
            problems.append((CRITICAL, f"{where} stale: newest backup {_age(r.newest_age)} old "
                                       f"(> {_age(r.stale_after)})"))
        elif r.verdict == "failing" and r.newest is None:
            problems.append((CRITICAL, f"{where} failing and no backup yet: {r.note or 'see btrsync status'}"))
        elif r.verdict == "failing":
            problems.append((WARNING, f"{where} failing ({r.failures} run(s)), newest backup "
                                      f"{_age(r.newest_age)} old: {r.note or 'see btrsync status'}"))
        elif r.verdict == "unknown":
            problems.append((UNKNOWN, f"{where} unknown: {r.note or 'see btrsync status'}"))
        elif r.verdict == "never":
            problems.append((UNKNOWN, f"{where} has never run" if r.last_run is None
                             else f"{where} has no backup yet"))
    order = {CRITICAL: 3, WARNING: 2, UNKNOWN: 1, OK: 0}
    code = max((c for c, _ in problems), key=lambda c: order[c], default=OK)
    ages = [r.newest_age.total_seconds() for r in watched if r.newest_age is not None]
    # an age is never negative in perfdata: a backup dated ahead counts 0 there and is counted apart
    future = sum(1 for r in watched if r.newest_age is not None and r.newest_age < timedelta(0))
    perf = f" | oldest_newest_backup_age={max(0.0, *ages):.0f}s;;;0" if ages else ""
    if future:
        perf += f" future_dated_backups={future};;;0"
    if code == OK:
        return OK, f"BTRSYNC OK - {len(watched)} job target(s) backed up within their limits{perf}"
    worst = [m for c, m in problems if c == code] + [m for c, m in problems if c != code]
    return code, f"BTRSYNC {PLUGIN_WORDS[code]} - " + plugin_text("; ".join(worst)) + perf


def plugin_text(text: str) -> str:
    """Text for a monitoring-plugin line: one line, and no '|' (it starts the perfdata)."""
    return " ".join(text.replace("|", "/").split())


def _age(delta: timedelta | None) -> str:
    if delta is None:
        return "-"
    seconds = int(delta.total_seconds())
    if seconds < 0:
        return "0m"  # callers say "in the future" themselves (age_text)
    if seconds < 3600:
        return f"{seconds // 60}m"
    if seconds < 2 * 86400:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 86400}d{seconds % 86400 // 3600}h"


def age_text(delta: timedelta | None) -> str:
    """An age for people; a backup dated ahead of now says so ("in 2h00m (clock?)"), never "0m"."""
    if delta is not None and delta < timedelta(0):
        return f"in {_age(-delta)} (clock?)"
    return _age(delta)


def refresh(config: Config, state_dir: Path, jobs: list[Job], clock: Clock,
            open_repository: Callable[[str], AbstractContextManager[Repository]]) -> list[str]:
    """Re-read each job target's catalog into its record; returns problems (never raises for one)."""
    records = JobRecords(state_dir)
    problems = []
    for job in jobs:
        try:
            with job_lock(state_dir, job.name, wait=0, clock=clock):
                doc, problem = records.read(job.name)
                if problem is not None and not doc.get("damaged_record"):
                    problems.append(f"{job.name}: not refreshed: {problem}")  # a run keeps it aside
                    continue
                for jt in job.targets:
                    try:
                        with open_repository(jt.name) as repo:
                            catalog = repo.catalog(ahead=True)  # only read
                            _url, settings = config.target(jt.name)
                            rec = doc.setdefault("targets", {}).setdefault(jt.name, {})
                            rec["url"] = repo.target.display_url
                            rec["catalog"] = catalog_summary(catalog.manifests,
                                                             {subvolume_name(s) for s in job.subvolumes}, clock.now())
                            rec["capacity"] = {"quota_bytes": parse_size(settings["quota"]) if settings.get("quota")
                                               else None, "free_bytes": repo.target.free_space()}
                    except (BtrsyncError, OSError, ValueError) as exc:
                        problems.append(f"{job.name}/{jt.name}: {exc}")
                records.save(job.name, doc)
        except LockedError:
            problems.append(f"{job.name}: running now; its record is refreshed by that run")
    return problems
