"""One backup's transfer: resume point, send, seal, segments, the checks before the commit,
the manifest; and the removal of what killed attempts at the same backup left behind."""

from __future__ import annotations

import contextlib
import logging
import platform
import socket
import threading
from collections.abc import Iterator
from concurrent.futures import Future, InvalidStateError
from contextlib import closing, nullcontext
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from btrsync import __version__
from btrsync.audit import AuditLog
from btrsync.btrfs.runner import progs_version
from btrsync.btrfs.send import SendProcess, best_send_options
from btrsync.catalog.layout import backup_id_for
from btrsync.catalog.lease import Lease, lease_key
from btrsync.catalog.manifest import ChunkRecord, Manifest
from btrsync.catalog.repository import Repository
from btrsync.catalog.segment_index import (
    ResumePoint,
    TableDigest,
    find_resume_point,
    resumed_records,
    write_index,
)
from btrsync.errors import BtrsyncError, PushError, SendFailedError
from btrsync.fileindex.root import from_record as root_from_record
from btrsync.fileindex.store import IndexWriter
from btrsync.fileindex.tree import Inode, new_root
from btrsync.ops.push.readahead import SendReadAhead
from btrsync.ops.push.settings import PushSettings
from btrsync.ops.push.watch import StreamWatch, WatchThread
from btrsync.pipeline.ordered import ordered_map
from btrsync.pipeline.seal import ChunkSealer, SealedChunk, xxh3
from btrsync.pipeline.segments import write_segments
from btrsync.pipeline.throttle import Metered
from btrsync.planner.plan import Step
from btrsync.progress import Progress
from btrsync.snapshots.store import Snapshot
from btrsync.targets.base import Leftover, Target
from btrsync.targets.errors import NotFound
from btrsync.targets.together import together

log = logging.getLogger(__name__)


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


