"""Segment indexes: what an interrupted push leaves behind that a later push may trust.

After a segment's ``put`` returns (the segment is durable), an encrypted index object
``data/<id>/<NNNNNN>.idx`` records its chunks and the parameters of the attempt.  A new push of the
same backup keeps the longest run of segments 0..k-1 whose indexes are intact and whose parameters
match, checks the re-run ``btrfs send`` stream against their recorded raw hashes before skipping
them, and deletes everything after them.
"""

from __future__ import annotations

import json
import logging
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any

from btrsync.catalog import layout
from btrsync.catalog.manifest import ChunkRecord
from btrsync.catalog.repository import DeleteHook, Repository
from btrsync.errors import DamageError

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ResumePoint:
    """Durable segments ``0..segments-1`` and their chunk records, in stream order."""

    segments: int = 0
    records: tuple[ChunkRecord, ...] = field(default_factory=tuple)

    @property
    def stored_bytes(self) -> int:
        return sum(r.stored_size for r in self.records)


def write_index(repo: Repository, backup_id: str, segment: int, params: dict[str, Any],
                records: list[ChunkRecord]) -> None:
    key = layout.index_key(backup_id, segment)
    doc = {"format": layout.FORMAT_VERSION, "backup_id": backup_id, "segment": segment, "params": params,
           "chunks": [r.to_list() for r in records]}
    payload = json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()
    repo.target.put_bytes(key, repo.binding.seal_index(key, payload))


def _load_index(repo: Repository, backup_id: str, segment: int) -> dict[str, Any]:
    key = layout.index_key(backup_id, segment)
    doc = json.loads(repo.binding.open_index(key, repo.target.read(key)))
    if doc.get("backup_id") != backup_id or doc.get("segment") != segment:
        raise DamageError(f"{key} describes another segment")
    return dict(doc)


def find_resume_point(repo: Repository, backup_id: str, params: dict[str, Any],
                      before_delete: DeleteHook | None = None) -> ResumePoint:
    """Keep the durable prefix of an interrupted push of ``backup_id``; delete the rest."""
    sizes = {o.key: o.size for o in repo.target.list(layout.data_prefix(backup_id))}
    records: list[ChunkRecord] = []
    segment = 0
    while True:
        chunks = _trusted_chunks(repo, backup_id, segment, params, sizes)
        if chunks is None:
            break
        records.extend(chunks)
        segment += 1
    keep = {layout.segment_key(backup_id, i) for i in range(segment)}
    keep |= {layout.index_key(backup_id, i) for i in range(segment)}
    for key in sorted(set(sizes) - keep):
        with before_delete(key) if before_delete is not None else nullcontext():
            repo.target.delete(key)
    if segment:
        log.info("resuming backup=%s segments=%d chunks=%d", backup_id, segment, len(records))
    return ResumePoint(segment, tuple(records))


def _trusted_chunks(repo: Repository, backup_id: str, segment: int, params: dict[str, Any],
                    sizes: dict[str, int]) -> list[ChunkRecord] | None:
    seg_key, idx_key = layout.segment_key(backup_id, segment), layout.index_key(backup_id, segment)
    if seg_key not in sizes or idx_key not in sizes:
        return None
    try:
        doc = _load_index(repo, backup_id, segment)
        chunks = [ChunkRecord.from_list(r) for r in doc["chunks"]]
    except (DamageError, ValueError, KeyError, TypeError) as exc:
        log.warning("not resuming from %s: %s", idx_key, exc)
        return None
    if doc["params"] != params:
        log.info("not resuming backup=%s: settings or parent changed since the interrupted push", backup_id)
        return None
    if sizes[seg_key] != sum(c.stored_size for c in chunks) or any(c.segment != segment for c in chunks):
        log.warning("not resuming from %s: segment size does not match its index", seg_key)
        return None
    return chunks
