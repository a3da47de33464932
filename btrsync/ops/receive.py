"""Receive (restore): resolve a backup, replay its chain, verify every chunk before btrfs sees it.

Data flow of one link::

    target.get(segment, offset, size)  ─► [workers: xxh3(frame) → AES-256-GCM open → zstd -d
                                            → size + xxh3(raw)]  ordered, bounded window
                                       ─► btrfs receive DIR  (killed, partial subvolume deleted,
                                                              on the first bad chunk)
    ReceiveProcess then syncfs(DIR)s through a descriptor opened before btrfs receive started: a
    writeback error of anything it wrote fails the link and deletes its subvolume (btrfs receive
    exits 0 regardless)
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path

from btrsync.btrfs.receive import ReceiveProcess
from btrsync.btrfs.subvolume import child_subvolumes, is_on_btrfs
from btrsync.catalog.chains import walk_chain
from btrsync.catalog.manifest import ChunkRecord, Manifest
from btrsync.catalog.repository import Catalog, Repository
from btrsync.catalog.segment_index import table_records
from btrsync.errors import (
    BackupNotFoundError,
    DamageError,
    ReceiveFailedError,
    UsageError,
)
from btrsync.pipeline.ordered import ordered_map
from btrsync.pipeline.seal import ChunkOpener
from btrsync.progress import Estimate, Progress, as_progress
from btrsync.sendstream.checker import check_parent_unchanged
from btrsync.sendstream.parser import StreamError, StreamParser

log = logging.getLogger(__name__)

ProgressFn = Callable[[str, int, int], None]  # the older form of progress: (backup id, raw, stored)


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


def resolve(manifests: list[Manifest], spec: str) -> Manifest:
    """BACKUP as an id, a snapshot name, ``latest`` or ``SUBVOL@latest``."""
    if not manifests:
        raise BackupNotFoundError("the target holds no backups")
    if spec == "latest" or spec.endswith("@latest"):
        pool = manifests if spec == "latest" else [m for m in manifests if m.subvolume == spec[:-7]]
        subvols = sorted({m.subvolume for m in pool})
        if not pool:
            raise BackupNotFoundError(f"no backups of subvolume {spec[:-7]!r} (have: "
                                      f"{', '.join(sorted({m.subvolume for m in manifests}))})")
        if len(subvols) > 1:
            raise UsageError(f"'latest' is ambiguous: the target holds {', '.join(subvols)}; "
                             f"say which, e.g. {subvols[0]}@latest")
        return max(pool, key=lambda m: (m.snapshot_time, m.snapshot))
    matches = [m for m in manifests if spec in (m.backup_id, m.snapshot)]
    if len(matches) == 1:
        return matches[0]
    if len(matches) > 1:
        raise UsageError(f"{spec!r} names several backups ({', '.join(m.backup_id for m in matches)}); "
                         "use the id")
    raise BackupNotFoundError(f"no backup {spec!r} on the target (see 'btrsync list')")


def chain_of(manifests: list[Manifest], last: Manifest, damaged: Iterable[str] = ()) -> list[Manifest]:
    """The links to replay for ``last``: its full, then every incremental up to it.

    A missing, damaged or mismatched parent, or a loop, is damage (exit 4), named in the message.
    """
    return walk_chain({m.backup_id: m for m in manifests}, last, damaged)


def restore_chain(catalog: Catalog, spec: str, url: str) -> list[Manifest]:
    """The links to replay for BACKUP ``spec``, full first; a damaged backup, or a ``latest`` that
    a damaged newer manifest may hide, is damage (exit 4), never silently another backup."""
    for d in catalog.damaged:
        if d.matches(spec):
            raise DamageError(f"backup {d.backup_id} cannot be restored: {d.advice(url)}")
    last = resolve(catalog.manifests, spec)
    if spec == "latest" or spec.endswith("@latest"):
        newer = [d for d in catalog.damaged if d.subvolume in (last.subvolume, None)
                 and (d.snapshot_time is None or d.snapshot_time > last.snapshot_time)]
        if newer:
            raise DamageError(f"'{spec}' is ambiguous: a newer backup of {last.subvolume} may exist but its "
                              f"manifest is damaged ({newer[0].key}); restore a backup by its id "
                              f"(the newest intact one is {last.backup_id}) or repair the manifest")
    return chain_of(catalog.manifests, last, {d.backup_id for d in catalog.damaged})


def receive(repo: Repository, spec: str, into: Path, *, workers: int = 2,
            progress: Progress | ProgressFn | None = None) -> ReceiveResult:
    if not into.is_dir():
        raise UsageError(f"{into} is not a directory; create it on a btrfs filesystem")
    if not is_on_btrfs(into):
        raise UsageError(f"{into} is not on a btrfs filesystem; btrfs receive needs one")
    catalog = repo.catalog()
    chain = restore_chain(catalog, spec, repo.target.display_url)
    last = chain[-1]
    present = {s.received_uuid: s for s in child_subvolumes(into) if s.received_uuid}
    result = ReceiveResult(last.backup_id, str(into))
    reporter = as_progress(progress)
    for index, link in enumerate(chain, 1):
        have = present.get(link.snapshot_uuid)
        if have is not None:
            if not have.is_trusted_parent:
                raise ReceiveFailedError(
                    f"{have.path} holds backup {link.backup_id} but was modified after it was received "
                    "(writable or changed): it cannot serve as a parent; move it away and retry")
            log.info("receive skipped backup=%s present=%s", link.backup_id, have.path)
            result.links.append(LinkResult(link.backup_id, link.snapshot, "skipped", str(have.path)))
            continue
        result.links.append(receive_link(repo, link, into, workers=workers, progress=reporter,
                                         index=index, count=len(chain)))
    return result


def receive_link(repo: Repository, manifest: Manifest, into: Path, *, workers: int,
                 progress: Progress | ProgressFn | None = None, index: int = 1, count: int = 1) -> LinkResult:
    """Stream one backup into ``btrfs receive``; every chunk is verified before it is written.

    ``progress`` gets the manifest's stream size as the (exact) total, the phases ``receiving``
    and ``committing`` (btrfs receive finishing the subvolume), and the bytes written."""
    reporter = as_progress(progress)
    if reporter is None:
        return _receive_link(repo, manifest, into, workers=workers, progress=None)
    reporter.start(manifest.backup_id, Estimate(manifest.stream_bytes, "manifest", exact=True),
                   index=index, count=count)
    try:
        link = _receive_link(repo, manifest, into, workers=workers, progress=reporter)
    except BaseException:
        reporter.finish(ok=False)
        raise
    reporter.finish(ok=True)
    return link


class _ParentCheck:
    """Before btrfs receive gets an incremental: was it sent on the parent as received here? A
    received subvolume's stransid is the ctransid its stream named; the incremental's SNAPSHOT
    names its parent's ctransid when it was sent. btrfs receive does not compare them, and a diff
    from a parent changed in between would be received without error into a wrong tree."""

    def __init__(self, manifest: Manifest, into: Path) -> None:
        self.where = f"backup {manifest.backup_id}"
        self.stransid = None
        if manifest.parent_uuid is not None:
            parent = next((s for s in child_subvolumes(into) if s.received_uuid == manifest.parent_uuid), None)
            self.stransid = None if parent is None else parent.stransid
        self.parser = StreamParser() if self.stransid is not None else None

    def feed(self, raw: bytes) -> None:
        if self.parser is None:
            return
        try:
            events = self.parser.feed(raw)
        except StreamError as exc:
            raise DamageError(f"the stream of {self.where}: {exc}") from None
        if events:
            self.parser = None
            if events[0].cmd == "snapshot":
                check_parent_unchanged(self.where, events[0].attrs.get("clone_ctransid"), self.stransid)


def _receive_link(repo: Repository, manifest: Manifest, into: Path, *, workers: int,
                  progress: Progress | None) -> LinkResult:
    opener = ChunkOpener(repo.binding, manifest.backup_id)
    t0 = time.monotonic()

    def fetch(item: tuple[int, ChunkRecord]) -> tuple[bytes, int]:
        index, rec = item
        frame = repo.read_frame(manifest.backup_id, index, rec)
        return opener.open(index, frame, stored_xxh3=rec.stored_xxh3, raw_size=rec.raw_size,
                           raw_xxh3=rec.raw_xxh3), rec.stored_size

    what = f"restore of backup {manifest.backup_id}"
    parent_check = _ParentCheck(manifest, into)
    log.info("receive started backup=%s into=%s chunks=%d", manifest.backup_id, into, manifest.n_chunks)
    written = fetched = 0
    # the chunk table streams in one segment index at a time, checked against the manifest
    chunks = ordered_map(fetch, enumerate(table_records(repo, manifest)), workers=workers, window=2 * workers)
    if progress:
        progress.phase("receiving")
    with (ReceiveProcess(into, manifest.snapshot, what, parent_uuid=manifest.parent_uuid) as rx,
          closing(chunks)):
        for raw, stored in chunks:
            parent_check.feed(raw)
            rx.write(raw)
            written += len(raw)
            fetched += stored
            if progress:
                progress.update(written, fetched)
        if progress:  # btrfs receive applies what it has read, makes it read-only, then it is synced
            progress.phase("committing")
    seconds = time.monotonic() - t0
    log.info("receive finished backup=%s bytes=%d seconds=%.1f", manifest.backup_id, written, seconds)
    return LinkResult(manifest.backup_id, manifest.snapshot, "received", str(rx.path), written, seconds)
