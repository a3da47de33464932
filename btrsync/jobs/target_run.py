"""One target of one job's run::

    due? its window open? (else skipped) ─► open the repository, its local lock
      ─► the transfer: push every subvolume (``PushRun``) or copy from another target (``CopyRun``,
         jobs/copy_run.py) ─► verify what was sent, drill when due ─► prune the target (only if
         the transfer and the verification succeeded) ─► summarise its catalog

A failing target never stops the next one: every error becomes the target's status.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from btrsync.audit import AuditLog
from btrsync.catalog.manifest import Manifest
from btrsync.catalog.repository import Repository
from btrsync.config.jobs import Job, JobTarget
from btrsync.config.windows import BackupWindow
from btrsync.errors import BtrsyncError, DamageError, LockedError
from btrsync.jobs.coordination import repository_lock
from btrsync.jobs.env import RunEnv
from btrsync.jobs.outcome import TargetOutcome, prune_blocker, verification_failed
from btrsync.jobs.records import catalog_summary, iso, parse_iso
from btrsync.jobs.windowstop import WindowStop
from btrsync.ops.prune import prune_backups
from btrsync.ops.push.run import PushResult, push
from btrsync.ops.push.settings import bucket_for, settings_from
from btrsync.retention import Policy
from btrsync.snapshots.store import Snapshot, subvolume_name
from btrsync.units import parse_size

log = logging.getLogger(__name__)
# seconds: a repository lock that took longer to get makes the catalog listing taken beside the
# marker (Repository.open(listing=True)) too old to plan on; the push lists anew
LISTING_AHEAD_WAIT = 1.0


@dataclass
class JobContext:
    """What a job's run hands each of its target runs."""

    env: RunEnv
    job: Job
    audit: AuditLog
    doc: dict[str, Any]  # the job's record as loaded at the run's start; target runs update theirs
    snapshots: list[str]  # the names of the snapshots this run took (or plans)
    planned: dict[Path, Snapshot]  # dry run: the snapshots the run would take


@dataclass
class Transfer:
    """What a target run's transfer left: the target's backups afterwards (None: unknown) and the
    ids of the backups it wrote (verified afterwards)."""

    held: list[Manifest] | None = None
    sent: list[str] = dataclasses.field(default_factory=list)


class TargetRun:
    """The steps every kind of target run shares; ``transfer`` is what differs."""

    def __init__(self, ctx: JobContext, jt: JobTarget) -> None:
        self.ctx, self.jt = ctx, jt
        self.env, self.job, self.clock = ctx.env, ctx.job, ctx.env.clock
        self.res = TargetOutcome(jt.name)
        self.rec: dict[str, Any] = ctx.doc.setdefault("targets", {}).setdefault(jt.name, {})

    @property
    def window(self) -> BackupWindow:
        """The target's own window, else the job's."""
        return self.jt.window or self.job.window

    def run(self) -> TargetOutcome:
        res, jt = self.res, self.jt
        now = self.clock.now()
        t0 = self.clock.monotonic()
        if not self.window.is_open(now):
            res.status, res.reason = "skipped", self.window.closed_reason(now)
        elif jt.every is not None:
            due, why = jt.every.is_due(parse_iso(self.rec.get("last_success")), now, self.window.tz)
            if not due:
                res.status, res.reason = "skipped", f"not due ({why})"
        if res.status == "skipped":
            log.info("target skipped job=%s target=%s: %s", self.job.name, jt.name, res.reason)
            return res
        try:
            with self.env.open_repository(jt.name, not self.env.dry_run) as repo, self._repo_lock(repo):
                res.url = repo.target.display_url
                self._steps(repo)
        except LockedError as exc:
            res.fail("locked", str(exc))
        except (BtrsyncError, OSError) as exc:
            res.fail("failed", describe(exc))
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

    @property
    def lock_wait(self) -> float:
        return self.env.wait if self.env.wait is not None else self.job.lock_wait.total_seconds()

    @contextmanager
    def _repo_lock(self, repo: Repository) -> Iterator[None]:
        if self.env.dry_run:
            yield
            return
        asked = self.clock.monotonic()
        with repository_lock(self.env.state_root, repo.repo_id, wait=self.lock_wait, clock=self.clock):
            if self.clock.monotonic() - asked > LISTING_AHEAD_WAIT:
                repo.drop_listing_ahead()  # another run held the repository meanwhile: plan on a new listing
            yield

    def policy(self, subvolume: str, url: str) -> Policy | None:
        jt = self.jt
        if jt.retention is not None or jt.retention_text != "[retention] of each subvolume":
            return jt.retention
        return self.env.config.retention.backup_policy(subvolume, self.env.config.target_names(url) + (jt.name,))

    def transfer(self, repo: Repository) -> Transfer:
        raise NotImplementedError

    def _steps(self, repo: Repository) -> None:
        res, rec = self.res, self.rec
        done = self.transfer(repo)
        held = done.held
        if self.env.dry_run:
            self._prune(repo)
            return
        if res.status == "ok":
            # verification first: a new backup found damaged must not have been the reason the
            # old chain was pruned away
            self._verify(repo, done.sent)
            blocked = prune_blocker(res)
            if blocked is None:  # a drill that could not run (its scratch disk) says nothing of the backups
                held = self._prune(repo) or held
            else:
                res.prune_skipped = f"not pruned: {blocked} this run"
        else:
            res.prune_skipped = f"not pruned: {res.status} this run"
        self._summarise(repo, rec, held)

    def _prune(self, repo: Repository) -> list[Manifest] | None:
        res, rec = self.res, self.rec
        url = repo.target.display_url
        mine = {subvolume_name(s) for s in self.job.subvolumes}
        policies = {name: self.policy(name, url) for name in mine}
        if all(p is None for p in policies.values()):
            res.prune_skipped = "no retention policy: keeps everything"
            return None
        try:
            result = prune_backups(repo, lambda sub: policies.get(sub), self.clock.now(), dry_run=self.env.dry_run,
                                   audit=self.ctx.audit, policy_text=lambda sub: p.describe()
                                   if (p := policies.get(sub)) else "keep all")
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

    def _verify(self, repo: Repository, sent: list[str]) -> None:
        from btrsync.jobs.verification import drill_due, run_drill, run_verify

        res, rec = self.res, self.rec
        policy = self.jt.verify
        if policy.level != "none" and sent:
            res.verify = run_verify(repo, sent, policy, self.job, self.env.state_root, self.env.config, self.clock)
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

    def _summarise(self, repo: Repository, rec: dict[str, Any], held: list[Manifest] | None) -> None:
        """The target's catalog as this run left it (counts, bytes, newest, depth) and its capacity."""
        try:
            manifests = held if held is not None else repo.catalog().manifests
            _url, settings = self.env.config.target(self.jt.name)
            quota = parse_size(settings["quota"]) if settings.get("quota") else None
            free = repo.target.free_space()
        except (BtrsyncError, OSError, ValueError) as exc:
            log.warning("could not summarise target %s: %s", self.jt.name, describe(exc))
            return
        rec["url"] = repo.target.display_url
        rec["catalog"] = catalog_summary(manifests, {subvolume_name(s) for s in self.job.subvolumes},
                                         self.clock.now())
        rec["capacity"] = {"quota_bytes": quota, "free_bytes": free}


