"""Push: plan the snapshots a target lacks, then stream each one into the target and commit it.

Data flow of one backup::

    btrfs send ─► fixed-size chunks ─► [workers: xxh3(raw) → probe → zstd → AES-256-GCM frame → xxh3(frame)]
               │                                        ordered, bounded window
               │                              ─► token bucket ─► segments: target.put (atomic), each
               │                                 segment's index as soon as the segment is durable
               └► WatchThread: StreamWatch on its own thread (parser: CRC32C, commands, END; change
                  stats, tree summary, file index records); the main thread only moves buffers
    send exited 0 and stream ended with END ─► manifest committed (the only commit point)
"""

from __future__ import annotations

import dataclasses
import logging
import os
import platform
import socket
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import closing, nullcontext
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from btrsync import __version__
from btrsync.audit import AuditLog
from btrsync.btrfs.runner import progs_version
from btrsync.btrfs.send import SendOptions, SendProcess, best_send_options
from btrsync.btrfs.subvolume import is_subvolume
from btrsync.catalog.layout import backup_id_for
from btrsync.catalog.lease import Lease, lease_key
from btrsync.catalog.manifest import ChunkRecord, Manifest
from btrsync.catalog.repository import Catalog, Repository
from btrsync.catalog.segment_index import (
    ResumePoint,
    TableDigest,
    find_resume_point,
    resumed_records,
    write_index,
)
from btrsync.errors import BtrsyncError, LockedError, PartialError, PushError, SendFailedError, UsageError
from btrsync.fileindex.store import IndexWriter
from btrsync.ops.estimate import estimate_push, stream_size
from btrsync.ops.immutable import hold_for_step
from btrsync.ops.stream_watch import StreamWatch, WatchThread
from btrsync.pipeline.ordered import ordered_map
from btrsync.pipeline.seal import ChunkSealer, SealedChunk, xxh3
from btrsync.pipeline.segments import write_segments
from btrsync.pipeline.throttle import Metered, TokenBucket
from btrsync.planner.plan import DEFAULT_MAX_CHAIN, LocalSnapshot, Plan, Step, plan_push
from btrsync.planner.tree import DEFAULT_FULL_THRESHOLD, Anchor, Held, Pricer, anchors, plan_tree, uses_tree
from btrsync.progress import Estimate, Progress, as_progress
from btrsync.retention import Item, Policy, decide
from btrsync.snapshots.store import Snapshot, list_snapshots, subvolume_name
from btrsync.targets.base import Target
from btrsync.targets.errors import NotFound

log = logging.getLogger(__name__)

MiB = 1024 * 1024


@dataclass(frozen=True, slots=True)
class PushSettings:
    """Pipeline settings.  Memory bound: ``(window + 1) × chunk_size × ~2`` plus the target's own
    in-flight parts (for S3: ``(max_inflight_parts + 2) × part_size``, one budget of parts
    uploading shared by the two segment puts plus the part each is filling)."""

    chunk_size: int = 4 * MiB
    segment_size: int = 128 * MiB
    zstd_level: int = 3
    workers: int = field(default_factory=lambda: max(1, min(4, os.cpu_count() or 1)))
    max_chain: int = DEFAULT_MAX_CHAIN
    send_options: SendOptions | None = None  # None: the best the kernel and btrfs-progs support
    bucket: TokenBucket | None = None
    chain: str = "tree"  # tree: parents chosen by the retention policy (planner/tree.py); linear
    full_threshold: float = DEFAULT_FULL_THRESHOLD  # tree: a full when the best delta is more than this share
    #: asked before each segment is started, refuses it by raising (``write_segments``): the
    #: run's ``window_end = "stop"`` ends a push at a segment boundary
    may_start_segment: Callable[[int], None] | None = None

    @property
    def window(self) -> int:
        return 2 * self.workers


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


