"""The one authenticated read path (``btrsync/read``): hostile stored data, order, memory bound.

Backups here are written with the real sealing code (``ChunkSealer``, sealed segment indexes,
a sealed manifest) into a real directory target, so every check runs as it does for a pushed
backup; damage is made by editing the stored objects, or by the key holder rewriting an index
(which the key allows, and which only the frame's own authentication can catch).
"""

from __future__ import annotations

import os
import random
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import pytest

from btrsync.catalog import layout
from btrsync.catalog.manifest import ChunkRecord, Manifest
from btrsync.catalog.repository import Repository
from btrsync.catalog.segment_index import TableDigest, new_attempt, table_records, write_index
from btrsync.crypto.keys import MasterKey
from btrsync.errors import ChunkDamageError, DamageError
from btrsync.pipeline.seal import ChunkSealer
from btrsync.read.chunks import RangeReader, ReadStats, chunks, fetch, raw_stream
from btrsync.targets.local import LocalTarget

T = datetime(2026, 11, 26, tzinfo=UTC)


class CountingTarget(LocalTarget):
    """A real directory target that counts segment reads: started, running at once, the most."""

    def __init__(self, root: Path, delay: float = 0.0) -> None:
        super().__init__(root)
        self.delay = delay
        self.lock = threading.Lock()
        self.started = self.running = self.most_running = 0
        self.keys: list[str] = []

    def get(self, key: str, *, offset: int = 0, length: int | None = None) -> Iterator[bytes]:
        if not key.startswith("data/") or key.endswith(".idx"):
            yield from super().get(key, offset=offset, length=length)
            return
        with self.lock:
            self.started += 1
            self.running += 1
            self.most_running = max(self.most_running, self.running)
            self.keys.append(key)
        try:
            if self.delay:
                time.sleep(self.delay * random.random())
            yield from super().get(key, offset=offset, length=length)
        finally:
            with self.lock:
                self.running -= 1


def _repo(tmp_path: Path, delay: float = 0.0) -> Repository:
    root = tmp_path / "repo"
    root.mkdir(exist_ok=True)
    return Repository.open(CountingTarget(root, delay), MasterKey(os.urandom(32)), create=True)


def _raws(n: int, seed: int = 1, size: int = 3000) -> list[bytes]:
    rnd = random.Random(seed)
    # every other chunk compresses (zstd frame), the others are stored as they are
    return [(bytes([i]) * size if i % 2 else rnd.randbytes(size)) for i in range(n)]


def _write(repo: Repository, backup_id: str, raws: list[bytes], per_segment: int = 3,
           edit_records=None) -> Manifest:  # noqa: ANN001
    """A committed format 2 backup of ``raws`` (``edit_records(segment, records)`` may rewrite the
    records before each index is sealed: a writer holding the key)."""
    sealer = ChunkSealer(repo.binding, backup_id, 3)
    sealed = [sealer((i, raw)) for i, raw in enumerate(raws)]
    attempt, table = new_attempt(), TableDigest()
    segments = (len(sealed) + per_segment - 1) // per_segment
    for seg in range(segments):
        group = sealed[seg * per_segment:(seg + 1) * per_segment]
        records, offset = [], 0
        for s in group:
            records.append(ChunkRecord(seg, offset, len(s.frame), s.raw_size, s.stored_xxh3, s.raw_xxh3))
            offset += len(s.frame)
        repo.target.put_bytes(layout.segment_key(backup_id, seg), b"".join(s.frame for s in group))
        if edit_records is not None:
            records = edit_records(seg, records)
        table.add(write_index(repo, backup_id, seg, {"attempt": attempt}, records), records)
    m = Manifest(backup_id=backup_id, host="h", subvolume="data", source_path="/data",
                 snapshot=f"data.{backup_id}", snapshot_time=T, snapshot_uuid=f"uuid-{backup_id}", parent_uuid=None,
                 parent_id=None, depth=0, send={}, compression={}, encryption={}, chunk_size=3000,
                 stream_bytes=table.stream_bytes, stored_bytes=table.stored_bytes, segments=segments, started=T,
                 finished=T, chunk_count=table.chunks, table={"attempt": attempt, "digest": table.hexdigest})
    repo.commit(m)
    return repo.load_manifest(backup_id)


def _records(repo: Repository, m: Manifest) -> list[ChunkRecord]:
    return list(table_records(repo, m))


