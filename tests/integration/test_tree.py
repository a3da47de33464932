"""The retention-aware backup tree (chain = "tree") on real btrfs: five weeks of dated daily runs
with churn (``btrsync run --now``: snapshot, push, prune under one GFS policy, local snapshots
pruned to the last one).  The target must hold what the policy keeps plus at most the tree's
base, every chain must be short, every held backup must restore identical to its snapshot, the
local snapshots the tree sends on must survive local pruning, and the plan must say why."""

from __future__ import annotations

import random
import subprocess
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from btrsync.ops.treecompare import diff_trees
from tests.integration.conftest import CONFIG, T0, World, toml_table

pytestmark = pytest.mark.btrfs

POLICY = "keep_daily = 4, keep_weekly = 2, keep_monthly = 2"


def _configure(world: World, chain: str = "tree", local: str = "keep_last = 1") -> None:
    world.config.write_text(
        f'{CONFIG}chain = "{chain}"\n' + toml_table("usb", {"url": f"file://{world.target_dir}"})
        + f'\n[retention]\ndefault_profile = "p"\n[retention.profiles.p]\nbackups = {{ {POLICY} }}\n'
        + f'\n[jobs.data]\nsubvolumes = ["{world.subvol}"]\nsnapshot_dir = "{world.snapdir}"\n'
          f'timezone = "UTC"\ntargets.usb = {{}}\nsnapshots = {{ {local} }}\n')


def _churn(world: World, day: int, rng: random.Random) -> None:
    """One day's changes: a working set rewritten in part, an appended log, a new and a deleted file."""
    sv = world.subvol
    (sv / "ws").mkdir(exist_ok=True)
    for n in rng.sample(range(16), 3):
        (sv / "ws" / f"f{n}").write_bytes(rng.randbytes(8192))
    with open(sv / "log", "ab") as f:
        f.write(f"day {day}\n".encode() * 50)
    (sv / f"new{day}").write_bytes(rng.randbytes(2048))
    if (sv / f"new{day - 3}").exists():
        (sv / f"new{day - 3}").unlink()


def _at(day: int) -> str:
    return (T0 + timedelta(days=day)).isoformat()


def _run(world: World, day: int, *extra: str) -> dict[str, Any]:
    run = world.cli("run", "data", "--json", "--now", _at(day), *extra)
    assert run.code == 0, run.err
    [job] = run.json()["jobs"]
    return job


def _days(world: World, days: range, rng: random.Random) -> None:
    for day in days:
        _churn(world, day, rng)
        [target] = _run(world, day, "--dry-run")["targets"]
        [step] = target["plan"]
        assert step["tier"] in ("monthly", "weekly", "daily", "base") and step["kept_until"], step
        job = _run(world, day)
        assert job["status"] == "ok", job


