"""One backup copied between memory repositories, without btrfs: the stream arrives whole under
the destination's binding, an interrupted copy commits nothing and resumes, a kept part that is
not the source's is thrown away, and the lease of another writer stops it."""

from __future__ import annotations

import os
from collections.abc import Iterable
from datetime import UTC, datetime

import pytest

from btrsync.catalog import layout
from btrsync.catalog.lease import Lease
from btrsync.catalog.manifest import Manifest
from btrsync.catalog.repository import Repository
from btrsync.catalog.segment_index import TableDigest, new_attempt, write_index
from btrsync.crypto.keys import MasterKey
from btrsync.errors import DamageError, LockedError
from btrsync.ops.copy import CopyError, CopySettings, copy_backups, raise_for_failures
from btrsync.pipeline.seal import ChunkSealer
from btrsync.pipeline.segments import write_segments
from btrsync.read.chunks import raw_stream
from btrsync.targets.base import ObjectInfo
from btrsync.targets.errors import QuotaExceeded
from btrsync.targets.memory import MemoryTarget
from btrsync.targets.wrapper import TargetWrapper

T = datetime(2026, 11, 20, 3, 0, tzinfo=UTC)
CHUNK = 4096
SETTINGS = CopySettings(workers=2, segment_size=3 * CHUNK + 200)  # three chunks a segment


def backup(repo: Repository, data: bytes, *, uuid: str = "u-1", level: int = 3,
           attempt: str | None = None) -> Manifest:
    """A full backup of ``data`` written the way a push writes one (without btrfs send)."""
    bid = f"data.20261120T030000Z-{uuid[-8:].rjust(8, '0')}"
    attempt, table = attempt or new_attempt(), TableDigest()
    params = {"attempt": attempt}
    sealed = map(ChunkSealer(repo.binding, bid, level), enumerate(data[i:i + CHUNK] for i in range(0, len(data), CHUNK)))
    write_segments(repo.target, bid, sealed, segment_size=SETTINGS.segment_size,
                   on_segment=lambda n, recs: table.add(write_index(repo, bid, n, params, recs), recs))
    m = Manifest(backup_id=bid, host="h", subvolume="data", source_path="/data", snapshot="data.20261120T030000Z",
                 snapshot_time=T, snapshot_uuid=uuid, parent_uuid=None, parent_id=None, depth=0, send={},
                 compression={"algorithm": "zstd", "level": level}, encryption={"key_id": repo.key.key_id},
                 chunk_size=CHUNK, chunk_count=table.chunks, table={"attempt": attempt, "digest": table.hexdigest},
                 stream_bytes=table.stream_bytes, stored_bytes=table.stored_bytes, segments=table.segments,
                 started=T, finished=T)
    repo.commit(m)
    return m


def repository(key: MasterKey | None = None) -> Repository:
    return Repository.open(MemoryTarget(), key or MasterKey(os.urandom(32)), create=True)


