"""``push``: every snapshot of a subvolume the target lacks, oldest first; ``push_step``: one
backup, with its progress and its result.  Data flow: ``btrsync/ops/push/__init__.py``."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from btrsync.audit import AuditLog
from btrsync.btrfs.subvolume import is_subvolume
from btrsync.catalog.layout import backup_id_for
from btrsync.catalog.manifest import Manifest
from btrsync.catalog.repository import Catalog, Repository
from btrsync.errors import BtrsyncError, LockedError, PartialError, PushError, UsageError
from btrsync.ops.estimate import estimate_push
from btrsync.ops.immutable import hold_for_step
from btrsync.ops.push.aside import EstimatedAside
from btrsync.ops.push.attempt import Attempt, describe
from btrsync.ops.push.plan import delta_estimator, plan_for, tree_anchors
from btrsync.ops.push.settings import MiB, PushSettings
from btrsync.planner.plan import Plan, Step
from btrsync.planner.tree import Anchor
from btrsync.progress import Estimate, Progress, as_progress
from btrsync.retention import Policy
from btrsync.snapshots.store import Snapshot, subvolume_name

log = logging.getLogger(__name__)


@dataclass(slots=True)
class BackupResult:
    backup_id: str
    snapshot: str
    kind: str
    parent: str | None
    depth: int
    status: str = "ok"
    stream_bytes: int = 0
    stored_bytes: int = 0
    uploaded_bytes: int = 0
    resumed_bytes: int = 0
    seconds: float = 0.0
    error: str | None = None


@dataclass(slots=True)
class PushResult:
    target: str
    subvolume: str
    plan: Plan
    results: list[BackupResult] = field(default_factory=list)
    held: list[Manifest] = field(default_factory=list)  # the target's backups afterwards
    catalog: Catalog | None = None  # what the target held before (damaged and broken included)
    anchors: list[Anchor] | None = None  # chain = tree: local snapshots later pushes build on

    def anchors_for(self) -> tuple[str, list[Anchor]] | None:
        """(subvolume, anchors) as ``State.record_target`` takes them; None without a tree."""
        return None if self.anchors is None else (self.subvolume, self.anchors)

    @property
    def failed(self) -> list[BackupResult]:
        return [r for r in self.results if r.status != "ok"]


# the older progress callback: (backup id, raw bytes, stored bytes), counted as they pass the
# token bucket; a ``btrsync.progress.Progress`` also gets the estimate, the phases and the end
ProgressFn = Callable[[str, int, int], None]


def push(
    subvol: Path,
    snapshot_dir: Path,
    repo: Repository,
    settings: PushSettings,
    *,
    dry_run: bool = False,
    progress: Progress | ProgressFn | None = None,
    backfill: bool = False,
    policy: Policy | None = None,
    audit: AuditLog | None = None,
    planned: Snapshot | None = None,
    unusable: Mapping[str, str] | None = None,
    now: datetime | None = None,
) -> PushResult:
    """Send every snapshot of ``subvol`` the target lacks, oldest first; stop at the first failure.

    ``subvol`` must be a btrfs subvolume (exit 2 otherwise) with at least one snapshot in
    ``snapshot_dir`` (exit 1 otherwise): a push that could send nothing is never a success.
    A ``dry_run`` may plan a ``planned`` snapshot too: the one a run would take first.
    """
    if not is_subvolume(subvol):
        raise UsageError(f"{subvol} is not a btrfs subvolume: push takes the subvolume whose snapshots "
                         "are in --snapshot-dir (check the path)")
    if planned is not None and not dry_run:
        raise UsageError("a snapshot not taken yet can only be planned (dry run)")
    if not dry_run:
        repo.require_writable()
    catalog = repo.catalog(ahead=True)  # planning only: what is committed is checked again under the lease
    plan = plan_for(subvol, snapshot_dir, catalog, settings.max_chain, backfill=backfill, policy=policy,
                    planned=planned, now=now, chain=settings.chain, full_threshold=settings.full_threshold,
                    estimate=delta_estimator(), no_parent=unusable)
    result = PushResult(repo.target.display_url, subvolume_name(subvol), plan, held=list(catalog.manifests),
                        catalog=catalog)
    if dry_run:
        return result
    set_rate = getattr(repo.target, "set_rate_limit", None)  # ssh: rsync must follow the limit too
    if set_rate is not None and settings.bucket is not None:
        set_rate(settings.bucket.current_rate)
    for index, step in enumerate(plan.steps, 1):
        hold_for_step(repo.target, backup_id_for(step.snapshot.name, step.snapshot.uuid), step, result.held)
        outcome, manifest = push_step(repo, step, subvolume_name(subvol), subvol, settings, progress, audit,
                                      history=result.held, index=index, count=len(plan.steps))
        result.results.append(outcome)
        if manifest is None:
            break  # later steps would build on the backup that failed
        result.held.append(manifest)
    if settings.chain == "tree":
        result.anchors = tree_anchors(result.held, subvolume_name(subvol), policy, now or datetime.now(UTC),
                                      repo.target.display_url)
    return result


def push_step(
    repo: Repository,
    step: Step,
    subvolume: str,
    source: Path,
    settings: PushSettings,
    progress: Progress | ProgressFn | None = None,
    audit: AuditLog | None = None,
    *,
    history: list[Manifest] | None = None,
    index: int = 1,
    count: int = 1,
) -> tuple[BackupResult, Manifest | None]:
    """Send one snapshot and commit its manifest; on failure nothing is committed.

    Durable segments of an interrupted earlier attempt are resumed (after the re-run stream is
    checked against them); if the stream differs, the backup restarts from scratch once.  With
    ``progress``, the stream size is estimated first (``ops/estimate.py``; ``history``, the
    target's manifests, is the fallback) and reported as the backup's total.
    """
    reporter = as_progress(progress)
    parent = next((m for m in history or [] if m.backup_id == step.parent_backup_id), None)
    attempt = Attempt(repo, step, subvolume, source, settings, reporter, audit, parent)
    outcome = BackupResult(attempt.backup_id, attempt.snap.name, step.kind, step.parent_backup_id, step.depth)
    t0 = time.monotonic()
    log.info("push started backup=%s kind=%s parent=%s target=%s", attempt.backup_id, step.kind,
             step.parent_backup_id, repo.target.display_url)
    if reporter is not None:  # the tree planner measured the chosen incremental already: not twice
        # (a full it priced by the newest full's size: progress measures that one itself, beside the send)
        if step.estimated_bytes is not None and step.parent is not None:
            reporter.start(attempt.backup_id, Estimate(step.estimated_bytes, "btrfs send --no-data"),
                           index=index, count=count)
        else:
            snap, parent, held = attempt.snap.path, attempt.parent.path if attempt.parent else None, history or []
            reporter = attempt.progress = EstimatedAside(
                reporter, lambda: estimate_push(snap, parent, held, subvolume, measured=attempt.measured),
                attempt.backup_id, index, count)
    try:
        manifest = attempt.run()
    except BaseException as exc:
        if reporter is not None:
            reporter.finish(ok=False)
        if isinstance(exc, LockedError) or not isinstance(exc, BtrsyncError | OSError):
            raise  # LockedError: another process is sending this very backup, not a failure of ours
        outcome.status, outcome.error = "failed", describe(exc)
        log.info("push failed backup=%s: %s (durable segments are kept for the next run)",
                 attempt.backup_id, outcome.error)
        return outcome, None
    if reporter is not None:
        reporter.finish(ok=True)
    outcome.stream_bytes, outcome.stored_bytes = manifest.stream_bytes, manifest.stored_bytes
    outcome.uploaded_bytes, outcome.resumed_bytes = attempt.uploaded, attempt.resumed
    outcome.seconds = time.monotonic() - t0
    log.info("push finished backup=%s stream_bytes=%d stored_bytes=%d resumed_bytes=%d seconds=%.1f "
             "MiB/s=%.1f", attempt.backup_id, outcome.stream_bytes, outcome.stored_bytes,
             outcome.resumed_bytes, outcome.seconds, outcome.stream_bytes / MiB / max(outcome.seconds, 1e-6))
    return outcome, manifest


def raise_for_failures(result: PushResult) -> None:
    """Exit 1 when nothing was sent, 3 (partial) when earlier backups of the run were committed."""
    if result.failed:
        first = result.failed[0]
        message = f"backup {first.backup_id} of {result.subvolume} to {result.target} failed: {first.error}"
        done = [r.backup_id for r in result.results if r.status == "ok"]
        if done:
            raise PartialError(f"{message} ({len(done)} earlier backup(s) of this run were committed: "
                               f"{', '.join(done)}; run again to send the rest)")
        raise PushError(message)