def test_five_weeks_of_daily_backups_hold_what_the_policy_keeps(world: World) -> None:
    _configure(world)
    rng = random.Random(7)
    (world.subvol / "big").write_bytes(rng.randbytes(400_000))  # what never changes: the fulls' bulk
    _days(world, range(36), rng)  # 2026-11-20 .. 2026-12-25: two months, six weeks
    prune = world.cli("prune", "--from", world.url, "--dry-run", "--now", _at(35), "--json")
    assert prune.code == 0, prune.err
    decisions = prune.json()
    assert not [d for d in decisions if d["action"] == "delete"]  # the run pruned as it went
    parents_only = [d["id"] for d in decisions if all(r.startswith("parent of kept") for r in d["reasons"])]
    held = world.listing()
    # the policy's own count (4 daily, 2 weekly, 2 monthly, overlapping) plus the tree's base
    assert len(held) - len(parents_only) <= 8 and len(parents_only) <= 1, (held, parents_only)
    assert all(b["depth"] <= 4 for b in held), [(b["snapshot"], b["depth"]) for b in held]
    assert len([b for b in held if b["depth"] == 0]) == 1, held  # one base: December is a delta on it
    # every held backup restores identical to its snapshot: the oldest, a middle one, the newest
    local = {p.name for p in world.snapdir.iterdir()}
    by_time = sorted(held, key=lambda b: b["snapshot"])
    for b in (by_time[0], by_time[len(by_time) // 2], by_time[-1]):
        into = world.restore / b["snapshot"]
        into.mkdir()
        assert world.receive(b["id"], into).code == 0
        if b["snapshot"] in local:
            assert diff_trees(world.snapdir / b["snapshot"], into / b["snapshot"]) == [], b
    # the newest, against the live subvolume as it was when snapshotted (nothing changed since)
    assert diff_trees(world.subvol, world.restore / by_time[-1]["snapshot"] / by_time[-1]["snapshot"]) == []


def test_linear_chains_keep_nearly_everything(world: World) -> None:
    """The same days under chain = linear: each backup is the parent of the next, so the
    policy's prune keeps nearly all of them.  This is what the tree is for."""
    _configure(world, "linear", local="keep_last = 3")
    rng = random.Random(7)
    for day in range(20):
        _churn(world, day, rng)
        assert _run(world, day)["status"] == "ok"
    assert len(world.listing()) >= 18


def test_anchors_survive_snapshot_pruning_and_a_deleted_anchor_falls_back(world: World) -> None:
    """Local snapshot retention (keep_last 1) would delete the snapshots the tree sends on; they
    are kept as anchors, and snapshot prune says why.  An anchor deleted by hand makes the next
    push choose another parent or a full and say so; the push does not fail."""
    _configure(world)
    rng = random.Random(3)
    _days(world, range(9), rng)  # 2026-11-20 (Friday) .. 11-28
    local = sorted(p.name for p in world.snapdir.iterdir())
    # the base (November's first, a full), this week's first (Monday 11-23), today's: nothing else
    assert local == ["data.20261120T030000Z", "data.20261123T030000Z", "data.20261128T030000Z"], local
    dry = world.cli("snapshot", "prune", str(world.subvol), "--snapshot-dir", str(world.snapdir),
                    "--keep-last", "1", "--dry-run", "--now", _at(8), "--json")
    assert dry.code == 0, dry.err
    why = {d["id"]: " ".join(d["reasons"]) for d in dry.json()}
    assert "anchor of the monthly tier" in why["data.20261120T030000Z"], why  # also the tree's base
    assert "anchor of the weekly tier" in why["data.20261123T030000Z"], why
    assert "until 2026-11-30 00:00Z" in why["data.20261123T030000Z"], why
    subprocess.run(["btrfs", "subvolume", "delete", str(world.snapdir / "data.20261123T030000Z")],
                   check=True, capture_output=True)
    _churn(world, 9, rng)
    [target] = _run(world, 9, "--dry-run")["targets"]
    [step] = target["plan"]
    assert "data.20261123T030000Z is gone here" in step["reason"], step
    assert _run(world, 9)["status"] == "ok"


def test_dry_run_push_says_tier_parent_estimate_and_until(world: World) -> None:
    _configure(world)
    rng = random.Random(5)
    (world.subvol / "big").write_bytes(rng.randbytes(400_000))
    _days(world, range(3), rng)
    _churn(world, 3, rng)
    snap = world.cli("snapshot", "create", str(world.subvol), "--snapshot-dir", str(world.snapdir),
                     "--timestamp", _at(3))
    assert snap.code == 0
    run = world.push("--dry-run")
    assert run.code == 0, run.err
    header = run.out.splitlines()[0].split()
    assert header[:7] == ["SNAPSHOT", "KIND", "TIER", "PARENT", "ESTIMATE", "KEPT", "UNTIL"], run.out
    row = run.out.splitlines()[1]
    # Monday 11-23 is the first of its week: kept 2 weeks (keep_weekly 2), on November's first
    assert "incremental" in row and "weekly" in row and "data.20261120T030000Z" in row, run.out
    assert "2026-12-07" in row and "KiB" in row, run.out
    assert world.push("--dry-run", "--chain", "linear", "--json").json()["plan"][0]["parent"] == \
        "data.20261122T030000Z"
