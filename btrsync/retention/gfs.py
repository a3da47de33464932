"""The pure, chain-safe GFS retention engine: decide, deletion order, and a simulator.

``decide`` maps a set of backups (``Item``: id, tz-aware time, parent id) and a ``Policy`` to
one ``Decision`` per item, with human reasons.  Semantics (docs/retention.md has the reasoning):

* calendar periods (hour, day, week, month, year) are computed in the policy's timezone; weeks
  start on ``policy.week_start`` (ISO Monday by default); the repeated hour of a DST fall-back
  counts as two hours;
* a period is represented by its **first** (oldest) backup; ``keep_daily=N`` keeps the
  representatives of the N newest days **that have a backup** (empty days use no slot);
* ``keep_last`` keeps the N newest backups, ``keep_within`` every backup at most that long
  before ``now``; the newest backup not in the future is always kept;
* backups dated after ``now`` are always kept and take part in no rule;
* an empty policy (no rule set, or all zero) keeps everything;
* protected ids are kept with the caller's reason;
* the kept set is closed under ``parent``: every ancestor of a kept backup is kept.

Nothing here does I/O; times are compared as instants, never as wall-clock values.
"""

from __future__ import annotations

import bisect
import heapq
import math
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from types import MappingProxyType
from typing import Literal, TypeVar

from btrsync.retention.policy import PERIOD_RULES, UNLIMITED, Policy, show_count

Action = Literal["keep", "delete"]

UTC = timezone.utc
NEWEST = "newest"
FUTURE = "in the future"
NO_POLICY = "no policy"
PARENT_PREFIX = "parent of kept "
SUPERSEDED_PREFIX = "superseded in "
#: Largest history ``simulate`` generates (a year of one-minute backups).
MAX_SIMULATED = 600_000

_NOTHING_PROTECTED: Mapping[str, str] = MappingProxyType({})
_Reasons = dict[str, list[str]]
_T = TypeVar("_T")


@dataclass(frozen=True, slots=True)
class Item:
    """One backup: ``parent`` is the id it is an incremental on (None for a full)."""

    id: str
    time: datetime
    parent: str | None = None

    def __post_init__(self) -> None:
        """Reject naive times: retention compares instants."""
        _require_aware(self.time, f"item {self.id!r}: time")


@dataclass(frozen=True, slots=True)
class Decision:
    """What happens to one item, and why (reasons are short, human strings)."""

    id: str
    time: datetime
    action: Action
    reasons: tuple[str, ...] = ()

    @property
    def kept(self) -> bool:
        """True when the item is kept."""
        return self.action == "keep"


def _require_aware(value: datetime, what: str) -> None:
    """Raise ``ValueError`` unless ``value`` is a timezone-aware datetime."""
    if not isinstance(value, datetime) or value.utcoffset() is None:
        raise ValueError(f"{what}: expected a timezone-aware datetime, got {value!r}")


# --- calendar periods -------------------------------------------------------------------------
# Key functions map the local times (already in the policy timezone) of all items, and their local
# day ordinals, to period keys, compared for equality only; label functions name the period of
# one local time in reasons.  Both take the week start (0 = Monday).  Keys are computed in bulk
# (list comprehensions, no call per item): decide is O(n) per rule.


def _hour_keys(local: Sequence[datetime], days: Sequence[int], week_start: int) -> list[object]:
    """Local hours; ``fold`` separates the two passes through a DST fall-back hour."""
    return [(day * 24 + lt.hour) * 2 + lt.fold for day, lt in zip(days, local)]


def _day_keys(local: Sequence[datetime], days: Sequence[int], week_start: int) -> list[object]:
    """Local calendar days (proleptic ordinals)."""
    return list(days)


def _week_keys(local: Sequence[datetime], days: Sequence[int], week_start: int) -> list[object]:
    """The ordinal of the local day each week starts on (ordinal 1 was a Monday)."""
    return [day - (day + 6 - week_start) % 7 for day in days]


