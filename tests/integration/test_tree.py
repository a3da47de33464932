"""The retention-aware backup tree (chain = "tree") on real btrfs: five weeks of dated daily runs
with churn (``btrsync run --now``: snapshot, push, prune under one GFS policy, local snapshots
pruned to the last one).  The target must hold what the policy keeps plus at most the tree's
base, every chain must be short, every held backup must restore identical to its snapshot, the
local snapshots the tree sends on must survive local pruning, and the plan must say why."""

from __future__ import annotations

import random
import subprocess
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from btrsync.verify.treecompare import diff_trees
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


@pytest.mark.slow
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


@pytest.mark.slow
def test_linear_chains_keep_nearly_everything(world: World) -> None:
    """The same days under chain = linear: each backup is the parent of the next, so the
    policy's prune keeps nearly all of them.  This is what the tree is for."""
    _configure(world, "linear", local="keep_last = 3")
    rng = random.Random(7)
    for day in range(20):
        _churn(world, day, rng)
        assert _run(world, day)["status"] == "ok"
    assert len(world.listing()) >= 18
    prune = world.cli("prune", "--from", world.url, "--dry-run", "--now", _at(19), "--json").json()
    chained = [d["reasons"][0] for d in prune if d["reasons"][0].startswith("parent of kept")]
    assert len(chained) >= 10 and all("(a chain of " in r and "from linear chains" in r for r in chained), chained


def test_anchors_survive_snapshot_pruning_and_a_deleted_anchor_falls_back(world: World) -> None:
    """Local snapshot retention (keep_last 1) would delete the snapshots the tree sends on; they
    are kept as anchors, and snapshot prune says why.  An anchor deleted by hand makes the next
    push choose another parent or a full and say so; the push does not fail."""
    _configure(world)
    rng = random.Random(3)
    (world.subvol / "big").write_bytes(rng.randbytes(300_000))  # the deltas stay small: one full
    _days(world, range(9), rng)  # 2026-11-20 (Friday) .. 11-28
    local = sorted(p.name for p in world.snapdir.iterdir())
    # the base (November's first, a full), this week's first (Monday 11-23), today's: nothing else
    assert local == ["data.20261120T030000Z", "data.20261123T030000Z", "data.20261128T030000Z"], local
    dry = world.cli("snapshot", "prune", str(world.subvol), "--snapshot-dir", str(world.snapdir),
                    "--keep-last", "1", "--dry-run", "--now", _at(8), "--json")
    assert dry.code == 0, dry.err
    why = {d["id"]: " ".join(d["reasons"]) for d in dry.json()}
    assert "base of the backup tree" in why["data.20261120T030000Z"], why  # also November's anchor
    assert "anchor of the weekly tier" in why["data.20261123T030000Z"], why
    assert "until 2026-11-30 00:00Z" in why["data.20261123T030000Z"], why
    listed = world.cli("snapshot", "list", str(world.subvol), "--snapshot-dir", str(world.snapdir), "--json")
    anchors = {r["name"]: r["anchor"] for r in listed.json()}
    assert anchors["data.20261128T030000Z"] == [] or "anchor of the daily tier" in anchors["data.20261128T030000Z"][0]
    refused = world.cli("snapshot", "delete", str(world.snapdir / "data.20261120T030000Z"))
    assert refused.code != 0 and "is the base of the backup tree" in refused.err, refused.err
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


