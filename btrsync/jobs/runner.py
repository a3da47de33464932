"""``btrsync run``: one job after another, each in this order::

    job lock (exit 11, or wait) ─► window open? (else skipped, exit 0) ─► a push slot (queue)
      ─► pre hooks (a failure skips the job unless pre_failure = "continue")
      ─► a snapshot of every subvolume (named by the clock's time)
      ─► per target (due? its window open?), under its repository lock:
           push every subvolume ─► prune the target (only if its pushes succeeded)
           ─► verify what was sent, drill when due ─► summarise its catalog
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

import dataclasses
import logging
import os
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from btrsync.audit import AuditLog
from btrsync.catalog.manifest import Manifest
from btrsync.catalog.repository import Repository
from btrsync.config.jobs import Job, JobTarget
from btrsync.config.model import Config
from btrsync.config.timespan import timespan
from btrsync.errors import BtrsyncError, DamageError, LockedError
from btrsync.jobs import hooks as hooklib
from btrsync.jobs.clock import Clock
from btrsync.jobs.coordination import job_lock, push_slot, repository_lock
from btrsync.jobs.metrics import write_metrics_safely
from btrsync.jobs.outcome import (
    BAD_TARGET, JobOutcome, RunReport, TargetOutcome, prune_blocker, verification_failed,
)
from btrsync.jobs.windowstop import WindowStop
from btrsync.jobs.records import JobRecords, catalog_summary, iso, parse_iso
from btrsync.ops.prune import prune_backups, prune_snapshots
from btrsync.ops.push import PushResult, push
from btrsync.ops.push_settings import bucket_for, settings_from
from btrsync.retention import Policy
from btrsync.signals import Terminated
from btrsync.snapshots.store import Snapshot, create_snapshot, planned_snapshot, subvolume_name
from btrsync.state import State
from btrsync.units import parse_size

log = logging.getLogger(__name__)

OpenRepository = Callable[[str, bool], AbstractContextManager[Repository]]  # (name or URL, write)

@dataclass
class RunEnv:
    """What a run needs from its surroundings (the CLI builds it; tests build their own)."""

    config: Config
    state_root: Path
    open_repository: OpenRepository
    clock: Clock
    dry_run: bool = False
    wait: float | None = None  # --wait: overrides each job's lock_wait
    syslog: bool = True

    @property
    def state(self) -> State:
        return State(self.state_root)


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
                               job=job.name):
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
            for target in job.targets:
                out.targets.append(self._target(target))
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

    # -- one target ------------------------------------------------------------------------------
    def _target(self, jt: JobTarget) -> TargetOutcome:
        res = TargetOutcome(jt.name)
        rec = self.doc.setdefault("targets", {}).setdefault(jt.name, {})
        now = self.clock.now()
        window = jt.window or self.job.window
        t0 = self.clock.monotonic()
        if not window.is_open(now):
            res.status, res.reason = "skipped", window.closed_reason(now)
        elif jt.every is not None:
            due, why = jt.every.is_due(parse_iso(rec.get("last_success")), now, window.tz)
            if not due:
                res.status, res.reason = "skipped", f"not due ({why})"
        if res.status == "skipped":
            log.info("target skipped job=%s target=%s: %s", self.job.name, jt.name, res.reason)
            return res
        wait = self.env.wait if self.env.wait is not None else self.job.lock_wait.total_seconds()
        try:
            with self.env.open_repository(jt.name, not self.env.dry_run) as repo, \
                    self._repo_lock(repo, wait):
                res.url = repo.target.display_url
                self._push_prune_verify(repo, jt, res, rec)
        except LockedError as exc:
            res.fail("locked", str(exc))
        except (BtrsyncError, OSError) as exc:
            res.fail("failed", _describe(exc))
        except Exception as exc:  # noqa: BLE001 - a bug (or input nobody foresaw) fails this target, not the job
            log.exception("unexpected error with target %s of job %s", jt.name, self.job.name)
            res.fail("failed", f"unexpected error ({type(exc).__name__}: {exc}); the log has the traceback: "
                               "please report it")
        if res.status != "ok" and res.prune_skipped is None:
            res.prune_skipped = f"not pruned: {res.status} this run"
        res.seconds = self.clock.monotonic() - t0
        if res.error:
            log.error("target %s of job %s: %s", jt.name, self.job.name, res.error)
        return res

    @contextmanager
    def _repo_lock(self, repo: Repository, wait: float) -> Iterator[None]:
        if self.env.dry_run:
            yield
            return
        with repository_lock(self.env.state_root, repo.repo_id, wait=wait, clock=self.clock):
            yield

    def _policy(self, jt: JobTarget, subvolume: str, url: str) -> Policy | None:
        if jt.retention is not None or jt.retention_text != "[retention] of each subvolume":
            return jt.retention
        return self.env.config.retention.backup_policy(subvolume, self.env.config.target_names(url) + (jt.name,))

    def _push_prune_verify(self, repo: Repository, jt: JobTarget, res: TargetOutcome,
                           rec: dict[str, Any]) -> None:
        job, env = self.job, self.env
        settings = settings_from(env.config.push, max_chain=jt.max_chain, target=env.config.targets.get(jt.name))
        if jt.bwlimit is not None:
            settings = dataclasses.replace(settings, bucket=bucket_for(jt.bwlimit))
        window = jt.window or job.window
        stopper = None
        if job.window_end == "stop" and not window.always and not env.dry_run:
            stopper = WindowStop(lambda: window.is_open(self.clock.now()), window.describe())
            settings = dataclasses.replace(settings, may_start_segment=stopper)
        url = res.url or ""
        held: list[Manifest] | None = None
        pushed: list[str] = []
        for subvol in job.subvolumes:
            name = subvolume_name(subvol)
            before = (res.status, res.error)
            try:
                result = push(subvol, job.snapshot_dir, repo, settings, dry_run=env.dry_run,
                              backfill=jt.backfill, policy=self._policy(jt, name, url), audit=self.audit,
                              planned=self.planned.get(subvol), now=self.clock.now(),
                              unusable=env.state.damaged_backups(url))
            except LockedError:
                raise
            except (BtrsyncError, OSError) as exc:
                res.fail("failed", f"{name}: {_describe(exc)}")
            else:
                held = self._after_push(repo, result, res)
                pushed += [r.backup_id for r in result.results if r.status == "ok"]
            if stopper is not None and stopper.stopped:
                # what this subvolume's push reported is the stop; what failed before it stays
                res.status, res.error = before
                break
        if stopper is not None and stopper.stopped:
            if res.status == "ok":
                res.status, res.error = "stopped", None
            res.reason = f"the window {window.describe()} closed during the push; the next run resumes it"
        if env.dry_run:
            self._prune_target(repo, jt, res, rec)
            return
        if res.status == "ok":
            # verification first: a new backup found damaged must not have been the reason the
            # old chain was pruned away
            self._verify(repo, jt, res, rec, pushed)
            blocked = prune_blocker(res)
            if blocked is None:  # a drill that could not run (its scratch disk) says nothing of the backups
                held = self._prune_target(repo, jt, res, rec) or held
            else:
                res.prune_skipped = f"not pruned: {blocked} this run"
        else:
            res.prune_skipped = f"not pruned: {res.status} this run"
        self._summarise(repo, jt, rec, held)

    def _after_push(self, repo: Repository, result: PushResult, res: TargetOutcome) -> list[Manifest]:
        state, url = self.env.state, repo.target.display_url
        complete = not (result.catalog and result.catalog.damaged)
        if self.env.dry_run:
            res.plan += [{"subvolume": result.subvolume, "snapshot": s.snapshot.name, "kind": s.kind,
                          "parent": s.parent.name if s.parent else None, "reason": s.reason, "tier": s.tier,
                          "kept_until": s.kept_until.isoformat() if s.kept_until else None,
                          "estimated_bytes": s.estimated_bytes}
                         for s in result.plan.steps]
            return result.held
        vanished = state.record_target(url, result.catalog.manifests if result.catalog else [],
                                       repo_id=repo.repo_id, complete=complete)
        if result.results or result.anchors is not None:
            state.record_target(url, result.held, repo_id=repo.repo_id, complete=complete,
                                anchors=result.anchors_for())
        if vanished:
            log.warning("%d backup(s) this host pushed vanished from %s without a prune by it: %s "
                        "(btrsync state acknowledge %s)", len(vanished), url, ", ".join(vanished[:5]), url)
        for r in result.results:
            res.backups.append({"subvolume": result.subvolume, "backup_id": r.backup_id, "kind": r.kind,
                                "status": r.status, "stream_bytes": r.stream_bytes, "stored_bytes": r.stored_bytes,
                                "uploaded_bytes": r.uploaded_bytes, "resumed_bytes": r.resumed_bytes,
                                "seconds": round(r.seconds, 3), "error": r.error})
            if r.status == "ok":
                res.stream_bytes += r.stream_bytes
                res.stored_bytes += r.stored_bytes
        if result.failed:
            first = result.failed[0]
            res.fail("failed", f"backup {first.backup_id} failed: {first.error}")
        for skip in result.plan.skipped:  # this run's own snapshot not sent: never an "ok" run
            if skip.snapshot.name in self.out.snapshots:
                hint = ("; the target holds a backup dated after it: was a clock ahead when that was "
                        "taken? (docs/scheduling.md, 'Clocks')") if skip.reason.startswith("older than") else ""
                res.fail("failed", f"this run's snapshot {skip.snapshot.name} was not sent: {skip.reason}{hint}")
        return result.held

    def _prune_target(self, repo: Repository, jt: JobTarget, res: TargetOutcome,
                      rec: dict[str, Any]) -> list[Manifest] | None:
        url = repo.target.display_url
        mine = {subvolume_name(s) for s in self.job.subvolumes}
        policies = {name: self._policy(jt, name, url) for name in mine}
        if all(p is None for p in policies.values()):
            res.prune_skipped = "no retention policy: keeps everything"
            return None
        try:
            result = prune_backups(repo, lambda sub: policies.get(sub), self.clock.now(), dry_run=self.env.dry_run,
                                   audit=self.audit, policy_text=lambda sub: p.describe() if (p := policies.get(sub))
                                   else "keep all")
        except DamageError as exc:
            res.fail("damaged", f"prune: {exc}")
            return None
        res.pruned = list(result.deleted)
        if self.env.dry_run:
            return None
        self.env.state.record_target(url, result.remaining, repo_id=repo.repo_id, deleted=result.deleted,
                                     complete=not result.damaged)
        rec["prune"] = {"time": iso(self.clock.now()), "deleted": len(result.deleted), "freed_bytes": result.freed}
        rec["deleted_total"] = int(rec.get("deleted_total", 0)) + len(result.deleted)
        try:
            result.raise_for_damage()
        except DamageError as exc:
            res.fail("damaged", str(exc))
        return result.remaining

    def _verify(self, repo: Repository, jt: JobTarget, res: TargetOutcome, rec: dict[str, Any],
                pushed: list[str]) -> None:
        from btrsync.jobs.verification import drill_due, run_drill, run_verify

        policy = jt.verify
        if policy.level != "none" and pushed:
            res.verify = run_verify(repo, pushed, policy, self.job, self.env.state_root, self.env.config, self.clock)
            rec["verify"] = res.verify
            if res.verify.get("ok"):
                rec["verify_last_success"] = res.verify["time"]
            else:
                verification_failed(res, "verification", res.verify)
        if drill_due(policy, rec, self.clock.now()):
            mine = sorted({subvolume_name(s) for s in self.job.subvolumes})
            res.drill = run_drill(repo, mine, policy, self.job, self.env.state_root, self.env.config, self.clock)
            if res.drill is not None:
                rec["drill"] = res.drill
                if res.drill.get("ok"):
                    rec["drill_last_success"] = res.drill["time"]
                else:
                    verification_failed(res, "restore drill", res.drill)

    def _summarise(self, repo: Repository, jt: JobTarget, rec: dict[str, Any], held: list[Manifest] | None) -> None:
        """The target's catalog as this run left it (counts, bytes, newest, depth) and its capacity."""
        try:
            manifests = held if held is not None else repo.catalog().manifests
            _url, settings = self.env.config.target(jt.name)
            quota = parse_size(settings["quota"]) if settings.get("quota") else None
            free = repo.target.free_space()
        except (BtrsyncError, OSError, ValueError) as exc:
            log.warning("could not summarise target %s: %s", jt.name, _describe(exc))
            return
        rec["url"] = repo.target.display_url
        rec["catalog"] = catalog_summary(manifests, {subvolume_name(s) for s in self.job.subvolumes},
                                         self.clock.now())
        rec["capacity"] = {"quota_bytes": quota, "free_bytes": free}

    # -- local snapshots -------------------------------------------------------------------------
    def _prune_local(self) -> None:
        out = self.out
        blocking = [t for t in out.targets if t.status not in ("ok", "skipped")]
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
        for subvol in self.job.subvolumes:
            name = subvolume_name(subvol)
            policy = self.job.snapshot_policy or self.env.config.retention.snapshot_policy(name)
            if policy is None:
                continue
            try:
                result = prune_snapshots(self.job.snapshot_dir, name, policy, self.clock.now(), held_by=held_by,
                                         dry_run=self.env.dry_run, audit=self.audit)
            except (BtrsyncError, OSError) as exc:
                out.local_prune_skipped = f"failed for {name}: {_describe(exc)}"
                log.error("local prune of job %s: %s", self.job.name, out.local_prune_skipped)
                continue
            out.local_pruned += result.deleted

    # -- the record ------------------------------------------------------------------------------
    def _record(self) -> None:
        out, doc = self.out, self.doc or self.records.load(self.job.name)
        now = self.clock.now()
        doc["job"] = self.job.name
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
            if name not in {t.name for t in self.job.targets}:
                del targets[name]
        self.records.save(self.job.name, doc)


def _describe(exc: BaseException) -> str:
    return str(exc) if isinstance(exc, BtrsyncError) else f"{type(exc).__name__}: {exc}"


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