def _month_keys(local: Sequence[datetime], days: Sequence[int], week_start: int) -> list[object]:
    """Local calendar months."""
    return [lt.year * 12 + lt.month for lt in local]


def _year_keys(local: Sequence[datetime], days: Sequence[int], week_start: int) -> list[object]:
    """Local calendar years."""
    return [lt.year for lt in local]


def _utc_offset(lt: datetime) -> str:
    """The UTC offset of ``lt`` as ``+HH:MM``."""
    offset = lt.utcoffset() or timedelta(0)
    minutes = int(offset.total_seconds()) // 60
    sign = "-" if minutes < 0 else "+"
    return f"{sign}{abs(minutes) // 60:02d}:{abs(minutes) % 60:02d}"


def _hour_label(lt: datetime, week_start: int) -> str:
    """``2026-11-24T13``; the offset is appended when the local hour occurs twice (DST)."""
    text = f"{lt.year:04d}-{lt.month:02d}-{lt.day:02d}T{lt.hour:02d}"
    twin = lt.replace(fold=1 - lt.fold)
    return text + _utc_offset(lt) if twin.utcoffset() != lt.utcoffset() else text


def _day_label(lt: datetime, week_start: int) -> str:
    """``2026-11-20``."""
    return lt.date().isoformat()


def _week_label(lt: datetime, week_start: int) -> str:
    """``2026-W47`` for ISO weeks; ``from 2026-11-22`` when weeks start on another day."""
    if week_start == 0:
        year, week, _ = lt.isocalendar()
        return f"{year:04d}-W{week:02d}"
    first_day = lt.date() - timedelta(days=(lt.weekday() - week_start) % 7)
    return f"from {first_day.isoformat()}"


def _month_label(lt: datetime, week_start: int) -> str:
    """``2026-11``."""
    return f"{lt.year:04d}-{lt.month:02d}"


def _year_label(lt: datetime, week_start: int) -> str:
    """``2026``."""
    return f"{lt.year:04d}"


_Keys = Callable[[Sequence[datetime], Sequence[int], int], list[object]]
_Label = Callable[[datetime, int], str]
_PERIODS: dict[str, tuple[_Keys, _Label]] = {
    "hourly": (_hour_keys, _hour_label),
    "daily": (_day_keys, _day_label),
    "weekly": (_week_keys, _week_label),
    "monthly": (_month_keys, _month_label),
    "yearly": (_year_keys, _year_label),
}


def period_label(rule: str, when: datetime, policy: Policy) -> str:
    """The name of the ``rule`` period (``"daily"``...) containing ``when``, e.g. ``2026-W47``."""
    _require_aware(when, "when")
    return _PERIODS[rule][1](when.astimezone(policy.tz), policy.week_start)


def period_keys(rule: str, local: Sequence[datetime], week_start: int) -> list[object]:
    """``period_key`` of many local times (already in the policy's timezone) at once."""
    return _PERIODS[rule][0](local, [lt.toordinal() for lt in local], week_start)


def period_key(rule: str, when: datetime, policy: Policy) -> object:
    """The key ``decide`` gives the ``rule`` period holding ``when`` (equal keys: same period)."""
    _require_aware(when, "when")
    local = when.astimezone(policy.tz)
    return _PERIODS[rule][0]([local], [local.toordinal()], policy.week_start)[0]


def _first_of_each(keys: Sequence[object]) -> list[int]:
    """Indices of the first occurrence of each key, in order (one C-level pass, no Python loop)."""
    last = len(keys) - 1
    firsts = dict(zip(reversed(keys), range(last, -1, -1)))  # later (= earlier index) wins
    return sorted(firsts.values())


# --- decide -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Present:
    """The items not in the future, oldest first, with their local times and period keys."""

    items: list[Item]
    stamps: list[float]
    local: list[datetime]
    keys: dict[str, list[object]]  # per period rule the policy uses
    week_start: int


