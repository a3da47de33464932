"""Jobs as the runner uses them: ``[jobs.*]`` resolved by :func:`parse_jobs`.

Plain dataclasses; the validating pydantic models (``btrsync.config.schema``) are imported only
by ``parse_jobs``, for a file that has jobs, so that a command that runs no job never imports
pydantic (about 0.2 s of every CLI start).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from btrsync.config import DEFAULT_METRICS_DIR
from btrsync.config.retention import RetentionConfig, policy_from
from btrsync.config.timespan import timespan
from btrsync.config.windows import BackupWindow, TargetEvery
from btrsync.errors import ConfigError, UsageError
from btrsync.pipeline.schedule import RateSchedule
from btrsync.retention import Policy

if TYPE_CHECKING:
    from btrsync.config.schema import HooksModel, JobModel, JobTargetModel, VerifyModel


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
    copy_from: str | None = None  # copy from this target (a [targets.*] name or URL) instead of pushing


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


def parse_jobs(doc: Mapping[str, Any], where: str, targets: Mapping[str, Any],
               retention: RetentionConfig) -> JobsConfig:
    """Validate the top-level run settings and [jobs.*] of a configuration document (with the
    pydantic models of ``btrsync.config.schema``, loaded here: only for a file that has jobs)."""
    from btrsync.config import schema

    run_doc = {k: doc[k] for k in ("metrics_dir", "max_parallel_jobs") if k in doc}
    run = schema.run_settings(run_doc, where)
    jobs_doc = doc.get("jobs", {})
    if not isinstance(jobs_doc, dict):
        raise ConfigError(f"{where} [jobs] must be a table of [jobs.NAME] tables")
    jobs: dict[str, Job] = {}
    problems: list[str] = []
    for name, body in jobs_doc.items():
        if not _valid_job_name(name):
            problems.append(f"{where} [jobs.{name}]: a job name is letters, digits, '-' and '_', not starting with '-' "
                            "(it names systemd units and metrics labels)")
            continue
        try:
            model = schema.job_model(name, body, where)
        except ConfigError as exc:
            problems.append(str(exc))
            continue
        try:
            jobs[name] = _resolve(name, model, where, targets, retention)
        except ConfigError as exc:
            problems.append(str(exc))
    problems += _series_collisions(jobs, where)
    if problems:
        raise ConfigError("\n".join(problems))
    metrics_dir = Path(run.metrics_dir) if run.metrics_dir else None
    return JobsConfig(jobs, metrics_dir, "metrics_dir" in doc, run.max_parallel_jobs)


def _valid_job_name(name: str) -> bool:
    return (bool(name) and len(name) <= 64 and all(c.isalnum() or c in "-_" for c in name) and name.isascii()
            and not name.startswith("-"))  # `btrsync run --all` is not a job


def _series_collisions(jobs: Mapping[str, Job], where: str) -> list[str]:
    """Snapshots are named ``<last path component>.<time>`` in their snapshot_dir: two subvolumes
    (or two jobs) meeting under one name there would be one history to push, restore and prune:
    ``/home`` sent as an incremental on ``/srv/home``'s parent, one's backups pruned as the other's."""
    owners: dict[tuple[str, str], list[str]] = {}
    for job in jobs.values():
        directory = os.path.normpath(job.snapshot_dir)
        for subvol in job.subvolumes:
            path = os.path.normpath(subvol)
            owners.setdefault((directory, os.path.basename(path) or "root"), []).append(f"{path} in [jobs.{job.name}]")
    return [f"{where}: {' and '.join(who)} would both be snapshotted as {base}.<time> in {directory}: "
            "give each subvolume, and each job, a snapshot_dir of its own (or list a subvolume once)"
            for (directory, base), who in owners.items() if len(who) > 1]


