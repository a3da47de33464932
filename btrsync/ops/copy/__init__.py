"""``btrsync copy``: backups of one repository copied into another, chains intact.

    open both (exit 10 / 12 before anything is written; the same repository twice: exit 2)
      ─► plan (ops/copy/plan.py): each asked-for backup with the links of its chain the
         destination lacks, parents first; links already there matched by id and snapshot uuid
      ─► for each, oldest link first (transfer.py): under the destination's upload lease, read
         every chunk through read/ (authenticated and checked), seal it for the destination,
         segments and indexes, the file index, one listing, the manifest last

A backup that fails commits nothing.  Damage of a source backup skips the backups that build on
it, and the others are still copied; any other failure (the destination full or gone) ends the
copy there, the rest left for the next one.  A missing object while either repository's marker
is gone too (a disk unmounted mid-copy, catalog/reach.py) is such a failure, not damage.  Copied backups keep their ids,
snapshot times, hosts and chain links, so ``list`` shows them as on the source; each
repository's retention then decides alone what it keeps.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime

from btrsync.audit import AuditLog
from btrsync.catalog.manifest import Manifest
from btrsync.catalog.reach import away
from btrsync.catalog.repository import Catalog, Repository
from btrsync.errors import BtrsyncError, DamageError, LockedError, PartialError
from btrsync.ops.immutable import kept_until, locked_long_enough, locking
from btrsync.ops.copy.plan import CopyPlan, PolicyFor, check_distinct, plan_copy, wanted_by_policy
from btrsync.ops.copy.transfer import CopiedBackup, CopyError, CopySettings, Refused, copy_backup
from btrsync.progress import Progress

__all__ = ["CopiedBackup", "CopyError", "CopyPlan", "CopyResult", "CopySettings", "copy_backups",
           "raise_for_failures", "wanted_by_policy"]

log = logging.getLogger(__name__)


@dataclass
class CopyResult:
    source: str
    destination: str
    backups: list[CopiedBackup] = field(default_factory=list)
    unusable: dict[str, str] = field(default_factory=dict)  # source backups left out (--all): why
    held: list[Manifest] = field(default_factory=list)  # the destination's backups afterwards
    dry_run: bool = False

    def totals(self) -> dict[str, int]:
        copied = [b for b in self.backups if b.status in ("copied", "planned")]
        return {"backups": len(copied), "stored_bytes": sum(b.stored_bytes for b in copied),
                "moved_bytes": sum(b.moved_bytes for b in copied),
                "resumed_bytes": sum(b.resumed_bytes for b in copied),
                "read_bytes": sum(b.read_bytes for b in copied),
                "present": sum(1 for b in self.backups if b.status == "present")}

    def as_dict(self) -> dict[str, object]:
        return {"source": self.source, "destination": self.destination, "dry_run": self.dry_run,
                "backups": [vars_of(b) for b in self.backups], "unusable": self.unusable,
                "summary": self.totals()}


def vars_of(b: CopiedBackup) -> dict[str, object]:
    return {name: getattr(b, name) for name in b.__slots__}  # type: ignore[attr-defined]


def copy_backups(source: Repository, dest: Repository, specs: Sequence[str] | None, settings: CopySettings, *,
                 dry_run: bool = False, audit: AuditLog | None = None, progress: Progress | None = None,
                 catalogs: tuple[Catalog, Catalog] | None = None, policy_for: PolicyFor | None = None) -> CopyResult:
    """Copy the backups ``specs`` names (None: every restorable backup) from ``source`` to ``dest``;
    ``catalogs``: the two catalogs (source, destination) when the caller has just read them.
    ``policy_for(subvolume)``: the destination's retention; on a destination with Object Lock each
    copied backup is locked until the date it keeps it (its own or its longest-lived child's,
    plus the margin; the margin alone without a policy), as a push's would be."""
    src_url, dst_url = source.target.display_url, dest.target.display_url
    check_distinct(source.repo_id, dest.repo_id, src_url, dst_url)
    if not dry_run:
        dest.require_writable()
    source_catalog, dest_catalog = catalogs or (source.catalog(), dest.catalog())
    plan = plan_copy(source_catalog, dest_catalog, specs, src_url, dst_url)
    result = CopyResult(src_url, dst_url, unusable=dict(plan.unusable), held=list(dest_catalog.manifests),
                        dry_run=dry_run)
    result.backups += [CopiedBackup.of(m, "present") for m in plan.present]
    if dry_run:
        result.backups += [CopiedBackup.of(m, "planned") for m in plan.copy]
        return result
    set_rate = getattr(dest.target, "set_rate_limit", None)  # ssh: rsync follows the limit too
    if set_rate is not None and settings.bucket is not None:
        set_rate(settings.bucket.current_rate)
    until = (kept_until(dest_catalog.manifests + plan.copy, policy_for)
             if policy_for is not None and locking(dest.target) else {})
    for m in plan.present:  # what the copies are sent on is kept as long as they need it, as for push
        if m.backup_id in until:
            _extend_present(dest.target, m.backup_id, until[m.backup_id])
    failed: set[str] = set()
    for index, m in enumerate(plan.copy, 1):
        if m.parent_id in failed:
            skipped = CopiedBackup.of(m, "skipped")
            skipped.error = f"its parent {m.parent_id} was not copied"
            result.backups.append(skipped)
            failed.add(m.backup_id)
            continue
        try:
            if locking(dest.target):
                dest.target.hold_backup(m.backup_id, until.get(m.backup_id))  # type: ignore[attr-defined]
            outcome, copied = copy_backup(source, dest, m, settings, audit, progress, index=index,
                                          count=len(plan.copy))
        except LockedError:
            raise
        except Refused as exc:  # the run's window closed: this one resumes next time, the rest wait
            stopped = CopiedBackup.of(m, "stopped")
            stopped.error = str(exc)
            result.backups.append(stopped)
            log.info("copy of backup %s stopped: %s", m.backup_id, exc)
            break
        except BtrsyncError as exc:
            outcome = CopiedBackup.of(m, "failed")
            outcome.error = str(exc)
            outcome.damaged = isinstance(exc, DamageError)
            if outcome.damaged:  # a missing object of a repository that went away is not damage
                gone = away(source) or away(dest)
                if gone is not None:
                    outcome.error, outcome.damaged = f"{gone} ({exc})", False
            log.error("copy of backup %s from %s to %s failed: %s", m.backup_id, src_url, dst_url, exc)
            failed.add(m.backup_id)
            result.backups.append(outcome)
            if outcome.damaged:  # that backup's own damage: the other chains may be intact
                continue
            # the destination (full, gone, refusing) or the source going away: the rest would fail
            # the same way, each after its own attempt; they are left for the next copy
            for rest in plan.copy[index:]:
                skipped = CopiedBackup.of(rest, "skipped")
                skipped.error = f"not attempted after the failure of {m.backup_id}"
                result.backups.append(skipped)
            break
        result.backups.append(outcome)
        result.held.append(copied)
    return result


