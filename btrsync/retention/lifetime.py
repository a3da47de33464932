"""How long a retention policy keeps a backup, and its tier: what the tree planner builds on.

``decide`` (gfs.py) keeps, for each calendar rule, the *first* backup of each of the newest
``keep_<rule>`` periods that have a backup.  So when a backup is taken, whether it will be kept
and for how long is already known from its time and the backups before it:

* its **tier** is the coarsest rule in use (yearly, monthly, weekly, daily, hourly) whose period
  it is the first backup of; ``base`` when it is the first of none (kept only by ``keep_last``,
  ``keep_within`` or as the newest);
* it is **kept until** the start of the ``keep_<rule>``-th period after its own, for each rule it
  is the first of (the latest of these; ``unlimited`` is forever), and at least ``keep_within``
  after its time and ``keep_last`` backups' worth of the history's usual interval.

The "kept until" date assumes a backup in every period from now on (the schedule keeps
running). Where periods pass without a backup (a laptop in a drawer), ``decide`` counts only
periods that have one, so every backup is kept *longer* than this date, never shorter, and a
parent chosen to outlive its child (``until(parent) >= until(child)``) still does whenever the
child's periods nest in the parent's (a month's first backup and the days of that month);
where they do not (weeks straddle months), prune's chain closure keeps the parent as long as
the child needs it ("parent of kept ..."): never a broken chain, at worst a backup held longer.
"""

from __future__ import annotations

import statistics
from functools import lru_cache
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from btrsync.retention.periods import period_keys, period_label
from btrsync.retention.policy import UNLIMITED, Policy

#: Calendar rules, coarsest first: the order of the tiers.
COARSE_FIRST: tuple[str, ...] = ("yearly", "monthly", "weekly", "daily", "hourly")
BASE = "base"
FOREVER = datetime.max.replace(tzinfo=UTC)


def tier_rules(policy: Policy | None) -> tuple[str, ...]:
    """The calendar rules that keep something under ``policy``, coarsest first."""
    if policy is None or policy.is_empty():
        return ()
    return tuple(r for r in COARSE_FIRST if policy.count(r) not in (None, 0))


def period_start(rule: str, when: datetime, policy: Policy, later: int = 0) -> datetime:
    """The start of the ``rule`` period ``later`` periods after the one holding ``when`` (in the
    policy's timezone and week start; ``later=1`` is when the next period begins)."""
    tz = policy.tz
    local = when.astimezone(tz)
    if rule == "hourly":  # an hour is an hour of elapsed time, DST folds included
        top = local.replace(minute=0, second=0, microsecond=0).astimezone(UTC)
        return top + timedelta(hours=later)
    if rule == "daily":
        day = local.date() + timedelta(days=later)
    elif rule == "weekly":
        day = local.date() - timedelta(days=(local.weekday() - policy.week_start) % 7) + timedelta(weeks=later)
    elif rule == "monthly":
        months = local.year * 12 + local.month - 1 + later
        day = local.date().replace(year=months // 12, month=months % 12 + 1, day=1)
    elif rule == "yearly":
        day = local.date().replace(year=local.year + later, month=1, day=1)
    else:
        raise ValueError(f"not a calendar rule: {rule!r}")
    return datetime(day.year, day.month, day.day, tzinfo=tz).astimezone(UTC)


@dataclass(frozen=True, slots=True)
class Lifetime:
    """A backup's place in the policy: the periods it represents and until when it is kept."""

    rules: tuple[str, ...]  # the rules whose period it is the first backup of, coarsest first
    labels: tuple[str, ...]  # those periods' names (``2026-11``, ``2026-W47`` ...)
    until: datetime  # FOREVER where a rule it represents is unlimited

    @property
    def tier(self) -> str:
        return self.rules[0] if self.rules else BASE

    @property
    def period(self) -> str | None:
        return self.labels[0] if self.labels else None

    def describe(self) -> str:
        kept = "forever" if self.until == FOREVER else f"until {self.until:%Y-%m-%d %H:%MZ}"
        what = f"the {self.tier} backup of {self.period}" if self.rules else "of no period (base tier)"
        return f"{what}, kept {kept}"


def typical_interval(times: Sequence[datetime]) -> timedelta | None:
    """The median gap between consecutive ``times`` (None with fewer than two)."""
    ordered = sorted(times)
    gaps = [(b - a).total_seconds() for a, b in zip(ordered, ordered[1:]) if b > a]
    return timedelta(seconds=statistics.median(gaps)) if gaps else None


def lifetimes(times: Sequence[datetime], policy: Policy | None, *,
              interval: timedelta | None = None) -> list[Lifetime]:
    """The ``Lifetime`` of each backup of one history (``times``, in any order; result in the
    same order).  ``interval`` prices ``keep_last`` (default: the history's typical interval).
    Without a policy, or with one that keeps everything, every backup is kept forever."""
    if policy is None or policy.is_empty():
        return [_FOREVER_BASE for _ in times]
    rules = tier_rules(policy)
    if interval is None and policy.keep_last not in (None, 0):
        interval = typical_interval(times)
    order = sorted(range(len(times)), key=times.__getitem__)
    tz = policy.tz
    local = [times[i].astimezone(tz) for i in order]
    keys = {rule: period_keys(rule, local, policy.week_start) for rule in rules}
    seen: dict[str, set[object]] = {r: set() for r in rules}
    out: list[Lifetime] = [_FOREVER_BASE] * len(times)
    for j, index in enumerate(order):
        firsts = []
        for rule in rules:
            key = keys[rule][j]
            if key not in seen[rule]:
                seen[rule].add(key)
                firsts.append(rule)
        out[index] = _lifetime(policy, times[index], tuple(firsts), interval)
    return out


_FOREVER_BASE = Lifetime((), (), FOREVER)


@lru_cache(maxsize=1 << 16)
def _lifetime(policy: Policy, t: datetime, firsts: tuple[str, ...], interval: timedelta | None) -> Lifetime:
    """One backup's lifetime from the rules it is the first of (cached: a planner asks again
    for every backup it holds at every push)."""
    until = t
    for rule in firsts:
        count = policy.count(rule)
        until = FOREVER if count == UNLIMITED else max(until, period_start(rule, t, policy, count))
    within, last = policy.within, policy.keep_last
    if within is not None and until != FOREVER:
        until = max(until, t + within)
    if last is not None and last != 0 and until != FOREVER:
        until = FOREVER if last == UNLIMITED else max(until, t + last * (interval or timedelta(0)))
    return Lifetime(firsts, tuple(period_label(r, t, policy) for r in firsts), until)
