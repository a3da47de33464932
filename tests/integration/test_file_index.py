"""The per-backup file index: written at push time, materialised for any backup of a chain
(renames, deletes, hard links across generations), listed by ``ls``, searched by ``find``,
written afterwards by ``index`` for backups that lack one, and checked by ``verify``.

Real streams from a loopback btrfs with the test tree generator; every listing is compared
with the local snapshot it was sent from, path by path (type, size, mode, owner, mtime, link
target, hard-link groups).
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from tests.integration.conftest import World
from tests.support import tree

pytestmark = pytest.mark.btrfs

SEED = 31
_KIND = {stat.S_IFREG: "f", stat.S_IFDIR: "d", stat.S_IFLNK: "l", stat.S_IFCHR: "c", stat.S_IFBLK: "b",
         stat.S_IFIFO: "p", stat.S_IFSOCK: "s"}


def _generations(world: World, count: int) -> None:
    tree.populate(world.subvol, SEED)
    world.snapshot()
    for g in range(1, count):
        tree.mutate(world.subvol, SEED, g)
        world.snapshot()


def snapshot_entries(root: Path) -> dict[str, dict]:
    """What ``ls --recursive --json`` must say of a snapshot on disk, by lstat."""
    out: dict[str, dict] = {}
    groups: dict[int, list[str]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            full = os.path.join(dirpath, name)
            st = os.lstat(full)
            rel = os.path.relpath(full, root)
            kind = _KIND[stat.S_IFMT(st.st_mode)]
            out[rel] = {"type": kind, "size": 0 if kind == "d" else st.st_size, "mode": format(st.st_mode & 0o7777, "04o"),
                        "uid": st.st_uid, "gid": st.st_gid, "mtime": st.st_mtime_ns,
                        "target": os.readlink(full) if kind == "l" else None}
            if kind != "l":
                out[rel]["mode"] = format(st.st_mode & 0o7777, "04o")
            else:
                del out[rel]["mode"]
            if kind != "d":
                groups.setdefault(st.st_ino, []).append(rel)
    for paths in groups.values():
        for p in paths:
            out[p]["group"] = tuple(sorted(paths))
    return out


def listed_entries(rows: list[dict]) -> dict[str, dict]:
    out: dict[str, dict] = {}
    groups: dict[int, list[str]] = {}
    for r in rows:
        out[r["path"]] = {"type": r["type"], "size": r["size"], "mode": r["mode"], "uid": r["uid"], "gid": r["gid"],
                          "mtime": round(r["mtime"] * 1e9), "target": r["target"]}
        if r["type"] == "l":
            del out[r["path"]]["mode"]
        if r["type"] != "d":
            groups.setdefault(r["inode"], []).append(r["path"])
    for paths in groups.values():
        for p in paths:
            out[p]["group"] = tuple(sorted(paths))
    return out


def _compare(expected: dict[str, dict], got: dict[str, dict]) -> None:
    diffs = [f"only in snapshot: {p}" for p in sorted(expected.keys() - got.keys())]
    diffs += [f"only in ls: {p}" for p in sorted(got.keys() - expected.keys())]
    for p in sorted(expected.keys() & got.keys()):
        for k, v in expected[p].items():
            if k == "mtime" and abs(got[p][k] - v) < 1000:
                continue  # float seconds in JSON
            if got[p].get(k) != v:
                diffs.append(f"{p}: {k} {got[p].get(k)!r} != {v!r}")
    assert diffs == [], "\n".join(diffs[:40])


def test_ls_of_every_backup_in_a_chain_equals_its_snapshot(world: World) -> None:
    _generations(world, 3)
    assert world.push().code == 0
    for snap in world.snapshots:
        run = world.cli("ls", snap.name, "--from", world.url, "--recursive", "--json")
        assert run.code == 0, run.err
        rows = run.json()
        assert len(rows) > 20 and {r["type"] for r in rows} >= {"f", "d", "l"}
        _compare(snapshot_entries(snap), listed_entries(rows))
    # warm: the cached listing gives the same answer
    run = world.cli("ls", "latest", "--from", world.url, "--recursive", "--json")
    _compare(snapshot_entries(world.snapshots[-1]), listed_entries(run.json()))
