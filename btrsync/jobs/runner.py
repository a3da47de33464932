"""``btrsync run``: one job after another, each in this order::

    job lock (exit 11, or wait) ─► window open? (else skipped, exit 0) ─► a push slot (queue)
      ─► pre hooks (a failure skips the job unless pre_failure = "continue")
      ─► a snapshot of every subvolume (named by the clock's time)
      ─► per target (due? its window open?), under its repository lock:
           push every subvolume (or copy from another target: copy_from) ─► verify what was
           sent, drill when due ─► prune the target (only if all that succeeded) ─► summarise
           its catalog (jobs/target_run.py)
         a failing target never stops the next one
      ─► prune the local snapshots, unless a target failed, stopped or was locked (btrbk's rule)
      ─► post hooks, then on_success or on_failure
      ─► record the run (state_dir/jobs/JOB.json) ─► write the metrics file

Outcome per job: ok, partial (some targets failed), failed, locked, skipped, terminated; their
exit codes (``run``'s, the record's) are mapped in one place, ``btrsync.errors.job_exit`` and
``run_exit``.  A SIGTERM (systemctl stop) raises ``Terminated`` in the middle of
whatever runs: the ``with`` blocks stop ``btrfs send``, abort the upload and release the lease
and the locks, the run is recorded as terminated, the metrics are written, and the exception
goes on to ``cli/main``, which exits 128 + the signal number; the next run resumes the
interrupted backup from its durable segments.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from btrsync.audit import AuditLog
from btrsync.config.jobs import Job, JobTarget
from btrsync.config.timespan import timespan
from btrsync.errors import BtrsyncError, LockedError
from btrsync.jobs import hooks as hooklib
from btrsync.jobs.coordination import job_lock, push_slot
from btrsync.jobs.copy_run import CopyRun
from btrsync.jobs.env import OpenRepository, RunEnv
from btrsync.jobs.inhibit import sleep_inhibited
from btrsync.jobs.metrics import write_metrics_safely
from btrsync.jobs.outcome import BAD_TARGET, JobOutcome, RunReport
from btrsync.jobs.records import JobRecords, iso
from btrsync.jobs.runrecord import record_run
from btrsync.jobs.target_run import JobContext, PushRun, TargetRun, describe
from btrsync.ops.prune import prune_snapshots
from btrsync.signals import Terminated
from btrsync.snapshots.store import Snapshot, create_snapshot, planned_snapshot, subvolume_name

__all__ = ["OpenRepository", "RunEnv", "run_failure_hooks", "run_jobs"]

log = logging.getLogger(__name__)


def run_jobs(env: RunEnv, jobs: list[Job]) -> RunReport:
    report = RunReport([])
    for job in jobs:
        report.jobs.append(JobRun(env, job).run())
    return report


class JobRun:
    def __init__(self, env: RunEnv, job: Job) -> None:
        self.env, self.job, self.clock = env, job, env.clock
        self.out = JobOutcome(job.name, dry_run=env.dry_run)
        self.records = JobRecords(env.state_root)
        self.audit = AuditLog(env.state_root, syslog=env.syslog)
        self.doc: dict[str, Any] = {}
        self.t0 = 0.0
        self._recorded = False
        self.planned: dict[Path, Snapshot] = {}  # dry run: the snapshots the run would take

    # -- the whole job ---------------------------------------------------------------------------
    def run(self) -> JobOutcome:
        job, out = self.job, self.out
        out.started, self.t0 = self.clock.now(), self.clock.monotonic()
        wait = self.env.wait if self.env.wait is not None else job.lock_wait.total_seconds()
        if not job.enabled:
            return self._skip("disabled in the configuration (enabled = false)")
        try:
            with job_lock(self.env.state_root, job.name, wait=wait, clock=self.clock):
                self.doc = self.records.load(job.name)
                if not job.window.is_open(out.started):
                    return self._skip(job.window.closed_reason(out.started))
                with push_slot(self.env.state_root, self.env.config.jobs.max_parallel_jobs, clock=self.clock,
                               job=job.name), \
                        sleep_inhibited(f"job {job.name} runs", enabled=job.model.inhibit_sleep and not self.env.dry_run):
                    self._body()
                self._finish()
        except LockedError as exc:
            out.status, out.error = "locked", str(exc)
            log.warning("job not run job=%s: %s", job.name, exc)
        except OSError as exc:  # the state directory full or read-only: this job fails, the next runs
            where = f" ({exc.filename})" if exc.filename else ""
            out.status, out.error = "failed", f"{exc.strerror or exc}{where}"
            log.error("job %s failed: %s", job.name, out.error)
            try:
                self._finish()
            except (BtrsyncError, OSError) as failed:
                log.error("could not record the failed run of job %s: %s", job.name, failed)
        except Terminated as exc:
            if self._recorded:  # the run had ended and was recorded: only the metrics write was cut
                raise
            out.status, out.error = "terminated", f"stopped by {exc.name}"
            try:
                self._finish()
            except (BtrsyncError, OSError) as failed:  # a full or read-only state dir: still exit 128+N
                log.error("could not record the terminated run of job %s: %s", job.name, failed)
            raise
        finally:
            out.seconds = self.clock.monotonic() - self.t0
        return out

    def _skip(self, reason: str) -> JobOutcome:
        out = self.out
        out.status, out.reason = "skipped", reason
        log.info("job skipped job=%s: %s", self.job.name, reason)
        if not self.env.dry_run and self.job.enabled:
            self._record()
            self._recorded = True
            write_metrics_safely(self.env.config, self.env.state_root, self.clock)
        return out

    def _body(self) -> None:
        job, out = self.job, self.out
        if not self._pre_hooks():
            out.status = "failed"
            self._final_hooks(ran_pre=False)
            return
        if self._snapshots():
            ctx = JobContext(self.env, job, self.audit, self.doc, out.snapshots, self.planned)
            for target in job.targets:
                out.targets.append(target_run(ctx, target).run())
            self._prune_local()
        out.status = self._status()
        self._final_hooks(ran_pre=True)

    def _status(self) -> str:
        out = self.out
        if out.error:  # the snapshot failed: nothing new was sent
            return "failed"
        statuses = [t.status for t in out.targets]
        bad = [s for s in statuses if s in BAD_TARGET]
        good = [s for s in statuses if s in ("ok", "skipped")]
        if bad:
            return "partial" if any(s == "ok" for s in statuses) else "failed"
        if "locked" in statuses:
            return "partial" if any(s == "ok" for s in statuses) else "locked"
        if "stopped" in statuses:  # as asked (window_end = "stop"), but that backup is not complete
            return "partial"
        if out.local_prune_skipped and out.local_prune_skipped.startswith("failed"):
            return "partial"
        return "ok" if len(good) == len(statuses) else "failed"

    def _finish(self) -> None:
        if self.env.dry_run:
            return
        self.out.seconds = self.clock.monotonic() - self.t0
        self._record()
        self._recorded = True
        write_metrics_safely(self.env.config, self.env.state_root, self.clock)

    # -- hooks -----------------------------------------------------------------------------------
    def _hook_env(self, status: str) -> dict[str, str]:
        out = self.out
        errors = [e for e in [out.error, *(t.problem() for t in out.targets)] if e]
        return hooklib.env_for(
            self.job.name, status, targets=[t.name for t in self.job.targets],
            subvolumes=[str(s) for s in self.job.subvolumes], snapshots=out.snapshots,
            snapshot_dir=str(self.job.snapshot_dir),
            failed_targets=[t.name for t in out.targets if t.status in BAD_TARGET],
            stream_bytes=sum(t.stream_bytes for t in out.targets),
            stored_bytes=sum(t.stored_bytes for t in out.targets),
            seconds=self.clock.monotonic() - self.t0, error="; ".join(errors), dry_run=self.env.dry_run,
            path=self.job.hooks.path)

    def _hooks(self, kind: str, status: str, *, stop_on_failure: bool = False) -> list[hooklib.HookResult]:
        hooks = self.job.hooks
        argvs = getattr(hooks, kind)
        if not argvs:
            return []
        if self.env.dry_run:
            self.out.hooks += [{"kind": kind, "argv": a, "ran": False} for a in argvs]
            return []
        results = hooklib.run_hooks(kind, argvs, env=self._hook_env(status),
                                    timeout=timespan(hooks.timeout).total_seconds(),
                                    max_output_lines=hooks.max_output_lines, stop_on_failure=stop_on_failure)
        self.out.hooks += [{"kind": kind, "argv": r.argv, "ran": True, "code": r.code, "ok": r.ok,
                            "timed_out": r.timed_out, "seconds": round(r.seconds, 3),
                            "error": None if r.ok else r.describe()} for r in results]
        return results

    def _pre_hooks(self) -> bool:
        failed = [r for r in self._hooks("pre", "running", stop_on_failure=True) if not r.ok]
        if not failed:
            return True
        if self.job.hooks.pre_failure == "continue":
            log.warning("pre hook failed, continuing (pre_failure = continue) job=%s: %s", self.job.name,
                        failed[0].describe())
            return True
        self.out.error = f"{failed[0].describe()}: job skipped (pre_failure = skip)"
        return False

    def _final_hooks(self, *, ran_pre: bool) -> None:
        status = self.out.status
        if ran_pre:
            self._hooks("post", status)
        self._hooks("on_success" if status == "ok" else "on_failure", status)
        if status != "ok" and self.job.hooks.on_failure:
            self.doc["failure_hooks_ran_for"] = iso(self.out.started)  # the OnFailure unit needs not
            # under systemd: the unit's invocation, which the OnFailure unit gets as $MONITOR_INVOCATION_ID
            self.doc["failure_hooks_ran_in"] = os.environ.get("INVOCATION_ID")

    # -- snapshots -------------------------------------------------------------------------------
    def _snapshots(self) -> bool:
        """Take this run's snapshots; a dry run plans them instead (``self.planned``), checked as
        the real run would check them, so its plan includes what the run would send first."""
        when = self.clock.now()
        take = planned_snapshot if self.env.dry_run else create_snapshot
        for subvol in self.job.subvolumes:
            try:
                snap = take(subvol, self.job.snapshot_dir, when)
            except (BtrsyncError, OSError) as exc:
                self.out.error = f"snapshot of {subvol} {'would fail' if self.env.dry_run else 'failed'}: {exc}"
                log.error("job %s: %s", self.job.name, self.out.error)
                return False
            if self.env.dry_run:
                self.planned[subvol] = snap
            self.out.snapshots.append(snap.name)
        return True

    def _copy_fed_urls(self) -> set[str]:
        """The URLs of this job's copy_from targets (none this job also pushes to): fed from another
        target, never from a local snapshot, they need no local parent, so they protect no local
        snapshot (the off-site copy must not hold the host's snapshots until its next copy)."""
        seen = {t.name: t.url for t in self.out.targets if t.url}
        recorded = self.doc.get("targets", {})
        urls = {jt.name: seen.get(jt.name) or (recorded.get(jt.name) or {}).get("url") for jt in self.job.targets}
        fed = {urls[jt.name] for jt in self.job.targets if jt.copy_from is not None}
        pushed = {urls[jt.name] for jt in self.job.targets if jt.copy_from is None}
        return {u for u in fed - pushed if u}

    def _record(self) -> None:
        record_run(self.records, self.job, self.out, self.doc, self.clock.now())

    # -- local snapshots -------------------------------------------------------------------------
    def _prune_local(self) -> None:
        out = self.out
        copied = {jt.name for jt in self.job.targets if jt.copy_from is not None}  # need no local parent
        blocking = [t for t in out.targets if t.status not in ("ok", "skipped") and t.name not in copied]
        if blocking:
            out.local_prune_skipped = ("skipped: " + ", ".join(f"{t.name} {t.status}" for t in blocking)
                                       + " this run (local snapshots are kept until every target has succeeded)")
            log.info("local snapshots of job %s not pruned: %s", self.job.name, out.local_prune_skipped)
            return
        try:
            held_by = dict(self.env.state.targets(strict=True))
        except BtrsyncError as exc:
            out.local_prune_skipped = f"skipped: {exc}"
            log.error("local snapshots of job %s not pruned: %s", self.job.name, exc)
            return
        for url in self._copy_fed_urls():
            held_by.pop(url, None)
        for subvol in self.job.subvolumes:
            name = subvolume_name(subvol)
            policy = self.job.snapshot_policy or self.env.config.retention.snapshot_policy(name)
            if policy is None:
                continue
            try:
                result = prune_snapshots(self.job.snapshot_dir, name, policy, self.clock.now(), held_by=held_by,
                                         dry_run=self.env.dry_run, audit=self.audit)
            except (BtrsyncError, OSError) as exc:
                out.local_prune_skipped = f"failed for {name}: {describe(exc)}"
                log.error("local prune of job %s: %s", self.job.name, out.local_prune_skipped)
                continue
            out.local_pruned += result.deleted


def target_run(ctx: JobContext, jt: JobTarget) -> TargetRun:
    """The run of one target of the job: a push, or a copy for a target with ``copy_from``."""
    if jt.copy_from is not None:
        return CopyRun(ctx, jt)
    return PushRun(ctx, jt)


def run_failure_hooks(env: RunEnv, job: Job, unit: str) -> list[hooklib.HookResult]:
    """For the OnFailure unit: the job's on_failure hooks, unless its last run already ran them."""
    doc = JobRecords(env.state_root).load(job.name)
    last = doc.get("last_run") or {}
    # systemd >= 251 names the failed invocation: the hooks ran iff that run recorded them.  A run
    # killed before its record (SIGKILL, OOM) left the previous run's there, which must not count.
    monitored = os.environ.get("MONITOR_INVOCATION_ID")
    if monitored:
        ran = doc.get("failure_hooks_ran_in") == monitored
    else:  # an older systemd, or by hand: the last record's run, if it ran them
        ran = last.get("status") in ("failed", "partial") and doc.get("failure_hooks_ran_for") == last.get("started")
    if ran:
        log.info("on_failure hooks of job %s already ran for its last run", job.name)
        return []
    error = f"systemd unit {unit} failed (journalctl -u {unit})"
    if last.get("status") in ("terminated", "failed", "partial") and last.get("error"):
        error += f"; last run: {last['error']}"
    hooks = job.hooks
    return hooklib.run_hooks("on_failure", hooks.on_failure, timeout=timespan(hooks.timeout).total_seconds(),
                             max_output_lines=hooks.max_output_lines,
                             env=hooklib.env_for(job.name, "failed", targets=[t.name for t in job.targets],
                                                 subvolumes=[str(s) for s in job.subvolumes],
                                                 snapshot_dir=str(job.snapshot_dir), error=error,
                                                 path=hooks.path))
