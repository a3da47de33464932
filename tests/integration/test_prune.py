"""Chain-safe pruning on real btrfs: target backups, local snapshots, crashes, audit log."""

from __future__ import annotations

import subprocess
import sys
from datetime import timedelta

import pytest

from btrsync.audit import read_audit
from btrsync.catalog.lease import Lease
from btrsync.targets.local import LocalTarget
from tests.integration.conftest import T0, World
from tests.support import tree

pytestmark = pytest.mark.btrfs


def _history(world: World, count: int, *extra: str) -> list[dict]:
    tree.populate(world.subvol, 41)
    for g in range(count):
        if g:
            tree.mutate(world.subvol, 41, g)
        world.snapshot()
    assert world.push(*extra).code == 0
    return world.listing()


def _decisions(run) -> dict[str, dict]:
    return {d["id"]: d for d in run.json()}


@pytest.mark.slow
def test_prune_keeps_parents_of_kept_backups_and_explains_every_decision(world: World) -> None:
    backups = _history(world, 6, "--max-chain", "2")  # chains: 0-1-2, 3-4-5
    assert [b["depth"] for b in backups] == [0, 1, 2, 0, 1, 2]
    run = world.cli("prune", "--from", world.url, "--keep-last", "1", "--dry-run", "--json",
                    "--now", "2026-11-20T09:00:00Z")
    assert run.code == 0, run.err
    d = _decisions(run)
    ids = [b["id"] for b in backups]
    assert [d[i]["action"] for i in ids] == ["delete"] * 3 + ["keep"] * 3
    assert any(r.startswith("parent of kept") for r in d[ids[3]]["reasons"])
    assert "newest" in d[ids[5]]["reasons"]
    assert all(x["reasons"] for x in d.values() if x["action"] == "keep")
    assert set(d[ids[0]]) >= {"id", "snapshot", "action", "reasons"}
    assert len(world.listing()) == 6  # dry run
    run = world.cli("prune", "--from", world.url, "--keep-last", "1")
    assert run.code == 0 and "deleted 3 of 6" in run.err
    assert [b["id"] for b in world.listing()] == ids[3:]
    assert world.receive(ids[3]).code == 0 and world.receive("latest").code == 0
    audit = read_audit(world.state)
    deleted = [e for e in audit if e["event"] == "delete-backup"]
    assert sorted(e["backup_id"] for e in deleted if e["phase"] == "intent") == sorted(ids[:3])
    assert sorted(e["backup_id"] for e in deleted if e["phase"] == "done") == sorted(ids[:3])
    assert all(e["freed_bytes"] > 0 and e["policy"] and e["target"] for e in deleted)
    for bid in ids[:3]:  # intent, each object (intent, done), then the outcome
        mine = [e for e in audit if e.get("backup_id") == bid or f"/{bid}/" in e.get("key", "")]
        assert mine[0]["phase"] == "intent" and mine[-1]["phase"] == "done" and len(mine) >= 4
    assert [e["event"] for e in audit][-1] == "prune"
    rerun = world.cli("prune", "--from", world.url, "--keep-last", "1")
    assert rerun.code == 0 and "deleted 0 of 3" in rerun.err


@pytest.mark.slow
def test_prune_uses_the_profile_of_the_subvolume(world: World) -> None:
    _history(world, 4, "--max-chain", "0")
    world.config.write_text(world.config.read_text() + """
[retention]
default_profile = "scratch"
[retention.profiles.scratch]
backups = { keep_last = 2 }
""")
    run = world.cli("prune", "--from", world.url, "--json")
    assert run.code == 0, run.err
    assert [x["action"] for x in run.json()] == ["delete", "delete", "keep", "keep"]
    assert len(world.listing()) == 2


def test_no_policy_keeps_everything(world: World) -> None:
    _history(world, 2)
    run = world.cli("prune", "--from", world.url, "--json")
    assert run.code == 0 and {x["action"] for x in run.json()} == {"keep"}
    assert all(x["reasons"] == ["no policy"] for x in run.json())