def plan_for(subvol: Path, snapshot_dir: Path, catalog: Catalog, max_chain: int, *,
             backfill: bool = False, policy: Policy | None = None, now: datetime | None = None,
             planned: Snapshot | None = None, chain: str = "linear",
             full_threshold: float = DEFAULT_FULL_THRESHOLD, estimate: Pricer | None = None,
             no_parent: Mapping[str, str] | None = None) -> Plan:
    """The plan for ``subvol``: which snapshots to send, on which parents, and why others are not.

    Only restorable backups serve as parents.  A snapshot whose backup is on the target but
    damaged or unrestorable is skipped (never overwritten: an operator looks at it first).  A
    snapshot older than the newest backup of the subvolume on the target is sent only with
    ``backfill`` or when the target's retention ``policy`` would keep it (btrbk's rule), so
    snapshots that retention already removed from the target are not sent again every run.
    ``planned`` is a snapshot not taken yet (``store.planned_snapshot``), planned as if it were.

    ``chain = "tree"`` chooses parents by the target's retention ``policy`` (planner/tree.py),
    pricing candidates with ``estimate``; a policy without calendar rules (or none) gets the
    linear chain, and the plan says why.  ``no_parent`` backups (a verification found them
    damaged or affected) are no parents of the tree.
    """
    name = subvolume_name(subvol)
    snaps = list_snapshots(snapshot_dir, name) + ([planned] if planned is not None else [])
    if not snaps:
        raise PushError(f"no snapshots of subvolume {name!r} in {snapshot_dir} (looked for "
                        f"{name}.<YYYYMMDDTHHMMSSZ>): create one with 'btrsync snapshot create {subvol} "
                        f"--snapshot-dir {snapshot_dir}'; nothing was pushed")
    skip = {s.name: "writable, or changed after it was taken or received: never sent, never a parent"
            for s in snaps if not s.info.is_trusted_parent}
    unusable = {d.backup_id: f"its manifest on the target is damaged ({d.error}); move it aside first"
                for d in catalog.damaged}
    unusable.update({bid: f"on the target but not restorable: {b.reason}" for bid, b in catalog.broken.items()})
    held = [m for m in catalog.restorable if m.subvolume == name]
    ids = {s.name: backup_id_for(s.name, s.uuid) for s in snaps}
    held_uuids = {m.snapshot_uuid for m in held}
    # "older than the newest backup" counts this host's backups only (of its snapshots, or pushed
    # under its name): another host backing up a subvolume of the same name to the same
    # repository is another history, and its newer backups must not hold this one's back
    local_uuids = {s.uuid for s in snaps}
    mine = [m for m in held if m.snapshot_uuid in local_uuids or m.host == socket.gethostname()]
    newest_held = max((m.snapshot_time for m in mine), default=None)
    older = [s for s in snaps if newest_held is not None and s.time < newest_held
             and s.uuid not in held_uuids and s.name not in skip and ids[s.name] not in unusable]
    kept = _kept_by_retention(older, mine, policy, now) if older and not backfill else set()
    older_names = {s.name for s in older}
    for s in snaps:
        if s.name in skip:
            continue
        if ids[s.name] in unusable:
            skip[s.name] = unusable[ids[s.name]]
        elif s.name in older_names and not backfill and s.name not in kept:
            skip[s.name] = ("older than the newest backup on the target and not kept by its retention "
                            "(use --backfill to send it anyway)")
    if chain == "tree" and uses_tree(policy) is None:
        assert policy is not None
        mine_held = [_held(m) for m in mine]
        fulls = [m for m in mine if m.depth == 0]
        if estimate is not None and fulls:  # a full's size changes slowly: the newest full's, not a
            newest_full = max(fulls, key=lambda m: m.snapshot_time).stream_bytes  # metadata walk
            priced = estimate

            def estimate(snap: LocalSnapshot, parent: LocalSnapshot | None) -> int | None:  # type: ignore[misc]
                return newest_full if parent is None else priced(snap, parent)
        return plan_tree(snaps, mine_held, policy, time_of=lambda s: s.time, max_chain=max_chain,
                         backup_id_for=lambda s: ids[s.name], skip=skip, estimate=estimate,
                         full_threshold=full_threshold, unusable=no_parent)
    plan = plan_push(snaps, held, max_chain=max_chain, backup_id_for=lambda s: ids[s.name], skip=skip)
    if chain == "tree" and (why := uses_tree(policy)) is not None:
        plan = dataclasses.replace(plan, steps=tuple(dataclasses.replace(s, reason=f"{s.reason}; {why}")
                                                     for s in plan.steps))
    return plan


