"""btrsync copy: backups moved between two repositories of different keys, on real btrfs, and
the careless operator (the same repository twice, a destination missing, damage in the source,
SIGKILL mid-copy, two copies of one backup at once)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from btrsync.catalog import layout
from btrsync.catalog.lease import Lease
from btrsync.crypto.keys import generate_key_file
from btrsync.targets.local import LocalTarget
from tests.integration.conftest import Run, World
from tests.support import tree

pytestmark = pytest.mark.btrfs


class Other:
    """A second repository, of its own key, in a directory of the test."""

    def __init__(self, world: World, tmp: Path) -> None:
        self.world = world
        self.dir = tmp / "offsite"
        self.dir.mkdir()
        self.key = tmp / "offsite.key"
        generate_key_file(self.key)
        self.url = f"file://{self.dir}"
        run = world.cli("init", "--to", self.url, key=self.key)
        assert run.code == 0, run.err

    def copy(self, *args: str) -> Run:
        """``copy ARGS --from <the world's target> --to <this>``: the source's key given apart."""
        return self.world.cli("copy", *args, "--from", self.world.url, "--to", self.url,
                              "--from-key-file", str(self.world.key), key=self.key)

    def listing(self) -> list[dict[str, object]]:
        run = self.world.cli("list", "--from", self.url, "--json", key=self.key)
        assert run.code == 0, run.err
        return run.json()  # type: ignore[no-any-return]

    def files(self) -> list[str]:
        return sorted(str(p.relative_to(self.dir)) for p in self.dir.rglob("*") if p.is_file())


@pytest.fixture
def other(world: World, tmp_path: Path) -> Other:
    return Other(world, tmp_path)


def _two_generations(world: World) -> None:
    tree.populate(world.subvol, 5)
    world.snapshot()
    assert world.push().code == 0
    tree.mutate(world.subvol, 5, 1)
    world.snapshot()
    assert world.push().code == 0


def _identical(listing: list[dict[str, object]]) -> list[dict[str, object]]:
    return sorted(listing, key=lambda b: str(b["id"]))


@pytest.mark.slow
def test_a_chain_copied_to_another_key_lists_and_restores_identically(world: World, other: Other) -> None:
    _two_generations(world)
    run = other.copy("data@latest", "--json")
    assert run.code == 0, run.err
    doc = run.json()
    full, incremental = world.listing()
    assert [(b["backup_id"], b["status"]) for b in doc["backups"]] == [(full["id"], "copied"),
                                                                       (incremental["id"], "copied")]
    summary = doc["summary"]
    assert summary["backups"] == 2 and summary["resumed_bytes"] == 0
    assert summary["moved_bytes"] == summary["stored_bytes"] == full["stored_bytes"] + incremental["stored_bytes"]
    assert summary["read_bytes"] == summary["stored_bytes"]
    # the same ids, dates, chain links, hosts and sizes: only the key and the repository differ
    assert _identical(other.listing()) == _identical(world.listing())
    # the file indexes came along: the chain's tree lists the same without reading backup data
    theirs = world.cli("ls", "latest", "--from", other.url, "--recursive", "--long", "--json", key=other.key)
    mine = world.cli("ls", "latest", "--from", world.url, "--recursive", "--long", "--json")
    assert theirs.code == 0 and mine.code == 0, theirs.err + mine.err
    assert theirs.json() == mine.json() and len(mine.json()) > 20
    # and verify, down to every chunk and the stream's own checks, finds the copy whole
    run = world.cli("verify", "--from", other.url, "--level", "stream", "--json", key=other.key)
    assert run.code == 0, run.err
    assert {b["result"] for b in run.json()["backups"]} == {"ok"} and len(run.json()["backups"]) == 2
    name = world.snapshots[-1].name
    run = world.cli("receive", "latest", "--from", other.url, "--into", str(world.restore), key=other.key)
    assert run.code == 0, run.err
    assert tree.compare(tree.describe(world.snapshots[-1]), tree.describe(world.restore / name),
                        ignore=tree.SEND_BEST_EFFORT) == []
    # again: nothing to move, both already there
    run = other.copy("--all", "--json")
    assert run.code == 0, run.err
    assert [b["status"] for b in run.json()["backups"]] == ["present", "present"]
    assert run.json()["summary"]["moved_bytes"] == 0


def test_dry_run_says_what_would_move_and_copies_nothing(world: World, other: Other) -> None:
    (world.subvol / "f").write_bytes(os.urandom(300_000))
    world.snapshot()
    assert world.push().code == 0
    before = other.files()
    run = other.copy("--all", "--dry-run", "--json")
    assert run.code == 0, run.err
    [backup] = world.listing()
    assert [b["status"] for b in run.json()["backups"]] == ["planned"]
    assert run.json()["summary"]["stored_bytes"] == backup["stored_bytes"]
    assert other.files() == before
    run = other.copy("--all", "--dry-run")
    assert "would copy 1 backup(s)" in run.err


def test_only_the_parent_already_there_is_not_copied_again(world: World, other: Other) -> None:
    (world.subvol / "f").write_bytes(os.urandom(200_000))
    world.snapshot()
    assert world.push().code == 0
    [first] = world.listing()
    assert other.copy(str(first["id"])).code == 0
    (world.subvol / "g").write_bytes(os.urandom(200_000))
    world.snapshot()
    assert world.push().code == 0
    run = other.copy("data@latest", "--json")
    assert run.code == 0, run.err
    assert [b["status"] for b in run.json()["backups"]] == ["present", "copied"]


def test_copy_into_the_same_repository_is_refused(world: World) -> None:
    (world.subvol / "f").write_bytes(b"x")
    world.snapshot()
    assert world.push().code == 0
    before = world.data_files()
    run = world.cli("copy", "--all", "--from", world.url, "--to", world.url)
    assert run.code == 2
    assert "same repository" in run.err
    assert world.data_files() == before


def test_a_destination_missing_or_not_initialised_is_exit_10(world: World, tmp_path: Path) -> None:
    (world.subvol / "f").write_bytes(b"x")
    world.snapshot()
    assert world.push().code == 0
    run = world.cli("copy", "--all", "--from", world.url, "--to", f"file://{tmp_path}/unmounted")
    assert run.code == 10, run.err
    empty = tmp_path / "empty"
    empty.mkdir()
    run = world.cli("copy", "--all", "--from", world.url, "--to", f"file://{empty}")
    assert run.code == 10 and "btrsync init" in run.err
    assert list(empty.iterdir()) == []


def test_neither_backups_nor_all_is_a_usage_error(world: World, other: Other) -> None:
    assert other.copy().code == 2
    assert other.copy("latest", "--all").code == 2


def test_a_wrong_source_key_is_exit_12_before_anything_is_written(world: World, other: Other) -> None:
    (world.subvol / "f").write_bytes(b"x")
    world.snapshot()
    assert world.push().code == 0
    before = other.files()
    run = world.cli("copy", "--all", "--from", world.url, "--to", other.url, "--from-key-file", str(other.key),
                    key=other.key)
    assert run.code == 12, run.err
    assert other.files() == before


def test_a_flipped_byte_in_the_source_fails_closed_naming_the_backup(world: World, other: Other) -> None:
    (world.subvol / "f").write_bytes(os.urandom(600_000))
    world.snapshot()
    assert world.push().code == 0
    [backup] = world.listing()
    segment = world.target_dir / layout.segment_key(str(backup["id"]), 1)
    data = bytearray(segment.read_bytes())
    data[len(data) // 2] ^= 0x01
    segment.write_bytes(bytes(data))
    run = other.copy("--all")
    assert run.code == 4, run.err
    assert str(backup["id"]) in run.err
    assert other.listing() == []
    assert not any(f.startswith("backups/") for f in other.files())
    assert not any(f.startswith("locks/") for f in other.files())


def test_a_second_copy_of_the_same_backup_waits_for_the_lease(world: World, other: Other) -> None:
    (world.subvol / "f").write_bytes(os.urandom(100_000))
    world.snapshot()
    assert world.push().code == 0
    [backup] = world.listing()
    with Lease(LocalTarget(other.dir), str(backup["id"])):  # another copy (or host) is writing it
        run = other.copy("--all")
    assert run.code == 11, run.err
    assert "being uploaded by another btrsync" in run.err
    assert other.listing() == []
    assert other.copy("--all").code == 0


@pytest.mark.slow
def test_a_copy_whose_lease_was_taken_over_commits_nothing(world: World, other: Other,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """As a push: another holder's lease found right before the commit (taken while this copy's
    refreshes failed) means both wrote the backup's keys; nothing is committed, their lease stays."""
    import json
    from datetime import UTC, datetime

    from btrsync.catalog.repository import Repository

    (world.subvol / "f").write_bytes(os.urandom(100_000))
    world.snapshot()
    assert world.push().code == 0
    now = datetime.now(UTC).isoformat()
    original = Repository.committed_and_left

    def taken_over_meanwhile(self, backup_id):  # noqa: ANN001, ANN202
        doc = {"backup_id": backup_id, "host": "elsewhere", "pid": 1, "boot_id": "b", "token": "theirs",
               "started": now, "refreshed": now}
        self.target.put_bytes(layout.lease_key(backup_id), json.dumps(doc).encode())
        return original(self, backup_id)

    monkeypatch.setattr(Repository, "committed_and_left", taken_over_meanwhile)
    run = other.copy("--all")
    assert run.code != 0 and "was taken over by another push or copy of it" in run.err, run.err
    assert other.listing() == []
    assert [f for f in other.files() if f.startswith("locks/")] != []