def decide(
    items: Iterable[Item],
    policy: Policy,
    now: datetime,
    *,
    protected: Mapping[str, str] = _NOTHING_PROTECTED,
) -> list[Decision]:
    """Decide keep/delete for every item as of ``now``; oldest first (ties by id).

    ``protected`` maps ids to a reason; those items are kept.  Raises ``ValueError`` on naive
    times or duplicate ids.  Runs in O(n log n).
    """
    run = _evaluate(items, policy, now, protected)
    return _decisions(run.ordered, run.reasons, _superseded(run.reasons, run.present, run.selected))


@dataclass(frozen=True, slots=True)
class _Run:
    """What ``_evaluate`` found: the items in order and the reasons of every kept one."""

    ordered: list[Item]
    present: _Present
    reasons: _Reasons  # kept ids only
    selected: dict[str, dict[object, str]]  # per period rule: kept period key -> label


def _evaluate(
    items: Iterable[Item], policy: Policy, now: datetime, protected: Mapping[str, str]
) -> _Run:
    """Apply protection, the future rule, the policy and the parent closure."""
    _require_aware(now, "now")
    ordered, stamps = _chronological(items)
    cut = bisect.bisect_right(stamps, now.timestamp())
    reasons = _protected_reasons(ordered, protected)
    _add(reasons, ordered[cut:], FUTURE)
    present = _present(ordered[:cut], stamps[:cut], policy)
    selected = _apply_rules(reasons, present, policy, now)
    _close_under_parents(ordered, reasons)
    return _Run(ordered, present, reasons, selected)


def _chronological(items: Iterable[Item]) -> tuple[list[Item], list[float]]:
    """Items sorted by (instant, id), and their POSIX timestamps; reject duplicate ids.

    Timestamps keep microsecond order exactly until 2242 and compare fast.  Sorting by instant
    alone suffices unless two items share one; only then is the (slower) id order applied
    first, and a stable sort by instant keeps it among equals.
    """
    ordered = sorted(items, key=_item_stamp)
    stamps = [item.time.timestamp() for item in ordered]
    if any(a == b for a, b in zip(stamps, stamps[1:])):
        ordered.sort(key=_item_id)
        ordered.sort(key=_item_stamp)
    if len({item.id for item in ordered}) != len(ordered):
        dupes = sorted(i for i, n in Counter(item.id for item in ordered).items() if n > 1)
        raise ValueError(f"duplicate item ids: {', '.join(map(repr, dupes[:5]))}")
    return ordered, stamps


def _item_id(item: Item) -> str:
    """Sort key: the id."""
    return item.id


def _item_stamp(item: Item) -> float:
    """Sort key: the instant."""
    return item.time.timestamp()


def _present(items: list[Item], stamps: list[float], policy: Policy) -> _Present:
    """Local times and the period keys of every period rule in use."""
    tz, week_start = policy.tz, policy.week_start
    local = [item.time.astimezone(tz) for item in items]
    days = [lt.toordinal() for lt in local]
    rules = [] if policy.is_empty() else [r for r in PERIOD_RULES if policy.count(r) is not None]
    keys = {rule: _PERIODS[rule][0](local, days, week_start) for rule in rules}
    return _Present(items, stamps, local, keys, week_start)


def _protected_reasons(items: Sequence[Item], protected: Mapping[str, str]) -> _Reasons:
    """Start the reasons with the caller's protections (ids not among the items are ignored)."""
    return {item.id: [protected[item.id]] for item in items if item.id in protected}


def _add(reasons: _Reasons, items: Iterable[Item], reason: str) -> None:
    """Record ``reason`` for each of ``items``."""
    for item in items:
        reasons.setdefault(item.id, []).append(reason)


