"""btrsync copy to and from the remote targets (S3 on SeaweedFS, S3 behind the B2-rules proxy,
rsync over ssh): a directory repository → the remote one (same key, another repository) → a
directory repository of another key; each restores and lists like the original."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from btrsync.crypto.keys import generate_key_file
from tests.integration.conftest import World
from tests.integration.test_remote_targets import remote  # noqa: F401 - the parametrized fixture
from tests.support import tree

pytestmark = pytest.mark.btrfs


def _init(world: World, path: Path, key: Path) -> str:
    path.mkdir()
    url = f"file://{path}"
    run = world.cli("init", "--to", url, key=key)
    assert run.code == 0, run.err
    return url


@pytest.mark.slow
def test_copy_through_a_remote_target_keeps_every_backup_restorable(remote: World, tmp_path: Path) -> None:  # noqa: F811
    world = remote
    disk = _init(world, tmp_path / "disk", world.key)
    tree.populate(world.subvol, 41)
    with open(world.subvol / "big.bin", "wb") as f:
        f.write(os.urandom(6 << 20))
    world.snapshot()
    tree.mutate(world.subvol, 41, 1)
    world.snapshot()
    run = world.cli("push", str(world.subvol), "--snapshot-dir", str(world.snapdir), "--to", disk)
    assert run.code == 0, run.err
    original = world.cli("list", "--from", disk, "--json").json()

    run = world.cli("copy", "--all", "--from", disk, "--to", world.url, "--json")
    assert run.code == 0, run.err
    assert [b["status"] for b in run.json()["backups"]] == ["copied", "copied"]
    assert world.listing() == original

    other_key = tmp_path / "other.key"
    generate_key_file(other_key)
    other = _init(world, tmp_path / "other", other_key)
    run = world.cli("copy", "data@latest", "--from", world.url, "--to", other, "--from-key-file", str(world.key),
                    "--json", key=other_key)
    assert run.code == 0, run.err
    assert run.json()["summary"]["moved_bytes"] == sum(b["stored_bytes"] for b in original)
    assert world.cli("list", "--from", other, "--json", key=other_key).json() == original
    run = world.cli("receive", "latest", "--from", other, "--into", str(world.restore), key=other_key)
    assert run.code == 0, run.err
    snap = world.snapshots[-1]
    assert tree.compare(tree.describe(snap), tree.describe(world.restore / snap.name),
                        ignore=tree.SEND_BEST_EFFORT) == []
