"""Rewrite a stored backup with the key, as an attacker holding the key (or a buggy writer) could:
the frames authenticate, the hashes match, the manifest is sealed properly, and only the *stream*
inside is wrong.  Verification's stream level must catch what the data level cannot."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

from btrsync.catalog import layout
from btrsync.catalog.manifest import ChunkRecord
from btrsync.catalog.repository import Repository
from btrsync.catalog.segment_index import TableDigest, table_records, write_index
from btrsync.pipeline.seal import ChunkOpener, ChunkSealer

Edit = Callable[[list[bytes]], list[bytes]]  # the raw chunks, in order -> new raw chunks


def repack(repo: Repository, backup_id: str, edit: Edit) -> None:
    m = repo.load_manifest(backup_id)
    opener = ChunkOpener(repo.binding, backup_id)
    raws = [opener.open(i, repo.read_frame(backup_id, i, r), stored_xxh3=r.stored_xxh3, raw_size=r.raw_size,
                        raw_xxh3=r.raw_xxh3) for i, r in enumerate(table_records(repo, m))]
    for key in repo.data_keys(backup_id):
        if not key.startswith(layout.files_key(backup_id, 0)[:-6]):  # the file index stays as it was
            repo.target.delete(key)
    sealer = ChunkSealer(repo.binding, backup_id, 0)
    table = TableDigest()
    frames = [sealer((i, raw)) for i, raw in enumerate(edit(raws))]
    params = {"attempt": m.table["attempt"]}
    offset, records, segment = 0, [], 0
    for s in frames:
        records.append(ChunkRecord(segment, offset, len(s.frame), s.raw_size, s.stored_xxh3, s.raw_xxh3))
        offset += len(s.frame)
    repo.target.put_bytes(layout.segment_key(backup_id, 0), b"".join(s.frame for s in frames))
    table.add(write_index(repo, backup_id, 0, params, records), records)
    repo.commit(replace(m, segments=1, chunk_count=table.chunks, stream_bytes=table.stream_bytes,
                        stored_bytes=table.stored_bytes, table={**m.table, "digest": table.hexdigest}))