def _newest(seq: Sequence[_T], count: int) -> Sequence[_T]:
    """The last ``count`` elements (all for ``UNLIMITED``, none for 0)."""
    if count == UNLIMITED:
        return seq
    return seq[max(0, len(seq) - count) :] if count > 0 else seq[:0]


def _apply_rules(
    reasons: _Reasons, present: _Present, policy: Policy, now: datetime
) -> dict[str, dict[object, str]]:
    """Apply every rule to the present items; return each period rule's kept periods (labels)."""
    items = present.items
    if policy.is_empty():
        _add(reasons, items, NO_POLICY)
        return {}
    _add(reasons, items[-1:], NEWEST)
    if policy.keep_last is not None:
        _add(reasons, _newest(items, policy.keep_last), f"last {show_count(policy.keep_last)}")
    _keep_within(reasons, present, policy, now)
    return {
        rule: _keep_periods(reasons, rule, present, policy.count(rule))  # type: ignore[arg-type]
        for rule in present.keys
    }


def _keep_within(reasons: _Reasons, present: _Present, policy: Policy, now: datetime) -> None:
    """Keep every present item at most ``keep_within`` before ``now`` (boundary included)."""
    window = policy.within
    if window is None:
        return
    first = bisect.bisect_left(present.stamps, (now - window).timestamp())
    _add(reasons, present.items[first:], f"within {policy.keep_within}")


def _keep_periods(
    reasons: _Reasons, rule: str, present: _Present, count: int
) -> dict[object, str]:
    """Keep the first item of each of the newest ``count`` periods that have an item."""
    keys, label_of = present.keys[rule], _PERIODS[rule][1]
    kept: dict[object, str] = {}
    for index in _newest(_first_of_each(keys), count):
        kept[keys[index]] = label = label_of(present.local[index], present.week_start)
        reasons.setdefault(present.items[index].id, []).append(f"{rule} {label}")
    return kept


def _close_under_parents(items: Sequence[Item], reasons: _Reasons) -> None:
    """Keep every ancestor of every kept item, naming the kept descendant that needs it.

    Walking oldest first attributes a parent to its oldest kept descendant; every walk stops at
    an item already kept, so the whole closure is O(n) (and cycles terminate).
    """
    parent_of = {item.id: item.parent for item in items}
    for origin in [item.id for item in items if item.id in reasons]:
        parent = parent_of[origin]
        while parent is not None and parent in parent_of and parent not in reasons:
            reasons[parent] = [f"{PARENT_PREFIX}{origin}"]
            parent = parent_of[parent]


def _superseded(
    reasons: _Reasons, present: _Present, selected: dict[str, dict[object, str]]
) -> dict[str, tuple[str, ...]]:
    """For each deleted item, name the finest kept period it lies in (another item holds it).

    Computed per rule over the deleted items, coarsest first so that finer rules overwrite.
    """
    doomed = [n for n, item in enumerate(present.items) if item.id not in reasons]
    why: list[str] = [""] * len(doomed)
    for rule, kept in reversed(selected.items()):
        keys = present.keys[rule]
        named = {key: f"{SUPERSEDED_PREFIX}{rule} {label}" for key, label in kept.items()}
        why = [named.get(keys[n], old) for n, old in zip(doomed, why)]
    shared = {reason: (reason,) if reason else () for reason in set(why)}  # one tuple per reason
    return {present.items[n].id: shared[reason] for n, reason in zip(doomed, why)}


def _decisions(
    ordered: list[Item], reasons: _Reasons, why_not: dict[str, tuple[str, ...]]
) -> list[Decision]:
    """One decision per item, in order (a single comprehension: this runs for every item)."""
    return [
        Decision(item.id, item.time, "keep", tuple(reasons[item.id]))
        if item.id in reasons
        else Decision(item.id, item.time, "delete", why_not.get(item.id, ()))
        for item in ordered
    ]


# --- deletion order ---------------------------------------------------------------------------


