"""Local state that was damaged (a crash mid-write on a filesystem without ordered data, a full
disk, a careless edit) is kept aside and said, never taken for "nothing known": the remembered
repository id guards a URL against another repository, so losing it must not open the door."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from btrsync.catalog import layout
from btrsync.state import State
from tests.integration.conftest import World

pytestmark = pytest.mark.btrfs


def _backup(world: World, seed: int = 1) -> None:
    (world.subvol / f"generation-{seed}").write_bytes(os.urandom(100_000))
    world.snapshot()
    run = world.push()
    assert run.code == 0, run.err


def _entry(world: World) -> Path:
    path = State(world.state)._target_file(world.url)
    assert path.is_file()
    return path


def test_a_damaged_target_entry_never_lets_another_repository_in(world: World, tmp_path: Path) -> None:
    """Garbage in state/targets/<id>.json lost the remembered repository id: a push to the URL, now
    holding another repository, and an init where the disk was not mounted, both went ahead."""
    _backup(world)
    entry = _entry(world)
    original = entry.read_bytes()
    first = json.loads(original)["repo_id"]
    entry.write_bytes(original[: len(original) // 3])  # truncated
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    assert world.cli("init", "--to", f"file://{elsewhere}").code == 0
    second = json.loads((elsewhere / layout.REPO_MARKER).read_text())["repo_id"]
    shutil.rmtree(world.target_dir)  # another disk at the same place
    shutil.copytree(elsewhere, world.target_dir)
    world.snapshot()
    push = world.push()
    assert push.code == 10, push.err
    [aside] = (world.state / "targets").glob(entry.name + ".damaged-*")
    assert aside.read_bytes() == original[: len(original) // 3] and not entry.exists()
    assert str(aside) in push.err and f"btrsync state forget {world.url}" in push.err, push.err
    assert not (world.target_dir / "backups").exists()
    # kept aside, it still guards the URL: the next command is refused too, and so is list
    for args in (["push", str(world.subvol), "--snapshot-dir", str(world.snapdir), "--to", world.url],
                 ["list", "--from", world.url]):
        again = world.cli(*args)
        assert again.code == 10 and str(aside) in again.err, (args, again.err)
    assert not (world.target_dir / "backups").exists()
    # the disk unmounted (an empty directory) and init run blindly: refused, nothing created
    shutil.rmtree(world.target_dir)
    world.target_dir.mkdir()
    init = world.cli("init", "--to", world.url)
    assert init.code == 10 and "state forget" in init.err, init.err
    assert list(world.target_dir.iterdir()) == []
    # local snapshots the target may need are not pruned while its memory is unknown
    prune = world.cli("snapshot", "prune", str(world.subvol), "--snapshot-dir", str(world.snapdir),
                      "--keep-last", "1")
    assert prune.code != 0 and str(aside) in prune.err, prune.err
    assert len(list(world.snapdir.iterdir())) == 2
    # the operator checked, and says so: forget removes the damaged entry and its copy
    shutil.rmtree(world.target_dir)
    shutil.copytree(elsewhere, world.target_dir)
    forget = world.cli("state", "forget", world.url)
    assert forget.code == 0, forget.err
    assert list((world.state / "targets").glob(entry.name + "*")) == []
    assert world.push().code == 0
    assert json.loads(_entry(world).read_text())["repo_id"] == second != first


def test_a_target_entry_that_is_valid_json_of_the_wrong_shape_is_damage_too(world: World) -> None:
    _backup(world)
    entry = _entry(world)
    entry.write_text("[1, 2, 3]")
    run = world.cli("list", "--from", world.url)
    assert run.code == 10 and "damaged" in run.err, run.err
    assert list((world.state / "targets").glob(entry.name + ".damaged-*"))
    assert world.cli("state", "forget", world.url).code == 0
    assert world.cli("list", "--from", world.url).code == 0
