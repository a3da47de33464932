"""Receive (restore): resolve a backup, replay its chain, verify every chunk before btrfs sees it.

Data flow of one link::

    read.chunks (target.get(segment, offset, size) ─► [workers: xxh3(frame) → AES-256-GCM open
                 → zstd -d → size + xxh3(raw)]  ordered, bounded window)
                                       ─► btrfs receive DIR  (killed, partial subvolume deleted,
                                                              on the first bad chunk)
    ReceiveProcess then syncfs(DIR)s through a descriptor opened before btrfs receive started: a
    writeback error of anything it wrote fails the link and deletes its subvolume (btrfs receive
    exits 0 regardless)

The top directory's times. An incremental creates every new inode under a temporary name in the
subvolume's top directory and renames it into place, so that directory's mtime becomes the time
of the receive; btrfs send re-sends its times only when it changed in the source, and then not
necessarily after the last such rename. So each stream is parsed on its way, its END held back,
and a UTIMES of the top directory with the times it has in the snapshot is inserted before END:
btrfs receive applies it before it makes the subvolume read-only. The times are the stream's own
(its last UTIMES of the top directory), else those of the link before: carried from the previous
link of this run, else read from the file indexes of the chain (walking back to the last link
that sent them), else, without an index, the received parent's.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from contextlib import closing
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

from btrsync.btrfs.receive import ReceiveProcess
from btrsync.btrfs.subvolume import SubvolumeInfo, child_subvolumes, is_on_btrfs
from btrsync.catalog.manifest import Manifest
from btrsync.catalog.repository import Repository
from btrsync.catalog.segment_index import chain_read_ahead
from btrsync.errors import DamageError, ReceiveFailedError, UsageError
from btrsync.fileindex import store
from btrsync.progress import Estimate, Progress, as_progress
from btrsync.read.chains import restore_chain
from btrsync.read.chunks import chunks as checked_chunks
from btrsync.sendstream import compose
from btrsync.sendstream.checker import check_parent_unchanged
from btrsync.sendstream.format import CMD_HEADER_SIZE
from btrsync.sendstream.parser import StreamError, StreamParser
from btrsync.targets.errors import TargetError

log = logging.getLogger(__name__)

ProgressFn = Callable[[str, int, int], None]  # the older form of progress: (backup id, raw, stored)
RootTimes = tuple[compose.Timespec, compose.Timespec, compose.Timespec]  # atime, mtime, ctime of the top directory


@dataclass(slots=True)
class LinkResult:
    backup_id: str
    snapshot: str
    action: str  # "received" or "skipped"
    path: str
    stream_bytes: int = 0
    seconds: float = 0.0


@dataclass(slots=True)
class ReceiveResult:
    backup_id: str
    into: str
    links: list[LinkResult] = field(default_factory=list)

    @property
    def path(self) -> str:
        return self.links[-1].path if self.links else ""


def receive(repo: Repository, spec: str, into: Path, *, workers: int = 2,
            progress: Progress | ProgressFn | None = None) -> ReceiveResult:
    if not into.is_dir():
        raise UsageError(f"{into} is not a directory; create it on a btrfs filesystem")
    if not is_on_btrfs(into):
        raise UsageError(f"{into} is not on a btrfs filesystem; btrfs receive needs one")
    catalog = repo.catalog(ahead=True)
    chain = restore_chain(catalog, spec, repo.target.display_url)
    present = {s.received_uuid: s for s in child_subvolumes(into) if s.received_uuid}
    with chain_read_ahead(repo, [m for m in chain if m.snapshot_uuid not in present]) as done:
        return _receive_chain(repo, chain, present, into, workers, as_progress(progress), done)


def _receive_chain(repo: Repository, chain: list[Manifest], present: dict[str, SubvolumeInfo], into: Path,
                   workers: int, reporter: Progress | None, done: Callable[[Manifest], None]) -> ReceiveResult:
    result = ReceiveResult(chain[-1].backup_id, str(into))
    root: RootTimes | None = None  # the top directory's times in the link just received
    for index, link in enumerate(chain, 1):
        have = present.get(link.snapshot_uuid)
        if have is not None:
            if not have.is_trusted_parent:
                raise ReceiveFailedError(
                    f"{have.path} holds backup {link.backup_id} but was modified after it was received "
                    "(writable or changed): it cannot serve as a parent; move it away and retry")
            log.info("receive skipped backup=%s present=%s", link.backup_id, have.path)
            result.links.append(LinkResult(link.backup_id, link.snapshot, "skipped", str(have.path)))
            root = None
            continue
        parent = present.get(link.parent_uuid) if link.parent_uuid else None
        before = partial(_root_before, repo, chain[:index - 1], root, None if parent is None else parent.path)
        received, root = _receive_link_timed(repo, link, into, workers=workers, progress=reporter,
                                             index=index, count=len(chain), root_before=before)
        done(link)
        result.links.append(received)
    return result


def _root_before(repo: Repository, chain: list[Manifest], known: RootTimes | None,
                 parent: Path | None) -> RootTimes | None:
    return known if known is not None else recorded_root_times(repo, chain, parent)


def recorded_root_times(repo: Repository, chain: list[Manifest], parent: Path | None) -> RootTimes | None:
    """The top directory's times after the last link of ``chain``: the last UTIMES of it that the
    file indexes record, walking back from that link (a full always sends it); where an index is
    missing or unreadable, those of ``parent`` (the last link as received here) instead."""
    for m in reversed(chain):
        try:
            data, _ = store.read_compressed(repo, m)
            found = None
            for cmd, _offset, _size, path, attrs in store.iter_records(data, m):
                if cmd == "utimes" and path == "":
                    found = attrs
        except (store.NoFileIndex, DamageError, TargetError) as exc:
            log.warning("the top directory's times of backup %s: not from its file index (%s)", m.backup_id, exc)
            break
        if found is not None:
            return tuple(found["atime"]), tuple(found["mtime"]), tuple(found["ctime"])  # type: ignore[return-value]
    if parent is None:
        return None
    st = os.lstat(parent)
    return (tuple(divmod(st.st_atime_ns, 1_000_000_000)), tuple(divmod(st.st_mtime_ns, 1_000_000_000)),  # type: ignore[return-value]
            tuple(divmod(st.st_ctime_ns, 1_000_000_000)))


def receive_link(repo: Repository, manifest: Manifest, into: Path, *, workers: int,
                 progress: Progress | ProgressFn | None = None, index: int = 1, count: int = 1,
                 root_before: Callable[[], RootTimes | None] | None = None) -> LinkResult:
    """Stream one backup into ``btrfs receive``; every chunk is verified before it is written.

    ``progress`` gets the manifest's stream size as the (exact) total, the phases ``receiving``
    and ``committing`` (btrfs receive finishing the subvolume), and the bytes written.
    ``root_before`` gives the top directory's times in the parent link, asked only when this
    stream does not send them (default: the received parent's, as they are here)."""
    return _receive_link_timed(repo, manifest, into, workers=workers, progress=progress, index=index,
                               count=count, root_before=root_before)[0]


def _receive_link_timed(repo: Repository, manifest: Manifest, into: Path, *, workers: int,
                        progress: Progress | ProgressFn | None, index: int, count: int,
                        root_before: Callable[[], RootTimes | None] | None) -> tuple[LinkResult, RootTimes | None]:
    if root_before is None:
        parent = next((s.path for s in child_subvolumes(into) if s.received_uuid == manifest.parent_uuid), None)
        root_before = partial(recorded_root_times, repo, [], parent)
    reporter = as_progress(progress)
    if reporter is None:
        return _receive_link(repo, manifest, into, workers=workers, progress=None, root_before=root_before)
    reporter.start(manifest.backup_id, Estimate(manifest.stream_bytes, "manifest", exact=True),
                   index=index, count=count)
    try:
        done = _receive_link(repo, manifest, into, workers=workers, progress=reporter, root_before=root_before)
    except BaseException:
        reporter.finish(ok=False)
        raise
    reporter.finish(ok=True)
    return done


class _LinkStream:
    """Parses a link's stream on its way to btrfs receive, and holds back its END command.

    Before btrfs receive gets an incremental: was it sent on the parent as received here? A
    received subvolume's stransid is the ctransid its stream named; the incremental's SNAPSHOT
    names its parent's ctransid when it was sent. btrfs receive does not compare them, and a diff
    from a parent changed in between would be received without error into a wrong tree.

    Then ``root_times``: the top directory's times the stream sends last (None when it sends
    none), and ``end()``: the held-back END, once the whole stream has parsed."""

    def __init__(self, manifest: Manifest, into: Path) -> None:
        self.where = f"backup {manifest.backup_id}"
        self.stransid = None
        if manifest.parent_uuid is not None:
            parent = next((s for s in child_subvolumes(into) if s.received_uuid == manifest.parent_uuid), None)
            self.stransid = None if parent is None else parent.stransid
        self.parser = StreamParser()
        self.first = True
        self.root_times: RootTimes | None = None
        self._tail = b""  # the last bytes read, not yet handed on: END, once the stream is complete

    def feed(self, raw: bytes) -> list[bytes | memoryview]:
        """Check ``raw``; returns what may be handed to btrfs receive now."""
        try:
            events = self.parser.feed(raw)
        except StreamError as exc:
            raise DamageError(f"the stream of {self.where}: {exc}") from None
        if events and self.first:
            self.first = False
            if self.stransid is not None and events[0].cmd == "snapshot":
                check_parent_unchanged(self.where, events[0].attrs.get("clone_ctransid"), self.stransid)
        for ev in events:
            if ev.cmd == "utimes" and ev.path == "":
                a = ev.attrs
                self.root_times = (tuple(a["atime"]), tuple(a["mtime"]), tuple(a["ctime"]))  # type: ignore[assignment]
        if len(raw) >= CMD_HEADER_SIZE:
            out: list[bytes | memoryview] = [self._tail, memoryview(raw)[:-CMD_HEADER_SIZE]]
            self._tail = bytes(raw[-CMD_HEADER_SIZE:])
            return out
        joined = self._tail + bytes(raw)
        cut = max(0, len(joined) - CMD_HEADER_SIZE)
        self._tail = joined[cut:]
        return [joined[:cut]]

    def end(self) -> bytes:
        try:
            self.parser.finish()
        except StreamError as exc:
            raise DamageError(f"the stream of {self.where}: {exc}") from None
        if self._tail != compose.END:  # the parser saw END last; so these are its bytes
            raise DamageError(f"the stream of {self.where} does not end with a plain END command")
        return self._tail


def _receive_link(repo: Repository, manifest: Manifest, into: Path, *, workers: int,
                  progress: Progress | None,
                  root_before: Callable[[], RootTimes | None]) -> tuple[LinkResult, RootTimes | None]:
    t0 = time.monotonic()
    what = f"restore of backup {manifest.backup_id}"
    stream = _LinkStream(manifest, into)
    log.info("receive started backup=%s into=%s chunks=%d", manifest.backup_id, into, manifest.n_chunks)
    written = fetched = 0
    # every chunk authenticated and checked before btrfs receive sees a byte of it (read/chunks.py)
    chunks = checked_chunks(repo, manifest, workers=workers)
    if progress:
        progress.phase("receiving")
    with (ReceiveProcess(into, manifest.snapshot, what, parent_uuid=manifest.parent_uuid) as rx,
          closing(chunks)):
        for chunk in chunks:
            raw = chunk.raw
            for piece in stream.feed(raw):
                if piece:
                    rx.write(piece)
            written += len(raw)
            fetched += chunk.record.stored_size
            if progress:
                progress.update(written, fetched)
        end = stream.end()
        # the top directory's times in this snapshot, applied last (btrfs receive then makes it read-only)
        root = stream.root_times or root_before()
        if root is not None:
            rx.write(compose.utimes("", *root))
        else:
            log.warning("backup %s: the times of its top directory are not known; they are those of the receive",
                        manifest.backup_id)
        rx.write(end)
        if progress:  # btrfs receive applies what it has read, makes it read-only, then it is synced
            progress.phase("committing")
    seconds = time.monotonic() - t0
    log.info("receive finished backup=%s bytes=%d seconds=%.1f", manifest.backup_id, written, seconds)
    return LinkResult(manifest.backup_id, manifest.snapshot, "received", str(rx.path), written, seconds), root