@pytest.mark.slow
def test_parent_of_an_upload_in_progress_is_kept(world: World) -> None:
    backups = _history(world, 3, "--max-chain", "0")
    target = LocalTarget(world.target_dir)
    with Lease(target, "data.in-flight-1", parent_id=backups[0]["id"]):
        run = world.cli("prune", "--from", world.url, "--keep-last", "1", "--json")
    d = _decisions(run)
    assert d[backups[0]["id"]]["action"] == "keep"
    assert d[backups[0]["id"]]["reasons"] == ["parent of an upload in progress"]
    assert d[backups[1]["id"]]["action"] == "delete"


@pytest.mark.slow
def test_crash_between_manifest_and_data_leaves_only_orphans(world: World, monkeypatch) -> None:
    backups = _history(world, 3, "--max-chain", "0")
    original = LocalTarget.delete
    calls = {"n": 0}

    def crashing_delete(self, key: str) -> None:
        if key.startswith("data/"):
            calls["n"] += 1
            raise KeyboardInterrupt  # the process dies right after the first manifest went
        original(self, key)

    monkeypatch.setattr(LocalTarget, "delete", crashing_delete)
    run = world.cli("prune", "--from", world.url, "--keep-last", "1")
    assert run.code == 130 and calls["n"] == 1
    monkeypatch.undo()
    survivors = world.listing()
    assert len(survivors) == 2  # one manifest went; its data is an orphan, nothing dangles
    for b in survivors:
        assert world.cli("receive", b["id"], "--from", world.url, "--into", str(world.restore)).code == 0
    clean = world.cli("clean", "--from", world.url, "--json")
    assert {i["kind"] for i in clean.json()["items"]} == {"orphaned data"}
    assert all(f.split("/")[1] in {b["id"] for b in survivors} for f in world.data_files() if f.startswith("data/"))
    assert world.cli("prune", "--from", world.url, "--keep-last", "1").code == 0
    assert [b["id"] for b in world.listing()] == [backups[-1]["id"]]


def test_snapshot_prune_protects_what_targets_still_need(world: World) -> None:
    for g in range(5):
        (world.subvol / f"f{g}").write_text(str(g))
        world.snapshot()
        if g == 2:
            assert world.push().code == 0  # the target holds snapshots 0..2; 3 and 4 not yet
    names = [s.name for s in world.snapshots]
    args = ["snapshot", "prune", str(world.subvol), "--snapshot-dir", str(world.snapdir), "--keep-last", "1",
            "--json"]
    run = world.cli(*args, "--dry-run")
    assert run.code == 0, run.err
    d = _decisions(run)
    assert [d[n]["action"] for n in names] == ["delete", "delete", "keep", "keep", "keep"]
    assert d[names[2]]["reasons"][0].startswith("newest common with file://")
    assert d[names[3]]["reasons"][0].startswith("not yet on file://")
    run = world.cli(*args, "--protect-for", world.url)
    assert run.code == 0
    assert sorted(p.name for p in world.snapdir.iterdir()) == names[2:]
    assert world.push("--json").json()["plan"][0]["parent"] == names[2]  # the chain continues
    audit = read_audit(world.state)
    assert sorted(e["snapshot"] for e in audit if e["event"] == "delete-snapshot" and e["phase"] == "done") \
        == names[:2]


def test_snapshot_prune_without_targets_follows_the_policy(world: World) -> None:
    for g in range(4):
        (world.subvol / f"f{g}").write_text(str(g))
        world.snapshot()
    run = world.cli("snapshot", "prune", str(world.subvol), "--snapshot-dir", str(world.snapdir),
                    "--keep-last", "2")
    assert run.code == 0, run.err
    assert sorted(p.name for p in world.snapdir.iterdir()) == [s.name for s in world.snapshots[2:]]


