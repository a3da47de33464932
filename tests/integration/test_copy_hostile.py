"""btrsync copy against an unlucky operator: a destination that lost a parent (pruned there, or
by a prune elsewhere while the copy ran), names that are not UTF-8, ``SUBVOL@latest`` of
nothing, ``--dry-run`` proved byte for byte."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from btrsync.catalog import layout
from btrsync.catalog.lease import Lease
from btrsync.catalog.repository import Repository
from btrsync.crypto.keys import load_key_file
from btrsync.ops.copy import CopySettings, copy_backups
from btrsync.targets.local import LocalTarget
from tests.integration.conftest import World
from tests.integration.test_copy import Other, other  # noqa: F401 - the fixture

pytestmark = pytest.mark.btrfs


def _chain(world: World) -> tuple[dict, dict]:
    (world.subvol / "f").write_bytes(os.urandom(300_000))
    world.snapshot()
    assert world.push().code == 0
    (world.subvol / "g").write_bytes(os.urandom(300_000))
    world.snapshot()
    assert world.push().code == 0
    full, incremental = sorted(world.listing(), key=lambda b: str(b["created"]))
    return full, incremental


def _tree(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in root.rglob("*") if p.is_file()}


def test_a_child_whose_parent_the_destination_lost_is_healed_by_copying_the_parent_again(
        world: World, other: Other) -> None:
    full, incremental = _chain(world)
    assert other.copy("data@latest").code == 0
    # the parent's manifest is gone there (an operator's rm, a prune that raced a copy)
    (other.dir / layout.manifest_key(str(full["id"]))).unlink()
    run = other.copy("data@latest", "--json")
    assert run.code == 0, run.err
    assert {b["backup_id"]: b["status"] for b in run.json()["backups"]} == {
        full["id"]: "copied", incremental["id"]: "present"}
    run = world.cli("receive", str(incremental["id"]), "--from", other.url, "--into", str(world.restore),
                    key=other.key)
    assert run.code == 0, run.err


def test_a_parent_removed_on_the_destination_during_the_copy_fails_it_uncommitted(
        world: World, other: Other) -> None:
    full, incremental = _chain(world)
    assert other.copy(str(full["id"])).code == 0
    source = Repository.open(LocalTarget(world.target_dir), load_key_file(world.key))
    dest = Repository.open(LocalTarget(other.dir), load_key_file(other.key))
    gone: list[int] = []

    def prune_elsewhere(segment: int) -> None:  # a prune that read the leases before this copy's
        if not gone:
            (other.dir / layout.manifest_key(str(full["id"]))).unlink()
            gone.append(segment)

    result = copy_backups(source, dest, [str(incremental["id"])],
                          CopySettings(segment_size=1 << 16, may_start_segment=prune_elsewhere))
    assert gone
    [outcome] = [b for b in result.backups if b.backup_id == incremental["id"]]
    assert outcome.status == "failed" and "parent" in str(outcome.error), outcome
    assert not (other.dir / layout.manifest_key(str(incremental["id"]))).exists()
    # the next copy sends the parent again and keeps what the failed one wrote of the child
    run = other.copy("data@latest", "--json")
    assert run.code == 0, run.err
    assert [b["status"] for b in run.json()["backups"]] == ["copied", "copied"]
    assert run.json()["backups"][1]["resumed_bytes"] > 0


def test_names_that_are_not_utf8_list_and_restore_the_same_after_a_copy(world: World, other: Other) -> None:
    root = os.fsencode(world.subvol)
    os.mkdir(os.path.join(root, b"d\xe9"))
    with open(os.path.join(root, b"d\xe9", b"n\n\xff" + b"x" * 200), "wb") as f:
        f.write(b"odd")
    world.snapshot()
    assert world.push().code == 0
    assert other.copy("--all").code == 0
    theirs = world.cli("ls", "latest", "--from", other.url, "--recursive", "--json", key=other.key)
    mine = world.cli("ls", "latest", "--from", world.url, "--recursive", "--json")
    assert theirs.code == 0 and theirs.json() == mine.json()
    run = world.cli("restore", "latest", "--from", other.url, "--to", str(world.restore), key=other.key)
    assert run.code == 0, run.err
    names = [p for p in os.listdir(os.fsencode(world.restore)) if p != b"lost+found"]
    found = [os.path.join(dirpath, f) for dirpath, _, files in os.walk(os.fsencode(world.restore)) for f in files]
    assert any(p.endswith(b"n\n\xff" + b"x" * 200) for p in found), (names, found)


def test_subvol_at_latest_of_nothing_is_refused_naming_what_there_is(world: World, other: Other) -> None:
    _chain(world)
    before = other.files()
    run = other.copy("nosuch@latest")
    assert run.code == 2 and "nosuch" in run.err and "(have: data)" in run.err, run.err
    assert f"source {world.url}" in run.err  # not "the target" alone: which of the two
    assert other.files() == before


def test_dry_run_changes_not_one_byte_of_either_repository(world: World, other: Other) -> None:
    full, _ = _chain(world)
    assert other.copy(str(full["id"])).code == 0
    before = (_tree(other.dir), _tree(world.target_dir))
    run = other.copy("--all", "--dry-run", "--json")
    assert run.code == 0, run.err
    assert [b["status"] for b in run.json()["backups"]] == ["present", "planned"]
    assert (_tree(other.dir), _tree(world.target_dir)) == before


def test_a_copy_killed_while_writing_the_manifest_leaves_nothing_listed_and_copies_again(
        world: World, other: Other) -> None:
    full, incremental = _chain(world)
    assert other.copy(str(full["id"])).code == 0
    # SIGKILL inside the manifest's write: its temporary, half written, and the upload lease of a
    # process that is gone (this host, this boot)
    key = other.dir / layout.manifest_key(str(incremental["id"]))
    key.parent.mkdir(parents=True)
    (key.parent / "manifest.tmp-0123456789ab").write_bytes(b"\x00half a manifest")
    lease = other.dir / layout.lease_key(str(incremental["id"]))
    with Lease(LocalTarget(other.dir), str(incremental["id"]), str(full["id"])):
        held = lease.read_bytes()
    lease.parent.mkdir(exist_ok=True)
    lease.write_bytes(held.replace(f'"pid": {os.getpid()}'.encode(), b'"pid": 999999999'))
    assert b"999999999" in lease.read_bytes()
    assert [b["id"] for b in other.listing()] == [full["id"]]
    run = other.copy("data@latest", "--json")
    assert run.code == 0, run.err
    assert [b["status"] for b in run.json()["backups"]] == ["present", "copied"]
    assert not lease.exists()
    run = world.cli("clean", "--from", other.url, key=other.key)
    assert run.code == 0, run.err
    assert not any(".tmp-" in f or f.startswith("locks/") for f in other.files()), other.files()


def test_a_source_disk_unmounted_mid_copy_is_not_reported_as_damage(world: World, other: Other) -> None:
    """An unplugged disk leaves its empty mount point: every segment is missing, which the read path
    calls damage; the copy must say the source went away (exit 1), and the next copy resumes."""
    (world.subvol / "f").write_bytes(os.urandom(600_000))
    world.snapshot()
    assert world.push().code == 0
    full, = world.listing()
    source = Repository.open(LocalTarget(world.target_dir), load_key_file(world.key))
    dest = Repository.open(LocalTarget(other.dir), load_key_file(other.key))
    away = world.target_dir.with_name("unplugged")
    away.mkdir()

    def unplug(segment: int) -> None:
        if segment == 1 and not any(away.iterdir()):
            for p in list(world.target_dir.iterdir()):
                p.rename(away / p.name)

    from btrsync.ops.copy import raise_for_failures
    from btrsync.errors import DamageError

    result = copy_backups(source, dest, None, CopySettings(workers=1, segment_size=1 << 16, may_start_segment=unplug))
    [outcome] = result.backups
    assert outcome.status == "failed" and not outcome.damaged, outcome
    assert "cannot be reached" in str(outcome.error)
    with pytest.raises(Exception) as err:
        raise_for_failures(result)
    assert not isinstance(err.value, DamageError)
    for p in list(away.iterdir()):
        p.rename(world.target_dir / p.name)
    run = other.copy("--all", "--json")
    assert run.code == 0, run.err
    assert run.json()["backups"][0]["resumed_bytes"] > 0 and full["id"] == run.json()["backups"][0]["backup_id"]


def test_a_copy_from_a_repository_being_pushed_to_copies_what_is_committed(world: World, other: Other) -> None:
    full, incremental = _chain(world)
    # a push of the next backup in flight on the source: its lease and a durable segment, no manifest
    pending = "data.20261120T050000Z-0badc0de"
    seg = world.target_dir / layout.segment_key(pending, 0)
    seg.parent.mkdir(parents=True)
    seg.write_bytes(os.urandom(1000))
    before = _tree(world.target_dir)
    with Lease(LocalTarget(world.target_dir), pending, str(incremental["id"])):
        run = other.copy("--all", "--json")
        assert run.code == 0, run.err
        assert {b["backup_id"] for b in run.json()["backups"]} == {full["id"], incremental["id"]}
        assert {k: v for k, v in _tree(world.target_dir).items() if not k.startswith("locks/")} == before
    assert not any(pending in f for f in other.files())


def test_the_help_examples_run_as_written(world: World, other: Other) -> None:
    """``copy --help``'s examples, with usb and b2 configured as the examples assume (usb the
    world's repository, b2 another one of the same key) and the example id made a real one."""
    import shlex

    from btrsync.cli.main import main

    (world.subvol / "f").write_bytes(os.urandom(100_000))
    world.snapshot()
    assert world.push().code == 0
    [backup] = world.listing()
    b2 = other.dir.with_name("b2")
    b2.mkdir()
    with open(world.config, "a") as f:
        f.write(f'\n[targets.usb]\nurl = "{world.url}"\n\n[targets.b2]\nurl = "file://{b2}"\n')
    assert world.cli("init", "--to", "b2").code == 0
    assert main(["copy", "--help"]) == 0
    help_text = world.capsys.readouterr().out
    examples = [line.strip() for line in help_text.split("Examples:")[1].split("Options:")[0].splitlines()
                if line.strip().startswith("btrsync ")]
    assert len(examples) == 3
    for example in examples:
        argv = shlex.split(example.replace("file:///mnt/usb/backups", world.url)
                           .replace("data.20261120T030000Z-0fa0cfa8", str(backup["id"]))
                           .replace("/root/usb.key", str(world.key)))[1:]
        run = world.cli(*argv)
        assert run.code == 0, (example, run.err)
    run = world.cli("list", "--from", "b2", "--json")
    assert [b["id"] for b in run.json()] == [backup["id"]]


