"""Repository: initialisation, key check, manifest commit/load, tamper evidence, deletion order."""

from __future__ import annotations

import os
from datetime import UTC, datetime

import pytest

from btrsync.catalog import layout
from btrsync.catalog.manifest import ChunkRecord, Manifest
from btrsync.catalog.repository import Repository
from btrsync.crypto.keys import MasterKey
from btrsync.errors import DamageError, TargetMissingError, WrongKeyError
from btrsync.targets.memory import MemoryTarget

KEY = MasterKey(os.urandom(32))
NOW = datetime(2026, 11, 26, 3, 0, tzinfo=UTC)


def manifest(bid: str = "data.20261126T030000Z-abcd1234", parent: str | None = None) -> Manifest:
    return Manifest(
        backup_id=bid, host="h", subvolume="data", source_path="/data", snapshot="data.20261126T030000Z",
        snapshot_time=NOW, snapshot_uuid="u", parent_uuid=None, parent_id=parent, depth=0,
        send={"proto": 1}, compression={"algorithm": "zstd"}, encryption={"key_id": KEY.key_id},
        chunk_size=4, chunk_count=1, table={"attempt": "t", "digest": "d"}, stream_bytes=4,
        stored_bytes=44, segments=1, started=NOW, finished=NOW)


def test_open_without_create_on_empty_target_is_target_missing() -> None:
    with pytest.raises(TargetMissingError, match="holds no btrsync repository"):
        Repository.open(MemoryTarget(), KEY)


def test_create_refuses_a_non_empty_foreign_location() -> None:
    target = MemoryTarget()
    target.put_bytes("somebody-elses-file", b"x")
    with pytest.raises(TargetMissingError, match="not empty"):
        Repository.open(target, KEY, create=True)


def test_wrong_key_is_detected_before_anything_is_read_or_written() -> None:
    target = MemoryTarget()
    Repository.open(target, KEY, create=True)
    before = dict(target.objects)
    with pytest.raises(WrongKeyError, match="wrong key"):
        Repository.open(target, MasterKey(os.urandom(32)), create=True)
    assert target.objects == before


def test_manifest_round_trips() -> None:
    repo = Repository.open(MemoryTarget(), KEY, create=True)
    m = manifest()
    repo.commit(m)
    assert repo.load_manifest(m.backup_id) == m
    assert repo.manifests() == [m]


