"""A job target with ``copy_from = "SOURCE"``: the run feeds it from another target instead of
pushing (the classic disk every night, bucket a few times a week: the host sends once).

    open SOURCE (read) ─► of the job's subvolumes, the source's restorable backups this target
    lacks and its retention would keep (ops/copy/plan.wanted_by_policy: what its own prune
    removed is not brought back) ─► ops/copy, with the target's bwlimit and window_end ─►
    then, as for a push: verify what was copied, prune this target by its own policy, summarise

The source is only read: its own retention and schedule are its own.  Both repositories are
opened with the configuration's key.
"""

from __future__ import annotations

import dataclasses
import logging

from btrsync.catalog.repository import Repository
from btrsync.jobs.target_run import TargetRun, Transfer
from btrsync.jobs.windowstop import WindowStop
from btrsync.ops.copy import CopySettings, copy_backups, wanted_by_policy
from btrsync.ops.push.settings import bucket_for, settings_from
from btrsync.snapshots.store import subvolume_name

log = logging.getLogger(__name__)


class CopyRun(TargetRun):
    def transfer(self, repo: Repository) -> Transfer:
        env, jt, res = self.env, self.jt, self.res
        assert jt.copy_from is not None
        push = settings_from(env.config.push, target=env.config.targets.get(jt.name))
        settings = CopySettings(workers=push.workers, segment_size=push.segment_size,
                                bucket=bucket_for(jt.bwlimit) if jt.bwlimit is not None else push.bucket)
        window = self.window
        stopper = None
        if self.job.window_end == "stop" and not window.always and not env.dry_run:
            stopper = WindowStop(lambda: window.is_open(self.clock.now()), window.describe())
            settings = dataclasses.replace(settings, may_start_segment=stopper)
        url = repo.target.display_url
        mine = {subvolume_name(s) for s in self.job.subvolumes}
        with env.open_repository(jt.copy_from, False) as source:
            # both only planned on: what is committed is checked again under each backup's lease
            catalogs = source.catalog(ahead=True), repo.catalog(ahead=True)
            wanted = wanted_by_policy(*catalogs, mine, lambda sub: self.policy(sub, url), self.clock.now())
            result = copy_backups(source, repo, wanted, settings, dry_run=env.dry_run, audit=self.ctx.audit,
                                  catalogs=catalogs, policy_for=lambda sub: self.policy(sub, url))
        for b in result.backups:
            if b.status == "present":
                continue
            res.backups.append({"subvolume": b.subvolume, "backup_id": b.backup_id, "kind": b.kind,
                                "status": "ok" if b.status == "copied" else b.status, "copied_from": jt.copy_from,
                                "stream_bytes": b.stream_bytes, "stored_bytes": b.stored_bytes,
                                "uploaded_bytes": b.moved_bytes, "resumed_bytes": b.resumed_bytes,
                                "seconds": round(b.seconds, 3), "error": b.error})
            if b.status == "copied":
                res.stream_bytes += b.stream_bytes
                res.stored_bytes += b.stored_bytes
        if env.dry_run:
            res.plan += [{"subvolume": b.subvolume, "snapshot": b.snapshot, "kind": b.kind, "parent": b.parent,
                          "reason": f"copy from {jt.copy_from}", "estimated_bytes": b.stored_bytes}
                         for b in result.backups if b.status == "planned"]
            return Transfer(held=result.held)
        for b in result.backups:
            if b.status == "failed":
                res.fail("damaged" if b.damaged else "failed", f"copy of backup {b.backup_id}: {b.error}")
        if any(b.status == "stopped" for b in result.backups) and res.status == "ok":
            res.status = "stopped"
            res.reason = f"the window {window.describe()} closed during the copy; the next run resumes it"
        return Transfer(held=result.held, sent=[b.backup_id for b in result.backups if b.status == "copied"])
