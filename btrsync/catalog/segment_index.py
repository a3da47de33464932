"""Segment indexes: the chunk table of a backup, one piece per segment, and what resuming trusts.

After a segment's ``put`` returns (the segment is durable), an encrypted index object
``data/<id>/<NNNNNN>.idx`` records its chunks and the parameters of the attempt, including a
random ``attempt`` token.  In format 2 the indexes *are* the chunk table: the manifest header
pins them by chunk count, segment count, the attempt token and a digest (SHA-256 over the
SHA-256 of each index's plaintext, in segment order), so a commit and a restore stream the table
one segment at a time and never hold it whole.

A new push of the same backup keeps the longest run of segments 0..k-1 whose indexes are intact,
whose parameters match and which share one attempt token (the new attempt adopts it), checks the
re-run ``btrfs send`` stream against their recorded raw hashes before skipping them, and deletes
everything after them.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import secrets
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from btrsync.catalog import layout
from btrsync.catalog.manifest import ChunkRecord, Manifest
from btrsync.catalog.reads import INDEX_LIMIT, read_whole
from btrsync.catalog.repository import DeleteHook, Repository
from btrsync.errors import BtrsyncError, DamageError
from btrsync.targets.errors import NotFound
from btrsync.targets.together import together

log = logging.getLogger(__name__)


def new_attempt() -> str:
    return secrets.token_hex(8)


@dataclass(slots=True)
class TableDigest:
    """The running pin of a chunk table: counts, sizes and the digest over the index plaintexts."""

    chunks: int = 0
    segments: int = 0
    stream_bytes: int = 0
    stored_bytes: int = 0
    _hash: Any = field(default_factory=hashlib.sha256)

    def add(self, payload: bytes, records: list[ChunkRecord]) -> None:
        self._hash.update(hashlib.sha256(payload).digest())
        self.chunks += len(records)
        self.segments += 1
        self.stream_bytes += sum(r.raw_size for r in records)
        self.stored_bytes += sum(r.stored_size for r in records)

    def copy(self) -> TableDigest:
        return TableDigest(self.chunks, self.segments, self.stream_bytes, self.stored_bytes, self._hash.copy())

    @property
    def hexdigest(self) -> str:
        return self._hash.hexdigest()


@dataclass(slots=True)
class ResumePoint:
    """Durable segments ``0..segments-1`` of an earlier attempt, pinned by ``table``."""

    attempt: str = field(default_factory=new_attempt)
    table: TableDigest = field(default_factory=TableDigest)

    @property
    def segments(self) -> int:
        return self.table.segments

    @property
    def chunks(self) -> int:
        return self.table.chunks

    @property
    def stored_bytes(self) -> int:
        return self.table.stored_bytes


def _payload(backup_id: str, segment: int, params: dict[str, Any], records: list[ChunkRecord]) -> bytes:
    doc = {"format": layout.FORMAT_VERSION, "backup_id": backup_id, "segment": segment, "params": params,
           "chunks": [r.to_list() for r in records]}
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()


def write_index(repo: Repository, backup_id: str, segment: int, params: dict[str, Any],
                records: list[ChunkRecord]) -> bytes:
    """Seal and store the index of a durable segment; returns its plaintext (for the table digest)."""
    key = layout.index_key(backup_id, segment)
    payload = _payload(backup_id, segment, params, records)
    repo.target.put_bytes(key, repo.binding.seal_index(key, payload))
    return payload


#: a link that stores at most this (a day's small incremental) is read whole with the indexes
SMALL_LINK = 4 << 20
#: at most this much of such links is held read ahead at once
SMALL_LINKS_BUDGET = 32 << 20


@contextmanager
def chain_read_ahead(repo: Repository, manifests: list[Manifest]) -> Iterator[Callable[[Manifest], None]]:
    """Read the first segment index of each of ``manifests`` now, at once, and the whole data of
    each small link (one segment of at most ``SMALL_LINK`` bytes, up to ``SMALL_LINKS_BUDGET`` in
    all): a receive of a chain reads one link after another, and each link's first index, then its
    first chunk, was a round trip of its own (30 daily links at 100 ms: 6 s).  Each index is
    authenticated and checked when ``table_records`` takes it, each chunk when it is opened
    (``Repository.read_frame`` serves it from here), as often as the link is read (a restore reads
    an incremental twice).  One that could not be read is simply read again at its link's turn:
    an outage or throttling now must not fail, hours later, a link the store would serve by then
    (and a missing one is reported there, after the links before it).

    Yields ``done(manifest)``, which drops what was read ahead for that link once it has been
    replayed; whatever is left goes when the block ends (a failed link: nothing lingers for a
    later reader of the same repository)."""
    def read(key: str, limit: int, what: str) -> bytes | None:
        try:
            return read_whole(repo.target, key, limit, what)
        except (BtrsyncError, OSError):
            return None

    reads = [(m.backup_id, layout.index_key(m.backup_id, 0), INDEX_LIMIT, "segment index")
             for m in manifests if m.format >= 2 and m.segments]
    budget = SMALL_LINKS_BUDGET
    for m in manifests:
        if m.format >= 2 and m.segments == 1 and m.stored_bytes <= min(SMALL_LINK, budget):
            budget -= m.stored_bytes
            reads.append((m.backup_id, layout.segment_key(m.backup_id, 0), m.stored_bytes, "segment"))
    got = together(repo.target, *(functools.partial(read, *r[1:]) for r in reads))
    held: dict[str, list[str]] = {}
    for (backup_id, key, *_), data in zip(reads, got, strict=True):
        if data is not None:
            repo.read_ahead[key] = data
            held.setdefault(backup_id, []).append(key)

    def done(manifest: Manifest) -> None:
        for key in held.pop(manifest.backup_id, []):
            repo.read_ahead.pop(key, None)

    try:
        yield done
    finally:
        for keys in held.values():
            for key in keys:
                repo.read_ahead.pop(key, None)


def _load_index(repo: Repository, backup_id: str, segment: int) -> tuple[bytes, dict[str, Any]]:
    key = layout.index_key(backup_id, segment)
    ahead = repo.read_ahead.get(key)  # (dropped by chain_read_ahead when its link is done)
    sealed = ahead if ahead is not None else read_whole(repo.target, key, INDEX_LIMIT, "segment index")
    payload = repo.binding.open_index(key, sealed)
    doc = json.loads(payload)
    if doc.get("backup_id") != backup_id or doc.get("segment") != segment:
        raise DamageError(f"{key} describes another segment")
    return payload, dict(doc)


def _records(doc: dict[str, Any], segment: int, where: str) -> list[ChunkRecord]:
    try:
        records = [ChunkRecord.from_list(r) for r in doc["chunks"]]
    except (ValueError, KeyError, TypeError) as exc:
        raise DamageError(f"{where} is not a valid segment index: {exc}") from None
    if any(r.segment != segment for r in records):
        raise DamageError(f"{where} names chunks of another segment")
    return records


def table_records(repo: Repository, manifest: Manifest) -> Iterator[ChunkRecord]:
    """The chunk records of a backup in stream order, one segment index at a time.

    Each index is authenticated (repository, object key), must belong to the attempt the
    manifest names, and the whole table must match the manifest's count and digest: a missing,
    swapped, stale or extra index is damage (``DamageError``), found before the last chunk is
    used.  Format 1 manifests yield their own records.
    """
    if manifest.format < 2:
        yield from manifest.chunks
        return
    table = TableDigest()
    for segment in range(manifest.segments):
        key = layout.index_key(manifest.backup_id, segment)
        try:
            payload, doc = _load_index(repo, manifest.backup_id, segment)
        except NotFound:
            raise DamageError(f"backup {manifest.backup_id}: segment index {key} is missing on "
                              f"{repo.target.display_url}") from None
        except ValueError as exc:
            raise DamageError(f"{key} is not a valid segment index: {exc}") from None
        if (doc.get("params") or {}).get("attempt") != manifest.table.get("attempt"):
            raise DamageError(f"{key} belongs to another attempt than backup {manifest.backup_id}'s manifest")
        records = _records(doc, segment, key)
        table.add(payload, records)
        if table.chunks > manifest.chunk_count:
            break
        yield from records
    if (table.chunks, table.hexdigest) != (manifest.chunk_count, manifest.table.get("digest")):
        raise DamageError(f"backup {manifest.backup_id}: the segment indexes do not match the manifest "
                          f"({table.chunks} chunks found, {manifest.chunk_count} recorded)")


def find_resume_point(repo: Repository, backup_id: str, params: dict[str, Any],
                      before_delete: DeleteHook | None = None, listed: dict[str, int] | None = None) -> ResumePoint:
    """Keep the durable prefix of an interrupted push of ``backup_id``; delete the rest.

    ``params`` are the new attempt's (without the attempt token); kept segments must match them
    and share one attempt token, which the returned point carries on.  ``listed``: the backup's
    data objects as ``Repository.data_sizes`` listed them under the push's lease (else listed here).
    """
    sizes = repo.data_sizes(backup_id) if listed is None else listed
    point: ResumePoint | None = None
    table = TableDigest()
    segment = 0
    while True:
        found = _trusted_index(repo, backup_id, segment, params, sizes)
        if found is None:
            break
        attempt, payload, records = found
        if point is None:
            point = ResumePoint(attempt)
        elif attempt != point.attempt:
            break
        table.add(payload, records)
        segment += 1
    keep = {layout.segment_key(backup_id, i) for i in range(segment)}
    keep |= {layout.index_key(backup_id, i) for i in range(segment)}
    repo.delete_leftovers(sorted(set(sizes) - keep), before_delete)  # a refusal is a warning
    if point is None:
        return ResumePoint()
    point.table = table
    log.info("resuming backup=%s segments=%d chunks=%d", backup_id, segment, table.chunks)
    return point


def resumed_records(repo: Repository, backup_id: str, point: ResumePoint) -> Iterator[ChunkRecord]:
    """The kept segments' records again, one index at a time (checked against the point's digest)."""
    table = TableDigest()
    for segment in range(point.segments):
        payload, doc = _load_index(repo, backup_id, segment)
        records = _records(doc, segment, layout.index_key(backup_id, segment))
        table.add(payload, records)
        yield from records
    if table.hexdigest != point.table.hexdigest:
        raise DamageError(f"backup {backup_id}: the kept segment indexes changed while resuming")


def _trusted_index(repo: Repository, backup_id: str, segment: int, params: dict[str, Any],
                   sizes: dict[str, int]) -> tuple[str, bytes, list[ChunkRecord]] | None:
    seg_key, idx_key = layout.segment_key(backup_id, segment), layout.index_key(backup_id, segment)
    if seg_key not in sizes or idx_key not in sizes:
        return None
    try:
        payload, doc = _load_index(repo, backup_id, segment)
        chunks = _records(doc, segment, idx_key)
        theirs = dict(doc["params"])
        attempt = str(theirs.pop("attempt", ""))
    except (DamageError, ValueError, KeyError, TypeError) as exc:
        log.warning("not resuming from %s: %s", idx_key, exc)
        return None
    if theirs != params or not attempt:
        log.info("not resuming backup=%s: settings or parent changed since the interrupted push", backup_id)
        return None
    if sizes[seg_key] != sum(c.stored_size for c in chunks):
        log.warning("not resuming from %s: segment size does not match its index", seg_key)
        return None
    return attempt, payload, chunks
