"""Property-based tests of the GFS retention engine over random histories and policies.

The period rules are checked against a deliberately slow, independent reference: it ranks
periods by comparing calendar values (dates, (year, month), UTC offsets) instead of the
engine's integer keys and first-occurrence bookkeeping.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone
from zoneinfo import ZoneInfo

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from btrsync.retention import UNLIMITED, Decision, Item, Policy, decide, deletion_order
from btrsync.retention.policy import PERIOD_RULES, show_count

UTC = timezone.utc
ZONES = ["UTC", "Europe/Berlin", "America/New_York", "Australia/Lord_Howe", "Asia/Kolkata"]
# Bases near a year boundary, a spring DST change and an autumn DST change.
BASES = [datetime(2025, 12, 20, tzinfo=UTC), datetime(2026, 3, 25, tzinfo=UTC),
         datetime(2026, 10, 22, tzinfo=UTC)]  # fmt: skip
SPANS = [3 * 3600, 4 * 86400, 70 * 86400, 3 * 366 * 86400]
# Items carry their times in assorted fixed offsets; the engine must compare instants.
SHOWN_IN = [timezone(timedelta(minutes=m)) for m in (0, 60, -300, 330, 765, -570, 840)]

PROPERTY = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@dataclass(frozen=True, slots=True)
class Case:
    """A random history, the moment of the prune, and what the caller protects."""

    items: list[Item]
    now: datetime
    protected: dict[str, str]


# Strategies are built once: constructing them per example dominated the runtime.
RAW = st.integers(0, 2**31)
BASE_AND_SPAN = st.tuples(st.sampled_from(BASES), st.sampled_from(SPANS))
PICKS = st.lists(st.integers(0, 255), max_size=3)


@functools.cache
def raw_items(max_items: int) -> st.SearchStrategy[list[tuple[int, int]]]:
    """(time offset, parent choice) pairs."""
    return st.lists(st.tuples(RAW, st.integers(0, 255)), max_size=max_items)


@st.composite
def cases(draw: st.DrawFn, *, max_items: int = 30) -> Case:
    """Random times (in random fixed offsets), a forest of parent links, some missing parents."""
    base, span = draw(BASE_AND_SPAN)
    items: list[Item] = []
    for n, (raw, link) in enumerate(draw(raw_items(max_items))):
        offset = raw % (span + 1)
        when = (base + timedelta(seconds=offset)).astimezone(SHOWN_IN[offset % len(SHOWN_IN)])
        choices = [None, "gone"] + [f"i{k}" for k in range(n)]  # earlier-generated: acyclic
        items.append(Item(f"i{n}", when, choices[link % len(choices)]))
    now = base + timedelta(seconds=draw(RAW) % (span + 3 * 86400 + 3601) - 3600)
    chosen = {items[k % len(items)].id for k in draw(PICKS)} if items else set()
    return Case(items, now, {i: f"protected {i}" for i in sorted(chosen)})


COUNTS = st.one_of(st.none(), st.integers(0, 6), st.just(UNLIMITED))
POLICIES = st.builds(
    Policy,
    keep_last=COUNTS,
    keep_hourly=COUNTS,
    keep_daily=COUNTS,
    keep_weekly=COUNTS,
    keep_monthly=COUNTS,
    keep_yearly=COUNTS,
    keep_within=st.sampled_from([None, None, "3h", "36h", "7d", "2w"]),
    timezone=st.sampled_from(ZONES),
    week_start=st.sampled_from([0, 0, 6, 2]),
)


def policies() -> st.SearchStrategy[Policy]:
    """Random policies (counts unused, small, or unlimited), including empty ones."""
    return POLICIES


def kept_ids(decisions: list[Decision]) -> set[str]:
    """Ids of kept items."""
    return {d.id for d in decisions if d.kept}


def chronological(items: list[Item]) -> list[Item]:
    """Items by (instant, id), the engine's documented order."""
    return sorted(items, key=lambda i: (i.time, i.id))


# --- the slow reference -----------------------------------------------------------------------


def reference_period(rule: str, item: Item, policy: Policy) -> tuple[object, str]:
    """(a sortable period value, its label) for ``item`` under ``rule``, from calendar values."""
    lt = item.time.astimezone(ZoneInfo(policy.timezone))
    day = lt.date()
    if rule == "hourly":
        offset = lt.utcoffset() or timedelta(0)
        both = {lt.replace(fold=f).utcoffset() for f in (0, 1)}
        label = f"{day}T{lt.hour:02d}"
        if len(both) > 1:
            sign = "+" if offset >= timedelta(0) else "-"
            minutes = abs(offset) // timedelta(minutes=1)
            label += f"{sign}{minutes // 60:02d}:{minutes % 60:02d}"
        return (day, lt.hour, -offset), label  # first pass of a repeated hour has the larger offset
    if rule == "daily":
        return day, day.isoformat()
    if rule == "weekly":
        first: date = day - timedelta(days=(day.weekday() - policy.week_start) % 7)
        if policy.week_start == 0:
            iso = first.isocalendar()
            return first, f"{iso.year}-W{iso.week:02d}"
        return first, f"from {first.isoformat()}"
    if rule == "monthly":
        return (lt.year, lt.month), f"{lt.year:04d}-{lt.month:02d}"
    return lt.year, f"{lt.year:04d}"


