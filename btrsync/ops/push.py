"""Push: plan the snapshots a target lacks, then stream each one into the target and commit it.

Data flow of one backup::

    btrfs send ─► fixed-size chunks ─► [workers: xxh3(raw) → zstd → AES-256-GCM frame → xxh3(frame)]
               └► StreamFraming (complete, well-formed stream?)   ordered, bounded window
                                                  ─► token bucket ─► segments: target.put (atomic)
    send exited 0 and stream ended with END ─► manifest committed (the only commit point)
"""

from __future__ import annotations

import logging
import os
import platform
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import closing
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from btrsync import __version__
from btrsync.btrfs.runner import progs_version
from btrsync.btrfs.send import SendOptions, SendProcess, best_send_options
from btrsync.catalog.layout import backup_id_for
from btrsync.catalog.lease import Lease
from btrsync.catalog.manifest import ChunkRecord, Manifest
from btrsync.catalog.repository import Repository
from btrsync.catalog.segment_index import ResumePoint, find_resume_point, write_index
from btrsync.crypto.keys import MasterKey
from btrsync.errors import BtrsyncError, PushError, TargetMissingError
from btrsync.pipeline.ordered import ordered_map
from btrsync.pipeline.seal import ChunkSealer, xxh3
from btrsync.pipeline.segments import write_segments
from btrsync.pipeline.throttle import TokenBucket
from btrsync.planner.plan import DEFAULT_MAX_CHAIN, Plan, Step, plan_push
from btrsync.sendstream.framing import StreamFraming
from btrsync.snapshots.store import Snapshot, list_snapshots, subvolume_name
from btrsync.targets.base import Target

log = logging.getLogger(__name__)

MiB = 1024 * 1024


@dataclass(frozen=True, slots=True)
class PushSettings:
    """Pipeline settings.  Memory bound: ``(window + 1) × chunk_size × ~2`` plus the target's own
    in-flight parts (for S3: ``(max_inflight_parts + 1) × part_size``)."""

    chunk_size: int = 4 * MiB
    segment_size: int = 128 * MiB
    zstd_level: int = 3
    workers: int = field(default_factory=lambda: max(1, min(4, os.cpu_count() or 1)))
    max_chain: int = DEFAULT_MAX_CHAIN
    send_options: SendOptions | None = None  # None: the best the kernel and btrfs-progs support
    bucket: TokenBucket | None = None

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

    @property
    def failed(self) -> list[BackupResult]:
        return [r for r in self.results if r.status != "ok"]


ProgressFn = Callable[[str, int, int], None]  # (backup id, raw bytes read, stored bytes written)


def plan_for(subvol: Path, snapshot_dir: Path, repo_manifests: list[Manifest], max_chain: int) -> Plan:
    snaps = list_snapshots(snapshot_dir, subvolume_name(subvol))
    return plan_push(
        snaps, repo_manifests, max_chain=max_chain,
        backup_id_for=lambda s: backup_id_for(s.name, s.uuid),
        trusted=[s.name for s in snaps if s.info.is_trusted_parent],
    )


def push(
    subvol: Path,
    snapshot_dir: Path,
    target: Target,
    key: MasterKey,
    settings: PushSettings,
    *,
    dry_run: bool = False,
    progress: ProgressFn | None = None,
) -> PushResult:
    """Send every snapshot of ``subvol`` the target lacks, oldest first; stop at the first failure."""
    try:
        repo: Repository | None = Repository.open(target, key, create=not dry_run)
    except TargetMissingError:
        if not dry_run:
            raise
        repo = None  # a dry run against an empty location plans full sends
    manifests = repo.manifests() if repo else []
    plan = plan_for(subvol, snapshot_dir, manifests, settings.max_chain)
    result = PushResult(target.display_url, subvolume_name(subvol), plan, held=list(manifests))
    if dry_run or repo is None:
        return result
    for step in plan.steps:
        outcome, manifest = push_step(repo, step, subvolume_name(subvol), subvol, settings, progress)
        result.results.append(outcome)
        if manifest is None:
            break  # later steps would build on the backup that failed
        result.held.append(manifest)
    return result


def push_step(
    repo: Repository,
    step: Step,
    subvolume: str,
    source: Path,
    settings: PushSettings,
    progress: ProgressFn | None = None,
) -> tuple[BackupResult, Manifest | None]:
    """Send one snapshot and commit its manifest; on failure nothing is committed.

    Durable segments of an interrupted earlier attempt are resumed (after the re-run stream is
    checked against them); if the stream differs, the backup restarts from scratch once.
    """
    attempt = _Attempt(repo, step, subvolume, source, settings, progress)
    outcome = BackupResult(attempt.backup_id, attempt.snap.name, step.kind, step.parent_backup_id, step.depth)
    t0 = time.monotonic()
    log.info("push started backup=%s kind=%s parent=%s target=%s", attempt.backup_id, step.kind,
             step.parent_backup_id, repo.target.display_url)
    try:
        try:
            manifest = attempt.run(resume=True)
        except StreamChangedError as exc:
            log.warning("restarting backup=%s from scratch: %s", attempt.backup_id, exc)
            manifest = attempt.run(resume=False)
        repo.commit(manifest)
    except (BtrsyncError, OSError) as exc:
        outcome.status, outcome.error = "failed", _describe(exc)
        log.error("push failed backup=%s: %s (durable segments are kept for the next run)",
                  attempt.backup_id, outcome.error)
        return outcome, None
    outcome.stream_bytes, outcome.stored_bytes = manifest.stream_bytes, manifest.stored_bytes
    outcome.uploaded_bytes, outcome.resumed_bytes = attempt.uploaded, attempt.resumed
    outcome.seconds = time.monotonic() - t0
    log.info("push finished backup=%s stream_bytes=%d stored_bytes=%d resumed_bytes=%d seconds=%.1f "
             "MiB/s=%.1f", attempt.backup_id, outcome.stream_bytes, outcome.stored_bytes,
             outcome.resumed_bytes, outcome.seconds, outcome.stream_bytes / MiB / max(outcome.seconds, 1e-6))
    return outcome, manifest