def _seg_path(repo: Repository, backup_id: str, segment: int) -> Path:
    return Path(repo.target.root) / layout.segment_key(backup_id, segment)  # type: ignore[attr-defined]


@pytest.mark.parametrize("workers", [1, 2, 4])
def test_every_chunk_comes_back_checked_and_in_order(tmp_path: Path, workers: int) -> None:
    repo = _repo(tmp_path, delay=0.003)
    raws = _raws(20)
    m = _write(repo, "b1", raws)
    stats = ReadStats()
    got = list(chunks(repo, m, workers=workers, stats=stats))
    assert [c.index for c in got] == list(range(20))
    assert [c.raw for c in got] == raws
    assert b"".join(raw_stream(repo, m, workers=workers)) == b"".join(raws)
    assert (stats.chunks, stats.raw_bytes, stats.stored_bytes) == (20, sum(map(len, raws)), m.stored_bytes)


def test_a_flipped_bit_in_a_stored_chunk_is_damage_naming_backup_segment_and_chunk(tmp_path: Path) -> None:
    repo = _repo(tmp_path)
    m = _write(repo, "b1", _raws(7))
    rec = _records(repo, m)[4]  # segment 1, its second chunk
    path = _seg_path(repo, "b1", rec.segment)
    data = bytearray(path.read_bytes())
    data[rec.offset + rec.stored_size // 2] ^= 0x10
    path.write_bytes(bytes(data))
    seen = []
    with pytest.raises(ChunkDamageError) as err:
        for c in chunks(repo, m, workers=3):
            seen.append(c.index)
    assert seen == [0, 1, 2, 3]  # everything before the damaged chunk, nothing of it or after it
    msg = str(err.value)
    assert err.value.kind == "hash" and err.value.exit_code == 4
    assert "chunk 4 of backup b1" in msg and layout.segment_key("b1", 1) in msg and "xxh3" in msg, msg


def test_a_frame_with_a_matching_hash_but_a_broken_tag_fails_authentication(tmp_path: Path) -> None:
    """The key holder's view: a frame edited and its record's hash updated to match."""
    repo = _repo(tmp_path)
    m = _write(repo, "b1", _raws(4))
    rec = _records(repo, m)[1]
    path = _seg_path(repo, "b1", 0)
    data = bytearray(path.read_bytes())
    data[rec.offset + rec.stored_size - 3] ^= 0x01  # inside the GCM tag
    path.write_bytes(bytes(data))
    from btrsync.pipeline.seal import xxh3

    forged = replace(rec, stored_xxh3=xxh3(bytes(data[rec.offset:rec.offset + rec.stored_size])))
    with pytest.raises(ChunkDamageError, match="chunk 1 of backup b1 failed authentication") as err:
        list(fetch(repo, [(m, 1, forged)], workers=2))
    assert err.value.kind == "tag"


def _rewrite_table(repo: Repository, m: Manifest, records_of) -> Manifest:  # noqa: ANN001
    """The key holder rewrites every segment index of ``m`` (``records_of(segment, records)``)
    and commits the manifest that pins the new table: only the frames can tell."""
    table = TableDigest()
    by_segment: dict[int, list[ChunkRecord]] = {}
    for rec in table_records(repo, m):
        by_segment.setdefault(rec.segment, []).append(rec)
    for seg in range(m.segments):
        records = records_of(seg, by_segment[seg])
        table.add(write_index(repo, m.backup_id, seg, {"attempt": m.table["attempt"]}, records), records)
    repo.commit(replace(m, chunk_count=table.chunks, table={**m.table, "digest": table.hexdigest}))
    return repo.load_manifest(m.backup_id)


def test_a_chunk_of_another_backup_or_another_number_is_refused(tmp_path: Path) -> None:
    """Frames are bound to (repository, backup id, chunk number): a segment copied from another
    backup, or chunks swapped inside a segment, hash right against a rewritten index but do not
    authenticate."""
    repo = _repo(tmp_path)
    raws = _raws(6)
    a, b = _write(repo, "a1", raws), _write(repo, "b1", raws)  # the same bytes in both
    _seg_path(repo, "b1", 1).write_bytes(_seg_path(repo, "a1", 1).read_bytes())
    a_records = {r.segment: [] for r in _records(repo, a)}
    for r in _records(repo, a):
        a_records[r.segment].append(r)
    b = _rewrite_table(repo, b, lambda seg, recs: a_records[seg] if seg == 1 else recs)
    with pytest.raises(ChunkDamageError, match="chunk 3 of backup b1 failed authentication") as err:
        list(chunks(repo, b, workers=2))
    assert err.value.kind == "tag" and layout.segment_key("b1", 1) in str(err.value)
    # within one backup: chunk 3's frame recorded as chunk 2's
    rec_a = _records(repo, a)
    with pytest.raises(ChunkDamageError, match="chunk 2 of backup a1 failed authentication"):
        list(fetch(repo, [(a, 2, rec_a[3])], workers=1))


def test_swapped_chunks_in_a_rewritten_index_are_refused(tmp_path: Path) -> None:
    """The key holder swaps two chunks' records in a sealed index (hashes match their frames):
    the table authenticates, and the frames refuse their new places."""
    repo = _repo(tmp_path)

    def swap(seg: int, records: list[ChunkRecord]) -> list[ChunkRecord]:
        return [records[1], records[0], *records[2:]] if seg == 1 else records

    m = _write(repo, "b1", _raws(6), edit_records=swap)
    with pytest.raises(ChunkDamageError, match="chunk 3 of backup b1 failed authentication") as err:
        list(chunks(repo, m, workers=2))
    assert layout.segment_key("b1", 1) in str(err.value)


def test_a_truncated_segment_is_damage_naming_the_segment(tmp_path: Path) -> None:
    repo = _repo(tmp_path)
    m = _write(repo, "b1", _raws(6))
    path = _seg_path(repo, "b1", 1)
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(ChunkDamageError) as err:
        list(chunks(repo, m, workers=2))
    msg = str(err.value)
    assert err.value.kind == "missing" and "chunk 5 of backup b1" in msg and layout.segment_key("b1", 1) in msg
    assert "shorter than recorded" in msg, msg
    path.unlink()
    with pytest.raises(ChunkDamageError, match="chunk 3 of backup b1: segment .* is missing"):
        list(chunks(repo, m, workers=2))


def test_an_index_pointing_past_the_end_of_its_segment_is_damage(tmp_path: Path) -> None:
    repo = _repo(tmp_path)

    def past_end(seg: int, records: list[ChunkRecord]) -> list[ChunkRecord]:
        return [*records[:-1], replace(records[-1], offset=records[-1].offset + 10_000)] if seg == 0 else records

    m = _write(repo, "b1", _raws(6), edit_records=past_end)
    with pytest.raises(ChunkDamageError, match="chunk 2 of backup b1: segment data/b1/000000 is missing or shorter"):
        list(chunks(repo, m, workers=2))


@pytest.mark.parametrize("delta", [-1, 1])
def test_a_wrong_raw_size_is_damage(tmp_path: Path, delta: int) -> None:
    repo = _repo(tmp_path)

    def resize(seg: int, records: list[ChunkRecord]) -> list[ChunkRecord]:
        return [replace(r, raw_size=r.raw_size + delta) for r in records]

    m = _write(repo, "b1", _raws(2), edit_records=resize)
    for index in (0, 1):  # stored as it is, and zstd-compressed
        with pytest.raises(ChunkDamageError, match=f"chunk {index} of backup b1") as err:
            list(fetch(repo, [(m, index, _records(repo, m)[index])], workers=1))
        assert err.value.kind in ("hash", "data"), err.value


def test_keep_going_hands_over_damage_and_never_its_bytes(tmp_path: Path) -> None:
    repo = _repo(tmp_path)
    m = _write(repo, "b1", _raws(6))
    recs = _records(repo, m)
    for index in (1, 4):
        path = _seg_path(repo, "b1", recs[index].segment)
        data = bytearray(path.read_bytes())
        data[recs[index].offset + 30] ^= 0xFF
        path.write_bytes(bytes(data))
    stats = ReadStats()
    got = list(chunks(repo, m, workers=2, keep_going=True, stats=stats))
    assert [c.index for c in got] == list(range(6))
    assert [c.index for c in got if c.damage] == [1, 4]
    assert (stats.chunks, stats.damaged) == (4, 2)
    with pytest.raises(ChunkDamageError, match="chunk 1 of backup b1"):
        got[1].raw  # noqa: B018


def test_damage_in_the_chunk_table_comes_after_the_chunks_before_it(tmp_path: Path) -> None:
    repo = _repo(tmp_path)
    m = _write(repo, "b1", _raws(9))
    repo.target.delete(layout.index_key("b1", 2))
    seen = []
    with pytest.raises(DamageError, match="segment index data/b1/000002.idx is missing"):
        for c in chunks(repo, m, workers=2):
            seen.append(c.index)
    assert seen == list(range(6))


def test_select_reads_only_the_chosen_chunks_and_still_checks_the_whole_table(tmp_path: Path) -> None:
    repo = _repo(tmp_path)
    raws = _raws(9)
    m = _write(repo, "b1", raws)
    target: CountingTarget = repo.target  # type: ignore[assignment]
    got = list(chunks(repo, m, workers=2, select=lambda i, r: r.segment == 1))
    assert [(c.index, c.raw) for c in got] == [(i, raws[i]) for i in (3, 4, 5)]
    assert target.keys == [layout.segment_key("b1", 1)] * 3
    repo.target.delete(layout.index_key("b1", 2))  # after the chosen chunks: found all the same
    with pytest.raises(DamageError, match="000002.idx is missing"):
        list(chunks(repo, m, workers=2, select=lambda i, r: r.segment == 0))


@pytest.mark.parametrize(("workers", "window"), [(2, 2), (2, 4), (4, 5), (3, 12)])
def test_no_more_than_window_chunks_are_in_flight(tmp_path: Path, workers: int, window: int) -> None:
    """Counted at the target: segment reads started but not yet handed over never exceed the
    window, reads running at once never exceed the workers; a slow consumer lets the readers go
    exactly as far ahead as the window allows, never further."""
    repo = _repo(tmp_path, delay=0.002)
    m = _write(repo, "b1", _raws(40, size=500), per_segment=7)
    target: CountingTarget = repo.target  # type: ignore[assignment]
    ahead = []
    handed = 0
    for c in chunks(repo, m, workers=workers, window=window):
        handed += 1
        time.sleep(0.01)  # a slow consumer (btrfs receive, a disk): the readers wait for it
        with target.lock:
            ahead.append(target.started - handed)
        assert c.index == handed - 1
    assert handed == 40
    assert max(ahead) <= window - 1, ahead  # + the one the consumer holds: the window
    assert max(ahead) == window - 1, ahead  # and the readers do go ahead that far
    assert target.most_running <= workers


def test_the_range_reader_fetches_only_what_covers_the_ranges(tmp_path: Path) -> None:
    repo = _repo(tmp_path, delay=0.002)
    raws = [_raws(9, seed=1), _raws(9, seed=2)]
    chain = [_write(repo, "full", raws[0]), _write(repo, "incr", raws[1])]
    streams = [b"".join(r) for r in raws]
    needs = [(0, 100, 50), (0, 2990, 20), (1, 9000, 6001), (1, 26000, 1)]
    reader = RangeReader(repo, chain, needs, workers=3)
    try:
        for link, off, size in needs:
            assert reader.read(link, off, size) == streams[link][off:off + size]
    finally:
        reader.close()
    # chunks 0 and 1 of the full; 3, 4, 5 and 8 of the incremental
    assert (reader.fetched.chunks, reader.fetched.raw_bytes) == (6, 6 * 3000)
    with pytest.raises(DamageError, match="beyond the stream"):
        RangeReader(repo, chain, [(0, 26999, 2)], workers=1)


@pytest.mark.parametrize("keep_going", [False, True])
def test_a_repository_gone_under_the_read_is_the_targets_failure_not_damage(tmp_path: Path, keep_going: bool) -> None:
    """A USB disk unplugged mid-restore leaves its empty mount point: every object is "missing".
    That is the target's failure (exit 10, try again), not damage (exit 4, go look for it); with
    the repository there, a missing segment is still damage."""
    from btrsync.errors import TargetMissingError

    repo = _repo(tmp_path)
    m = _write(repo, "b1", _raws(9))
    root = Path(repo.target.root)  # type: ignore[attr-defined]
    _seg_path(repo, "b1", 1).unlink()
    with pytest.raises(ChunkDamageError):
        for c in chunks(repo, m, workers=2, keep_going=keep_going):
            if c.damage is not None:
                raise c.damage
    aside = tmp_path / "unplugged"
    root.rename(aside)
    root.mkdir()  # the mount point left behind
    with pytest.raises(TargetMissingError, match="cannot be reached"):
        list(chunks(repo, m, workers=2, keep_going=keep_going))
