"""Resume points: only whole, indexed, matching segments are trusted; everything else is removed."""

from __future__ import annotations

import os

from btrsync.catalog import layout
import pytest

from btrsync.catalog.manifest import ChunkRecord, Manifest
from btrsync.catalog.repository import Repository
from btrsync.catalog.segment_index import find_resume_point, resumed_records, table_records, write_index
from btrsync.errors import DamageError
from btrsync.crypto.keys import MasterKey
from btrsync.targets.memory import MemoryTarget

PARAMS = {"snapshot_uuid": "u", "chunk_size": 4}


def _repo_with_segments(n: int, attempts: tuple[str, ...] = ()) -> Repository:
    repo = Repository.open(MemoryTarget(), MasterKey(os.urandom(32)), create=True)
    for seg in range(n):
        repo.target.put_bytes(layout.segment_key("b", seg), b"x" * 10)
        attempt = attempts[seg] if seg < len(attempts) else "a1"
        write_index(repo, "b", seg, {**PARAMS, "attempt": attempt},
                    [ChunkRecord(seg, 0, 10, 4, "s" * 32, "r" * 32)])
    return repo


def _manifest(point, chunk_count: int | None = None, segments: int | None = None, digest: str | None = None):
    from datetime import UTC, datetime

    now = datetime(2026, 11, 26, tzinfo=UTC)
    return Manifest(
        backup_id="b", host="h", subvolume="data", source_path="/data", snapshot="data.20261126T000000Z",
        snapshot_time=now, snapshot_uuid="u", parent_uuid=None, parent_id=None, depth=0, send={},
        compression={}, encryption={}, chunk_size=4, stream_bytes=point.table.stream_bytes,
        stored_bytes=point.stored_bytes, segments=point.segments if segments is None else segments,
        started=now, finished=now, chunk_count=point.chunks if chunk_count is None else chunk_count,
        table={"attempt": point.attempt, "digest": digest or point.table.hexdigest})


def test_intact_prefix_is_resumed() -> None:
    repo = _repo_with_segments(3)
    point = find_resume_point(repo, "b", PARAMS)
    assert point.segments == 3 and point.chunks == 3 and point.stored_bytes == 30 and point.attempt == "a1"
    assert [r.segment for r in resumed_records(repo, "b", point)] == [0, 1, 2]


def test_segments_of_another_attempt_are_not_resumed() -> None:
    repo = _repo_with_segments(3, ("a1", "a1", "a2"))
    assert find_resume_point(repo, "b", PARAMS).segments == 2


def test_the_chunk_table_streams_from_the_indexes_and_is_pinned_by_the_header() -> None:
    repo = _repo_with_segments(3)
    point = find_resume_point(repo, "b", PARAMS)
    assert len(list(table_records(repo, _manifest(point)))) == 3
    for bad in (_manifest(point, chunk_count=2), _manifest(point, segments=2), _manifest(point, digest="0" * 64)):
        with pytest.raises(DamageError, match="do not match the manifest"):
            list(table_records(repo, bad))
    good = repo.target.read(layout.index_key("b", 2))  # an index of another attempt swapped in:
    write_index(repo, "b", 2, {**PARAMS, "attempt": "a2"}, [ChunkRecord(2, 0, 10, 4, "s" * 32, "r" * 32)])
    with pytest.raises(DamageError, match="another attempt"):
        list(table_records(repo, _manifest(point)))
    repo.target.put_bytes(layout.index_key("b", 2), good)
    repo.target.delete(layout.index_key("b", 1))
    with pytest.raises(DamageError, match="missing"):
        list(table_records(repo, _manifest(point)))


def test_segment_without_index_and_everything_after_it_is_deleted() -> None:
    repo = _repo_with_segments(4)
    repo.target.delete(layout.index_key("b", 1))
    point = find_resume_point(repo, "b", PARAMS)
    assert point.segments == 1
    assert [o.key for o in repo.target.list("data/")] == [layout.segment_key("b", 0), layout.index_key("b", 0)]


def test_damaged_index_or_short_segment_stops_the_prefix() -> None:
    repo = _repo_with_segments(3)
    repo.target.put_bytes(layout.index_key("b", 1), b"garbage")
    assert find_resume_point(repo, "b", PARAMS).segments == 1
    repo = _repo_with_segments(3)
    repo.target.put_bytes(layout.segment_key("b", 2), b"x" * 9)
    assert find_resume_point(repo, "b", PARAMS).segments == 2


def test_other_parameters_resume_nothing() -> None:
    repo = _repo_with_segments(2)
    assert find_resume_point(repo, "b", {**PARAMS, "chunk_size": 8}).segments == 0
    assert list(repo.target.list("data/")) == []