def test_sigkill_mid_copy_then_the_next_copy_resumes(world: World, other: Other) -> None:
    with open(world.subvol / "big.bin", "wb") as f:
        f.write(os.urandom(12 << 20))
    world.snapshot()
    assert world.push().code == 0
    argv = [sys.executable, "-m", "btrsync", "--config", str(world.config), "--state-dir", str(world.state),
            "--key-file", str(other.key), "copy", "--all", "--from", world.url, "--to", other.url,
            "--from-key-file", str(world.key), "--bwlimit", "2M"]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and sum(f.endswith(".idx") for f in other.files()) < 2:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert sum(f.endswith(".idx") for f in other.files()) >= 2, "the copy was killed too late"
    assert other.listing() == []
    run = other.copy("--all", "--json")
    assert run.code == 0, run.err
    [backup] = run.json()["backups"]
    assert backup["resumed_bytes"] >= 2 * 3 * 65536  # two durable segments of three 64k chunks
    assert backup["moved_bytes"] + backup["resumed_bytes"] == backup["stored_bytes"]
    assert backup["read_bytes"] == backup["moved_bytes"]  # the kept chunks were not read again
    assert not any(".tmp-" in f or f.startswith("locks/") for f in other.files())
    name = world.snapshots[-1].name
    run = world.cli("receive", "latest", "--from", other.url, "--into", str(world.restore), key=other.key)
    assert run.code == 0, run.err
    assert (world.restore / name / "big.bin").read_bytes() == (world.snapdir / name / "big.bin").read_bytes()


