"""The doc test's machine: placeholders land in it, and nothing outlives it, even after a failure."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.support.docblocks import PathMap, parse_doc
from tests.support.docrun import DocFailure, Session
from tests.support.docworld import DocWorld, SetupError
from tests.support.loopfs import attached_loops, require_loop_btrfs

DOC = """<!-- doc-test: setup=data,disk -->
```sh
mkdir -p /mnt/ext4 /mnt/part
truncate -s 64M /var/tmp/x.img && mkfs.ext4 -q -F /var/tmp/x.img
mount -o loop /var/tmp/x.img /mnt/ext4
sfdisk -q /dev/sdX <<'END'
label: gpt
type=linux
END
partx -u /dev/sdX
mkfs.btrfs -q -f /dev/sdX1 && mount /dev/sdX1 /mnt/part
touch /data/proof /mnt/ext4/proof /mnt/part/proof
false
```
"""


def _mounts_and_loops_under(path: Path) -> tuple[list[str], list[str]]:
    out = subprocess.run(["findmnt", "-rn", "-o", "TARGET"], capture_output=True, text=True).stdout
    mounts = [m for m in out.split("\n") if m.startswith(str(path))]
    loops = [dev for dev, back in attached_loops() if back.startswith(str(path))]
    return mounts, loops


@pytest.mark.btrfs
def test_a_failing_doc_leaves_nothing_mounted_or_attached(tmp_path: Path) -> None:
    require_loop_btrfs()
    blocks = parse_doc("d.md", DOC).blocks
    world = DocWorld(tmp_path / "w").open()
    try:
        world.setup(blocks[0].setups)
        disk = world.disk_device
        assert disk is not None
        session = Session(blocks, PathMap(world.root, devices=world.devices), tmp_path, world.env(),
                          cwd=world.root / "root", timeout=60)
        with pytest.raises(DocFailure, match=r"d\.md:13: `false` exited 1"):
            session.run()
        # the placeholders were the world's: the proofs are there, and three mounts are live
        for proof in ("data/proof", "mnt/ext4/proof", "mnt/part/proof"):
            assert (world.root / proof).exists()
        mounts, loops = _mounts_and_loops_under(tmp_path)
        assert len(mounts) == 3 and len(loops) == 3, (mounts, loops)   # W, the ext4, the disk
        parts = json.loads(subprocess.run(["lsblk", "-J", disk], capture_output=True, text=True).stdout)
        assert parts["blockdevices"][0]["children"]
    finally:
        world.close()
    assert _mounts_and_loops_under(tmp_path) == ([], [])
    assert disk not in {dev for dev, _ in attached_loops()}
    assert not (tmp_path / "w" / "newdisk.img").exists()


def test_unknown_setup_is_refused(tmp_path: Path) -> None:
    with pytest.raises(SetupError, match="unknown doc-test setup nas"):
        DocWorld(tmp_path).setup(["nas"])
