"""The catalog fails safe: each test reproduces a way the previous version lost data through a
catalog it trusted too much (a broken chain counted by retention, a damaged manifest hiding or
blocking everything, a manifest moved between repositories, a pruned snapshot re-sent on every
push, local snapshots pinned by a target that never receives them, a hostile manifest written
with the key) and checks exit codes, messages and what is left on disk afterwards."""

from __future__ import annotations

import dataclasses
import json
import shutil
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from btrsync.catalog import layout
from btrsync.catalog.repository import Repository
from btrsync.crypto.keys import load_key_file
from btrsync.targets.local import LocalTarget
from tests.integration.conftest import T0, Run, World
from tests.support import tree
from tests.support.loopfs import create_subvolume

pytestmark = pytest.mark.btrfs


# --------------------------------------------------------------------------------------------------
# helpers


def _history(world: World, count: int, *extra: str, seed: int = 7) -> list[Path]:
    """``count`` snapshots of ``data`` (a populated tree, a small change between each), pushed."""
    tree.populate(world.subvol, seed)
    for g in range(count):
        if g:
            (world.subvol / f"change-{g}").write_bytes(bytes([g]) * (10_000 + g))
        world.snapshot()
    run = world.push(*extra)
    assert run.code == 0, run.err
    return list(world.snapshots)


def _ids(world: World, url: str | None = None) -> dict[str, str]:
    """snapshot name -> backup id, of every backup whose manifest authenticates."""
    run = world.cli("list", "--from", url or world.url, "--json")
    assert run.code == 0, run.err
    return {r["snapshot"]: r["id"] for r in run.json() if r.get("snapshot")}


def _manifest(world: World, backup_id: str, root: Path | None = None) -> Path:
    return (root or world.target_dir) / layout.manifest_key(backup_id)


def _data(world: World, backup_id: str) -> list[Path]:
    prefix = world.target_dir / layout.data_prefix(backup_id)
    return sorted(prefix.iterdir()) if prefix.is_dir() else []


def _catalog_files(world: World) -> list[str]:
    """Manifests and data objects on the directory target (leases and temporaries aside)."""
    return [f for f in world.data_files() if f.startswith(("backups/", "data/"))]


def _snapshot_of(world: World, subvol: Path, hour: int) -> Path:
    run = world.cli("snapshot", "create", str(subvol), "--snapshot-dir", str(world.snapdir),
                    "--timestamp", (T0 + timedelta(hours=hour)).isoformat())
    assert run.code == 0, run.err
    return Path(run.out.strip())


def _push_of(world: World, subvol: Path, *extra: str, url: str | None = None) -> Run:
    return world.cli("push", str(subvol), "--snapshot-dir", str(world.snapdir), "--to", url or world.url, *extra)


def _local(world: World, base: str) -> list[str]:
    return sorted(p.name for p in world.snapdir.iterdir() if p.name.startswith(f"{base}."))


def _decisions(run: Run) -> dict[str, dict[str, Any]]:
    return {d["id"]: d for d in run.json()}


def _repository(world: World) -> Repository:
    return Repository.open(LocalTarget(world.target_dir), load_key_file(world.key))


def _status_rows(run: Run) -> dict[str, str]:
    """backup id -> STATUS column of the ``list`` table (empty when the backup is fine)."""
    rows = {}
    for line in run.out.splitlines()[1:]:
        cells = line.split()
        if cells:
            rows[cells[0]] = cells[-1] if cells[-1] in ("BROKEN", "DAMAGED") else ""
    return rows


# --------------------------------------------------------------------------------------------------
# 1. a chain with a lost middle manifest