class StreamChangedError(BtrsyncError):
    """The re-run send stream differs from the durable part of an interrupted push."""


class _Attempt:
    """One backup's transfer: resume point, send, seal, segments, manifest."""

    def __init__(self, repo: Repository, step: Step, subvolume: str, source: Path,
                 settings: PushSettings, progress: ProgressFn | None) -> None:
        self.repo, self.step, self.subvolume, self.source = repo, step, subvolume, source
        self.settings, self.progress = settings, progress
        self.snap: Snapshot = step.snapshot  # type: ignore[assignment]
        self.parent: Snapshot | None = step.parent  # type: ignore[assignment]
        self.backup_id = backup_id_for(self.snap.name, self.snap.uuid)
        self.options = settings.send_options or best_send_options()
        self.raw = self.uploaded = self.resumed = 0

    def params(self) -> dict[str, object]:
        """What must be unchanged for durable segments of an earlier attempt to be reused."""
        return {"snapshot_uuid": self.snap.uuid, "parent_uuid": self.parent.uuid if self.parent else None,
                "chunk_size": self.settings.chunk_size, "zstd_level": self.settings.zstd_level,
                "send": self.options.as_dict(), "key_id": self.repo.key.key_id}

    def run(self, *, resume: bool) -> Manifest:
        with Lease(self.repo.target, self.backup_id, self.step.parent_backup_id) as lease:
            return self._run(lease, resume=resume)

    def _run(self, lease: Lease, *, resume: bool) -> Manifest:
        started = datetime.now(UTC)
        if resume:
            point = find_resume_point(self.repo, self.backup_id, self.params())
        else:
            self.repo.discard_uncommitted(self.backup_id)
            point = ResumePoint()
        self.raw, self.uploaded, self.resumed = 0, 0, point.stored_bytes
        framing = StreamFraming(f"btrfs send of {self.snap.path}")
        sealer = ChunkSealer(self.repo.key, self.backup_id, self.settings.zstd_level)
        with (SendProcess(self.snap.path, self.parent.path if self.parent else None, self.options) as send,
              closing(ordered_map(sealer, self._fresh_chunks(send, framing, point),
                                  workers=self.settings.workers, window=self.settings.window)) as sealed):
            records, segments = write_segments(
                self.repo.target, self.backup_id, sealed, segment_size=self.settings.segment_size,
                bucket=self.settings.bucket, on_stored=self._stored, first_segment=point.segments,
                on_segment=lambda n, recs: self._segment_done(lease, n, recs))
        framing.finish()
        return self._manifest([*point.records, *records], segments or point.segments, framing, started)

    def _fresh_chunks(self, send: SendProcess, framing: StreamFraming,
                      point: ResumePoint) -> Iterator[tuple[int, bytes]]:
        """Chunks to seal; those already durable are checked against their hashes and skipped."""
        seq = -1
        for seq, chunk in enumerate(send.chunks(self.settings.chunk_size)):
            framing.feed(chunk)
            self.raw += len(chunk)
            if seq < len(point.records):
                rec = point.records[seq]
                if len(chunk) != rec.raw_size or xxh3(chunk) != rec.raw_xxh3:
                    raise StreamChangedError(f"chunk {seq} of the new stream differs from the stored one")
                continue
            yield seq, chunk
        if seq + 1 < len(point.records):
            raise StreamChangedError("the new stream is shorter than the stored part")

    def _segment_done(self, lease: Lease, segment: int, records: list[ChunkRecord]) -> None:
        write_index(self.repo, self.backup_id, segment, self.params(), records)
        lease.refresh()

    def _stored(self, n: int) -> None:
        self.uploaded += n
        if self.progress:
            self.progress(self.backup_id, self.raw, self.uploaded + self.resumed)

    def _manifest(self, records: list[ChunkRecord], segments: int, framing: StreamFraming,
                  started: datetime) -> Manifest:
        snap, parent = self.snap, self.parent
        return Manifest(
            backup_id=self.backup_id, host=socket.gethostname(), subvolume=self.subvolume,
            source_path=str(self.source), snapshot=snap.name, snapshot_time=snap.time,
            snapshot_uuid=snap.uuid, parent_uuid=parent.uuid if parent else None,
            parent_id=self.step.parent_backup_id, depth=self.step.depth,
            send={**self.options.as_dict(), "stream_version": framing.version, "commands": framing.commands},
            compression={"algorithm": "zstd", "level": self.settings.zstd_level, "per_chunk": True},
            encryption={"algorithm": "AES-256-GCM", "kdf": "HKDF-SHA256", "frame": "BSC1",
                        "key_id": self.repo.key.key_id},
            chunk_size=self.settings.chunk_size, chunks=tuple(records),
            stream_bytes=sum(r.raw_size for r in records), stored_bytes=sum(r.stored_size for r in records),
            segments=segments, started=started, finished=datetime.now(UTC).replace(microsecond=0),
            tool={"btrsync": __version__, "btrfs_progs": progs_version(), "kernel": platform.release()},
        )


def _describe(exc: BaseException) -> str:
    return str(exc) if isinstance(exc, BtrsyncError) else f"{type(exc).__name__}: {exc}"


def raise_for_failures(result: PushResult) -> None:
    if result.failed:
        first = result.failed[0]
        raise PushError(f"backup {first.backup_id} of {result.subvolume} to {result.target} failed: {first.error}")
