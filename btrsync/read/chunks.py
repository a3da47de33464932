"""The chunks of a backup, fetched, authenticated and checked, in order, with bounded memory.

Every reader of stream data goes through ``fetch`` (``chunks`` for one backup's table,
``RangeReader`` for byte ranges of any link of a chain)::

    chunk table (catalog/segment_index.table_records: each index authenticated, pinned by the manifest)
      └─ select ─► ordered_map over ``workers`` threads, at most ``window`` chunks in flight:
           ranged get of the frame (segment, offset, stored size: missing or short is damage)
           → xxh3-128 of the stored frame → AES-256-GCM open (AAD: repository, backup id, chunk
           number) → zstd -d (at most the recorded raw size) → raw size + xxh3-128 of the raw bytes
      └─ chunks in table order ─► the caller (receive, restore, index, verify, drills)

Nothing of a chunk reaches the caller before every check passed.  A chunk that fails one is a
``ChunkDamageError`` naming the backup, the chunk and its segment, with ``kind`` naming the check;
it is raised at that chunk's place in the order (the chunks before it are yielded first).  With
``keep_going`` (verify) it is handed over instead, as a ``Chunk`` whose ``damage`` is set and
whose ``raw`` raises it, so no caller can use damaged bytes by mistake.  Damage in the chunk
table itself (a missing, swapped, stale or extra segment index) is raised once the chunks before
it have been yielded; a target failure (after its retries) is raised as soon as it is met.

Memory: at most ``window`` chunks (default ``2 × workers``) are fetched or being fetched and not
yet handed over, each as its frame and its raw bytes, plus the one the caller holds.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterable, Iterator
from contextlib import closing
from dataclasses import dataclass

from btrsync.catalog import layout
from btrsync.catalog.manifest import ChunkRecord, Manifest
from btrsync.catalog.repository import Repository
from btrsync.catalog.reach import away
from btrsync.catalog.segment_index import table_records
from btrsync.errors import ChunkDamageError, DamageError, TargetMissingError
from btrsync.pipeline.ordered import ordered_map
from btrsync.pipeline.seal import ChunkOpener

Select = Callable[[int, ChunkRecord], bool]
Wanted = tuple[Manifest, int, ChunkRecord]  # a backup, the chunk's number in it, its record


def default_window(workers: int) -> int:
    return 2 * max(1, workers)


@dataclass(slots=True)
class ReadStats:
    """What the caller was handed: intact chunks, their stored (frame) and raw bytes; damaged ones."""

    chunks: int = 0
    stored_bytes: int = 0
    raw_bytes: int = 0
    damaged: int = 0


@dataclass(frozen=True, slots=True)
class Chunk:
    backup_id: str
    index: int  # the chunk's number in its backup
    record: ChunkRecord
    data: bytes | None  # None when damaged
    damage: ChunkDamageError | None = None

    @property
    def raw(self) -> bytes:
        """The chunk's bytes; raises its damage when it has any."""
        if self.damage is not None:
            raise self.damage
        assert self.data is not None
        return self.data

    @property
    def segment_key(self) -> str:
        return layout.segment_key(self.backup_id, self.record.segment)


def fetch(repo: Repository, wanted: Iterable[Wanted], *, workers: int, window: int | None = None,
          keep_going: bool = False, stats: ReadStats | None = None) -> Iterator[Chunk]:
    """The chunks ``wanted`` names, checked, in that order (see the module doc)."""
    window = default_window(workers) if window is None else window
    if window < 1:
        raise ValueError("window must be at least 1")
    openers: dict[str, ChunkOpener] = {}
    deferred: list[DamageError] = []

    def items() -> Iterator[tuple[ChunkOpener, str, int, ChunkRecord]]:
        try:
            for m, index, rec in wanted:
                opener = openers.get(m.backup_id)
                if opener is None:
                    opener = openers[m.backup_id] = ChunkOpener(repo.binding, m.backup_id)
                yield opener, m.backup_id, index, rec
        except DamageError as exc:  # the table: after the chunks before it
            deferred.append(exc)

    def work(item: tuple[ChunkOpener, str, int, ChunkRecord]) -> Chunk:
        opener, backup_id, index, rec = item
        try:
            frame = repo.read_frame(backup_id, index, rec)  # names the segment when missing or short
        except DamageError as exc:
            _unless_away(repo)
            damage = ChunkDamageError(str(exc), "missing")
        else:
            try:
                return Chunk(backup_id, index, rec, opener.open(index, frame, stored_xxh3=rec.stored_xxh3,
                                                                raw_size=rec.raw_size, raw_xxh3=rec.raw_xxh3))
            except ChunkDamageError as exc:
                damage = ChunkDamageError(f"{exc} (in {layout.segment_key(backup_id, rec.segment)} at offset "
                                          f"{rec.offset})", exc.kind)
        if not keep_going:
            raise damage
        return Chunk(backup_id, index, rec, None, damage)

    with closing(ordered_map(work, items(), workers=workers, window=window)) as results:
        for chunk in results:
            if stats is not None:
                if chunk.damage is None:
                    stats.chunks += 1
                    stats.stored_bytes += chunk.record.stored_size
                    stats.raw_bytes += len(chunk.raw)
                else:
                    stats.damaged += 1
            yield chunk
    if deferred:
        _unless_away(repo)
        raise deferred[0]


