"""Resume points: only whole, indexed, matching segments are trusted; everything else is removed."""

from __future__ import annotations

import os

from btrsync.catalog import layout
from btrsync.catalog.manifest import ChunkRecord
from btrsync.catalog.repository import Repository
from btrsync.catalog.segment_index import find_resume_point, write_index
from btrsync.crypto.keys import MasterKey
from btrsync.targets.memory import MemoryTarget

PARAMS = {"snapshot_uuid": "u", "chunk_size": 4}


def _repo_with_segments(n: int) -> Repository:
    repo = Repository.open(MemoryTarget(), MasterKey(os.urandom(32)), create=True)
    for seg in range(n):
        repo.target.put_bytes(layout.segment_key("b", seg), b"x" * 10)
        write_index(repo, "b", seg, PARAMS, [ChunkRecord(seg, 0, 10, 4, "s" * 32, "r" * 32)])
    return repo


def test_intact_prefix_is_resumed() -> None:
    point = find_resume_point(_repo_with_segments(3), "b", PARAMS)
    assert point.segments == 3 and len(point.records) == 3 and point.stored_bytes == 30


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