def test_broken_chain_is_kept_reported_and_never_counted(world: World) -> None:
    s0, s1, s2 = (s.name for s in _history(world, 3))
    ids = _ids(world)
    assert [b["kind"] for b in world.listing()] == ["full", "incremental", "incremental"]
    full, middle, last = ids[s0], ids[s1], ids[s2]
    _manifest(world, middle).unlink()  # the middle link is lost
    before = _catalog_files(world)
    full_data = _data(world, full)
    assert full_data

    dry = world.cli("prune", "--from", world.url, "--keep-last", "1", "--dry-run", "--json")
    assert dry.code == 0, dry.err
    d = _decisions(dry)
    assert set(d) == {full, last}
    assert d[full]["action"] == "keep" and d[last]["action"] == "keep"
    assert d[last]["reasons"][0].startswith("unrestorable")
    assert _catalog_files(world) == before

    run = world.cli("prune", "--from", world.url, "--keep-last", "1", "--json")
    assert run.code == 4, run.err
    assert last in run.err and "cannot be restored" in run.err and "Traceback" not in run.err
    assert _decisions(run) == d  # the same decisions as the dry run
    assert _catalog_files(world) == before  # nothing deleted: not the full, not the broken backup
    assert _manifest(world, full).is_file() and _data(world, full) == full_data
    assert _manifest(world, last).is_file() and _data(world, last)

    listed = world.cli("list", "--from", world.url)
    assert listed.code == 0, listed.err
    checked = world.cli("list", "--from", world.url, "--check")
    assert checked.code == 4, checked.err
    assert _status_rows(checked) == {full: "", last: "BROKEN"}
    assert "1 unrestorable" in checked.err and middle in checked.err

    run = world.receive(last)
    assert run.code == 4, run.err
    assert middle in run.err and "missing" in run.err and "Traceback" not in run.err
    assert list(world.restore.iterdir()) == []
    run = world.receive(full)
    assert run.code == 0, run.err
    assert [p.name for p in world.restore.iterdir()] == [s0]


# --------------------------------------------------------------------------------------------------
# 2. one damaged manifest: the rest keeps working, the damaged backup is never touched