@pytest.mark.slow
@pytest.mark.remote
def test_a_copy_onto_a_locked_parent_extends_its_lock_to_the_policy_date(
        world: World, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    """A parent already in the locked bucket (copied when no policy was configured: the margin
    alone) is locked until the date the policy keeps it once a copy sends a child on it, as a
    push extends the backups it is sent on; else it could expire, and be deleted, under its child."""
    from datetime import UTC, datetime, timedelta

    from tests.integration.test_immutable import RETENTION, locked_world, locks

    moto, bucket = locked_world(world, request, tmp_path, "compliance")
    disk = tmp_path / "disk"
    disk.mkdir()
    assert world.cli("init", "--to", f"file://{disk}").code == 0
    for name in ("a", "b"):
        (world.subvol / name).write_bytes(os.urandom(100_000))
        world.snapshot()
        run = world.cli("push", str(world.subvol), "--snapshot-dir", str(world.snapdir), "--to", f"file://{disk}")
        assert run.code == 0, run.err
    first, second = sorted(world.cli("list", "--from", f"file://{disk}", "--json").json(),
                           key=lambda b: str(b["created"]))
    assert world.cli("copy", str(first["id"]), "--from", f"file://{disk}", "--to", "vault").code == 0
    margin = locks(moto, bucket, "repo")[f"backups/{first['id']}/manifest"][1]
    assert margin is not None and margin < datetime.now(UTC) + timedelta(days=30)
    world.config.write_text(world.config.read_text() + RETENTION)
    run = world.cli("copy", str(second["id"]), "--from", f"file://{disk}", "--to", "vault", "--json")
    assert run.code == 0, run.err
    assert [b["status"] for b in run.json()["backups"]] == ["present", "copied"]
    held = locks(moto, bucket, "repo")
    # the month's first backup: kept ~6 months by the policy, and its child is sent on it
    assert all(until is not None and until > datetime.now(UTC) + timedelta(days=120)
               for key, (_, until) in held.items() if str(first["id"]) in key)