def delta_estimator(budget: float = 5.0) -> Pricer:
    """Prices a send for the tree planner with ``btrfs send --no-data`` (cached per pair)."""
    cache: dict[tuple[str, str | None], int | None] = {}

    def estimate(snap: LocalSnapshot, parent: LocalSnapshot | None) -> int | None:
        key = (str(snap.path), str(parent.path) if parent is not None else None)  # type: ignore[attr-defined]
        if key not in cache:
            cache[key] = (stream_size(snap.path, parent.path if parent is not None else None, budget)  # type: ignore[attr-defined]
                          if snap.path.exists() else None)  # type: ignore[attr-defined]
        return cache[key]

    return estimate


def _kept_by_retention(older: list[Snapshot], held: list[Manifest], policy: Policy | None,
                       now: datetime | None) -> set[str]:
    """Names of ``older`` snapshots the target's retention would keep if they were there."""
    if policy is None:
        return set()
    items = [Item(m.backup_id, m.snapshot_time, m.parent_id) for m in held]
    items += [Item(f"candidate:{s.name}", s.time, None) for s in older]
    decisions = decide(items, policy, now or datetime.now(UTC))
    return {d.id.removeprefix("candidate:") for d in decisions if d.kept and d.id.startswith("candidate:")}


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
    catalog = repo.catalog()
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


def tree_anchors(held: list[Manifest], subvolume: str, policy: Policy | None, now: datetime,
                 target: str) -> list[Anchor]:
    """The anchors (planner/tree.py) of this host's backups of ``subvolume`` among ``held``."""
    host = socket.gethostname()
    return anchors([_held(m) for m in held if m.subvolume == subvolume and m.host == host], policy, now, target)


def _held(m: Manifest) -> Held:
    """A backup as the tree planner sees it."""
    return Held(m.backup_id, m.snapshot_uuid, m.snapshot_time, m.depth, m.parent_id, m.stored_bytes, m.snapshot)


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
    attempt = _Attempt(repo, step, subvolume, source, settings, reporter, audit)
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
            reporter = attempt.progress = _EstimatedAside(
                reporter, lambda: estimate_push(snap, parent, held, subvolume), attempt.backup_id, index, count)
    try:
        manifest = attempt.run()
    except BaseException as exc:
        if reporter is not None:
            reporter.finish(ok=False)
        if isinstance(exc, LockedError) or not isinstance(exc, BtrsyncError | OSError):
            raise  # LockedError: another process is sending this very backup, not a failure of ours
        outcome.status, outcome.error = "failed", _describe(exc)
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


class _EstimatedAside:
    """A ``Progress`` started once its estimate is known, the estimate made on a thread of its own
    while the push runs (``btrfs send --no-data`` costs a metadata walk: never before the send).
    Phases and updates before that are replayed (the latest of each); ``finish`` waits for the
    estimate (bounded by its budget) so that no metadata send outlives the push."""

    def __init__(self, progress: Progress, estimate: Callable[[], Estimate | None], name: str,
                 index: int, count: int) -> None:
        self._progress, self._name, self._index, self._count = progress, name, index, count
        self._lock = threading.Lock()
        self._started = False
        self._phase: str | None = None
        self._update: tuple[int, int] | None = None
        self._thread = threading.Thread(target=self._estimate, args=(estimate,), name="btrsync-estimate",
                                         daemon=True)
        self._thread.start()

    def _estimate(self, estimate: Callable[[], Estimate | None]) -> None:
        try:
            found = estimate()
        except Exception as exc:  # noqa: BLE001 - an estimate never fails a push
            log.debug("estimate failed: %s", exc)
            found = None
        self._start(found)

    def _start(self, found: Estimate | None) -> None:
        with self._lock:
            if self._started:
                return
            self._started = True
            self._progress.start(self._name, found, index=self._index, count=self._count)
            if self._phase is not None:
                self._progress.phase(self._phase)
            if self._update is not None:
                self._progress.update(*self._update)

    def start(self, name: str, estimate: Estimate | None = None, *, index: int = 1, count: int = 1) -> None:
        pass  # started by the estimate

    def phase(self, name: str) -> None:
        with self._lock:
            if self._started:
                self._progress.phase(name)
            else:
                self._phase = name

    def update(self, raw: int, stored: int) -> None:
        with self._lock:
            if self._started:
                self._progress.update(raw, stored)
            else:
                self._update = (raw, stored)

    def finish(self, ok: bool = True) -> None:
        self._thread.join()
        self._start(None)
        self._progress.finish(ok)