def deletion_order(decisions: Iterable[Decision], items: Iterable[Item]) -> list[str]:
    """Ids to delete, every child before its parent, otherwise newest first.

    Deleting in this order, a crash at any point never leaves a surviving item whose parent was
    already deleted.  Items in a parent cycle (corrupt metadata) come last, newest first.
    Raises ``ValueError`` when a decision names an id not among ``items``.
    """
    parent_of = {item.id: item.parent for item in items}
    doomed = [d for d in decisions if d.action == "delete"]
    unknown = {d.id for d in doomed} - parent_of.keys()
    if unknown:
        raise ValueError(f"decisions for unknown items: {', '.join(sorted(unknown)[:5])}")
    doomed.sort(key=lambda d: d.id, reverse=True)
    doomed.sort(key=lambda d: d.time.timestamp(), reverse=True)  # stable: newest, then id
    rank = {d.id: n for n, d in enumerate(doomed)}
    if all(rank.get(parent_of[c], n + 1) > n for c, n in rank.items()):  # type: ignore[arg-type]
        return list(rank)  # the usual case: every doomed parent is older than its children
    waiting = Counter(rank[p] for c in rank if (p := parent_of[c]) in rank and p != c)
    ready = [(n, i) for i, n in rank.items() if n not in waiting]  # already a heap: ranks ascend
    order = _drain(ready, waiting, parent_of, rank)
    emitted = set(order)
    return order + [i for i in rank if i not in emitted]  # parent cycles, newest first


def _drain(
    ready: list[tuple[int, str]], waiting: Counter[int], parent_of: dict[str, str | None],
    rank: dict[str, int],
) -> list[str]:
    """Kahn's algorithm: emit ready ids; a parent becomes ready once its doomed children are out.

    ``waiting`` counts, per rank, the doomed children not yet emitted.
    """
    order: list[str] = []
    while ready:
        _, item_id = heapq.heappop(ready)
        order.append(item_id)
        parent = parent_of[item_id]
        if parent in rank and parent != item_id:
            waiting[rank[parent]] -= 1
            if waiting[rank[parent]] == 0:
                heapq.heappush(ready, (rank[parent], parent))
    return order


# --- simulation -------------------------------------------------------------------------------

_RULE_ORDER = ("newest", "last", "within", *PERIOD_RULES, "parent", "future", "no policy")


def reason_rule(reason: str) -> str:
    """The rule a keep reason of ``decide`` comes from: ``"daily"``, ``"parent"``...

    Anything that is not a rule's reason counts as ``"protected"`` (the caller's own reasons).
    """
    head, _, rest = reason.partition(" ")
    if reason == NEWEST or (rest and head in ("last", "within", *PERIOD_RULES)):
        return head
    if reason.startswith(PARENT_PREFIX):
        return "parent"
    return {FUTURE: "future", NO_POLICY: "no policy"}.get(reason, "protected")


@dataclass(frozen=True, slots=True)
class SimulationResult:
    """What a policy holds at ``end`` for a generated history, pruned as time advanced.

    ``held`` are the kept decisions of the last prune run (at ``end``) of the replay;
    ``one_shot`` are the ids one ``decide`` over the whole history as of ``end`` keeps.
    """

    policy: Policy
    start: datetime
    end: datetime
    every: timedelta
    max_chain: int | None
    prune_every: timedelta | None
    created: int
    prune_runs: int
    held: tuple[Decision, ...]
    one_shot: frozenset[str]

    @property
    def count(self) -> int:
        """How many backups are held at the end."""
        return len(self.held)

    @property
    def kept_times(self) -> tuple[datetime, ...]:
        """The times of the held backups, oldest first."""
        return tuple(d.time for d in self.held)

    @property
    def oldest_kept(self) -> datetime | None:
        """The oldest held backup's time (None when nothing is held)."""
        return self.held[0].time if self.held else None

    @property
    def per_rule(self) -> dict[str, int]:
        """How many held backups each rule keeps (a backup may count under several rules)."""
        counts = Counter(r for d in self.held for r in {reason_rule(x) for x in d.reasons})
        return {rule: counts[rule] for rule in _RULE_ORDER if counts[rule]}

    @property
    def parents_only(self) -> int:
        """How many held backups are kept only because a kept backup depends on them."""
        return sum(all(reason_rule(r) == "parent" for r in d.reasons) for d in self.held)

    @property
    def consistent(self) -> bool:
        """True when the replayed prunes hold exactly what one prune at the end would hold."""
        return self.one_shot == {d.id for d in self.held}


