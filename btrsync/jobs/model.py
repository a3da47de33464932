"""Jobs as the runner uses them: resolved from ``[jobs.*]`` by :func:`btrsync.jobs.schema.parse_jobs`.

Plain dataclasses, apart from the validating pydantic models (``btrsync.jobs.schema``), so that a
command that runs no job never imports pydantic (about 0.2 s of every CLI start).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING

from btrsync.errors import UsageError

if TYPE_CHECKING:
    from btrsync.jobs.schema import HooksModel, JobModel, VerifyModel
    from btrsync.jobs.windows import BackupWindow, TargetEvery
    from btrsync.pipeline.schedule import RateSchedule
    from btrsync.retention import Policy

DEFAULT_METRICS_DIR = Path("/var/lib/prometheus/node-exporter")


@dataclass(frozen=True, slots=True)
class JobTarget:
    name: str  # as written in the job: a [targets.*] name or a URL
    retention: Policy | None
    retention_text: str
    bwlimit: RateSchedule | None  # None: the [push] default
    max_chain: int | None
    every: TargetEvery | None
    window: BackupWindow | None  # None: the job's
    backfill: bool
    verify: VerifyModel


@dataclass(frozen=True, slots=True)
class Job:
    name: str
    enabled: bool
    subvolumes: tuple[Path, ...]
    snapshot_dir: Path
    schedule: str
    randomized_delay: timedelta
    window: BackupWindow
    window_end: str
    snapshot_policy: Policy | None
    targets: tuple[JobTarget, ...]
    verify: VerifyModel
    hooks: HooksModel
    lock_wait: timedelta
    stale_after: timedelta
    model: JobModel = field(repr=False, compare=False)

    def target(self, name: str) -> JobTarget:
        return next(t for t in self.targets if t.name == name)


@dataclass(frozen=True, slots=True)
class JobsConfig:
    jobs: dict[str, Job] = field(default_factory=dict)
    metrics_dir: Path | None = DEFAULT_METRICS_DIR
    metrics_dir_explicit: bool = False
    max_parallel_jobs: int = 1

    def select(self, names: list[str] | tuple[str, ...], *, all_jobs: bool) -> list[Job]:
        """Jobs named (enabled or not), or every enabled job; unknown names are a usage error."""
        if all_jobs:
            if names:
                raise UsageError("give job names or --all, not both")
            return [j for j in self.jobs.values() if j.enabled]
        if not names:
            raise UsageError("name the job(s) to run, or --all (configured: "
                             f"{', '.join(self.jobs) or 'none'})")
        unknown = [n for n in names if n not in self.jobs]
        if unknown:
            raise UsageError(f"no job named {', '.join(map(repr, unknown))} in the configuration "
                             f"(configured: {', '.join(self.jobs) or 'none'})")
        return [self.jobs[n] for n in dict.fromkeys(names)]
