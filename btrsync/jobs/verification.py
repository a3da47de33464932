"""A job's verification policy, applied through ``btrsync.ops.verify`` (docs/verify.md).

After a target's pushes, the backups this run sent are verified at ``verify.level`` (with
``verify.sample`` of their segments at the data and stream levels); every ``verify.drill_every``
the newest backup of each of the job's subvolumes is drilled at ``verify.drill_level`` (restore:
received into a scratch btrfs and compared with the local snapshot).  Both are recorded in the
job's record and, like ``btrsync verify``, in the target's state (``record_verification``).
"""

from __future__ import annotations

import logging
from datetime import datetime
from pathlib import Path
from typing import Any

from btrsync.catalog.repository import Repository
from btrsync.config.jobs import Job
from btrsync.config.model import Config
from btrsync.config.schema import VerifyModel
from btrsync.config.timespan import timespan
from btrsync.errors import BtrsyncError
from btrsync.jobs.clock import Clock
from btrsync.jobs.records import iso, parse_iso
from btrsync.ops.verify import Options, VerifyReport, verify
from btrsync.state import State
from btrsync.verify.ledger import Ledger
from btrsync.verify.selection import Sample

log = logging.getLogger(__name__)


def _first_problem(report: VerifyReport) -> str | None:
    return report.first_problem()


def _options(level: str, policy: VerifyModel, job: Job, config: Config, *, sample: bool) -> Options:
    return Options(level=level, sample=Sample.parse(policy.sample) if sample and policy.sample else None,
                   workers=config.push.workers, scratch_dir=Path(policy.scratch_dir),
                   snapshot_dirs=(job.snapshot_dir,))


def run_verify(repo: Repository, ids: list[str], policy: VerifyModel, job: Job, state_dir: Path, config: Config,
               clock: Clock) -> dict[str, Any]:
    """Verify the backups a run sent; never raises for damage (the result says it)."""
    now = clock.now()
    try:
        report = verify(repo, ids, _options(policy.level, policy, job, config, sample=True),
                        ledger=Ledger.for_repository(state_dir, repo.repo_id))
    except (BtrsyncError, OSError) as exc:
        return {"time": iso(now), "level": policy.level, "ok": False, "damaged": 0, "backups": len(ids),
                "bytes_read": 0, "seconds": 0.0, "error": f"verification could not run: {exc}"}
    summary = {**report.summary(), "started": iso(now)}
    State(state_dir).record_verification(repo.target.display_url, summary)
    return {"time": iso(now), "level": policy.level, "ok": report.ok, "damaged": len(report.damaged),
            "backups": len(report.backups), "bytes_read": report.bytes_read, "seconds": round(report.seconds, 3),
            "error": _first_problem(report)}


def drill_due(policy: VerifyModel, rec: dict[str, Any], now: datetime) -> bool:
    if policy.drill_every is None:
        return False
    last = parse_iso((rec.get("drill") or {}).get("time"))
    # a drill dated in the future (the clock jumped back since) is due, not years away
    return last is None or last > now or now - last >= timespan(policy.drill_every)


def run_drill(repo: Repository, subvolumes: list[str], policy: VerifyModel, job: Job, state_dir: Path,
              config: Config, clock: Clock) -> dict[str, Any] | None:
    """Drill the newest backup of each subvolume the target holds; None when it holds none."""
    now = clock.now()
    present = {m.subvolume for m in repo.catalog().restorable}
    specs = [f"{name}@latest" for name in subvolumes if name in present]
    if not specs:
        return None
    t0 = clock.monotonic()
    try:
        report = verify(repo, specs, _options(policy.drill_level, policy, job, config, sample=False),
                        ledger=Ledger.for_repository(state_dir, repo.repo_id))
    except (BtrsyncError, OSError) as exc:
        return {"time": iso(now), "level": policy.drill_level, "ok": False, "damaged": 0,
                "seconds": clock.monotonic() - t0, "backups": specs, "error": str(exc)}
    summary = {**report.summary(), "started": iso(now)}
    State(state_dir).record_verification(repo.target.display_url, summary)
    log.info("drill finished job=%s target=%s level=%s ok=%s seconds=%.1f", job.name, repo.target.display_url,
             policy.drill_level, report.ok, report.seconds)
    return {"time": iso(now), "level": policy.drill_level, "ok": report.ok, "damaged": len(report.damaged),
            "seconds": round(report.seconds, 3),
            "backups": [b.backup_id for b in report.backups], "error": _first_problem(report)}