class Attempt:
    """One backup's transfer: resume point, send, seal, segments, manifest."""

    def __init__(self, repo: Repository, step: Step, subvolume: str, source: Path,
                 settings: PushSettings, progress: Progress | None, audit: AuditLog | None,
                 parent_manifest: Manifest | None = None) -> None:
        self.repo, self.step, self.subvolume, self.source = repo, step, subvolume, source
        # the parent's manifest as the catalog the plan read had it (manifests never change once
        # committed; whether it is still there is asked right before the commit)
        self.parent_manifest = parent_manifest
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
        #: the --no-data stream's measure, from the read-ahead's walk (None: it has none): the
        #: progress estimate's, which then walks the metadata only when this has nothing to tell
        self.measured: Future[int | None] = Future()
        if settings.read_ahead <= 0:
            self.measured.set_result(None)

    def params(self) -> dict[str, object]:
        """What must be unchanged for durable segments of an earlier attempt to be reused."""
        return {"snapshot_uuid": self.snap.uuid, "parent_uuid": self.parent.uuid if self.parent else None,
                "chunk_size": self.settings.chunk_size, "zstd_level": self.settings.zstd_level,
                "send": self.options.as_dict(), "key_id": self.repo.key.key_id}

    def run(self) -> Manifest:
        """Send and commit, all under the upload lease: the lease goes only after the commit, so
        a clean or prune elsewhere never sees this backup's data without either."""
        try:
            return self._run_leased()
        finally:
            self._measured(None)  # it failed before the read-ahead could tell

    def _run_leased(self) -> Manifest:
        with Lease(self.repo.target, self.backup_id, self.step.parent_backup_id) as lease:
            committed, listed = self.repo.committed_and_left(self.backup_id)
            if committed:
                raise PushError(f"backup {self.backup_id} was committed meanwhile (by another push); "
                                "nothing was changed")
            try:
                manifest = self._run(resume=True, listed=listed)
            except StreamChangedError as exc:
                log.warning("restarting backup=%s from scratch: %s", self.backup_id, exc)
                manifest = self._run(resume=False)
            leftovers = self._check_uploaded(manifest, lease)
            self.repo.commit(manifest)
            remove_temporaries(self.repo.target, self.backup_id, self.audit, leftovers)
            return manifest

    def _check_uploaded(self, manifest: Manifest, lease: Lease) -> list[Leftover] | str:
        """Right before the commit, one listing: every segment and index the manifest names is on
        the target, and the segments hold exactly its stored bytes.  A clean on another host that
        took this upload for orphans (or a lost object) must fail the push, not commit a backup
        that cannot be restored; the next push resends what is missing.  At once with it
        (``checks_before_commit``), whether the parent is still there, whether the lease is still
        this push's, and what killed attempts at this backup left (returned, removed after the
        commit)."""
        parent = manifest.parent_id
        found = checks_before_commit(self.repo, manifest, lease)
        if found.lost is not None:
            raise PushError(lost_lease_error(manifest.backup_id, found.lost, self.repo.target.display_url))
        if found.gap:
            raise PushError(f"backup {manifest.backup_id} was not committed: {found.gap} on "
                            f"{self.repo.target.display_url} (removed by a clean or prune elsewhere, or lost); "
                            "push again to send it anew")
        if not found.parent_there:
            assert parent is not None
            raise self._parent_gone(parent)
        return found.leftovers

    def _parent_gone(self, parent: str) -> PushError:
        """A prune or delete elsewhere that read the leases before this push took its own removed
        the parent while this backup was sent: committed, it could never be restored."""
        return PushError(f"backup {self.backup_id} was not committed: its parent {parent} is no longer on "
                         f"{self.repo.target.display_url} (removed by a prune or delete elsewhere while this push "
                         "ran); push again: it is planned anew on what is there")

    def _run(self, *, resume: bool, listed: dict[str, int] | None = None) -> Manifest:
        started = datetime.now(UTC)
        if resume:
            point = find_resume_point(self.repo, self.backup_id, self.params(), self.deletions, listed)
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
                            point.attempt, root=self._root_before())
        framing = StreamWatch(f"btrfs send of {self.snap.path}", full=self.parent is None, sink=files)
        watch = WatchThread(framing, depth=self.settings.window)  # parses beside the read, not in it
        try:
            # the file index is durable before the manifest that commits the backup names it
            index = self._send(watch, point, framing, files)
            self._check_parent_unchanged(framing)
            return self._manifest(framing, started, index)
        finally:
            watch.close()
            files.close()

    def _send(self, watch: WatchThread, point: ResumePoint, framing: StreamWatch,
              files: IndexWriter) -> dict[str, object]:
        """Send, seal and store the stream; returns what the manifest records of the file index."""
        index: dict[str, object] = {}
        sealer = ChunkSealer(self.repo.binding, self.backup_id, self.settings.zstd_level)
        # progress counts frames as the token bucket lets them through to the target
        meter = Metered(self.settings.bucket, self._passed) if self.progress else self.settings.bucket
        parent = self.parent.path if self.parent else None
        with (SendProcess(self.snap.path, parent, self.options) as send,
              SendReadAhead(self.snap.path, parent, self.options, lambda: framing.stats.data_bytes,
                            window=self.settings.read_ahead,  # the watch's queue, a chunk being read, the pipe
                            lag=(self.settings.window + 2) * self.settings.chunk_size, on_sized=self._measured),
              closing(ordered_map(sealer, self._fresh_chunks(send, watch, point),
                                  workers=self.settings.workers, window=self.settings.window)) as sealed):

            def index_beside_last_segments() -> None:
                """The stream has ended: the file index goes up while the last segments and their
                indexes become durable, not after them (a round trip less to a distant store).
                btrfs send's own verdict first: a send that failed says why, not "ended early"."""
                send.ended()
                watch.finish()
                files.finish(stream_bytes=self.raw, commands=framing.commands)
                index.update(files.upload(self.repo))

            write_segments(
                self.repo.target, self.backup_id, self._handed(sealed) if self.progress else sealed,
                segment_size=self.settings.segment_size, bucket=meter,  # type: ignore[arg-type]
                on_stored=self._stored, first_segment=point.segments, on_segment=self._segment_done,
                may_start=self.settings.may_start_segment, all_handed=index_beside_last_segments)
        if self.raw != self.table.stream_bytes:  # the file index's trailer must match the manifest
            raise PushError(f"backup {self.backup_id} was not committed: {self.raw} bytes of stream were read but the "
                            f"segment indexes record {self.table.stream_bytes}; push again")
        return index

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

    def _measured(self, size: int | None) -> None:
        """The read-ahead's measure of the metadata stream (the first one told counts)."""
        with contextlib.suppress(InvalidStateError):
            self.measured.set_result(size)

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

    def _root_before(self) -> Inode | None:
        """The top directory before this stream (``fileindex/root.py``): a full's starts afresh, an
        incremental's is the parent's as its manifest recorded it (None: not recorded)."""
        if self.step.parent_backup_id is None:
            return new_root()
        known = self.parent_manifest
        if known is None or known.backup_id != self.step.parent_backup_id:
            return None
        return root_from_record((known.files or {}).get("root"))

    def _check_parent_unchanged(self, framing: StreamWatch) -> None:
        """The parent snapshot must be the tree its backup holds: its ctransid when this stream was
        sent equals the one its own stream recorded.  The planner only picks snapshots unchanged
        since they were taken; this closes the gap between that check and ``btrfs send``."""
        pid = self.step.parent_backup_id
        if pid is None:
            return
        try:
            known = self.parent_manifest
            recorded = (known if known is not None and known.backup_id == pid
                        else self.repo.load_manifest(pid)).send.get("ctransid")
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