@pytest.mark.slow
def test_two_hosts_backing_up_a_subvolume_of_one_name_keep_a_history_each(world: World) -> None:
    """Hosts A (01:00) and B (03:00) each back up a subvolume named 'data' to one repository.
    Retention pooled their backups: keep_daily 3 kept the newest backup of each day, always B's,
    and deleted every backup of A.  Each host's backups are now a history of their own."""
    (world.subvol / "f").write_text("0")
    as_b = ["unshare", "--uts", "sh", "-c", 'hostname btrsync-test-host-b && exec "$@"', "sh",
            sys.executable, "-m", "btrsync", "--config", str(world.config), "--state-dir", str(world.state / "b"),
            "--key-file", str(world.key)]
    push = ["push", str(world.subvol), "--snapshot-dir", str(world.snapdir), "--to", world.url, "--max-chain", "0"]
    for day in range(4):
        for host, hour in (("a", 1), ("b", 3)):
            (world.subvol / "f").write_text(f"{day} {host}")
            when = T0 + timedelta(days=day, hours=hour)
            made = world.cli("snapshot", "create", str(world.subvol), "--snapshot-dir", str(world.snapdir),
                             "--timestamp", when.isoformat())
            assert made.code == 0, made.err
            if host == "a":
                assert world.cli(*push).code == 0
            else:
                done = subprocess.run([*as_b, *push], capture_output=True, text=True)
                assert done.returncode == 0, done.stderr
    hosts = {b["id"]: b["host"] for b in world.listing()}
    assert sorted(set(hosts.values()))[0] == "btrsync-test-host-b" and len(set(hosts.values())) == 2, hosts

    run = world.cli("prune", "--from", world.url, "--keep-daily", "2", "--dry-run", "--json",
                    "--now", (T0 + timedelta(days=3, hours=12)).isoformat())
    assert run.code == 0, run.err
    kept = [hosts[d["id"]] for d in run.json() if d["action"] == "keep"]
    assert sorted(kept) == sorted([*set(hosts.values())] * 2), run.out  # the newest two days of each host


def test_snapshot_prune_with_unreadable_target_state_deletes_nothing(world: World) -> None:
    """What this host knows of a target (which snapshots it holds) was unreadable (a bad sector,
    a truncated file): it was skipped as if the target did not exist, and prune deleted the
    newest common snapshot and those not yet sent there; the next push had to be a full."""
    for g in range(4):
        (world.subvol / f"f{g}").write_text(str(g))
        world.snapshot()
        if g == 1:
            assert world.push().code == 0  # the target holds 0..1 and needs 1 as the next parent
    [entry] = list((world.state / "targets").glob("*.json"))
    entry.write_text('{"url": "file:///trunc')
    before = sorted(p.name for p in world.snapdir.iterdir())
    run = world.cli("snapshot", "prune", str(world.subvol), "--snapshot-dir", str(world.snapdir), "--keep-last", "1")
    assert run.code == 1 and str(entry) in run.err and "none is pruned" in run.err, run.err
    assert sorted(p.name for p in world.snapdir.iterdir()) == before
    run = world.cli("snapshot", "delete", str(world.snapshots[1]))
    assert run.code == 1 and str(entry) in run.err, run.err
    assert world.snapshots[1].exists()


def test_another_hosts_newer_backup_never_holds_this_hosts_snapshots_back(world: World) -> None:
    """Hosts A and B back up a subvolume named 'data' each to one repository.  B's backup made at
    10:00 was "the newest backup of data on the target" for A too: A's snapshot of 02:00 was not
    sent ("older than the newest backup"), and with the runner's new check every run of A failed."""
    from tests.support.loopfs import create_subvolume

    other = world.src / "host-b"
    other.mkdir()
    create_subvolume(other / "data")
    (other / ".snapshots").mkdir()
    (other / "data" / "f").write_text("b")
    as_b = ["unshare", "--uts", "sh", "-c", 'hostname btrsync-test-host-b && exec "$@"', "sh",
            sys.executable, "-m", "btrsync", "--config", str(world.config), "--state-dir", str(world.state / "b"),
            "--key-file", str(world.key)]
    made = world.cli("snapshot", "create", str(other / "data"), "--snapshot-dir", str(other / ".snapshots"),
                     "--timestamp", (T0 + timedelta(hours=10)).isoformat())
    assert made.code == 0, made.err
    done = subprocess.run([*as_b, "push", str(other / "data"), "--snapshot-dir", str(other / ".snapshots"),
                           "--to", world.url], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    (world.subvol / "f").write_text("a")
    made = world.cli("snapshot", "create", str(world.subvol), "--snapshot-dir", str(world.snapdir),
                     "--timestamp", (T0 + timedelta(hours=2)).isoformat())
    assert made.code == 0, made.err
    assert world.push().code == 0
    hosts = sorted(b["host"] for b in world.listing())
    assert len(hosts) == 2 and "btrsync-test-host-b" in hosts, hosts