def test_tampered_or_truncated_manifest_is_damage() -> None:
    target = MemoryTarget()
    repo = Repository.open(target, KEY, create=True)
    m = manifest()
    repo.commit(m)
    key = layout.manifest_key(m.backup_id)
    good = target.objects[key]
    target.objects[key] = good[: len(good) // 2]
    with pytest.raises(DamageError, match="manifest"):
        repo.load_manifest(m.backup_id)
    flipped = bytearray(good)
    flipped[60] ^= 1
    target.objects[key] = bytes(flipped)
    with pytest.raises(DamageError, match="failed authentication"):
        repo.load_manifest(m.backup_id)


def test_a_manifest_moved_to_another_id_is_rejected() -> None:
    target = MemoryTarget()
    repo = Repository.open(target, KEY, create=True)
    repo.commit(manifest("a-1"))
    target.objects[layout.manifest_key("b-1")] = target.objects[layout.manifest_key("a-1")]
    with pytest.raises(DamageError):
        repo.load_manifest("b-1")


def test_delete_removes_manifest_before_data() -> None:
    """A crash between the two steps leaves orphaned data, never a manifest without its data."""
    target = MemoryTarget()
    repo = Repository.open(target, KEY, create=True)
    m = manifest()
    target.put_bytes(layout.segment_key(m.backup_id, 0), b"x" * 44)
    repo.commit(m)
    deleted: list[str] = []
    original = target.delete

    def spy(key: str) -> None:
        deleted.append(key)
        original(key)

    target.delete = spy  # type: ignore[method-assign]
    repo.delete_backup(m.backup_id)
    assert deleted[0] == layout.manifest_key(m.backup_id)
    assert repo.backup_ids() == [] and list(repo.orphaned_data()) == []


def test_backup_ids_are_readable_and_key_safe() -> None:
    bid = layout.backup_id_for("my data.20261126T030000Z", "0fa0cfa8-9604-fb4c-86a7-b2741ad3aa13")
    assert bid == "my_data.20261126T030000Z-0fa0cfa8"


def test_init_refuses_a_location_that_holds_a_repository() -> None:
    from btrsync.catalog.repository import RepositoryExistsError

    target = MemoryTarget()
    repo = Repository.init(target, KEY)
    before = dict(target.objects)
    with pytest.raises(RepositoryExistsError, match=repo.repo_id):
        Repository.init(target, KEY)
    assert target.objects == before


def test_marker_fields_are_authenticated() -> None:
    import json

    target = MemoryTarget()
    Repository.init(target, KEY)
    doc = json.loads(target.objects[layout.REPO_MARKER])
    for field_name, value in (("repo_id", "0" * 16), ("created", "2020-01-01T00:00:00Z"), ("mac", "")):
        target.objects[layout.REPO_MARKER] = json.dumps({**doc, field_name: value}).encode()
        with pytest.raises(DamageError, match="failed authentication"):
            Repository.open(target, KEY)
    target.objects[layout.REPO_MARKER] = b"{" + b" " * 10_000 + b"}"
    with pytest.raises(DamageError, match="more than any btrsync repository marker"):
        Repository.open(target, KEY)


def test_one_damaged_manifest_is_isolated_in_the_catalog() -> None:
    target = MemoryTarget()
    repo = Repository.init(target, KEY)
    good, bad = manifest("data.20261126T030000Z-aaaa1111"), manifest("data.20261126T040000Z-bbbb2222")
    repo.commit(good)
    repo.commit(bad)
    key = layout.manifest_key(bad.backup_id)
    target.objects[key] = target.objects[key][:-1] + bytes([target.objects[key][-1] ^ 1])
    catalog = repo.catalog()
    assert [m.backup_id for m in catalog.manifests] == [good.backup_id]
    assert [(d.backup_id, d.subvolume) for d in catalog.damaged] == [(bad.backup_id, "data")]
    with pytest.raises(DamageError, match="move it aside"):
        repo.manifests()  # the strict accessor still refuses


def test_broken_chains_name_their_first_bad_link() -> None:
    from dataclasses import replace

    from btrsync.catalog.chains import broken_chains

    full = manifest("f-1")
    inc = replace(manifest("i-1", parent="f-1"), depth=1, parent_uuid="u")
    orphan = replace(manifest("i-2", parent="gone-1"), depth=1, parent_uuid="u")
    wrong = replace(manifest("i-3", parent="f-1"), depth=1, parent_uuid="other")
    loop_a = replace(manifest("l-a", parent="l-b"), depth=1, parent_uuid="u")
    loop_b = replace(manifest("l-b", parent="l-a"), depth=1, parent_uuid="u")
    on_damaged = replace(manifest("i-4", parent="d-1"), depth=1, parent_uuid="u")
    broken = broken_chains([full, inc, orphan, wrong, loop_a, loop_b, on_damaged], damaged={"d-1"})
    assert set(broken) == {"i-2", "i-3", "l-a", "l-b", "i-4"}
    assert "missing" in broken["i-2"].reason and "expects other" in broken["i-3"].reason
    assert "loops" in broken["l-a"].reason and "damaged" in broken["i-4"].reason


def test_hostile_snapshot_names_are_refused() -> None:
    from dataclasses import replace

    target = MemoryTarget()
    repo = Repository.init(target, KEY)
    for name in ("../escape", "a/b", "..", ".", "", "x\0y"):
        m = replace(manifest(f"h-{abs(hash(name)) % 1000}"), snapshot=name)
        repo.commit(m)
        with pytest.raises(DamageError, match="single path"):
            repo.load_manifest(m.backup_id)