def reference_keep(
    rule: str, items: list[Item], policy: Policy, now: datetime
) -> set[tuple[str, str]]:
    """O(n^2): the first item of every period with fewer than N newer periods that have items."""
    limit = policy.count(rule)
    if limit is None or policy.is_empty():
        return set()
    present = [i for i in items if i.time <= now]
    period = {i.id: reference_period(rule, i, policy) for i in present}
    values = {p for p, _ in period.values()}
    expected = set()
    for item in present:
        value, label = period[item.id]
        newer = sum(1 for other in values if other > value)  # type: ignore[operator]
        first = all((item.time, item.id) <= (o.time, o.id) for o in present
                    if period[o.id][0] == value)  # fmt: skip
        if first and (limit == UNLIMITED or newer < limit):
            expected.add((item.id, f"{rule} {label}"))
    return expected


# --- properties -------------------------------------------------------------------------------


@PROPERTY
@given(cases(), policies())
def test_each_period_rule_keeps_exactly_the_documented_points(case: Case, policy: Policy) -> None:
    decisions = decide(case.items, policy, case.now)
    for rule in PERIOD_RULES:
        actual = {(d.id, r) for d in decisions for r in d.reasons if r.startswith(f"{rule} ")}
        assert actual == reference_keep(rule, case.items, policy, case.now), rule


@PROPERTY
@given(cases(), policies())
def test_last_within_newest_and_future(case: Case, policy: Policy) -> None:
    decisions = {d.id: d for d in decide(case.items, policy, case.now)}
    present = chronological([i for i in case.items if i.time <= case.now])
    reasons = lambda item: decisions[item.id].reasons  # noqa: E731
    for item in case.items:
        assert ("in the future" in reasons(item)) == (item.time > case.now)
    if policy.is_empty():
        return
    if present:
        assert "newest" in reasons(present[-1])
    if policy.keep_last is not None:
        n = len(present) if policy.keep_last == UNLIMITED else policy.keep_last
        expected = {i.id for i in present[max(0, len(present) - n) :]} if n else set()
        label = f"last {show_count(policy.keep_last)}"
        assert {i.id for i in present if label in reasons(i)} == expected
    if policy.within is not None:
        inside = {i.id for i in present if i.time >= case.now - policy.within}
        assert {i.id for i in present if f"within {policy.keep_within}" in reasons(i)} == inside


@PROPERTY
@given(cases(), policies())
def test_kept_set_is_closed_under_parents(case: Case, policy: Policy) -> None:
    decisions = decide(case.items, policy, case.now, protected=case.protected)
    kept = kept_ids(decisions)
    known = {i.id for i in case.items}
    for item in case.items:
        if item.id in kept and item.parent in known:
            assert item.parent in kept


@PROPERTY
@given(cases(), policies())
def test_newest_protected_and_future_items_are_kept(case: Case, policy: Policy) -> None:
    decisions = {d.id: d for d in decide(case.items, policy, case.now, protected=case.protected)}
    if case.items:
        assert decisions[chronological(case.items)[-1].id].kept
    for item_id, reason in case.protected.items():
        assert decisions[item_id].kept and reason in decisions[item_id].reasons
    for item in case.items:
        assert decisions[item.id].kept or item.time <= case.now
        assert decisions[item.id].reasons or not decisions[item.id].kept


@PROPERTY
@given(cases())
def test_empty_policy_keeps_everything(case: Case) -> None:
    for policy in (Policy(), Policy(keep_last=0, keep_weekly=0, timezone="Europe/Berlin")):
        assert kept_ids(decide(case.items, policy, case.now)) == {i.id for i in case.items}


@PROPERTY
@given(cases(), policies())
def test_deciding_again_on_the_survivors_deletes_nothing(case: Case, policy: Policy) -> None:
    first = decide(case.items, policy, case.now, protected=case.protected)
    survivors = [i for i in case.items if i.id in kept_ids(first)]
    again = decide(survivors, policy, case.now, protected=case.protected)
    assert all(d.kept for d in again)
    assert [d.reasons for d in again] == [d.reasons for d in first if d.kept]


@PROPERTY
@given(cases(), policies())
def test_deletion_order_deletes_children_before_parents(case: Case, policy: Policy) -> None:
    decisions = decide(case.items, policy, case.now, protected=case.protected)
    order = deletion_order(decisions, case.items)
    assert sorted(order) == sorted(d.id for d in decisions if not d.kept)
    position = {item_id: n for n, item_id in enumerate(order)}
    parent_of = {i.id: i.parent for i in case.items}
    for child in order:
        parent = parent_of[child]
        if parent in position:
            assert position[child] < position[parent]
    # A crash after any prefix leaves no remaining item whose parent is already deleted.
    gone: set[str] = set()
    for item_id in order:
        gone.add(item_id)
        assert not any(parent_of[i] in gone for i in parent_of if i not in gone)


@PROPERTY
@given(cases(max_items=20), policies(), st.data())
def test_pruning_as_time_advances_equals_one_prune_at_the_end(
    case: Case, policy: Policy, data: st.DataObject
) -> None:
    """Backups arrive in time order, each a full or on a surviving backup; a timer prunes."""
    items = chronological(case.items)
    choices = data.draw(st.lists(st.tuples(st.integers(0, 255), st.booleans()),
                                 min_size=len(items), max_size=len(items)))  # fmt: skip
    survivors: list[Item] = []
    created: list[Item] = []
    for item, (link, prune) in zip(items, choices):
        parent = ([None] + [s.id for s in survivors])[link % (len(survivors) + 1)]
        created.append(Item(item.id, item.time, parent))
        survivors.append(created[-1])
        if prune:
            kept = kept_ids(decide(survivors, policy, item.time))
            survivors = [s for s in survivors if s.id in kept]
    end = max([case.now] + [i.time for i in created])
    assert kept_ids(decide(survivors, policy, end)) == kept_ids(decide(created, policy, end))