def test_one_damaged_manifest_does_not_block_the_rest(world: World) -> None:
    other = create_subvolume(world.src / "other")
    (other / "o").write_text("other 0\n")
    d0, d1 = (s.name for s in _history(world, 2))
    o_names = []
    for hour in range(3):
        (other / "o").write_text(f"other {hour}\n")
        o_names.append(_snapshot_of(world, other, hour).name)
    run = _push_of(world, other, "--max-chain", "0")
    assert run.code == 0, run.err
    ids = _ids(world)
    damaged = ids[d1]
    manifest = _manifest(world, damaged)
    raw = bytearray(manifest.read_bytes())
    raw[len(raw) // 2] ^= 0x01
    manifest.write_bytes(bytes(raw))
    damaged_bytes = manifest.read_bytes()
    damaged_data = _data(world, damaged)
    advice = f"manifest {layout.manifest_key(damaged)}"

    listed = world.cli("list", "--from", world.url)
    assert listed.code == 0, listed.err
    rows = _status_rows(listed)
    assert rows == {ids[d0]: "", damaged: "DAMAGED", **{ids[n]: "" for n in o_names}}
    assert advice in listed.err and "move it aside" in listed.err and "Traceback" not in listed.err

    usage = world.cli("usage", "--from", world.url, "--json")
    assert usage.code == 0, usage.err
    assert usage.json()["damaged_manifests"] == [layout.manifest_key(damaged)]
    assert {s["subvolume"] for s in usage.json()["subvolumes"]} == {"data", "other"}

    run = world.receive(ids[o_names[-1]])
    assert run.code == 0, run.err
    assert (world.restore / o_names[-1] / "o").read_text() == "other 2\n"

    world.snapshot()  # d2
    d2 = world.snapshots[-1].name
    plan = world.push("--dry-run", "--json")
    assert plan.code == 0, plan.err
    skipped = {s["snapshot"]: s["reason"] for s in plan.json()["skipped"]}
    assert list(skipped) == [d1] and "damaged" in skipped[d1]
    assert [(p["snapshot"], p["parent"]) for p in plan.json()["plan"]] == [(d2, d0)]
    run = world.push()
    assert run.code == 0, run.err
    assert f"skipped {d1}" in run.err and "damaged" in run.err
    assert manifest.read_bytes() == damaged_bytes  # never overwritten
    assert _data(world, damaged) == damaged_data
    ids = _ids(world)
    assert d2 in ids and d1 not in ids

    data_before = {n: _manifest(world, ids[n]).read_bytes() for n in (d0, d2)}
    run = world.cli("prune", "--from", world.url, "--keep-last", "1", "--json")
    assert run.code == 4, run.err
    assert "not pruned: data" in run.err and "damaged" in run.err
    d = _decisions(run)
    assert [d[ids[n]]["action"] for n in o_names] == ["delete", "delete", "keep"]
    assert d[ids[d0]]["action"] == d[ids[d2]]["action"] == "keep"
    assert d[ids[d0]]["reasons"][0].startswith("not pruned")
    for n in o_names[:2]:  # the other subvolume was pruned ...
        assert not _manifest(world, ids[n]).exists() and not _data(world, ids[n])
    assert _manifest(world, ids[o_names[2]]).is_file() and _data(world, ids[o_names[2]])
    # ... and not one backup of data went
    assert {n: _manifest(world, ids[n]).read_bytes() for n in (d0, d2)} == data_before
    assert all(_data(world, ids[n]) for n in (d0, d2))
    assert manifest.read_bytes() == damaged_bytes and _data(world, damaged) == damaged_data

    clean = world.cli("clean", "--from", world.url, "--dry-run", "--json")
    assert clean.code == 0, clean.err
    items = clean.json()["items"]
    assert [i["key"] for i in items if i["kind"] == "damaged manifest"] == [layout.manifest_key(damaged)]
    assert not [i for i in items if i["key"].startswith(layout.data_prefix(damaged))]
    assert not [i for i in items if i["action"] == "would remove"]


# --------------------------------------------------------------------------------------------------
# 3. every object is bound to its repository and its key


def test_manifest_from_another_repository_with_the_same_key_is_damaged(world: World, tmp_path: Path) -> None:
    s0, s1 = (s.name for s in _history(world, 2))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    other_url = f"file://{elsewhere}"
    assert world.cli("init", "--to", other_url).code == 0
    run = _push_of(world, world.subvol, url=other_url)
    assert run.code == 0, run.err
    ids, other_ids = _ids(world), _ids(world, other_url)
    assert ids == other_ids  # the same snapshots: the same backup ids in both repositories
    victim = _manifest(world, ids[s1])
    original = victim.read_bytes()
    shutil.copyfile(_manifest(world, ids[s1], elsewhere), victim)

    run = world.cli("list", "--from", world.url, "--check")
    assert run.code == 4, run.err
    assert _status_rows(run) == {ids[s0]: "", ids[s1]: "DAMAGED"}
    assert "failed authentication" in run.err and layout.manifest_key(ids[s1]) in run.err
    victim.write_bytes(original)
    run = world.cli("list", "--from", world.url, "--check")
    assert run.code == 0, run.err


def test_manifest_moved_to_another_backup_id_is_damaged(world: World) -> None:
    s0, s1 = (s.name for s in _history(world, 2))
    ids = _ids(world)
    shutil.copyfile(_manifest(world, ids[s0]), _manifest(world, ids[s1]))
    run = world.cli("list", "--from", world.url, "--check")
    assert run.code == 4, run.err
    assert _status_rows(run) == {ids[s0]: "", ids[s1]: "DAMAGED"}
    assert "failed authentication" in run.err and layout.manifest_key(ids[s1]) in run.err


def test_edited_repository_marker_fails_authentication(world: World) -> None:
    _history(world, 2, "--max-chain", "0")
    before = _catalog_files(world)
    marker = world.target_dir / layout.REPO_MARKER
    doc = json.loads(marker.read_text())
    doc["created"] = "2019-01-01T00:00:00Z"
    marker.write_text(json.dumps(doc, indent=2))
    run = world.cli("list", "--from", world.url)
    assert run.code == 4, run.err
    assert layout.REPO_MARKER in run.err and "failed authentication" in run.err
    run = world.cli("prune", "--from", world.url, "--keep-last", "1")
    assert run.code == 4 and "failed authentication" in run.err
    assert _catalog_files(world) == before


# --------------------------------------------------------------------------------------------------
# 4. snapshots that retention removed from the target are not sent again on every push


@pytest.mark.slow
def test_pruned_snapshots_are_not_resent_without_backfill(world: World) -> None:
    names = [s.name for s in _history(world, 4, "--max-chain", "0")]
    run = world.cli("prune", "--from", world.url, "--keep-last", "1")
    assert run.code == 0, run.err
    assert list(_ids(world)) == names[3:]
    before = _catalog_files(world)

    run = world.push("--json")
    assert run.code == 0, run.err
    doc = run.json()
    assert doc["backups"] == [] and doc["plan"] == []
    skipped = {s["snapshot"]: s["reason"] for s in doc["skipped"]}
    assert list(skipped) == names[:3]
    assert all("--backfill" in r for r in skipped.values())
    assert _catalog_files(world) == before  # nothing sent
    assert list(_ids(world)) == names[3:]

    run = world.push("--backfill", "--json")
    assert run.code == 0, run.err
    assert [b["snapshot"] for b in run.json()["backups"]] == names[:3]
    assert all(b["status"] == "ok" for b in run.json()["backups"])
    assert list(_ids(world)) == names
    assert world.cli("list", "--from", world.url, "--check").code == 0


@pytest.mark.parametrize("rule", ["keep_last = 10", "keep_hourly = 24"])
@pytest.mark.slow
def test_snapshots_the_targets_retention_keeps_are_resent(world: World, rule: str) -> None:
    world.config.write_text(world.config.read_text() + f"""
[retention.profiles.p]
backups = {{ {rule} }}

[retention.subvolumes]
data = "p"
""")
    names = [s.name for s in _history(world, 4, "--max-chain", "0")]
    run = world.cli("prune", "--from", world.url, "--keep-last", "1")  # the flag overrides the profile
    assert run.code == 0, run.err
    assert list(_ids(world)) == names[3:]

    run = world.push("--json")
    assert run.code == 0, run.err
    doc = run.json()
    assert doc["skipped"] == []
    assert [b["snapshot"] for b in doc["backups"]] == names[:3]
    assert all(b["status"] == "ok" for b in doc["backups"])
    assert list(_ids(world)) == names
    assert world.cli("list", "--from", world.url, "--check").code == 0


# --------------------------------------------------------------------------------------------------
# 5. local snapshot prune: protected only for targets that receive the subvolume


def test_local_snapshots_are_not_pinned_by_a_target_that_never_receives_them(world: World) -> None:
    data = [s.name for s in _history(world, 3)]
    world.snapshot()  # d3: not pushed yet
    data.append(world.snapshots[-1].name)
    other = create_subvolume(world.src / "other")
    others = []
    for hour in range(3):
        (other / "o").write_text(f"other {hour}\n")
        others.append(_snapshot_of(world, other, hour).name)

    args = ["--snapshot-dir", str(world.snapdir), "--keep-last", "1", "--json"]
    run = world.cli("snapshot", "prune", str(other), *args)
    assert run.code == 0, run.err
    d = _decisions(run)
    assert [d[n]["action"] for n in others] == ["delete", "delete", "keep"]
    assert not any(world.url in r for n in others for r in d[n]["reasons"])
    assert _local(world, "other") == others[2:]

    run = world.cli("snapshot", "prune", str(world.subvol), *args)
    assert run.code == 0, run.err
    d = _decisions(run)
    assert [d[n]["action"] for n in data] == ["delete", "delete", "keep", "keep"]
    assert d[data[2]]["reasons"][0] == f"newest common with {world.url}"
    assert _local(world, "data") == data[2:]

    run = world.cli("state", "forget", world.url)
    assert run.code == 0, run.err
    assert f"forgot {world.url}" in run.err
    run = world.cli("snapshot", "prune", str(world.subvol), *args)
    assert run.code == 0, run.err
    d = _decisions(run)
    assert [d[n]["action"] for n in data[2:]] == ["delete", "keep"]
    assert _local(world, "data") == data[3:]


# --------------------------------------------------------------------------------------------------
# 6. a manifest crafted with the key is still checked before it is used


def test_manifest_naming_a_path_outside_the_restore_dir_is_refused(world: World) -> None:
    s0, s1 = (s.name for s in _history(world, 2))
    ids = _ids(world)
    repo = _repository(world)
    repo.commit(dataclasses.replace(repo.load_manifest(ids[s1]), snapshot="../escape"))

    run = world.cli("list", "--from", world.url, "--check")
    assert run.code == 4, run.err
    assert _status_rows(run) == {ids[s0]: "", ids[s1]: "DAMAGED"}
    assert "single path component" in run.err and "Traceback" not in run.err
    run = world.receive(ids[s1])
    assert run.code == 4, run.err
    assert ids[s1] in run.err and "Traceback" not in run.err
    assert list(world.restore.iterdir()) == []
    assert not (world.restore.parent / "escape").exists()
    assert world.receive(ids[s0]).code == 0  # the rest of the catalog still restores
    assert not (world.restore.parent / "escape").exists()


def test_chain_that_loops_is_unrestorable_and_reported(world: World) -> None:
    s0, s1, s2 = (s.name for s in _history(world, 3))
    ids = _ids(world)
    repo = _repository(world)
    m1, m2 = repo.load_manifest(ids[s1]), repo.load_manifest(ids[s2])
    assert m2.parent_id == ids[s1]
    repo.commit(dataclasses.replace(m1, parent_id=m2.backup_id, parent_uuid=m2.snapshot_uuid))
    before = _catalog_files(world)

    run = world.cli("list", "--from", world.url, "--check")
    assert run.code == 4, run.err
    assert _status_rows(run) == {ids[s0]: "", ids[s1]: "BROKEN", ids[s2]: "BROKEN"}
    assert "loop" in run.err and "2 unrestorable" in run.err
    for backup in (ids[s2], ids[s1]):
        run = world.receive(backup)
        assert run.code == 4, run.err
        assert "loop" in run.err and "Traceback" not in run.err
        assert list(world.restore.iterdir()) == []
    run = world.cli("usage", "--from", world.url)
    assert run.code == 0, run.err
    run = world.cli("prune", "--from", world.url, "--keep-last", "1")
    assert run.code == 4 and "cannot be restored" in run.err
    assert _catalog_files(world) == before
    assert world.receive(ids[s0]).code == 0


def test_latest_is_never_silently_an_older_backup(world: World) -> None:
    """The newest manifest is damaged: 'latest' refuses (exit 4) and names the newest intact one,
    instead of restoring an older backup as if it were the latest; a damaged id refuses too."""
    _history(world, 2)
    ids = _ids(world)
    newest = sorted(ids.values())[-1]
    path = _manifest(world, newest)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 1
    path.write_bytes(bytes(data))
    for spec in ("latest", "data@latest", newest):
        run = world.receive(spec)
        assert run.code == 4, (spec, run.err)
        assert "damaged" in run.err
    assert list(world.restore.iterdir()) == []
    assert world.receive(sorted(ids.values())[0]).code == 0


def test_a_damaged_manifest_of_an_at_named_subvolume_still_stops_its_prune(world: World) -> None:
    """A damaged manifest's subvolume is known only from its key, where '@home' is spelled
    '_home' (backup ids carry [A-Za-z0-9._-] only): prune compared '@home' with '_home', saw no
    damage, and pruned '@home' as if the damaged backup did not exist (deleting what it needs)."""
    home = create_subvolume(world.src / "@home")
    names = []
    for hour in range(3):
        (home / "f").write_text(f"version {hour}\n")
        names.append(_snapshot_of(world, home, hour).name)
    run = _push_of(world, home, "--max-chain", "0")  # three fulls
    assert run.code == 0, run.err
    ids = _ids(world)
    damaged = ids[names[2]]
    assert damaged.startswith("_home.")  # premise: the id spells the name differently
    manifest = _manifest(world, damaged)
    raw = bytearray(manifest.read_bytes())
    raw[len(raw) // 2] ^= 0x01
    manifest.write_bytes(bytes(raw))

    run = world.cli("prune", "--from", world.url, "--keep-last", "1", "--json")
    assert run.code == 4, run.err
    assert all(_manifest(world, ids[n]).is_file() and _data(world, ids[n]) for n in names[:2]), run.err
    assert [d["action"] for d in run.json()] == ["keep", "keep"], run.out