@dataclass(slots=True)
class _Counts:
    """Progress of one attempt: resumed chunks, chunks handed to the segment writer, stored bytes
    that passed the token bucket."""

    resumed_raw: int = 0
    resumed_stored: int = 0
    handed_raw: int = 0
    handed_stored: int = 0
    passed: int = 0
    all_handed: bool = False
    committing: bool = False


class StreamChangedError(BtrsyncError):
    """The re-run send stream differs from the durable part of an interrupted push."""


class _Attempt:
    """One backup's transfer: resume point, send, seal, segments, manifest."""

    def __init__(self, repo: Repository, step: Step, subvolume: str, source: Path,
                 settings: PushSettings, progress: Progress | None, audit: AuditLog | None) -> None:
        self.repo, self.step, self.subvolume, self.source = repo, step, subvolume, source
        self.settings, self.progress = settings, progress
        self.deletions = (audit.object_deletions(repo.target.display_url, "push: discard an interrupted "
                                                 "attempt's data that cannot be resumed")
                          if audit is not None else None)
        self.audit = audit
        self.snap: Snapshot = step.snapshot  # type: ignore[assignment]
        self.parent: Snapshot | None = step.parent  # type: ignore[assignment]
        self.backup_id = backup_id_for(self.snap.name, self.snap.uuid)
        self.options = settings.send_options or best_send_options()
        self.raw = self.uploaded = self.resumed = 0
        self.point = ResumePoint()
        self.table = TableDigest()
        self._count = _Counts()
        self._lock = threading.Lock()  # _count is updated by the main thread and the put threads

    def params(self) -> dict[str, object]:
        """What must be unchanged for durable segments of an earlier attempt to be reused."""
        return {"snapshot_uuid": self.snap.uuid, "parent_uuid": self.parent.uuid if self.parent else None,
                "chunk_size": self.settings.chunk_size, "zstd_level": self.settings.zstd_level,
                "send": self.options.as_dict(), "key_id": self.repo.key.key_id}

    def run(self) -> Manifest:
        """Send and commit, all under the upload lease: the lease goes only after the commit, so
        a clean or prune elsewhere never sees this backup's data without either."""
        with Lease(self.repo.target, self.backup_id, self.step.parent_backup_id):
            if self.backup_id in set(self.repo.backup_ids()):
                raise PushError(f"backup {self.backup_id} was committed meanwhile (by another push); "
                                "nothing was changed")
            try:
                manifest = self._run(resume=True)
            except StreamChangedError as exc:
                log.warning("restarting backup=%s from scratch: %s", self.backup_id, exc)
                manifest = self._run(resume=False)
            self._check_uploaded(manifest)
            self.repo.commit(manifest)
            remove_temporaries(self.repo.target, self.backup_id, self.audit)
            return manifest

    def _check_uploaded(self, manifest: Manifest) -> None:
        """Right before the commit, one listing: every segment and index the manifest names is on
        the target, and the segments hold exactly its stored bytes.  A clean on another host that
        took this upload for orphans (or a lost object) must fail the push, not commit a backup
        that cannot be restored; the next push resends what is missing."""
        what = self.repo.upload_gap(manifest)
        if what:
            raise PushError(f"backup {manifest.backup_id} was not committed: {what} on {self.repo.target.display_url} "
                            "(removed by a clean or prune elsewhere, or lost); push again to send it anew")
        parent = manifest.parent_id
        if parent is not None and not self.repo.has_manifest(parent):
            raise self._parent_gone(parent)

    def _parent_gone(self, parent: str) -> PushError:
        """A prune or delete elsewhere that read the leases before this push took its own removed
        the parent while this backup was sent: committed, it could never be restored."""
        return PushError(f"backup {self.backup_id} was not committed: its parent {parent} is no longer on "
                         f"{self.repo.target.display_url} (removed by a prune or delete elsewhere while this push "
                         "ran); push again: it is planned anew on what is there")

    def _run(self, *, resume: bool) -> Manifest:
        started = datetime.now(UTC)
        if resume:
            point = find_resume_point(self.repo, self.backup_id, self.params(), self.deletions)
        else:
            self.repo.discard_uncommitted(self.backup_id, self.deletions)
            point = ResumePoint()
        self.point, self.table = point, point.table.copy()
        self.raw, self.uploaded, self.resumed = 0, 0, point.stored_bytes
        with self._lock:
            self._count = _Counts()
        if self.progress:
            self.progress.phase("resuming" if point.chunks else "sending")
        files = IndexWriter(self.backup_id, self.snap.uuid, self.parent.uuid if self.parent else None,
                            point.attempt)
        framing = StreamWatch(f"btrfs send of {self.snap.path}", full=self.parent is None, sink=files)
        watch = WatchThread(framing, depth=self.settings.window)  # parses beside the read, not in it
        try:
            self._send(watch, point)
            files.finish(stream_bytes=self.table.stream_bytes, commands=framing.commands)
            self._check_parent_unchanged(framing)
            # the file index is durable before the manifest that commits the backup names it
            return self._manifest(framing, started, files.upload(self.repo))
        finally:
            watch.close()
            files.close()

    def _send(self, watch: WatchThread, point: ResumePoint) -> None:
        sealer = ChunkSealer(self.repo.binding, self.backup_id, self.settings.zstd_level)
        # progress counts frames as the token bucket lets them through to the target
        meter = Metered(self.settings.bucket, self._passed) if self.progress else self.settings.bucket
        with (SendProcess(self.snap.path, self.parent.path if self.parent else None, self.options) as send,
              closing(ordered_map(sealer, self._fresh_chunks(send, watch, point),
                                  workers=self.settings.workers, window=self.settings.window)) as sealed):
            write_segments(
                self.repo.target, self.backup_id, self._handed(sealed) if self.progress else sealed,
                segment_size=self.settings.segment_size, bucket=meter,  # type: ignore[arg-type]
                on_stored=self._stored, first_segment=point.segments, on_segment=self._segment_done,
                may_start=self.settings.may_start_segment)
        watch.finish()

    def _fresh_chunks(self, send: SendProcess, watch: WatchThread,
                      point: ResumePoint) -> Iterator[tuple[int, bytes]]:
        """Chunks to seal; those already durable are checked against their hashes and skipped."""
        seq = -1
        kept = resumed_records(self.repo, self.backup_id, point)  # one index at a time
        for seq, chunk in enumerate(send.chunks(self.settings.chunk_size)):
            watch.feed(chunk)
            self.raw += len(chunk)
            if seq < point.chunks:
                rec = next(kept)
                if len(chunk) != rec.raw_size or xxh3(chunk) != rec.raw_xxh3:
                    raise StreamChangedError(f"chunk {seq} of the new stream differs from the stored one")
                if self.progress:
                    with self._lock:
                        self._count.resumed_raw += rec.raw_size
                        self._count.resumed_stored += rec.stored_size
                    self._report()
                continue
            if seq == point.chunks and seq and self.progress:
                self.progress.phase("sending")
            yield seq, chunk
        if seq + 1 < point.chunks:
            raise StreamChangedError("the new stream is shorter than the stored part")

    def _segment_done(self, segment: int, records: list[ChunkRecord]) -> None:
        params = {**self.params(), "attempt": self.point.attempt}
        self.table.add(write_index(self.repo, self.backup_id, segment, params, records), records)

    def _stored(self, n: int) -> None:
        self.uploaded += n

    def _handed(self, sealed: Iterator[SealedChunk]) -> Iterator[SealedChunk]:
        """Count the chunks handed to the segment writer; the end of them is the end of sending."""
        for chunk in sealed:
            with self._lock:
                self._count.handed_raw += chunk.raw_size
                self._count.handed_stored += len(chunk.frame)
            yield chunk
        with self._lock:
            self._count.all_handed = True
        self._report()

    def _passed(self, n: int) -> None:
        """A frame of ``n`` stored bytes passed the token bucket (on a put thread)."""
        with self._lock:
            self._count.passed += n
        self._report()

    def _report(self) -> None:
        """Raw bytes done are those of the frames that passed the bucket: the handed chunks' raw
        bytes in the share of their stored bytes that passed (exact once all have passed)."""
        assert self.progress is not None
        with self._lock:  # reported under the lock: two put threads never report out of order
            c = self._count
            share = min(c.passed / c.handed_stored, 1.0) if c.handed_stored else 0.0
            self.progress.update(c.resumed_raw + int(c.handed_raw * share), c.resumed_stored + c.passed)
            if c.all_handed and c.passed >= c.handed_stored and not c.committing:
                c.committing = True  # all passed the bucket: the last segments become durable, the manifest
                self.progress.phase("committing")

    def _check_parent_unchanged(self, framing: StreamWatch) -> None:
        """The parent snapshot must be the tree its backup holds: its ctransid when this stream was
        sent equals the one its own stream recorded.  The planner only picks snapshots unchanged
        since they were taken; this closes the gap between that check and ``btrfs send``."""
        pid = self.step.parent_backup_id
        if pid is None:
            return
        try:
            recorded = self.repo.load_manifest(pid).send.get("ctransid")
        except NotFound:
            raise self._parent_gone(pid) from None
        if recorded is not None and framing.parent_ctransid != recorded:
            raise SendFailedError(
                f"the parent snapshot {self.parent.name if self.parent else pid} changed after its backup {pid} was "
                f"made (ctransid {recorded} then, {framing.parent_ctransid} when this was sent): an incremental on "
                "it could not be restored; nothing was committed, and the next push will not use it as a parent")

    def _manifest(self, framing: StreamWatch, started: datetime, files: dict[str, object]) -> Manifest:
        snap, parent = self.snap, self.parent
        return Manifest(
            backup_id=self.backup_id, host=socket.gethostname(), subvolume=self.subvolume,
            source_path=str(self.source), snapshot=snap.name, snapshot_time=snap.time,
            snapshot_uuid=snap.uuid, parent_uuid=parent.uuid if parent else None,
            parent_id=self.step.parent_backup_id, depth=self.step.depth,
            send={**self.options.as_dict(), "stream_version": framing.version, "commands": framing.commands,
                  "ctransid": framing.ctransid,
                  **({"parent_ctransid": framing.parent_ctransid} if parent else {})},
            changes=framing.stats.as_dict(), tree=framing.tree_summary(), files=files,
            compression={"algorithm": "zstd", "level": self.settings.zstd_level, "per_chunk": True},
            encryption={"algorithm": "AES-256-GCM", "kdf": "HKDF-SHA256", "frame": "BSC1",
                        "key_id": self.repo.key.key_id},
            chunk_size=self.settings.chunk_size, chunk_count=self.table.chunks,
            table={"attempt": self.point.attempt, "digest": self.table.hexdigest},
            stream_bytes=self.table.stream_bytes, stored_bytes=self.table.stored_bytes,
            segments=self.table.segments, started=started, finished=datetime.now(UTC).replace(microsecond=0),
            tool={"btrsync": __version__, "btrfs_progs": progs_version(), "kernel": platform.release()},
        )


