"""Benchmark 5: planning and retention on a catalogue of 100,000 backups (pure CPU, no I/O).

* ``plan_push``: 100,000 local snapshots against 100,000 held backups (99 % shared by uuid, 1,000
  held backups whose snapshots are gone locally, 1,000 local snapshots not yet sent), with the
  same ``backup_id_for`` and ``skip`` arguments ``ops.push.plan_for`` passes;
* ``retention.gfs.decide``: hourly backups over ~11 years (chains of 31: a full and 30
  incrementals), a GFS policy with every rule in Europe/Berlin (DST included), plus
  ``deletion_order`` when the module has it.

Fakes are small frozen dataclasses with exactly the attributes the planner reads.  The time of
building the fakes is not counted.
"""

from __future__ import annotations

import importlib
import statistics
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from benchmarks.common import Bar, BenchResult, Config
from btrsync.planner.plan import plan_push

LIMIT_S = 2.0


@dataclass(frozen=True, slots=True)
class FakeSnapshot:
    name: str
    uuid: str


@dataclass(frozen=True, slots=True)
class FakeBackup:
    backup_id: str
    snapshot_uuid: str
    depth: int


def catalogue(n: int) -> tuple[list[FakeSnapshot], list[FakeBackup], int]:
    """n local snapshots (oldest first) and n held backups; returns the expected plan length."""
    fresh = max(1, n // 100)
    gone = [FakeBackup(f"data.old{i:06d}-{i:08x}", str(uuid.UUID(int=(1 << 100) + i)), i % 31)
            for i in range(fresh)]
    t0 = datetime(2015, 1, 1, tzinfo=UTC)
    snaps = [FakeSnapshot(f"data.{(t0 + timedelta(hours=i)):%Y%m%dT%H%M%SZ}", str(uuid.UUID(int=i + 1)))
             for i in range(n)]
    held = gone + [FakeBackup(f"{s.name}-{s.uuid[:8]}", s.uuid, i % 31) for i, s in enumerate(snaps[:n - fresh])]
    return snaps, held, fresh


def _time(fn: Callable[[], Any], reps: int) -> tuple[list[float], Any]:
    times, out = [], None
    for _ in range(reps):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return times, out


def run_bench(ws: Any, cfg: Config, log: Callable[[str], None]) -> BenchResult:
    res = BenchResult("scale", f"Planning and prune decisions for {cfg.catalogue:,} backups")
    n = cfg.catalogue
    reps = cfg.reps if cfg.mode == "full" else 1
    snaps, held, fresh = catalogue(n)

    def plan() -> Any:
        return plan_push(snaps, held, max_chain=30, backup_id_for=lambda s: f"{s.name}-{s.uuid[:8]}",
                         skip={})

    times, p = _time(plan, reps)
    res.runs["plan_push"] = [{"seconds": t} for t in times]
    res.check("plan has one step per unsent snapshot", len(p.steps) == fresh, f"{len(p.steps)} steps")
    res.check("plan chains incrementals", all(s.parent is not None or s.depth == 0 for s in p.steps))
    res.bars.append(Bar(f"plan_push, {n:,} snapshots x {n:,} backups", statistics.median(times),
                        LIMIT_S, "<=", "s"))
    log(f"  scale: plan_push median {statistics.median(times) * 1000:.0f} ms")

    try:
        gfs = importlib.import_module("btrsync.retention")
        policy_mod = importlib.import_module("btrsync.retention.policy")
        decide = gfs.decide
    except (ImportError, AttributeError) as exc:
        res.metrics["retention"] = "not available"
        res.notes.append(f"retention: not available ({exc}); the prune benchmark runs once "
                         "btrsync/retention/gfs.py provides decide(items, policy, now)")
        res.bars.append(Bar(f"retention decide, {n:,} backups", None, LIMIT_S, "<=", "s",
                            "not available"))
        return res

    t0 = datetime(2015, 1, 1, tzinfo=UTC)
    items = []
    for i in range(n):
        parent = None if i % 31 == 0 else f"b{i - 1:06d}"
        items.append(gfs.Item(f"b{i:06d}", t0 + timedelta(hours=i), parent))
    now = items[-1].time + timedelta(minutes=30)
    policy = policy_mod.Policy(keep_last=5, keep_hourly=48, keep_daily=14, keep_weekly=8,
                               keep_monthly=24, keep_yearly=policy_mod.UNLIMITED, keep_within="2d",
                               timezone="Europe/Berlin")
    times, decisions = _time(lambda: decide(items, policy, now), reps)
    res.runs["retention decide"] = [{"seconds": t} for t in times]
    kept = {d.id for d in decisions if d.kept}
    res.check("one decision per backup", len(decisions) == n)
    res.check("kept set is closed under parents",
              all(it.parent in kept for it in items if it.id in kept and it.parent))
    res.metrics["retention"] = {"policy": policy.describe(), "kept": len(kept), "deleted": n - len(kept)}
    res.bars.append(Bar(f"retention decide, {n:,} backups", statistics.median(times), LIMIT_S, "<=", "s"))
    log(f"  scale: decide median {statistics.median(times) * 1000:.0f} ms "
        f"(keeps {len(kept):,} of {n:,})")
    if hasattr(gfs, "deletion_order"):
        times, order = _time(lambda: gfs.deletion_order(decisions, items), reps)
        res.runs["deletion_order"] = [{"seconds": t} for t in times]
        res.check("deletion order covers every deleted backup", len(order) == n - len(kept))
        total = statistics.median(a["seconds"] + b["seconds"] for a, b in
                                  zip(res.runs["retention decide"], res.runs["deletion_order"], strict=True))
        res.metrics["decide_plus_deletion_order_s"] = total
        res.notes.append(f"a prune that also orders its deletions (decide + deletion_order) takes "
                         f"{total:.2f} s (median); the bar applies to the decision")
    return res