def _extend_present(target: object, backup_id: str, until: datetime) -> None:
    """A backup already on a locked destination that a copied one is sent on: locked at least
    until ``until`` (its policy date or its longest-lived child's), as a push extends the backups
    it is sent on (ops/immutable.hold_for_step); else it could expire under its child."""
    if locked_long_enough(target, backup_id, until):  # type: ignore[arg-type]
        return
    count = target.extend_retention(backup_id, until)  # type: ignore[attr-defined]
    log.info("extended the lock of %d objects of backup %s for %s (a copied backup is sent on it)",
             count, backup_id, f"{until:%Y-%m-%d %H:%MZ}")


def raise_for_failures(result: CopyResult) -> None:
    """Exit 4 when a source backup was damaged or left out as such, 3 when others were copied,
    1 when nothing was."""
    failed = [b for b in result.backups if b.status == "failed"]
    if not failed and not result.unusable:
        return
    parts = [f"backup {b.backup_id} was not copied: {b.error}" for b in failed]
    parts += [f"backup {bid} was left out: {why}" for bid, why in sorted(result.unusable.items())]
    skipped = [b for b in result.backups if b.status == "skipped"]
    if skipped:
        parts.append(f"{len(skipped)} more backup(s) were not copied ({skipped[0].error}): "
                     f"{', '.join(b.backup_id for b in skipped)}")
    message = "; ".join(parts)
    if result.unusable or any(b.damaged for b in failed):
        raise DamageError(message + "; nothing of those was committed")
    copied = [b.backup_id for b in result.backups if b.status == "copied"]
    if copied:
        raise PartialError(f"{message} ({len(copied)} other backup(s) were copied: {', '.join(copied)}; "
                           "run again to copy the rest)")
    raise CopyError(message)
