"""The pure, chain-safe GFS retention engine: ``decide`` (periods: periods.py; deletion order:
order.py; the simulator: simulate.py and render.py).

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
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from types import MappingProxyType
from typing import Literal, TypeVar

from btrsync.retention.periods import _PERIODS, _first_of_each, _require_aware
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


