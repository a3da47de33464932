"""Push and receive on real btrfs: full, incremental chains, older links, partial chains present."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.integration.conftest import World
from tests.support import tree

pytestmark = pytest.mark.btrfs


def _generations(world: World, count: int, seed: int = 7) -> None:
    tree.populate(world.subvol, seed)
    world.snapshot()
    for g in range(1, count):
        tree.mutate(world.subvol, seed, g)
        world.snapshot()


def _assert_same(original: Path, restored: Path, *, mutated: bool = True) -> None:
    """Equal as far as btrfs send guarantees: reflinks only where the tree was never mutated."""
    ignore = tree.SEND_BEST_EFFORT if mutated else ()
    assert tree.compare(tree.describe(original), tree.describe(restored), ignore=ignore) == []


def test_full_round_trip_preserves_everything(world: World) -> None:
    """Bytes, modes, owners, xattrs, hardlinks, symlinks, sparse files and reflinks survive."""
    _generations(world, 1)
    run = world.push()
    assert run.code == 0, run.err
    [backup] = world.listing()
    assert backup["depth"] == 0 and backup["parent"] is None and backup["kind"] == "full"
    assert backup["stream_bytes"] > 8 << 20 and backup["chunks"] > 100  # many 64k chunks, segments
    run = world.receive("latest")
    assert run.code == 0, run.err
    _assert_same(world.snapshots[0], world.restore / world.snapshots[0].name, mutated=False)


@pytest.mark.slow
def test_incremental_chain_of_generations(world: World) -> None:
    """Four generations pushed one by one form one chain; every link restores exactly."""
    tree.populate(world.subvol, 11)
    for g in range(4):
        if g:
            tree.mutate(world.subvol, 11, g)
        world.snapshot()
        assert world.push().code == 0
    backups = world.listing()
    assert [b["depth"] for b in backups] == [0, 1, 2, 3]
    assert [b["parent"] for b in backups] == [None] + [b["id"] for b in backups[:-1]]
    assert all(b["stream_bytes"] < backups[0]["stream_bytes"] / 2 for b in backups[1:])
    run = world.receive("data@latest")
    assert run.code == 0, run.err
    for snap in world.snapshots:
        _assert_same(snap, world.restore / snap.name)


def test_several_snapshots_in_one_push_chain_oldest_first(world: World) -> None:
    _generations(world, 3)
    run = world.push("--json")
    assert run.code == 0, run.err
    doc = run.json()
    assert [p["kind"] for p in doc["plan"]] == ["full", "incremental", "incremental"]
    assert [b["status"] for b in doc["backups"]] == ["ok"] * 3
    assert all(b["uploaded_bytes"] > 0 and b["resumed_bytes"] == 0 for b in doc["backups"])


@pytest.mark.slow
def test_receive_of_an_older_link_replays_only_its_prefix(world: World) -> None:
    _generations(world, 4)
    assert world.push().code == 0
    second = world.listing()[1]
    run = world.cli("receive", second["snapshot"], "--from", world.url, "--into", str(world.restore), "--json")
    assert run.code == 0, run.err
    links = run.json()["links"]
    assert [lk["action"] for lk in links] == ["received", "received"]
    assert sorted(p.name for p in world.restore.iterdir()) == [s.name for s in world.snapshots[:2]]
    _assert_same(world.snapshots[1], world.restore / world.snapshots[1].name)


@pytest.mark.slow
def test_receive_skips_links_already_present(world: World) -> None:
    _generations(world, 3)
    assert world.push().code == 0
    first = world.listing()[0]
    assert world.receive(first["id"]).code == 0
    run = world.cli("receive", "latest", "--from", world.url, "--into", str(world.restore), "--json")
    assert run.code == 0, run.err
    assert [lk["action"] for lk in run.json()["links"]] == ["skipped", "received", "received"]
    _assert_same(world.snapshots[2], world.restore / world.snapshots[2].name)
    again = world.cli("receive", "latest", "--from", world.url, "--into", str(world.restore), "--json")
    assert again.code == 0 and {lk["action"] for lk in again.json()["links"]} == {"skipped"}


@pytest.mark.slow
def test_max_chain_starts_a_new_full(world: World) -> None:
    _generations(world, 4)
    assert world.push("--max-chain", "1").code == 0
    assert [b["depth"] for b in world.listing()] == [0, 1, 0, 1]
    assert world.receive("latest").code == 0
    assert sorted(p.name for p in world.restore.iterdir()) == [s.name for s in world.snapshots[2:]]


def test_dry_run_plans_without_writing(world: World) -> None:
    _generations(world, 2)
    run = world.push("--dry-run")
    assert run.code == 0 and "full" in run.out and "incremental on" in run.out
    assert world.data_files() == ["btrsync-repo.json"]  # what init wrote, nothing more
    assert world.push().code == 0
    run = world.push("--dry-run", "--json")
    assert run.json()["plan"] == []


def test_new_snapshot_goes_on_the_newest_common_parent(world: World) -> None:
    _generations(world, 2)
    assert world.push().code == 0
    tree.mutate(world.subvol, 7, 5)
    world.snapshot()
    plan = world.push("--dry-run", "--json").json()["plan"]
    assert plan == [{"snapshot": world.snapshots[2].name, "kind": "incremental",
                     "parent": world.snapshots[1].name, "parent_id": world.listing()[1]["id"],
                     "depth": 2, "reason": plan[0]["reason"], "tier": None, "kept_until": None,
                     "estimated_bytes": None}]
    # no retention policy: the tree cannot apply, and the plan says so
    assert plan[0]["reason"].endswith("no retention policy for this target (it keeps everything): a linear chain")


def test_compressed_extents_travel_with_protocol_2(btrfs_factory, world: World) -> None:
    """On a compress=zstd source, protocol 2 carries compressed extents and restores exactly."""
    from btrsync.btrfs.send import best_send_options

    assert best_send_options().proto == 2  # kernel >= 6.0 and btrfs-progs >= 5.19 in CI
    zsrc = btrfs_factory("1G", label="zsrc", mount_options=["compress-force=zstd"])
    from tests.support.loopfs import create_subvolume

    create_subvolume(zsrc / "data")
    (zsrc / ".snapshots").mkdir()
    world.src = zsrc
    (world.subvol / "text.txt").write_bytes(b"compressible line of text\n" * 400_000)  # 10.4 MB
    world.snapshot()
    tree.populate(world.subvol, 21)
    world.snapshot()
    run = world.push("--json")
    assert run.code == 0, run.err
    first = world.listing()[0]
    assert first["stream_bytes"] < 2 << 20  # the extents travelled compressed, not 10 MB of text
    assert world.receive("latest").code == 0
    for snap in world.snapshots:
        _assert_same(snap, world.restore / snap.name)