class PushRun(TargetRun):
    """A target the job pushes its subvolumes to (``window_end = "stop"`` ends the push at a
    segment boundary when the window closes: the target is then "stopped")."""

    def transfer(self, repo: Repository) -> Transfer:
        job, env, jt, res = self.job, self.env, self.jt, self.res
        settings = settings_from(env.config.push, max_chain=jt.max_chain, target=env.config.targets.get(jt.name))
        if jt.bwlimit is not None:
            settings = dataclasses.replace(settings, bucket=bucket_for(jt.bwlimit))
        window = self.window
        stopper = None
        if job.window_end == "stop" and not window.always and not env.dry_run:
            stopper = WindowStop(lambda: window.is_open(self.clock.now()), window.describe())
            settings = dataclasses.replace(settings, may_start_segment=stopper)
        url = res.url or ""
        done = Transfer()
        for subvol in job.subvolumes:
            name = subvolume_name(subvol)
            before = (res.status, res.error)
            try:
                result = push(subvol, job.snapshot_dir, repo, settings, dry_run=env.dry_run,
                              backfill=jt.backfill, policy=self.policy(name, url), audit=self.ctx.audit,
                              planned=self.ctx.planned.get(subvol), now=self.clock.now(),
                              unusable=env.state.damaged_backups(url))
            except LockedError:
                raise
            except (BtrsyncError, OSError) as exc:
                res.fail("failed", f"{name}: {describe(exc)}")
            else:
                done.held = self._after_push(repo, result)
                done.sent += [r.backup_id for r in result.results if r.status == "ok"]
            if stopper is not None and stopper.stopped:
                # what this subvolume's push reported is the stop; what failed before it stays
                res.status, res.error = before
                break
        if stopper is not None and stopper.stopped:
            if res.status == "ok":
                res.status, res.error = "stopped", None
            res.reason = f"the window {window.describe()} closed during the push; the next run resumes it"
        return done

    def _after_push(self, repo: Repository, result: PushResult) -> list[Manifest]:
        res = self.res
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
            if skip.snapshot.name in self.ctx.snapshots:
                hint = ("; the target holds a backup dated after it: was a clock ahead when that was "
                        "taken? (docs/scheduling.md, 'Clocks')") if skip.reason.startswith("older than") else ""
                res.fail("failed", f"this run's snapshot {skip.snapshot.name} was not sent: {skip.reason}{hint}")
        return result.held


def describe(exc: BaseException) -> str:
    return str(exc) if isinstance(exc, BtrsyncError) else f"{type(exc).__name__}: {exc}"