def simulate(
    policy: Policy,
    start: datetime,
    end: datetime,
    every: timedelta,
    *,
    max_chain: int | None = None,
    prune_every: timedelta | None = timedelta(days=1),
) -> SimulationResult:
    """Generate a backup every ``every`` from ``start`` to ``end`` and prune as time advances.

    With ``max_chain`` item i is a full when ``i % (max_chain + 1) == 0``, else an incremental
    on item i-1 (the push planner's rule); with ``None`` items are independent (snapshots).
    The replay prunes the survivors right after a backup whenever ``prune_every`` has passed
    since the last prune (``None``: after every backup), and once more at ``end``.
    """
    history = simulated_history(start, end, every, max_chain=max_chain)
    held, runs = _replay(history, policy, end, prune_every)
    one_shot = frozenset(d.id for d in decide(history, policy, end) if d.kept)
    return SimulationResult(
        policy, start, end, every, max_chain, prune_every, len(history), runs, held, one_shot
    )


def simulated_history(
    start: datetime, end: datetime, every: timedelta, *, max_chain: int | None = None
) -> list[Item]:
    """Backups ``#0``, ``#1``... every ``every`` (elapsed time) from ``start`` through ``end``."""
    _require_aware(start, "start")
    _require_aware(end, "end")
    if every <= timedelta(0) or end < start:
        raise ValueError("simulate: need every > 0 and start <= end")
    if max_chain is not None and max_chain < 0:
        raise ValueError(f"max_chain: expected a whole number >= 0 or None, got {max_chain!r}")
    total = (end.astimezone(UTC) - start.astimezone(UTC)) // every + 1
    if total > MAX_SIMULATED:
        raise ValueError(
            f"simulate: {total} backups is more than {MAX_SIMULATED}; use a larger step"
        )
    base = start.astimezone(UTC)
    return [Item(f"#{i}", base + i * every, _simulated_parent(i, max_chain)) for i in range(total)]


def _simulated_parent(index: int, max_chain: int | None) -> str | None:
    """The parent of the index-th simulated backup."""
    if max_chain is None or index % (max_chain + 1) == 0:
        return None
    return f"#{index - 1}"


def _replay(
    history: list[Item], policy: Policy, end: datetime, prune_every: timedelta | None
) -> tuple[tuple[Decision, ...], int]:
    """Add backups one by one, pruning the survivors as a timer would; return final keeps, runs.

    Intermediate prunes need only the kept set, not reasons for deletions or ``Decision``s.
    """
    survivors: list[Item] = []
    runs, last_prune = 0, None
    for item in history:
        survivors.append(item)
        if prune_every is None or last_prune is None or item.time - last_prune >= prune_every:
            kept = _evaluate(survivors, policy, item.time, _NOTHING_PROTECTED).reasons
            survivors = [s for s in survivors if s.id in kept]
            runs, last_prune = runs + 1, item.time
    final = decide(survivors, policy, end)
    return tuple(d for d in final if d.kept), runs + 1


# --- rendering --------------------------------------------------------------------------------


def render_simulation(result: SimulationResult, *, bar_width: int = 40) -> str:
    """A plain-text report: summary, per-rule counts, a month timeline, and every held backup."""
    sections = [
        _render_summary(result),
        _render_rules(result),
        _render_months(result, bar_width),
        _render_held(result),
    ]
    return "\n\n".join(sections) + "\n"