@dataclass(frozen=True, slots=True)
class BeforeCommit:
    """What the reads right before a commit found (``checks_before_commit``)."""

    gap: str | None  # what is wrong with the uploaded objects, or None
    parent_there: bool
    leftovers: list[Leftover] | str  # of killed attempts, for ``remove_temporaries`` after the commit
    lost: str | None  # why the backup's lease is no longer this one's (``Lease.whose``), or None


def checks_before_commit(repo: Repository, manifest: Manifest, lease: Lease) -> BeforeCommit:
    """Right before committing ``manifest`` (a push or a copy), four reads at once: what is wrong
    with its uploaded objects (``upload_gap``), whether its parent is still there, what killed
    attempts at it left (``find_temporaries``; the backup's lease keeps new ones from appearing),
    and whether its lease is still this one's.  The caller raises its own errors."""
    parent = manifest.parent_id
    gap, parent_there, leftovers, lost = together(
        repo.target, lambda: repo.upload_gap(manifest), lambda: parent is None or repo.has_manifest(parent),
        lambda: find_temporaries(repo.target, manifest.backup_id), lease.whose)
    return BeforeCommit(gap, parent_there, leftovers, lost)


def lost_lease_error(backup_id: str, lost: str, where: str) -> str:
    return (f"backup {backup_id} was not committed on {where}: {lost}; another push or copy of it may have "
            "written its data meanwhile, so this one commits nothing. Run it again: it waits while another "
            "holder's lease is live, and finds the backup committed if that one finished")


def find_temporaries(target: Target, backup_id: str) -> list[Leftover] | str:
    """What killed earlier attempts at ``backup_id`` left on the target: temporary files, partial
    rsync uploads, unfinished multipart uploads of its segments, indexes, manifest and lease; or
    why they could not be listed (never an error of its own: see ``remove_temporaries``)."""
    own = (f"data/{backup_id}/", f"backups/{backup_id}/", lease_key(backup_id))
    try:
        return [leftover for leftover in target.leftovers() if leftover.key.startswith(own)]
    except (BtrsyncError, OSError) as exc:
        return describe(exc)


def remove_temporaries(target: Target, backup_id: str, audit: AuditLog | None = None,
                       found: list[Leftover] | str | None = None) -> None:
    """Remove what killed earlier attempts at ``backup_id`` left on the target (``found``, when
    ``find_temporaries`` listed it already).  Called under the backup's lease after its commit, so
    no live push writes them (a second push of the same backup refuses to start while the lease
    is live).  Failing to list or remove them is only a warning: the backup is committed, and
    ``btrsync clean`` removes them too."""
    where = target.display_url
    found = find_temporaries(target, backup_id) if found is None else found
    if isinstance(found, str):
        _not_removed(backup_id, where, found)
        return
    try:
        for leftover in found:
            with (audit.deletion("push-temporary", target=where, kind=leftover.kind, key=leftover.key,
                                 bytes=leftover.size) if audit is not None else nullcontext()):
                target.remove_leftover(leftover)
            log.info("removed %s of an interrupted push key=%s bytes=%d", leftover.kind, leftover.key,
                     leftover.size)
    except (BtrsyncError, OSError) as exc:
        _not_removed(backup_id, where, describe(exc))


def _not_removed(backup_id: str, where: str, reason: str) -> None:
    log.warning("could not remove the temporaries of interrupted pushes of backup %s on %s: %s "
                "('btrsync clean' removes them)", backup_id, where, reason)


def describe(exc: BaseException) -> str:
    return str(exc) if isinstance(exc, BtrsyncError) else f"{type(exc).__name__}: {exc}"