def _unless_away(repo: Repository) -> None:
    """A missing object is damage only while the repository is there: a USB disk unplugged under
    its mount point (every object "missing") or a server gone is the target's failure (exit 10),
    for the next run to try again, not damage sending the operator to look for it."""
    why = away(repo)
    if why is not None:
        raise TargetMissingError(why)


def chunks(repo: Repository, manifest: Manifest, *, workers: int, window: int | None = None,
           select: Select | None = None, keep_going: bool = False, stats: ReadStats | None = None) -> Iterator[Chunk]:
    """The chunks of one backup in stream order (those ``select(index, record)`` accepts; the
    whole chunk table is read and checked either way), checked as ``fetch`` says."""
    wanted = ((manifest, index, rec) for index, rec in enumerate(table_records(repo, manifest))
              if select is None or select(index, rec))
    return fetch(repo, wanted, workers=workers, window=window, keep_going=keep_going, stats=stats)


def raw_stream(repo: Repository, manifest: Manifest, *, workers: int, window: int | None = None) -> Iterator[bytes]:
    """A backup's send stream, chunk by chunk, every chunk checked."""
    with closing(chunks(repo, manifest, workers=workers, window=window)) as it:
        for chunk in it:
            yield chunk.raw


class ChunkTable:
    """One backup's chunk table with the raw stream offset where each chunk starts."""

    def __init__(self, repo: Repository, manifest: Manifest) -> None:
        self.records = list(table_records(repo, manifest))
        self.starts: list[int] = []
        at = 0
        for r in self.records:
            self.starts.append(at)
            at += r.raw_size
        self.end = at

    def covering(self, offset: int, size: int) -> range:
        """The chunk numbers that hold stream bytes ``offset .. offset + size - 1``."""
        if offset < 0 or size <= 0 or offset + size > self.end:
            raise DamageError(f"the file index names stream bytes {offset}+{size} beyond the stream ({self.end})")
        first = bisect.bisect_right(self.starts, offset) - 1
        last = bisect.bisect_right(self.starts, offset + size - 1) - 1
        return range(first, last + 1)


class RangeReader:
    """Stream bytes of any link of ``chain``, from only the chunks that cover them.  ``needs``
    lists every ``(link, offset, size)`` in the order they will be asked for (link numbers index
    ``chain``), so those chunks, and no others, are fetched ahead in that order (``fetch``)."""

    def __init__(self, repo: Repository, chain: list[Manifest], needs: list[tuple[int, int, int]], *,
                 workers: int, window: int | None = None) -> None:
        self.tables = {link: ChunkTable(repo, chain[link]) for link in sorted({n[0] for n in needs})}
        order: list[tuple[int, int]] = []
        seen: set[tuple[int, int]] = set()
        for link, off, size in needs:
            for idx in self.tables[link].covering(off, size):
                if (link, idx) not in seen:
                    seen.add((link, idx))
                    order.append((link, idx))
        self.fetched = ReadStats()
        self._order = iter(order)
        self._it = fetch(repo, ((chain[link], idx, self.tables[link].records[idx]) for link, idx in order),
                         workers=workers, window=window, stats=self.fetched)
        self._have: dict[tuple[int, int], bytes] = {}

    def _chunk(self, key: tuple[int, int]) -> bytes:
        while key not in self._have:
            chunk = next(self._it)
            self._have[next(self._order)] = chunk.raw
        return self._have[key]

    def read(self, link: int, offset: int, size: int) -> bytes:
        """Stream bytes ``offset .. offset + size - 1`` of link ``link``."""
        table = self.tables[link]
        span = table.covering(offset, size)
        for key in [k for k in self._have if k < (link, span.start)]:
            del self._have[key]  # asked for in order: nothing before this range is needed again
        parts = []
        for idx in span:
            raw = self._chunk((link, idx))
            lo = max(offset, table.starts[idx]) - table.starts[idx]
            hi = min(offset + size, table.starts[idx] + len(raw)) - table.starts[idx]
            parts.append(raw[lo:hi])
        return b"".join(parts)

    def close(self) -> None:
        self._it.close()  # type: ignore[attr-defined]
