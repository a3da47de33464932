"""Bad input and broken parts: a clear message, the documented exit code, nothing lost or
half-written."""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

import pytest

from btrsync.btrfs.send import SendProcess
from btrsync.catalog import layout
from tests.integration.conftest import World
from tests.support import tree
from tests.support.loopfs import snapshot

pytestmark = pytest.mark.btrfs


def _one_backup(world: World, seed: int = 3) -> dict:
    tree.populate(world.subvol, seed)
    world.snapshot()
    assert world.push().code == 0
    return world.listing()[-1]


def _flip_a_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x40
    path.write_bytes(bytes(data))


def _segments(world: World, backup_id: str) -> list[Path]:
    return sorted(p for p in (world.target_dir / layout.data_prefix(backup_id)).iterdir()
                  if p.suffix != ".idx" and not p.name.startswith("files-"))


def test_wrong_key_exits_12_and_writes_nothing(world: World, tmp_path: Path) -> None:
    _one_backup(world)
    other = tmp_path / "other.key"
    assert world.cli("key", "generate", str(other)).code == 0
    before = world.data_files()
    for args in (["list", "--from", world.url],
                 ["receive", "latest", "--from", world.url, "--into", str(world.restore)],
                 ["push", str(world.subvol), "--snapshot-dir", str(world.snapdir), "--to", world.url]):
        run = world.cli(*args, key=other)
        assert run.code == 12, run.err
        assert "wrong key" in run.err and "Traceback" not in run.err
    assert list(world.restore.iterdir()) == []
    assert world.data_files() == before


def test_flipped_byte_in_a_chunk_fails_the_restore_and_removes_the_partial(world: World) -> None:
    backup = _one_backup(world)
    _flip_a_byte(_segments(world, backup["id"])[1])
    run = world.receive("latest")
    assert run.code == 4, run.err
    assert f"of backup {backup['id']}" in run.err and "chunk " in run.err
    assert list(world.restore.iterdir()) == []


def test_a_flipped_byte_in_a_small_link_read_ahead_fails_at_its_turn(world: World) -> None:
    """A day's small incremental is read whole with the chain's first indexes (before the first
    link); its chunks are still authenticated at its turn: the full is received, the day is not."""
    full = _one_backup(world)
    (world.subvol / "today.txt").write_text("one more day\n")
    world.snapshot()
    assert world.push().code == 0
    day = world.listing()[-1]
    [segment] = _segments(world, day["id"])
    _flip_a_byte(segment)
    run = world.receive("latest")
    assert run.code == 4, run.err
    assert f"of backup {day['id']}" in run.err and "chunk " in run.err
    assert [p.name for p in world.restore.iterdir()] == [full["snapshot"]]


def _daily_chain(world: World, days: int) -> list[str]:
    _one_backup(world)
    for day in range(days):
        (world.subvol / f"day-{day}.txt").write_text(f"day {day}\n" * 50)
        world.snapshot()
        assert world.push().code == 0
    return [b["id"] for b in world.listing()]


def _reads(monkeypatch: pytest.MonkeyPatch) -> Counter[tuple[str, str]]:
    from btrsync.targets.local import LocalTarget

    calls: Counter[tuple[str, str]] = Counter()
    get = LocalTarget.get

    def counted(self, key, *, offset=0, length=None):  # noqa: ANN001, ANN202
        calls[(key, "whole" if length is None else "range")] += 1
        return get(self, key, offset=offset, length=length)

    monkeypatch.setattr(LocalTarget, "get", counted)
    return calls


def test_a_failed_receive_leaves_nothing_read_ahead_for_a_later_reader(world: World) -> None:
    """What a chain's receive read ahead goes with it, also when a link fails: a later reader of
    the same repository (a drill after a failed one, a verify) reads the store, not a stale copy."""
    from btrsync.catalog.repository import Repository
    from btrsync.crypto.keys import load_key_file
    from btrsync.errors import DamageError
    from btrsync.ops.receive import receive
    from btrsync.ops.verify import Options, verify
    from btrsync.targets.local import LocalTarget

    def flip(link: str) -> None:
        [segment] = _segments(world, link)
        _flip_a_byte(segment)

    ids = _daily_chain(world, 3)
    flip(ids[1])
    repo = Repository.open(LocalTarget(world.target_dir), load_key_file(world.key))
    with pytest.raises(DamageError):
        receive(repo, "latest", world.restore)  # link 1 fails; links 2 and 3 were read ahead
    assert repo.read_ahead == {}
    flip(ids[3])  # damaged after the receive had read it ahead
    assert not verify(repo, [ids[3]], Options(level="data", workers=2)).ok