@pytest.mark.slow
def test_sigterm_mid_copy_cleans_up_exits_143_and_the_next_copy_resumes(world: World, other: Other) -> None:
    from tests.integration.test_signals import Child

    with open(world.subvol / "big.bin", "wb") as f:
        f.write(os.urandom(8 << 20))
    world.snapshot()
    assert world.push().code == 0
    child = Child(world, "copy", "--all", "--from", world.url, "--to", other.url, "--from-key-file",
                  str(world.key), "--bwlimit", "2M", "--key-file", str(other.key))
    # a segment in flight after one durable segment: its temporary file exists
    child.freeze_when(lambda: sum(f.endswith(".idx") for f in other.files()) >= 1
                      and any(".tmp-" in f for f in other.files()))
    out = child.signal(signal.SIGTERM)
    assert out.code == 143, out.err
    assert "terminated" in out.err
    left = other.files()
    assert not any(".tmp-" in f or f.startswith(("locks/", "backups/")) for f in left), left
    run = other.copy("--all", "--json")
    assert run.code == 0, run.err
    [backup] = run.json()["backups"]
    assert backup["resumed_bytes"] > 0 and backup["moved_bytes"] + backup["resumed_bytes"] == backup["stored_bytes"]


@pytest.mark.slow
def test_copy_on_a_terminal_shows_each_backup_with_an_exact_total(world: World, other: Other) -> None:
    from tests.integration.test_progress import _argv, _big_snapshot, _on_pty, _realistic_chunks, \
        _table_starts_on_its_own_line

    _realistic_chunks(world)
    snap = _big_snapshot(world, 12)
    assert world.push().code == 0
    screen = _on_pty([*_argv(world, "copy", "latest", "--from", world.url, "--to", other.url, "--from-key-file",
                             str(world.key), "--bwlimit", "6M"), "--key-file", str(other.key)])
    assert screen.code == 0, screen.text
    copying = [f for _, f in screen.frames if f.startswith("copying")]
    assert copying and all(snap.name in f for f in copying), screen.text
    # the manifest knows the stream's size: no '~' on the total or the share
    assert all(re.search(r"  \d+%  [\d.]+ \w+ of 1[2-3]\.\d MiB", f) for f in copying), copying
    _table_starts_on_its_own_line(screen, "BACKUP")