def data(n: int = 40) -> bytes:
    return b"".join(os.urandom(CHUNK // 2) + b"text " * (CHUNK // 10) for _ in range(n))[: n * CHUNK - 100]


def stream(repo: Repository, m: Manifest) -> bytes:
    return b"".join(raw_stream(repo, m, workers=2))


class Dies(TargetWrapper):
    """A target whose ``put`` of one segment fails as a killed process would leave it: nothing."""

    def __init__(self, inner: MemoryTarget, segment: int) -> None:
        super().__init__(inner)
        self.key = f"/{segment:06d}"

    def put(self, key: str, parts: Iterable[bytes]) -> ObjectInfo:
        if key.endswith(self.key):
            raise KeyboardInterrupt  # not a BtrsyncError: like a signal, it ends the whole copy
        return self.inner.put(key, parts)


def test_a_copy_is_the_same_stream_sealed_for_the_destination() -> None:
    source, dest = repository(), repository()
    payload = data()
    m = backup(source, payload)
    result = copy_backups(source, dest, ["latest"], SETTINGS)
    [copied] = dest.manifests()
    assert stream(dest, copied) == payload
    assert copied.stored_bytes == m.stored_bytes and copied.segments == m.segments
    assert copied.encryption["key_id"] == dest.key.key_id != m.encryption["key_id"]
    assert result.totals()["moved_bytes"] == m.stored_bytes
    # the frames are the destination's own: none of the source's stored bytes is there
    seg = layout.segment_key(m.backup_id, 0)
    assert source.target.objects[seg] != dest.target.objects[seg]


def test_the_same_key_in_two_repositories_still_seals_anew() -> None:
    key = MasterKey(os.urandom(32))
    source, dest = repository(key), repository(key)
    m = backup(source, data(10))
    copy_backups(source, dest, [m.backup_id], SETTINGS)
    seg = layout.segment_key(m.backup_id, 0)
    assert source.target.objects[seg] != dest.target.objects[seg]  # bound to the repository id
    assert stream(dest, dest.manifests()[0]) == stream(source, m)


def test_an_interrupted_copy_commits_nothing_and_the_next_resumes() -> None:
    source, plain = repository(), MemoryTarget()
    dest = Repository.open(plain, MasterKey(os.urandom(32)), create=True)
    payload = data()
    m = backup(source, payload)
    dying = Repository.open(Dies(plain, 3), dest.key)
    with pytest.raises(KeyboardInterrupt):
        copy_backups(source, dying, ["latest"], SETTINGS)
    assert dest.manifests() == []
    assert layout.index_key(m.backup_id, 2) in plain.objects
    result = copy_backups(source, dest, ["latest"], SETTINGS)
    [b] = result.backups
    assert b.resumed_bytes > 0 and b.resumed_bytes + b.moved_bytes == m.stored_bytes
    assert b.read_bytes == b.moved_bytes  # the kept chunks were not read again
    assert stream(dest, dest.manifests()[0]) == payload


def test_a_kept_part_that_is_not_the_sources_is_thrown_away() -> None:
    """The destination holds an interrupted copy of the same backup id and snapshot from another
    source whose stream differs under the same attempt token (a hostile or confused repository):
    the chunks are compared with the source's records, and the copy starts again from nothing."""
    first, second, plain = repository(), repository(), MemoryTarget()
    dest = Repository.open(plain, MasterKey(os.urandom(32)), create=True)
    backup(first, data(), attempt="0123456789abcdef")
    m = backup(second, data(), attempt="0123456789abcdef")
    with pytest.raises(KeyboardInterrupt):
        copy_backups(first, Repository.open(Dies(plain, 3), dest.key), ["latest"], SETTINGS)
    result = copy_backups(second, dest, ["latest"], SETTINGS)
    [b] = result.backups
    assert b.status == "copied" and b.resumed_bytes == 0 and b.moved_bytes == m.stored_bytes
    assert stream(dest, dest.manifests()[0]) == stream(second, m)


def test_a_kept_part_of_another_source_attempt_is_not_resumed() -> None:
    first, second, plain = repository(), repository(), MemoryTarget()
    dest = Repository.open(plain, MasterKey(os.urandom(32)), create=True)
    payload = data()
    backup(first, payload)
    m = backup(second, payload)  # the same stream, another attempt token
    with pytest.raises(KeyboardInterrupt):
        copy_backups(first, Repository.open(Dies(plain, 3), dest.key), ["latest"], SETTINGS)
    [b] = copy_backups(second, dest, ["latest"], SETTINGS).backups
    assert b.resumed_bytes == 0 and b.moved_bytes == m.stored_bytes
    [copied] = dest.manifests()
    assert copied.table["attempt"] == m.table["attempt"] and stream(dest, copied) == payload


def test_a_flipped_bit_in_the_source_commits_nothing() -> None:
    source, dest = repository(), repository()
    m = backup(source, data())
    seg = layout.segment_key(m.backup_id, 1)
    raw = bytearray(source.target.objects[seg])
    raw[100] ^= 0x10
    source.target.objects[seg] = bytes(raw)
    result = copy_backups(source, dest, ["latest"], SETTINGS)
    [b] = result.backups
    assert b.status == "failed" and b.damaged and m.backup_id in (b.error or "")
    assert dest.manifests() == [] and not any(k.startswith("locks/") for k in dest.target.objects)
    with pytest.raises(DamageError):  # exit 4
        raise_for_failures(result)


def test_a_live_lease_of_another_writer_stops_the_copy() -> None:
    source, dest = repository(), repository()
    m = backup(source, data(8))
    with Lease(dest.target, m.backup_id), pytest.raises(LockedError):
        copy_backups(source, dest, ["latest"], SETTINGS)
    assert dest.manifests() == []


class Full(TargetWrapper):
    """A destination that takes no more data (QuotaExceeded on every segment)."""

    def put(self, key: str, parts: Iterable[bytes]) -> ObjectInfo:
        if key.startswith("data/"):
            for _ in parts:
                pass
            raise QuotaExceeded(f"target full writing {key}")
        return self.inner.put(key, parts)


def test_a_full_destination_ends_the_copy_at_its_first_failure() -> None:
    source, plain = repository(), MemoryTarget()
    dest = Repository.open(plain, MasterKey(os.urandom(32)), create=True)
    first = backup(source, data(8), uuid="u-00000001")
    second = backup(source, data(8), uuid="u-00000002")
    result = copy_backups(source, Repository.open(Full(plain), dest.key), None, SETTINGS)
    assert [(b.backup_id, b.status) for b in result.backups] == [(first.backup_id, "failed"),
                                                                 (second.backup_id, "skipped")]
    assert not result.backups[0].damaged and "full" in (result.backups[0].error or "")
    with pytest.raises(CopyError, match="1 more backup"):
        raise_for_failures(result)
    assert dest.manifests() == []
