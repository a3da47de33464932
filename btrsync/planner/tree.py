"""Parents chosen by the retention policy (``chain = "tree"``): hold what the policy keeps, no more.

A linear chain makes every backup the parent of the next, so chain-safe retention must keep
nearly all of them (two years of daily backups under keep 7 daily / 4 weekly / 12 monthly: 209
held where the policy asks for 22).  Here each backup's parent is chosen by what it costs to
store over the backup's lifetime (``retention/lifetime.py``: the policy says, when a backup is
taken, which tier it is and until when it is kept):

* a parent the policy keeps **at least as long as the child** ("a parent outlives its child")
  costs the delta, held for the child's lifetime, and prune later deletes exactly what the
  policy drops;
* a **full** already held may also be a parent although the policy drops it sooner: prune then
  keeps it as long as the child needs it (the tree's *base*, "kept as parent"), so it costs
  the delta plus the full's bytes for the extra time.  Only fulls: they have no parent, so the
  extra time never spreads up a chain.  This is what lets the longest-kept tier (the monthly
  backups of keep_monthly) be deltas on one base full instead of a full each;
* a **full** costs its own bytes for the child's lifetime, and is sent when no parent is
  usable, when it is the cheapest, or when the best delta exceeds ``full_threshold`` of a full.

Of the usable parents, the newest few kept long enough and the newest base are priced with
``estimate`` (``btrfs send --no-data -p``: each delta's size, cheaply).  The tree this grows is
btrfs2s3's (each shorter tier on the backup of the enclosing longer period) where that is
cheapest, but chosen by measured bytes, not a fixed rule: a daily hangs off this week's backup
or this month's, whichever is the smaller delta, and the longest tier needs no fulls while the
data stays close to its base.  Depth is bounded: a step up a chain reaches a backup kept
strictly longer or a full (at most one per tier, plus the base), and max_chain caps it.

Pure: no I/O; ``estimate`` is the caller's.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from btrsync.planner.plan import LocalSnapshot, Plan, Skip, Step
from btrsync.retention.periods import period_key, period_label
from btrsync.retention.lifetime import FOREVER, Lifetime, lifetimes, period_start, tier_rules
from btrsync.retention.policy import Policy

DEFAULT_FULL_THRESHOLD = 0.5
#: How many parents kept long enough (the newest) are priced with an estimate, besides the base.
CANDIDATES = 3
#: "Forever" in the cost arithmetic: ten years.
HORIZON = timedelta(days=3653)

Pricer = Callable[[LocalSnapshot, LocalSnapshot | None], int | None]


@dataclass(frozen=True, slots=True)
class Held:
    """A backup of this subvolume the target holds (restorable), as the tree planner sees it."""

    backup_id: str
    snapshot_uuid: str
    time: datetime
    depth: int
    parent_id: str | None = None
    stored_bytes: int | None = None
    name: str | None = None  # the snapshot's name


@dataclass(slots=True)
class _Node:
    backup_id: str
    time: datetime
    depth: int
    parent_id: str | None
    size: int | None
    life: Lifetime
    snapshot: LocalSnapshot | None  # the local snapshot, None where it is gone here
    name: str


def _date(when: datetime) -> str:
    return "forever" if when == FOREVER else f"{when:%Y-%m-%d}"


def _days(start: datetime, end: datetime) -> float:
    """``end - start`` in days, ``FOREVER`` counted as ``HORIZON``."""
    span = HORIZON if end == FOREVER else min(end - start, HORIZON)
    return max(span.total_seconds(), 0.0) / 86400


def uses_tree(policy: Policy | None) -> str | None:
    """Why the tree cannot apply to ``policy`` (then chains are linear), or None when it can."""
    if policy is None or policy.is_empty():
        return "no retention policy for this target (it keeps everything): a linear chain"
    if not tier_rules(policy):
        return "the policy has no calendar rule (keep_last/keep_within only): a linear chain"
    return None


def plan_tree(
    snapshots: Sequence[LocalSnapshot],
    held: Iterable[Held],
    policy: Policy,
    *,
    time_of: Callable[[LocalSnapshot], datetime],
    max_chain: int,
    backup_id_for: Callable[[LocalSnapshot], str],
    skip: Mapping[str, str] | None = None,
    estimate: Pricer | None = None,
    full_threshold: float = DEFAULT_FULL_THRESHOLD,
    unusable: Mapping[str, str] | None = None,
) -> Plan:
    """Plan the push of ``snapshots`` (this subvolume's local snapshots, oldest first) to a
    target holding ``held`` (this host's restorable backups of the subvolume).

    ``unusable`` maps backup ids that must not be parents (found damaged by a verification) to
    the reason.  Returns the same ``Plan`` as ``plan_push``, each step with its tier, the date
    until which the policy keeps it and the estimated stream of the chosen send."""
    skip = skip or {}
    unusable = unusable or {}
    local = {s.uuid: s for s in snapshots if s.name not in skip}
    held = list(held)
    held_uuids = {h.snapshot_uuid for h in held}
    todo = [s for s in snapshots if s.name not in skip and s.uuid not in held_uuids]
    lives = lifetimes([h.time for h in held] + [time_of(s) for s in todo], policy)
    nodes = [_Node(h.backup_id, h.time, h.depth, h.parent_id, h.stored_bytes, life, local.get(h.snapshot_uuid),
                   local[h.snapshot_uuid].name if h.snapshot_uuid in local else h.name or h.backup_id)
             for h, life in zip(held, lives)]
    chooser = _Chooser(nodes, max_chain, estimate, full_threshold, unusable)
    steps: list[Step] = []
    for snap, life in zip(todo, lives[len(held):]):
        step = chooser.step(snap, time_of(snap), life)
        steps.append(step)
        size = step.estimated_bytes
        nodes.append(_Node(backup_id_for(snap), time_of(snap), step.depth, step.parent_backup_id, size, life,
                           snap, snap.name))
    skipped = tuple(Skip(s, skip[s.name]) for s in snapshots if s.name in skip)
    current = tuple(s for s in snapshots if s.name not in skip and s.uuid in held_uuids)
    return Plan(tuple(steps), skipped, current)


class _Chooser:
    def __init__(self, nodes: list[_Node], max_chain: int, estimate: Pricer | None, full_threshold: float,
                 unusable: Mapping[str, str]) -> None:
        self.nodes, self.max_chain, self.estimate = nodes, max_chain, estimate
        self.full_threshold, self.unusable = full_threshold, unusable

    def _kept_until(self, base: _Node) -> datetime:
        """Until when ``base`` is held: its own lifetime, or its longest-kept child's."""
        return max([base.life.until] + [n.life.until for n in self.nodes if n.parent_id == base.backup_id])

    def step(self, snap: LocalSnapshot, when: datetime, life: Lifetime) -> Step:
        what = life.describe()
        older = [n for n in self.nodes if n.time < when]
        notes = [f"not a parent: {n.name} ({self.unusable[n.backup_id]})"
                 for n in older if n.backup_id in self.unusable][:1]
        older = [n for n in older if n.backup_id not in self.unusable]
        lasting = sorted((n for n in older if n.life.until >= life.until), key=lambda n: n.time, reverse=True)
        bases = sorted((n for n in older if n.life.until < life.until and n.depth == 0), key=lambda n: n.time,
                       reverse=True)
        if (gone := next((n for n in lasting + bases if n.snapshot is None), None)) is not None:
            notes.append(f"the snapshot of {gone.name} is gone here (deleted by hand?), so it cannot be a parent")
        if (deep := next((n for n in lasting if n.snapshot is not None and n.depth + 1 > self.max_chain),
                         None)) is not None:
            notes.append(f"an incremental on {deep.name} would be {deep.depth + 1} deep (max-chain {self.max_chain})")
        usable = [n for n in lasting if n.snapshot is not None and n.depth + 1 <= self.max_chain][:CANDIDATES]
        usable += [n for n in bases if n.snapshot is not None and self.max_chain >= 1][:1]
        note = "".join(f"; {n}" for n in notes)
        full_bytes = self.estimate(snap, None) if self.estimate is not None and usable else None

        def full(why: str) -> Step:
            return Step(snap, None, None, 0, f"full ({what}): {why}{note}", life.tier, life.until, full_bytes)

        if not usable:
            if not older:
                return full("the first backup of this subvolume here")
            return full(f"no backup here and on the target is kept as long ({_date(life.until)}) or is a full "
                        "to build on")
        choice = self._cheapest(snap, when, life, usable, full_bytes)
        if choice is None:
            return full("a full costs less to keep than any delta (estimates)")
        best, size, extra = choice
        if size is not None and full_bytes is not None and size > self.full_threshold * full_bytes:
            return full(f"the smallest delta, on {best.name}, is {size} bytes, more than "
                        f"{self.full_threshold:.0%} of a full ({full_bytes} bytes)")
        delta = f" (~{size} bytes)" if size is not None else ""
        if extra:
            on = (f"on {best.name}, a full kept until {_date(self._kept_until(best))}, then as its base "
                  f"until {_date(life.until)}")
        else:
            on = f"on {best.name}, {best.life.describe()}"
        return Step(snap, best.snapshot, best.backup_id, best.depth + 1,
                    f"incremental {on}{delta}; this one is {what} (chain depth {best.depth + 1}){note}",
                    life.tier, life.until, size)

    def _cheapest(self, snap: LocalSnapshot, when: datetime, life: Lifetime, usable: list[_Node],
                  full_bytes: int | None) -> tuple[_Node, int | None, bool] | None:
        """The usable parent with the fewest byte-days stored over the child's lifetime (the
        delta, plus a base's own bytes for the time it is held longer for this child), or None
        where a full costs less.  Without estimates: the newest parent kept long enough, else
        the newest base."""
        days = _days(when, life.until)
        priced: list[tuple[float, _Node, int | None, bool]] = []
        for n in usable:
            extension = _days(self._kept_until(n), life.until) if n.life.until < life.until else 0.0
            delta = self.estimate(snap, n.snapshot) if self.estimate is not None else None
            if delta is None:
                priced.append((float("inf"), n, None, extension > 0))
                continue
            base = (n.size if n.size is not None else full_bytes or 0) * extension
            priced.append((delta * days + base, n, delta, extension > 0))
        known = [p for p in priced if p[0] != float("inf")]
        if not known:
            first = priced[0]
            return first[1], None, first[3]
        cost, best, size, extra = min(known, key=lambda p: (p[0], -p[1].time.timestamp()))
        if full_bytes is not None and full_bytes * days <= cost:
            return None
        return best, size, extra


@dataclass(frozen=True, slots=True)
class Anchor:
    """A local snapshot future backups of a target will be sent on: keep it while ``until``."""

    snapshot_uuid: str
    backup_id: str
    reason: str
    until: datetime  # FOREVER: until the tree's next base


def anchors(held: Sequence[Held], policy: Policy | None, now: datetime, target: str) -> list[Anchor]:
    """The backups of ``held`` (one subvolume's, this host's) whose local snapshots later backups
    to ``target`` will use as parents: the first backup of each tier's current period (the
    parent of that period's later, shorter-kept backups) until the period ends, and the newest
    full (the base the longest-kept tier builds on) until a newer full replaces it."""
    if uses_tree(policy) is not None or not held:
        return []
    assert policy is not None
    held = sorted(held, key=lambda h: h.time)
    lives = lifetimes([h.time for h in held], policy)
    found: dict[str, Anchor] = {}
    fulls = [h for h in held if h.depth == 0]
    if fulls:  # first: where the base is also a tier's anchor, it outlasts that period
        base = fulls[-1]
        found[base.snapshot_uuid] = Anchor(
            base.snapshot_uuid, base.backup_id,
            f"base of the backup tree on {target} (the newest full: the longest-kept tier is sent on it) "
            "until a newer full replaces it", FOREVER)
    for rule in tier_rules(policy):
        key = period_key(rule, now, policy)
        for h, life in zip(held, lives):
            if rule in life.rules and period_key(rule, h.time, policy) == key:
                until = period_start(rule, now, policy, 1)
                found.setdefault(h.snapshot_uuid, Anchor(
                    h.snapshot_uuid, h.backup_id,
                    f"anchor of the {rule} tier for {target} until {until:%Y-%m-%d %H:%MZ} "
                    f"(the {rule} backup of {period_label(rule, now, policy)}: this period's later backups "
                    "are sent on it)", until))
    return list(found.values())


def tiers(backups: Iterable[tuple[str, tuple[str, str], datetime]],
          policy_for: Callable[[str], Policy | None]) -> dict[str, Lifetime]:
    """The ``Lifetime`` (tier, kept until) of each backup ``(id, (host, subvolume), time)`` under
    ``policy_for(subvolume)``: each host's backups of a subvolume are one history, as for prune."""
    histories: dict[tuple[str, str], list[tuple[str, datetime]]] = {}
    for backup_id, key, when in backups:
        histories.setdefault(key, []).append((backup_id, when))
    out: dict[str, Lifetime] = {}
    for (_host, subvolume), items in histories.items():
        policy = policy_for(subvolume)
        if policy is None or policy.is_empty():
            continue
        out.update(zip((i for i, _ in items), lifetimes([t for _, t in items], policy)))
    return out