def remove_temporaries(target: Target, backup_id: str, audit: AuditLog | None = None) -> None:
    """Remove what killed earlier attempts at ``backup_id`` left on the target: temporary files,
    partial rsync uploads, unfinished multipart uploads of its segments, indexes, manifest and
    lease.  Called under the backup's lease after its commit, so no live push writes them (a
    second push of the same backup refuses to start while the lease is live).  Failing to list
    or remove them is only a warning: the backup is committed, and ``btrsync clean`` removes
    them too."""
    own = (f"data/{backup_id}/", f"backups/{backup_id}/", lease_key(backup_id))
    where = target.display_url
    try:
        for leftover in target.leftovers():
            if not leftover.key.startswith(own):
                continue
            with (audit.deletion("push-temporary", target=where, kind=leftover.kind, key=leftover.key,
                                 bytes=leftover.size) if audit is not None else nullcontext()):
                target.remove_leftover(leftover)
            log.info("removed %s of an interrupted push key=%s bytes=%d", leftover.kind, leftover.key,
                     leftover.size)
    except (BtrsyncError, OSError) as exc:
        log.warning("could not remove the temporaries of interrupted pushes of backup %s on %s: %s "
                    "('btrsync clean' removes them)", backup_id, where, _describe(exc))


def _describe(exc: BaseException) -> str:
    return str(exc) if isinstance(exc, BtrsyncError) else f"{type(exc).__name__}: {exc}"


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