def test_an_anchor_found_damaged_is_no_parent_and_the_plan_says_so(world: World) -> None:
    """verify finds November's first backup (the base, and the monthly anchor) damaged: its
    children are affected, and the next backups are not sent on it: another parent or a full."""
    _configure(world)
    rng = random.Random(11)
    (world.subvol / "big").write_bytes(rng.randbytes(300_000))
    _days(world, range(4), rng)
    base = next(b for b in world.listing() if b["depth"] == 0)
    segment = world.target_dir / "data" / base["id"] / "000000"
    data = bytearray(segment.read_bytes())
    data[len(data) // 2] ^= 0x01
    segment.write_bytes(bytes(data))
    verify = world.cli("verify", "--from", world.url, "--level", "data")
    assert verify.code == 4, verify.err
    _churn(world, 4, rng)
    [target] = _run(world, 4, "--dry-run")["targets"]
    [step] = target["plan"]
    assert f"not a parent: {base['snapshot']} (found damaged or affected by the verification" in step["reason"]
    assert step["parent"] != base["snapshot"], step
    job = world.cli("run", "data", "--json", "--now", _at(4))
    [target] = job.json()["jobs"][0]["targets"]
    [pushed] = target["backups"]
    assert pushed["status"] == "ok" and pushed["kind"] == "full", target  # every other backup hangs off the base


@pytest.mark.slow
def test_a_push_killed_while_sending_a_new_anchor_resumes_on_the_same_parent(world: World) -> None:
    """December's first backup (the new monthly anchor) is SIGKILLed mid-push; the next push plans
    the same parent (the base), resumes the durable segments and the backup restores identical."""
    import os
    import signal
    import time

    _configure(world)
    rng = random.Random(13)
    (world.subvol / "static.bin").write_bytes(os.urandom(6 << 20))  # in the base: the delta stays small
    _days(world, range(3), rng)
    with open(world.subvol / "december.bin", "wb") as f:
        f.write(os.urandom(2 << 20))
    snap = world.cli("snapshot", "create", str(world.subvol), "--snapshot-dir", str(world.snapdir),
                     "--timestamp", "2026-12-01T03:00:00+00:00")
    assert snap.code == 0, snap.err
    name = snap.out.strip().rsplit("/", 1)[1]
    plan = world.push("--dry-run", "--json").json()["plan"]
    assert [(s["snapshot"], s["tier"], s["parent"]) for s in plan] == [(name, "monthly", "data.20261120T030000Z")]
    argv = [sys.executable, "-m", "btrsync", "--config", str(world.config), "--state-dir", str(world.state),
            "--key-file", str(world.key), "push", str(world.subvol), "--snapshot-dir", str(world.snapdir),
            "--to", world.url, "--bwlimit", "1M"]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    idx = world.target_dir / "data"
    while time.monotonic() < deadline and len(list(idx.glob(f"{name}-*/*.idx"))) < 2:
        assert proc.poll() is None, "the push ended before it was killed"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    run = world.push("--json")
    assert run.code == 0, run.err
    [backup] = run.json()["backups"]
    assert backup["resumed_bytes"] > 0 and backup["parent"].startswith("data.20261120T030000Z"), backup
    into = world.restore / "r"
    into.mkdir()
    assert world.receive(name, into).code == 0
    assert diff_trees(world.snapdir / name, into / name) == []


@pytest.mark.slow
def test_two_hosts_with_a_subvolume_of_one_name_each_grow_their_own_tree(world: World) -> None:
    """Another host (a UTS namespace with its own host name, its own btrfs subvolume also called
    'data') pushes to the same repository under the same policy: each host's backups are tiered
    and pruned as a history of their own, and neither is sent on the other's."""
    import os

    _configure(world)
    other = world.src / "other"
    other.mkdir()
    subprocess.run(["btrfs", "subvolume", "create", str(other / "data")], check=True, capture_output=True)
    (other / "snaps").mkdir()
    rng = random.Random(17)
    (world.subvol / "big").write_bytes(rng.randbytes(300_000))
    (other / "data" / "big").write_bytes(rng.randbytes(300_000))

    def other_host(*args: str) -> subprocess.CompletedProcess[str]:
        argv = [sys.executable, "-m", "btrsync", "--config", str(world.config), "--state-dir",
                str(world.state.parent / "other-state"), "--key-file", str(world.key), *args]
        return subprocess.run(["unshare", "-u", "sh", "-c", 'hostname otherhost && exec "$@"', "-", *argv],
                              capture_output=True, text=True)

    for day in range(8):
        _churn(world, day, rng)
        assert _run(world, day)["status"] == "ok"
        (other / "data" / f"o{day}").write_bytes(os.urandom(5000))
        made = other_host("snapshot", "create", str(other / "data"), "--snapshot-dir", str(other / "snaps"),
                          "--timestamp", (T0 + timedelta(days=day, hours=2)).isoformat())
        assert made.returncode == 0, made.stderr
        pushed = other_host("push", str(other / "data"), "--snapshot-dir", str(other / "snaps"), "--to", world.url)
        assert pushed.returncode == 0, pushed.stderr
        pruned = other_host("prune", "--from", world.url)
        assert pruned.returncode == 0, pruned.stderr
    held = world.listing()
    mine = {b["id"]: b for b in held if b["host"] != "otherhost"}
    theirs = {b["id"]: b for b in held if b["host"] == "otherhost"}
    assert mine and theirs
    for group in (mine, theirs):
        assert all(b["parent"] is None or b["parent"] in group for b in group.values()), group
        assert len([b for b in group.values() if b["depth"] == 0]) == 1
    # the other host's tiers are its own: its first backup is its own November backup
    assert min(theirs.values(), key=lambda b: b["snapshot"])["tier"] == "monthly"


@pytest.mark.slow
def test_a_policy_changed_between_runs_rewrites_nothing_and_old_chains_age_out(world: World) -> None:
    """Ten days under one policy, then a shorter one (keep_daily 3, keep_monthly 1): the backups
    already there keep their parents (nothing is rewritten); prune applies the new policy and
    keeps what a kept backup needs; new backups are tiered by the new policy; every held backup
    stays restorable, and within a week the target holds the new policy's count plus the base."""
    global POLICY
    _configure(world)
    rng = random.Random(19)
    (world.subvol / "big").write_bytes(rng.randbytes(300_000))
    _days(world, range(10), rng)
    before = {b["id"]: b["parent"] for b in world.listing()}
    saved, POLICY = POLICY, "keep_daily = 3, keep_monthly = 1"
    try:
        _configure(world)
    finally:
        POLICY = saved
    _days(world, range(10, 18), rng)
    held = world.listing()
    for b in held:
        assert b["parent"] is None or b["parent"] in {h["id"] for h in held}, b  # no chain broken
        if b["id"] in before:
            assert b["parent"] == before[b["id"]]  # nothing rewritten
    prune = world.cli("prune", "--from", world.url, "--dry-run", "--now", _at(17), "--json").json()
    parents_only = [d for d in prune if all(r.startswith("parent of kept") for r in d["reasons"])]
    assert len(held) - len(parents_only) <= 3 + 1 and len(parents_only) <= 2, (held, parents_only)
    for d in parents_only:  # prune says which chain holds each one
        assert "(the base of the backup tree: " in d["reasons"][0] or "(a chain of " in d["reasons"][0], d
    newest = max(held, key=lambda b: b["snapshot"])
    into = world.restore / "n"
    into.mkdir()
    assert world.receive(newest["id"], into).code == 0
    assert diff_trees(world.snapdir / newest["snapshot"], into / newest["snapshot"]) == []


@pytest.mark.slow
def test_two_targets_with_their_own_policies_grow_their_own_trees(world: World, tmp_path: Path) -> None:
    """usb keeps days, weeks and months; far keeps weeks only (targets.far in the profile): each
    target's backups are tiered by its own policy, and the local anchors serve both."""
    far = tmp_path / "far"
    far.mkdir()
    _configure(world)
    text = world.config.read_text()
    text = text.replace('[retention.profiles.p]\n', '[retention.profiles.p]\ntargets.far = { keep_weekly = 3 }\n')
    text = text.replace("targets.usb = {}\n", "targets.usb = {}\ntargets.far = {}\n")
    world.config.write_text(text + "\n" + toml_table("far", {"url": f"file://{far}"}))
    assert world.cli("init", "--to", "far").code == 0
    rng = random.Random(23)
    (world.subvol / "big").write_bytes(rng.randbytes(300_000))
    for day in range(10):
        _churn(world, day, rng)
        assert _run(world, day)["status"] == "ok"
    listed = world.cli("list", "--from", "far", "--json")
    tiers = {b["snapshot"]: b["tier"] for b in listed.json()}
    # far keeps the first backup of each week, and the newest (of no period of its policy)
    assert tiers == {"data.20261120T030000Z": "weekly", "data.20261123T030000Z": "weekly",
                     "data.20261129T030000Z": "base"}, tiers
    usb = {b["snapshot"]: b["tier"] for b in world.listing()}
    table = world.cli("list", "--from", "far").out.splitlines()
    assert table[0].split()[4:7] == ["TIER", "KEPT", "UNTIL"], table[0]
    assert any("weekly" in line and "2026-12-07" in line for line in table), table  # W48 + 2 weeks
    assert usb["data.20261120T030000Z"] == "monthly" and usb["data.20261123T030000Z"] == "weekly", usb
    # the local snapshots: both targets' anchors and their newest; nothing else
    local = sorted(p.name for p in world.snapdir.iterdir())
    assert local == ["data.20261120T030000Z", "data.20261123T030000Z", "data.20261129T030000Z"], local
