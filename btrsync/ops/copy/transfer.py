"""Copy one backup into another repository, under the destination's upload lease::

    source chunk table (authenticated, pinned by the source manifest)
      └─ read/chunks.fetch: ranged get → xxh3(frame) → GCM open (source binding) → zstd -d → xxh3(raw)
           └─ ordered_map over ``workers``: seal again for the destination (its key and repository
              id in the AAD, the source's zstd level: the same stored sizes)
                └─ token bucket ─► write_segments (atomic puts) ─► segment index, once durable
    file index: read (authenticated, pinned by the manifest), re-sealed part by part
    one listing: every segment and index there ─► commit the manifest (the only commit point)

Format 2 binds every sealed object to its repository (§3), so nothing is copied as stored bytes:
each chunk is opened and checked, and sealed anew, whether the two keys differ or not.  A killed
copy leaves durable segments with their indexes; the next copy of the same backup keeps the
longest run whose parameters match and whose chunks' raw sizes and hashes equal the source's
records (checked from the two chunk tables, without reading the chunks), and sends the rest.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Iterator
from contextlib import closing
from dataclasses import dataclass, field
from datetime import UTC, datetime

from btrsync import __version__
from btrsync.audit import AuditLog
from btrsync.catalog import layout
from btrsync.catalog.lease import Lease
from btrsync.catalog.manifest import ChunkRecord, Manifest
from btrsync.catalog.repository import Repository
from btrsync.catalog.segment_index import (
    ResumePoint,
    TableDigest,
    find_resume_point,
    resumed_records,
    table_records,
    write_index,
)
from btrsync.errors import BtrsyncError, DamageError
from btrsync.fileindex.store import PART_SIZE, read_compressed
from btrsync.ops.push.attempt import checks_before_commit, lost_lease_error, remove_temporaries
from btrsync.pipeline.ordered import ordered_map
from btrsync.pipeline.seal import ChunkSealer, SealedChunk
from btrsync.pipeline.segments import write_segments
from btrsync.pipeline.throttle import TokenBucket
from btrsync.progress import Estimate, Progress
from btrsync.read.chunks import ReadStats, chunks
from btrsync.targets.base import Leftover

log = logging.getLogger(__name__)

MiB = 1 << 20


class CopyError(BtrsyncError):
    """A copy that could not be completed (exit 1); damage of the source is a ``DamageError``."""


@dataclass(frozen=True, slots=True)
class CopySettings:
    workers: int = 4
    segment_size: int = 128 * MiB
    bucket: TokenBucket | None = None
    #: asked before each segment is started (as for push): refuses it by raising
    may_start_segment: Callable[[int], None] | None = None

    @property
    def window(self) -> int:
        return 2 * self.workers


@dataclass(slots=True)
class CopiedBackup:
    backup_id: str
    subvolume: str
    snapshot: str
    kind: str
    parent: str | None
    status: str  # copied | present | planned | failed | skipped | stopped
    stream_bytes: int = 0
    stored_bytes: int = 0  # the backup's stored bytes (as on the source)
    moved_bytes: int = 0  # chunk frames written to the destination by this copy
    resumed_bytes: int = 0  # kept from an interrupted copy
    read_bytes: int = 0  # chunk frames read from the source
    seconds: float = 0.0
    error: str | None = None
    damaged: bool = False  # failed on damage of the source (exit 4)

    @classmethod
    def of(cls, m: Manifest, status: str) -> CopiedBackup:
        return cls(m.backup_id, m.subvolume, m.snapshot, "full" if m.is_full else "incremental", m.parent_id,
                   status, stream_bytes=m.stream_bytes, stored_bytes=m.stored_bytes)


class Refused(BtrsyncError):
    """``may_start_segment`` refused the next segment (a run's window closed): the copy stopped
    at a segment boundary; the next copy resumes it."""


class _KeptDiffers(BtrsyncError):
    """The kept part of an interrupted copy is not the source's backup: start again."""


@dataclass
class _Attempt:
    source: Repository
    dest: Repository
    manifest: Manifest
    settings: CopySettings
    audit: AuditLog | None
    outcome: CopiedBackup
    progress: Progress | None = None
    point: ResumePoint = field(default_factory=ResumePoint)
    table: TableDigest = field(default_factory=TableDigest)

    @property
    def backup_id(self) -> str:
        return self.manifest.backup_id

    @property
    def level(self) -> int:
        return int(self.manifest.compression.get("level", 3))

    @property
    def attempt(self) -> str | None:
        """The source's attempt token, which the copy takes for its own: the file index's header
        names it, so the index is copied as it is.  Tokens tell attempts at one backup apart in
        one repository; a copy of the same attempt holds the same stream."""
        token = self.manifest.table.get("attempt") if self.manifest.format >= 2 else None
        return str(token) if token else None

    def params(self) -> dict[str, object]:
        """What must be unchanged for durable segments of an interrupted copy to be kept (never a
        push's: the parameters differ, so neither takes the other's leftovers for its own)."""
        m = self.manifest
        return {"copy_of": m.snapshot_uuid, "source_attempt": self.attempt, "parent_uuid": m.parent_uuid,
                "chunk_size": m.chunk_size, "zstd_level": self.level, "key_id": self.dest.key.key_id}

    def _fresh(self) -> ResumePoint:
        return ResumePoint(self.attempt) if self.attempt else ResumePoint()

    def run(self) -> Manifest:
        deletions = (self.audit.object_deletions(self.dest.target.display_url, "copy: discard an interrupted "
                                                 "copy's data that cannot be resumed")
                     if self.audit is not None else None)
        with Lease(self.dest.target, self.backup_id, self.manifest.parent_id) as lease:
            committed, listed = self.dest.committed_and_left(self.backup_id)
            if committed:
                raise CopyError(f"backup {self.backup_id} was committed on {self.dest.target.display_url} "
                                "meanwhile (by another copy or push); nothing was changed")
            self.point = find_resume_point(self.dest, self.backup_id, self.params(), deletions, listed)
            if not self.point.segments:
                self.point = self._fresh()
            try:
                self._check_kept()
            except _KeptDiffers as exc:
                log.warning("copying backup=%s from scratch: %s", self.backup_id, exc)
                self.dest.discard_uncommitted(self.backup_id, deletions)
                self.point = self._fresh()
            copied = self._copy()
            leftovers = self._check_uploaded(copied, lease)
            self.dest.commit(copied)
            remove_temporaries(self.dest.target, self.backup_id, self.audit, leftovers)
            return copied

    def _check_kept(self) -> None:
        """The kept chunks must be the source's: raw size and hash of each, from the two tables."""
        if self.attempt is not None and self.point.attempt != self.attempt:
            raise _KeptDiffers("the kept segments belong to another attempt than the source's")
        if not self.point.chunks:
            return
        theirs = table_records(self.source, self.manifest)
        mine = resumed_records(self.dest, self.backup_id, self.point)
        for index in range(self.point.chunks):
            src, kept = next(theirs, None), next(mine)
            if src is None or (src.raw_size, src.raw_xxh3) != (kept.raw_size, kept.raw_xxh3):
                raise _KeptDiffers(f"chunk {index} kept on the destination differs from the source's")
        for _ in mine:  # the rest of the kept table: checked against the point's digest at its end
            pass

    def _copy(self) -> Manifest:
        started = time.monotonic()
        point, out = self.point, self.outcome
        self.table = point.table.copy()
        out.resumed_bytes = point.stored_bytes
        stats = ReadStats()
        sealer = ChunkSealer(self.dest.binding, self.backup_id, self.level)
        fetched = chunks(self.source, self.manifest, workers=self.settings.workers,
                         select=lambda index, _rec: index >= point.chunks, stats=stats)
        with closing(fetched), closing(ordered_map(sealer, ((c.index, c.raw) for c in fetched),
                                                   workers=self.settings.workers,
                                                   window=self.settings.window)) as sealed:
            if self.progress is not None:
                self.progress.phase("copying")
            write_segments(self.dest.target, self.backup_id, self._counted(sealed),
                           segment_size=self.settings.segment_size, bucket=self.settings.bucket,
                           first_segment=point.segments, on_segment=self._segment_done,
                           may_start=self._may_start if self.settings.may_start_segment else None)
        out.read_bytes = stats.stored_bytes
        m = self.manifest
        if (self.table.chunks, self.table.stream_bytes) != (m.n_chunks, m.stream_bytes):
            raise DamageError(f"backup {m.backup_id}: the copy holds {self.table.chunks} chunks of "
                              f"{self.table.stream_bytes} bytes, the source manifest records {m.n_chunks} of "
                              f"{m.stream_bytes}; nothing was committed")
        if self.progress is not None:
            self.progress.phase("committing")
        files = self._copy_file_index()
        out.seconds = time.monotonic() - started
        now = datetime.now(UTC).replace(microsecond=0)
        return dataclasses.replace(
            m, format=layout.FORMAT_VERSION, chunks=(), chunk_count=self.table.chunks,
            table={"attempt": point.attempt, "digest": self.table.hexdigest},
            stored_bytes=self.table.stored_bytes, segments=self.table.segments, files=files,
            encryption={**m.encryption, "key_id": self.dest.key.key_id},
            tool={**m.tool, "copied": {"btrsync": __version__, "from_repository": self.source.repo_id,
                                       "time": now.isoformat().replace("+00:00", "Z")}})

    def _may_start(self, segment: int) -> None:
        assert self.settings.may_start_segment is not None
        try:
            self.settings.may_start_segment(segment)
        except BtrsyncError as exc:
            raise Refused(str(exc)) from exc

    def _counted(self, sealed: Iterator[SealedChunk]) -> Iterator[SealedChunk]:
        """Count the frames handed to the segment writer (``moved_bytes``), and report them."""
        out, progress = self.outcome, self.progress
        raw = self.point.table.stream_bytes
        for chunk in sealed:
            out.moved_bytes += len(chunk.frame)
            raw += chunk.raw_size
            if progress is not None:
                progress.update(raw, out.resumed_bytes + out.moved_bytes)
            yield chunk

    def _segment_done(self, segment: int, records: list[ChunkRecord]) -> None:
        params = {**self.params(), "attempt": self.point.attempt}
        self.table.add(write_index(self.dest, self.backup_id, segment, params, records), records)

    def _copy_file_index(self) -> dict[str, object] | None:
        """The source's file index, authenticated and pinned by its manifest (``read_compressed``),
        sealed part by part for the destination: the same compressed bytes, so the same digest.
        Its header names the source's attempt token, which the copy carries on (``attempt``), so
        no record is decoded or encoded again.  None when the backup has none."""
        m = self.manifest
        if not m.files:
            return None
        data, _stored = read_compressed(self.source, m)
        parts = max(1, -(-len(data) // PART_SIZE))
        stored = 0
        for part in range(parts):
            key = layout.files_key(m.backup_id, part)
            frame = self.dest.binding.seal_files(key, data[part * PART_SIZE:(part + 1) * PART_SIZE],
                                                 last=part == parts - 1)
            self.dest.target.put_bytes(key, frame)
            stored += len(frame)
        return {**m.files, "parts": parts, "stored_bytes": stored}

    def _check_uploaded(self, manifest: Manifest, lease: Lease) -> list[Leftover] | str:
        """Listings right before the commit (``checks_before_commit``, as a push makes them): every
        segment and index there, holding exactly the stored bytes, the parent's manifest (a
        clean or prune elsewhere, or a lost object, fails the copy instead) and the lease still
        this copy's; returns the leftovers of killed attempts, removed after the commit."""
        bid = manifest.backup_id
        found = checks_before_commit(self.dest, manifest, lease)
        if found.lost is not None:
            raise CopyError(lost_lease_error(bid, found.lost, self.dest.target.display_url))
        if found.gap:
            raise CopyError(f"backup {bid} was not committed: {found.gap} on {self.dest.target.display_url}; "
                            "copy again to send it anew")
        parent = manifest.parent_id
        if not found.parent_there:
            # a prune or delete elsewhere that read the leases before this copy's took the parent:
            # committed, this backup could never be restored there
            raise CopyError(f"backup {bid} was not committed: its parent {parent} is no longer on "
                            f"{self.dest.target.display_url} (removed by a prune or delete elsewhere while this "
                            "copy ran); copy again: the parent is sent again and this backup resumes")
        return found.leftovers


def copy_backup(source: Repository, dest: Repository, manifest: Manifest, settings: CopySettings,
                audit: AuditLog | None = None, progress: Progress | None = None, *, index: int = 1,
                count: int = 1) -> tuple[CopiedBackup, Manifest]:
    """Copy one backup whose parent (if any) the destination holds; commits its manifest last.
    Raises on any failure, with nothing committed.  ``progress`` gets the manifest's stream size
    as the (exact) total and the phases ``copying`` and ``committing``."""
    outcome = CopiedBackup.of(manifest, "copied")
    t0 = time.monotonic()
    if progress is None:
        copied = _Attempt(source, dest, manifest, settings, audit, outcome).run()
    else:
        progress.start(manifest.backup_id, Estimate(manifest.stream_bytes, "manifest", exact=True),
                       index=index, count=count)
        try:
            copied = _Attempt(source, dest, manifest, settings, audit, outcome, progress).run()
        except BaseException:
            progress.finish(ok=False)
            raise
        progress.finish(ok=True)
    outcome.seconds = time.monotonic() - t0
    log.info("copy finished backup=%s moved_bytes=%d resumed_bytes=%d stored_bytes=%d seconds=%.1f",
             manifest.backup_id, outcome.moved_bytes, outcome.resumed_bytes, copied.stored_bytes, outcome.seconds)
    return outcome, copied
