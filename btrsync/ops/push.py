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
from btrsync.catalog.manifest import Manifest
from btrsync.catalog.repository import Repository
from btrsync.crypto.keys import MasterKey
from btrsync.errors import BtrsyncError, PushError, TargetMissingError
from btrsync.pipeline.ordered import ordered_map
from btrsync.pipeline.seal import ChunkSealer
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
    """Send one snapshot and commit its manifest; on failure nothing is committed."""
    snap: Snapshot = step.snapshot  # type: ignore[assignment]
    parent: Snapshot | None = step.parent  # type: ignore[assignment]
    backup_id = backup_id_for(snap.name, snap.uuid)
    outcome = BackupResult(backup_id, snap.name, step.kind, step.parent_backup_id, step.depth)
    started, t0 = datetime.now(UTC), time.monotonic()
    log.info("push started backup=%s kind=%s parent=%s target=%s", backup_id, step.kind,
             step.parent_backup_id, repo.target.display_url)
    try:
        stale = repo.discard_uncommitted(backup_id)
        if stale:
            log.warning("discarded %d segments of an interrupted push backup=%s", stale, backup_id)
        manifest = _stream(repo, step, snap, parent, backup_id, subvolume, source, settings, started,
                           progress)
        repo.commit(manifest)
    except (BtrsyncError, OSError) as exc:
        outcome.status, outcome.error = "failed", _describe(exc)
        _discard_quietly(repo, backup_id)
        log.error("push failed backup=%s: %s", backup_id, outcome.error)
        return outcome, None
    except BaseException:
        _discard_quietly(repo, backup_id)
        raise
    outcome.stream_bytes, outcome.stored_bytes = manifest.stream_bytes, manifest.stored_bytes
    outcome.uploaded_bytes = manifest.stored_bytes
    outcome.seconds = time.monotonic() - t0
    log.info("push finished backup=%s stream_bytes=%d stored_bytes=%d seconds=%.1f MiB/s=%.1f",
             backup_id, outcome.stream_bytes, outcome.stored_bytes, outcome.seconds,
             outcome.stream_bytes / MiB / max(outcome.seconds, 1e-6))
    return outcome, manifest


def _stream(
    repo: Repository, step: Step, snap: Snapshot, parent: Snapshot | None, backup_id: str,
    subvolume: str, source: Path, settings: PushSettings, started: datetime,
    progress: ProgressFn | None,
) -> Manifest:
    options = settings.send_options or best_send_options()
    framing = StreamFraming(f"btrfs send of {snap.path}")
    sealer = ChunkSealer(repo.key, backup_id, settings.zstd_level)
    counters = {"raw": 0, "stored": 0}

    def raw_chunks(send: SendProcess) -> Iterator[tuple[int, bytes]]:
        for seq, chunk in enumerate(send.chunks(settings.chunk_size)):
            framing.feed(chunk)
            counters["raw"] += len(chunk)
            yield seq, chunk

    def stored(n: int) -> None:
        counters["stored"] += n
        if progress:
            progress(backup_id, counters["raw"], counters["stored"])

    with (SendProcess(snap.path, parent.path if parent else None, options) as send,
          closing(ordered_map(sealer, raw_chunks(send), workers=settings.workers,
                              window=settings.window)) as sealed):
        records, segments = write_segments(repo.target, backup_id, sealed,
                                           segment_size=settings.segment_size,
                                           bucket=settings.bucket, on_stored=stored)
    framing.finish()
    return Manifest(
        backup_id=backup_id, host=socket.gethostname(), subvolume=subvolume,
        source_path=str(source), snapshot=snap.name, snapshot_time=snap.time,
        snapshot_uuid=snap.uuid, parent_uuid=parent.uuid if parent else None,
        parent_id=step.parent_backup_id, depth=step.depth,
        send={**options.as_dict(), "stream_version": framing.version, "commands": framing.commands},
        compression={"algorithm": "zstd", "level": settings.zstd_level, "per_chunk": True},
        encryption={"algorithm": "AES-256-GCM", "kdf": "HKDF-SHA256", "frame": "BSC1",
                    "key_id": repo.key.key_id},
        chunk_size=settings.chunk_size, chunks=tuple(records),
        stream_bytes=sum(r.raw_size for r in records), stored_bytes=sum(r.stored_size for r in records),
        segments=segments, started=started, finished=datetime.now(UTC).replace(microsecond=0),
        tool={"btrsync": __version__, "btrfs_progs": progs_version(), "kernel": platform.release()},
    )


def _describe(exc: BaseException) -> str:
    return str(exc) if isinstance(exc, BtrsyncError) else f"{type(exc).__name__}: {exc}"


def _discard_quietly(repo: Repository, backup_id: str) -> None:
    try:
        repo.discard_uncommitted(backup_id)
    except (BtrsyncError, OSError) as exc:
        log.warning("could not remove partial data of backup=%s (btrsync clean will): %s", backup_id, exc)


def raise_for_failures(result: PushResult) -> None:
    if result.failed:
        first = result.failed[0]
        raise PushError(f"backup {first.backup_id} of {result.subvolume} to {result.target} failed: {first.error}")