def _resolve(name: str, model: JobModel, where: str, targets: Mapping[str, Any],
             retention: RetentionConfig) -> Job:
    here = f"{where} [jobs.{name}]"
    tz = model.timezone
    profile = None
    if model.retention is not None:
        profile = retention.profiles.get(model.retention)
        if profile is None:
            raise ConfigError(f"{here} retention: no profile named {model.retention!r} "
                              f"(defined: {', '.join(sorted(retention.profiles)) or 'none'})")
    snapshot_policy = profile.snapshots if profile else None
    if model.snapshots is not None:
        snapshot_policy = policy_from(model.snapshots, retention.timezone, f"{here} snapshots")
    job_targets = []
    for tname, tmodel in model.targets.items():
        if tname not in targets and "://" not in tname:
            raise ConfigError(f"{here} targets.{tname}: no [targets.{tname}] in the configuration "
                              f"(configured: {', '.join(sorted(targets)) or 'none'}) and not a URL")
        job_targets.append(_resolve_target(tname, tmodel, model, profile, here, targets, retention))
    return Job(
        name=name, enabled=model.enabled, subvolumes=tuple(Path(p) for p in model.subvolumes),
        snapshot_dir=Path(model.snapshot_dir), schedule=model.schedule,
        randomized_delay=timespan(model.randomized_delay), window=BackupWindow.parse(model.window, tz),
        window_end=model.window_end, snapshot_policy=snapshot_policy, targets=tuple(job_targets),
        verify=model.verify, hooks=model.hooks, lock_wait=timespan(model.lock_wait),
        stale_after=timespan(model.stale_after), model=model,
    )


def _resolve_target(tname: str, t: JobTargetModel, job: JobModel, profile: Any, here: str,
                    targets: Mapping[str, Any], retention: RetentionConfig) -> JobTarget:
    where = f"{here} targets.{tname}"
    policy: Policy | None
    if isinstance(t.retention, dict):
        policy, text = policy_from(t.retention, retention.timezone, f"{where} retention"), "inline"
    elif isinstance(t.retention, str):
        chosen = retention.profiles.get(t.retention)
        if chosen is None:
            raise ConfigError(f"{where} retention: no profile named {t.retention!r} "
                              f"(defined: {', '.join(sorted(retention.profiles)) or 'none'})")
        policy, text = _profile_policy(chosen, tname, targets), f"profile {t.retention}"
    elif profile is not None:
        policy, text = _profile_policy(profile, tname, targets), f"profile {profile.name}"
    else:
        policy, text = None, "[retention] of each subvolume"
    bwlimit = None
    if t.bwlimit is not None or t.bwlimit_schedule:
        try:
            bwlimit = RateSchedule.parse(t.bwlimit, list(t.bwlimit_schedule or []), job.timezone)
        except ValueError as exc:
            raise ConfigError(f"{where} bwlimit: {exc}") from None
    return JobTarget(
        name=tname, retention=policy, retention_text=text, bwlimit=bwlimit, max_chain=t.max_chain,
        every=TargetEvery.parse(t.every) if t.every else None,
        window=BackupWindow.parse(t.window, job.timezone) if t.window is not None else None,
        backfill=t.backfill, verify=t.verify or job.verify,
        copy_from=_copy_source(t.copy_from, tname, where, targets),
    )


def _copy_source(source: str | None, tname: str, where: str, targets: Mapping[str, Any]) -> str | None:
    """``copy_from``: another configured target or a URL, never the target itself."""
    if source is None:
        return None
    if source not in targets and "://" not in source:
        raise ConfigError(f"{where} copy_from: no [targets.{source}] in the configuration "
                          f"(configured: {', '.join(sorted(targets)) or 'none'}) and not a URL")

    def url(name: str) -> str:
        settings = targets.get(name)
        return str(settings.get("url", name)).rstrip("/") if isinstance(settings, dict) else name.rstrip("/")

    if source == tname or url(source) == url(tname):
        raise ConfigError(f"{where} copy_from: {source!r} is this target itself; copy_from names the target "
                          "whose backups this one receives")
    return source


def _profile_policy(profile: Any, tname: str, targets: Mapping[str, Any]) -> Policy | None:
    names = [tname]
    settings = targets.get(tname)
    if isinstance(settings, dict) and settings.get("url"):
        names.append(str(settings["url"]))
    for n in names:
        if n in profile.targets:
            return profile.targets[n]  # type: ignore[no-any-return]
    return profile.backups  # type: ignore[no-any-return]
