"""The catalog cache: warm reads fetch no manifest, changes are noticed, the cache is never trusted
blindly, and prune re-reads what it relies on."""

from __future__ import annotations

import os
import sqlite3
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from btrsync.catalog import layout
from btrsync.catalog.cache import CatalogCache
from btrsync.catalog.manifest import Manifest
from btrsync.catalog.repository import Repository
from btrsync.crypto.keys import MasterKey
from btrsync.errors import DamageError
from btrsync.targets.memory import MemoryTarget

KEY = MasterKey(os.urandom(32))
T0 = datetime(2026, 11, 26, 3, 0, tzinfo=UTC)


class CountingTarget(MemoryTarget):
    def __init__(self) -> None:
        super().__init__()
        self.gets: list[str] = []

    def get(self, key, *, offset=0, length=None):  # noqa: ANN001
        self.gets.append(key)
        return super().get(key, offset=offset, length=length)


def _manifest(n: int, parent: str | None = None) -> Manifest:
    bid = f"data.2026112{n % 10}T030000Z-{n:08x}"
    return Manifest(
        backup_id=bid, host="h", subvolume="data", source_path="/data", snapshot=bid.rsplit("-", 1)[0],
        snapshot_time=T0 + timedelta(hours=n), snapshot_uuid=f"u{n}", parent_uuid=None if parent is None
        else f"u{n - 1}", parent_id=parent, depth=0 if parent is None else 1, send={}, compression={},
        encryption={}, chunk_size=4, stream_bytes=4, stored_bytes=44, segments=0, started=T0, finished=T0,
        chunk_count=0, table={"attempt": "a", "digest": "d"})


def _repo(tmp_path: Path, n: int = 5) -> tuple[CountingTarget, Repository]:
    target = CountingTarget()
    repo = Repository.init(target, KEY)
    for i in range(n):
        repo.commit(_manifest(i))
    repo.cache = CatalogCache.for_repository(tmp_path, repo.repo_id)
    return target, repo


def _manifest_gets(target: CountingTarget) -> list[str]:
    return [k for k in target.gets if k.startswith("backups/")]


def test_a_warm_catalog_downloads_no_manifest(tmp_path: Path) -> None:
    target, repo = _repo(tmp_path)
    cold = repo.catalog()
    assert len(_manifest_gets(target)) == 5
    target.gets.clear()
    fresh_repo = Repository.open(target, KEY)  # another process: the cache lives on disk
    fresh_repo.cache = CatalogCache.for_repository(tmp_path, repo.repo_id)
    warm = fresh_repo.catalog()
    assert _manifest_gets(target) == [] and warm.manifests == cold.manifests
    repo.commit(_manifest(7))  # only what is new is read
    target.gets.clear()
    assert len(fresh_repo.catalog().manifests) == 6 and len(_manifest_gets(target)) == 1


def test_a_replaced_manifest_of_the_same_size_is_read_again(tmp_path: Path) -> None:
    target, repo = _repo(tmp_path)
    repo.catalog()
    m = _manifest(2)
    key = layout.manifest_key(m.backup_id)
    before = len(target.objects[key])
    repo.commit(replace(m, host="x"))  # same length, other bytes
    assert len(target.objects[key]) == before
    assert {x.host for x in repo.catalog().manifests if x.backup_id == m.backup_id} == {"x"}


def test_a_cache_edited_on_disk_is_not_trusted(tmp_path: Path) -> None:
    target, repo = _repo(tmp_path)
    expected = repo.catalog().manifests
    with sqlite3.connect(repo.cache.path) as conn:  # type: ignore[union-attr]
        conn.execute("UPDATE manifests SET sealed = zeroblob(length(sealed))")
    again = Repository.open(target, KEY)
    again.cache = CatalogCache.for_repository(tmp_path, repo.repo_id)
    assert again.catalog().manifests == expected and not again.catalog().damaged
    repo.cache.path.write_bytes(b"not a database")  # type: ignore[union-attr]
    again.cache = CatalogCache.for_repository(tmp_path, repo.repo_id)
    assert again.catalog().manifests == expected


def test_deleted_manifests_leave_the_cache(tmp_path: Path) -> None:
    target, repo = _repo(tmp_path)
    repo.catalog()
    repo.delete_backup(_manifest(0).backup_id)
    assert len(repo.catalog().manifests) == 4
    with sqlite3.connect(repo.cache.path) as conn:  # type: ignore[union-attr]
        assert conn.execute("SELECT count(*) FROM manifests").fetchone()[0] == 4


def test_reread_refuses_a_catalog_that_changed_under_the_decision(tmp_path: Path) -> None:
    target, repo = _repo(tmp_path)
    manifests = repo.catalog().manifests
    repo.reread(manifests)  # unchanged: fine
    repo.commit(replace(manifests[1], host="elsewhere"))
    with pytest.raises(DamageError, match="changed while deciding"):
        repo.reread(manifests)
    target.delete(layout.manifest_key(manifests[2].backup_id))
    with pytest.raises(DamageError, match="vanished"):
        repo.reread([manifests[2]])


def test_a_commit_stores_its_manifest_and_a_cache_it_cannot_write_fails_nothing(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    target, repo = _repo(tmp_path, n=1)
    repo.commit(_manifest(1))
    again = Repository.open(target, KEY)  # the next push, another process
    again.cache = CatalogCache.for_repository(tmp_path, repo.repo_id)
    target.gets.clear()
    assert len(again.catalog().manifests) == 2 and _manifest_gets(target) == [_manifest_gets_key(0)]
    (tmp_path / "not-a-dir").write_text("")
    repo.cache = CatalogCache(tmp_path / "not-a-dir" / "catalog.sqlite")  # e.g. the state disk went bad
    repo.commit(_manifest(2))  # committed: the cache's trouble is a warning, not a failed backup
    assert layout.manifest_key(_manifest(2).backup_id) in target.objects
    assert "could not add backup" in caplog.text


def _manifest_gets_key(n: int) -> str:
    return layout.manifest_key(_manifest(n).backup_id)
