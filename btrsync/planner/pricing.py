"""What a chain strategy costs over time: ``btrsync retention simulate --size … --churn …``.

A backup every ``every`` from ``start`` to ``end``, each planned by the strategy on the backups
still held (``linear``: the planner of planner/plan.py, a full every ``max_chain`` + 1;
``tree``: planner/tree.py, priced by the model below), pruned by the policy at most once per
``prune_every`` and at the end, as a timer would.

The churn model (documented in docs/retention.md): a volume of ``size`` bytes whose writes,
``churn`` bytes a day, fall uniformly at random on a working set of ``working_set`` × size (the
rest never changes).  An incremental between snapshots ``d`` days apart stores the distinct
bytes written between them, in expectation ``W·(1 − e^(−churn·d/W))`` for a working set of W
bytes (rewrites of the same bytes within ``d`` count once, as in a send stream); a full stores
``size``.  Compression is left out: both strategies compress the same data alike.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from btrsync.planner.plan import plan_push
from btrsync.planner.tree import DEFAULT_FULL_THRESHOLD, Held, plan_tree, uses_tree
from btrsync.retention.gfs import Item, decide
from btrsync.retention.policy import Policy

STRATEGIES = ("linear", "tree")


@dataclass(frozen=True, slots=True)
class Churn:
    size: int  # bytes of the volume
    per_day: int  # bytes written a day
    working_set: float = 0.1  # share of the volume those writes fall on

    def __post_init__(self) -> None:
        if self.size <= 0 or self.per_day < 0 or not 0 < self.working_set <= 1:
            raise ValueError("churn model: need size > 0, churn >= 0 and 0 < working set <= 1")

    def delta(self, days: float) -> int:
        """Expected bytes of an incremental between snapshots ``days`` apart."""
        w = self.working_set * self.size
        return int(w * -math.expm1(-self.per_day * max(days, 0.0) / w))


@dataclass(frozen=True, slots=True)
class _Snap:
    name: str
    uuid: str
    time: datetime


@dataclass(slots=True)
class StrategyResult:
    strategy: str
    created: int = 0
    held: int = 0  # at the end
    held_peak: int = 0
    stored_end: int = 0
    stored_peak: int = 0
    stored_mean: float = 0.0
    uploaded: int = 0
    fulls: int = 0
    deepest: int = 0  # streams to restore the held backup with the longest chain
    parents_only: int = 0  # held at the end only as a parent of a kept backup
    note: str | None = None
    _samples: list[int] = field(default_factory=list)


def price(policy: Policy, start: datetime, end: datetime, every: timedelta, churn: Churn, *,
          strategy: str, max_chain: int = 30, full_threshold: float = DEFAULT_FULL_THRESHOLD,
          prune_every: timedelta | None = timedelta(days=1)) -> StrategyResult:
    """Replay backups every ``every`` under ``strategy`` and return what it held, stored and sent."""
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy: one of {', '.join(STRATEGIES)}")
    if every <= timedelta(0) or end < start:
        raise ValueError("need every > 0 and start <= end")
    res = StrategyResult(strategy)
    if strategy == "tree" and (why := uses_tree(policy)):
        res.note = why
    held: dict[str, tuple[_Snap, str | None, int, int]] = {}  # id -> snapshot, parent, depth, bytes
    last_prune: datetime | None = None
    t, i = start, 0
    while t <= end:
        snap = _Snap(f"#{i}", f"u{i}", t)
        parent, depth, size = _plan_one(snap, held, policy, churn, strategy, max_chain, full_threshold)
        held[snap.name] = (snap, parent, depth, size)
        res.created += 1
        res.uploaded += size
        res.fulls += parent is None
        if prune_every is None or last_prune is None or t - last_prune >= prune_every:
            _prune(held, policy, t)
            last_prune = t
        res._samples.append(sum(v[3] for v in held.values()))
        res.held_peak = max(res.held_peak, len(held))
        i, t = i + 1, t + every
    decisions = _prune(held, policy, end)
    res.held = len(held)
    res.stored_end = sum(v[3] for v in held.values())
    res.stored_peak = max(res._samples + [res.stored_end])
    res.stored_mean = sum(res._samples) / len(res._samples) if res._samples else 0.0
    res.deepest = max((v[2] for v in held.values()), default=-1) + 1
    res.parents_only = sum(1 for d in decisions if d.kept and all(r.startswith("parent of kept ")
                                                                  for r in d.reasons))
    return res


def _plan_one(snap: _Snap, held: dict[str, tuple[_Snap, str | None, int, int]], policy: Policy,
              churn: Churn, strategy: str, max_chain: int, full_threshold: float) -> tuple[str | None, int, int]:
    if strategy == "tree" and uses_tree(policy) is None:
        snaps = sorted((v[0] for v in held.values()), key=lambda s: s.time) + [snap]
        def estimate(child: _Snap, parent: _Snap | None) -> int:  # type: ignore[misc]
            return churn.size if parent is None else churn.delta((child.time - parent.time).total_seconds() / 86400)

        plan = plan_tree(snaps, [Held(k, v[0].uuid, v[0].time, v[2], v[1], v[3]) for k, v in held.items()], policy,
                         time_of=lambda s: s.time, max_chain=max_chain, backup_id_for=lambda s: s.name,
                         estimate=estimate, full_threshold=full_threshold)  # type: ignore[arg-type]
    else:  # the linear planner looks at the newest backup only: give it just that
        newest = max(held.items(), key=lambda kv: kv[1][0].time, default=None)
        plan = plan_push([newest[1][0], snap] if newest else [snap],
                         [_HeldDepth(newest[0], newest[1][0].uuid, newest[1][2])] if newest else [],
                         max_chain=max_chain, backup_id_for=lambda s: s.name)
    [step] = plan.steps
    if step.parent is None:
        return None, 0, churn.size
    parent = held[step.parent_backup_id][0]  # type: ignore[index]
    return step.parent_backup_id, step.depth, churn.delta((snap.time - parent.time).total_seconds() / 86400)


@dataclass(frozen=True, slots=True)
class _HeldDepth:
    backup_id: str
    snapshot_uuid: str
    depth: int


def _prune(held: dict[str, tuple[_Snap, str | None, int, int]], policy: Policy, now: datetime) -> list:
    items = [Item(k, v[0].time, v[1]) for k, v in held.items()]
    decisions = decide(items, policy, now)
    for d in decisions:
        if not d.kept:
            del held[d.id]
    return decisions


def render_prices(results: list[StrategyResult], churn: Churn) -> str:
    """The strategies side by side, one column each."""

    def gib(n: float) -> str:
        return f"{n / 2**30:,.1f} GiB"

    rows = [
        ("backups held at the end", lambda r: str(r.held)),
        ("  of them only as parents", lambda r: str(r.parents_only)),
        ("backups held at most", lambda r: str(r.held_peak)),
        ("stored at the end", lambda r: gib(r.stored_end)),
        ("stored at the peak", lambda r: gib(r.stored_peak)),
        ("stored on average", lambda r: gib(r.stored_mean)),
        ("uploaded in all", lambda r: gib(r.uploaded)),
        ("fulls sent", lambda r: str(r.fulls)),
        ("streams to restore, at most", lambda r: str(r.deepest)),
    ]
    head = f"chain strategies: a volume of {gib(churn.size)}, {gib(churn.per_day)} written a day on " \
           f"{churn.working_set:.0%} of it"
    width = max(len(label) for label, _ in rows)
    lines = [head, "  " + " " * width + "".join(f"  {r.strategy:>14}" for r in results)]
    lines += ["  " + label.ljust(width) + "".join(f"  {show(r):>14}" for r in results) for label, show in rows]
    base = results[0]
    for r in results[1:]:
        if base.stored_end:
            lines.append(f"  {r.strategy} stores {r.stored_end / base.stored_end:.2f}x what {base.strategy} "
                         f"does at the end ({r.stored_mean / max(base.stored_mean, 1):.2f}x on average)")
        if r.note:
            lines.append(f"  {r.strategy}: {r.note}")
    return "\n".join(lines)