def _human(delta: timedelta) -> str:
    """``1h``, ``15min``, ``1d``, ``90s``: the largest unit that divides ``delta``."""
    seconds = int(delta.total_seconds())
    for unit, size in (("w", 604800), ("d", 86400), ("h", 3600), ("min", 60)):
        if seconds % size == 0 and seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{delta.total_seconds():g}s"


def _local(result: SimulationResult, when: datetime) -> str:
    """``when`` in the policy timezone, to the minute."""
    return when.astimezone(result.policy.tz).strftime("%Y-%m-%d %H:%M")


def _render_summary(result: SimulationResult) -> str:
    """The header: policy, history, chains, pruning, and what is held."""
    span = f"{_local(result, result.start)} .. {_local(result, result.end)}"
    lines = [
        "retention simulation",
        f"  policy   {result.policy.describe()}",
        f"  history  {result.created} backups every {_human(result.every)}, "
        f"{span} ({result.policy.timezone})",
        f"  chains   {_describe_chains(result.max_chain)}",
        f"  pruning  {result.prune_runs} runs ({_describe_cadence(result.prune_every)}, "
        f"and at the end); same as one prune at the end: {'yes' if result.consistent else 'NO'}",
        f"  held     {result.count} backups{_describe_oldest(result)}",
        f"  parents  {result.parents_only} kept only as chain parents",
    ]
    return "\n".join(lines)


def _describe_chains(max_chain: int | None) -> str:
    """How the simulated backups depend on each other."""
    if max_chain is None:
        return "independent snapshots (no chains)"
    return f"a full every {max_chain + 1} backups (max_chain {max_chain})"


def _describe_cadence(prune_every: timedelta | None) -> str:
    """How often the replay prunes."""
    if prune_every is None:
        return "after every backup"
    return f"at most once per {_human(prune_every)}"


def _describe_oldest(result: SimulationResult) -> str:
    """``, oldest 2026-01-01 00:00 (364 days before the end)`` or nothing."""
    oldest = result.oldest_kept
    if oldest is None:
        return ""
    return f", oldest {_local(result, oldest)} ({(result.end - oldest).days} days before the end)"


def _render_rules(result: SimulationResult) -> str:
    """Per-rule counts."""
    rows = [f"  {'rule':<10} {'kept':>6}"]
    rows += [f"  {rule:<10} {n:>6}" for rule, n in result.per_rule.items()]
    return "\n".join(rows)


def _months(result: SimulationResult) -> list[str]:
    """Every ``YYYY-MM`` from the start month to the end month, in the policy timezone."""
    tz = result.policy.tz
    first, last = result.start.astimezone(tz), result.end.astimezone(tz)
    index, stop = first.year * 12 + first.month - 1, last.year * 12 + last.month - 1
    return [f"{m // 12:04d}-{m % 12 + 1:02d}" for m in range(index, stop + 1)]


def _render_months(result: SimulationResult, bar_width: int) -> str:
    """A coarse timeline: held backups per month, with a bar."""
    per_month = Counter(_local(result, t)[:7] for t in result.kept_times)
    peak = max(per_month.values(), default=0)
    scale = 1.0 if peak <= bar_width else bar_width / peak
    rows = [f"  {'month':<8} {'kept':>6}"]
    for month in _months(result):
        n = per_month[month]
        rows.append(f"  {month:<8} {n:>6}  {'#' * (math.ceil(n * scale) if n else 0)}".rstrip())
    return "\n".join(rows)


def _render_held(result: SimulationResult) -> str:
    """Every held backup, oldest first, with its reasons."""
    rows = ["  held backups, oldest first"]
    rows += [f"  {_local(result, d.time)}  {d.id:<8} {', '.join(d.reasons)}" for d in result.held]
    return "\n".join(rows)