def test_a_restore_reads_each_small_link_once(world: World, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A whole-tree restore reads an incremental twice (its parent's clone sources, then the
    link): a small link read ahead serves both, its index and its segment read once in all."""
    from btrsync.catalog.repository import Repository
    from btrsync.crypto.keys import load_key_file
    from btrsync.ops.restore import restore
    from btrsync.targets.local import LocalTarget

    ids = _daily_chain(world, 2)
    repo = Repository.open(LocalTarget(world.target_dir), load_key_file(world.key))
    calls = _reads(monkeypatch)
    (tmp_path / "out").mkdir()
    restore(repo, "latest", tmp_path / "out")
    for link in ids[1:]:
        assert calls[(layout.segment_key(link, 0), "whole")] == 1, calls
        assert calls[(layout.segment_key(link, 0), "range")] == 0, calls
        assert calls[(layout.index_key(link, 0), "whole")] == 1, calls
    assert repo.read_ahead == {}


def test_missing_segment_fails_the_restore_naming_backup_and_chunk(world: World) -> None:
    backup = _one_backup(world)
    _segments(world, backup["id"])[-1].unlink()
    run = world.receive(backup["id"])
    assert run.code == 4, run.err
    assert "is missing" in run.err and backup["id"] in run.err
    assert list(world.restore.iterdir()) == []


def test_truncated_manifest_is_reported_as_damage(world: World) -> None:
    backup = _one_backup(world)
    manifest = world.target_dir / layout.manifest_key(backup["id"])
    manifest.write_bytes(manifest.read_bytes()[:100])
    run = world.cli("list", "--from", world.url)
    assert run.code == 0 and "DAMAGED" in run.out and "Traceback" not in run.err
    assert f"manifest {layout.manifest_key(backup['id'])}" in run.err and "move it aside" in run.err
    run = world.cli("list", "--from", world.url, "--check")
    assert run.code == 4 and "1 damaged manifest" in run.err


def test_btrfs_send_dying_mid_stream_commits_nothing(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    """The real btrfs send is killed after its first chunk: the push fails, nothing is listed."""
    tree.populate(world.subvol, 5)
    world.snapshot()
    original = SendProcess.chunks

    def dying(self, size):
        for i, chunk in enumerate(original(self, size)):
            yield chunk
            if i == 0:
                self._proc.kill()

    monkeypatch.setattr(SendProcess, "chunks", dying)
    run = world.push()
    assert run.code == 1
    assert "btrfs send of" in run.err and "nothing was committed" in run.err
    monkeypatch.undo()
    assert world.listing() == []
    leftovers = [f for f in world.data_files() if f.startswith("data/")]
    assert all(f.endswith(".idx") or f + ".idx" in leftovers for f in leftovers)  # whole segments only
    assert world.push().code == 0 and len(world.listing()) == 1


@pytest.mark.slow
def test_full_target_fails_cleanly_and_keeps_earlier_backups(world: World, btrfs_factory) -> None:
    small = btrfs_factory("128M", label="small", mkfs_options=["--mixed"])
    world.target_dir = small / "target"
    world.target_dir.mkdir()
    world.init()
    (world.subvol / "small.txt").write_text("first backup\n")
    world.snapshot()
    assert world.push().code == 0
    with open(world.subvol / "big.bin", "wb") as f:  # incompressible, larger than the target
        for _ in range(20):
            f.write(os.urandom(8 << 20))
    world.snapshot()
    run = world.push()
    assert run.code == 1, run.err
    assert run.err.count("target full") == 1, run.err  # said once, not by log, table and error
    assert [b["snapshot"] for b in world.listing()] == [world.snapshots[0].name]
    assert not [f for f in world.data_files() if ".tmp-" in f]
    assert world.receive("latest").code == 0
    assert (world.restore / world.snapshots[0].name / "small.txt").read_text() == "first backup\n"


def test_writable_snapshot_is_skipped_never_a_parent(world: World) -> None:
    (world.subvol / "f").write_text("x")
    world.snapshot()
    snapshot(world.subvol, world.snapdir / "data.20261120T040000Z", readonly=False)
    run = world.push("--json")
    assert run.code == 0
    doc = run.json()
    assert [s["snapshot"] for s in doc["skipped"]] == ["data.20261120T040000Z"]
    assert [p["snapshot"] for p in doc["plan"]] == [world.snapshots[0].name]


def test_receive_into_a_non_btrfs_directory_is_a_usage_error(world: World, tmp_path: Path) -> None:
    _one_backup(world)
    run = world.cli("receive", "latest", "--from", world.url, "--into", str(tmp_path))
    assert run.code == 2 and "not on a btrfs filesystem" in run.err


def test_unknown_backup_is_a_usage_error(world: World) -> None:
    _one_backup(world)
    run = world.receive("nope")
    assert run.code == 2 and "no backup 'nope'" in run.err


def test_push_of_a_directory_that_is_not_a_subvolume_says_so(world: World) -> None:
    (world.src / "plain").mkdir()
    run = world.cli("snapshot", "create", str(world.src / "plain"), "--snapshot-dir", str(world.snapdir))
    assert run.code == 1 and "not a btrfs subvolume" in run.err


def test_push_to_a_missing_target_directory_exits_10(world: World) -> None:
    (world.subvol / "f").write_text("x")
    world.snapshot()
    world.target_dir = world.target_dir / "not-mounted"
    run = world.push()
    assert run.code == 10 and "is the disk mounted?" in run.err
    assert not world.target_dir.exists()


def test_snapshot_dir_on_another_filesystem_says_what_to_do(world: World, tmp_path: Path) -> None:
    other = world.restore / "snaps"
    other.mkdir()
    run = world.cli("snapshot", "create", str(world.subvol), "--snapshot-dir", str(other))
    assert run.code == 1
    assert "same btrfs filesystem" in run.err and str(world.subvol) in run.err


def test_a_failed_btrfs_send_says_what_btrfs_said(world: World) -> None:
    """btrfs send that refuses or fails leaves a stream without END; the push reports btrfs's own
    ERROR line (the diagnosis), not a stream that "ended early"."""
    tree.populate(world.subvol, 6)
    snap = world.snapshot()
    original = SendProcess.argv

    def missing_parent(self):  # the parent vanished between the plan and the send
        return [*original(self)[:-1], "-p", str(world.src / "no-such-parent"), str(self.snapshot)]

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(SendProcess, "argv", missing_parent)
        run = world.push()
    assert run.code == 1, run.err
    assert "btrfs send of" in run.err and "ERROR" in run.err and "ended early" not in run.err, run.err
    assert world.listing() == [] and snap.exists()
