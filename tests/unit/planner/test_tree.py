"""The retention-aware tree: tiers and lifetimes, parent choice, anchors, and what the strategies
cost over years of pushes and prunes (the pure parts; tests/integration/test_tree.py runs it on
real btrfs)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from btrsync.planner.pricing import Churn, price, render_prices
from btrsync.planner.tree import Held, anchors, plan_tree, uses_tree
from btrsync.retention import Item, decide, simulate
from btrsync.retention.lifetime import BASE, FOREVER, lifetimes, period_start
from btrsync.retention.policy import Policy

GFS = Policy(keep_daily=7, keep_weekly=4, keep_monthly=12)
T = datetime(2026, 11, 20, 3, 0, tzinfo=UTC)  # a Friday


@dataclass(frozen=True)
class Snap:
    name: str
    uuid: str
    time: datetime


def _t(days: float) -> datetime:
    return T + timedelta(days=days)


# --- lifetimes ---------------------------------------------------------------------------------


def test_tier_is_the_coarsest_period_a_backup_is_first_of_and_until_follows_the_counts() -> None:
    times = [_t(0), _t(1), _t(3), _t(3.5), _t(11)]  # Fri 11-20, Sat, Mon 11-23, Mon again, Tue 12-01
    lives = lifetimes(times, GFS)
    assert [lf.tier for lf in lives] == ["monthly", "daily", "weekly", BASE, "monthly"]
    assert lives[0].labels == ("2026-11", "2026-W47", "2026-11-20")
    assert lives[0].until == datetime(2027, 11, 1, tzinfo=UTC)  # the 12th month after November
    assert lives[1].until == datetime(2026, 11, 28, tzinfo=UTC)  # 7 days after the 21st's start
    assert lives[2].until == datetime(2026, 12, 21, tzinfo=UTC)  # 4 weeks after W48's Monday
    assert lives[3].until == _t(3.5)  # the second backup of a day: kept only while newest
    assert lifetimes(list(reversed(times)), GFS)[::-1] == lives  # order of the input does not matter


def test_periods_follow_the_policy_timezone_and_week_start() -> None:
    berlin = Policy(keep_weekly=2, timezone="Europe/Berlin", week_start=6)  # weeks start on Sunday
    when = datetime(2026, 11, 21, 23, 30, tzinfo=UTC)  # Sunday 00:30 in Berlin
    assert period_start("weekly", when, berlin) == datetime(2026, 11, 21, 23, 0, tzinfo=UTC)
    assert period_start("weekly", when, berlin, 2) == datetime(2026, 12, 5, 23, 0, tzinfo=UTC)
    assert period_start("monthly", datetime(2026, 3, 29, 12, tzinfo=UTC), berlin, 1) == \
        datetime(2026, 3, 31, 22, 0, tzinfo=UTC)  # April 1st, summer time


def test_unlimited_keep_within_and_keep_last_extend_the_lifetime() -> None:
    lives = lifetimes([_t(0), _t(1), _t(2)], Policy(keep_monthly=-1, keep_within="10d", keep_last=3))
    assert lives[0].until == FOREVER
    assert lives[1].until == _t(11)  # within 10 days beats the last 3 at one a day
    assert lifetimes([_t(0)], None) == lifetimes([_t(0)], Policy()) and lifetimes([_t(0)], None)[0].until == FOREVER


def test_keep_within_and_keep_last_lifetimes() -> None:
    within = lifetimes([_t(0), _t(0.5)], Policy(keep_daily=1, keep_within="10d"))
    assert within[1].until == _t(10.5)
    last = lifetimes([_t(0), _t(0.5), _t(1.5)], Policy(keep_daily=1, keep_last=4))
    assert last[1].until == _t(0.5) + 4 * timedelta(days=0.75)  # the history's median gap


# --- the planner -----------------------------------------------------------------------------


def _size_model(churn: Churn):  # noqa: ANN202
    def estimate(child: Snap, parent: Snap | None) -> int:
        return churn.size if parent is None else churn.delta((child.time - parent.time).total_seconds() / 86400)
    return estimate


def _replay(policy: Policy, days: list[float], max_chain: int = 30, churn: Churn | None = None):  # noqa: ANN202
    """Push (tree) and prune at each of ``days``; returns the steps and what is held."""
    churn = churn or Churn(100 << 30, 1 << 30, 0.1)
    held: dict[str, tuple[Snap, str | None, int, int]] = {}
    steps = []
    for i, day in enumerate(days):
        snap = Snap(f"s{i}", f"u{i}", _t(day))
        snaps = sorted((v[0] for v in held.values()), key=lambda s: s.time) + [snap]
        plan = plan_tree(snaps, [Held(k, v[0].uuid, v[0].time, v[2], v[1], v[3]) for k, v in held.items()], policy,
                         time_of=lambda s: s.time, max_chain=max_chain, backup_id_for=lambda s: s.name,
                         estimate=_size_model(churn))
        [step] = plan.steps
        steps.append(step)
        size = step.estimated_bytes or 0
        held[snap.name] = (snap, step.parent_backup_id, step.depth, size)
        decisions = decide([Item(k, v[0].time, v[1]) for k, v in held.items()], policy, _t(day))
        for d in decisions:
            if not d.kept:
                del held[d.id]
    return steps, held, decisions


def test_two_years_of_daily_backups_hold_the_policy_plus_the_base() -> None:
    steps, held, decisions = _replay(GFS, [float(d) for d in range(730)])
    parents_only = [d.id for d in decisions if d.kept and all(r.startswith("parent of kept") for r in d.reasons)]
    assert len(held) - len(parents_only) <= 7 + 4 + 12
    assert len(parents_only) <= 1 and all(held[p][2] == 0 for p in parents_only)  # only the base, a full
    assert max(v[2] for v in held.values()) <= 3  # base <- monthly <- weekly <- daily
    assert sum(s.parent is None for s in steps) == 1  # the data stays close to its base: one full
    # every step's parent is kept at least as long as the child, or is a full (the base)
    lives = {s.snapshot.name: s.kept_until for s in steps}
    for s in steps:
        if s.parent is not None:
            assert lives[s.parent.name] >= s.kept_until or s.depth == 1, s


@settings(max_examples=30, deadline=None)
@given(st.lists(st.floats(min_value=0.05, max_value=9.0), min_size=5, max_size=90), st.integers(0, 3))
def test_irregular_schedules_never_break_a_chain_and_stay_shallow(gaps: list[float], seed: int) -> None:
    """Laptop schedules (gaps of an hour to nine days): whatever the gaps, every held backup's
    chain is held (prune's closure), chains stay within the tiers plus the base, and the
    backups held only as parents stay few."""
    days, t = [], 0.0
    for g in gaps:
        t += g
        days.append(t)
    policy = [GFS, Policy(keep_hourly=6, keep_daily=3, keep_weekly=2), Policy(keep_daily=5, keep_yearly=2),
              Policy(keep_weekly=3, keep_monthly=3, keep_within="2d")][seed]
    steps, held, decisions = _replay(policy, days)
    for v in held.values():
        assert v[1] is None or v[1] in held  # no held backup lost its parent
    assert max(v[2] for v in held.values()) <= len([r for r in ("hourly", "daily", "weekly", "monthly", "yearly")
                                                    if policy.count(r)]) + 1
    parents_only = [d for d in decisions if d.kept and all(r.startswith("parent of kept") for r in d.reasons)]
    assert len(parents_only) <= 3, parents_only


def test_no_calendar_rule_keeps_the_linear_chain_and_says_why() -> None:
    assert uses_tree(Policy(keep_last=5)) == \
        "the policy has no calendar rule (keep_last/keep_within only): a linear chain"
    assert uses_tree(None) is not None and uses_tree(GFS) is None


def test_a_full_when_the_best_delta_is_over_the_threshold_and_a_fallback_when_an_anchor_is_gone() -> None:
    snaps = [Snap("a", "ua", _t(0)), Snap("b", "ub", _t(3)), Snap("c", "uc", _t(4))]
    held = [Held("A", "ua", _t(0), 0, None, 1000, "a"), Held("B", "ub", _t(3), 1, "A", 100, "b")]

    def big(child: Snap, parent: Snap | None) -> int:
        return 1000 if parent is None else 600

    plan = plan_tree(snaps, held, GFS, time_of=lambda s: s.time, max_chain=30, backup_id_for=lambda s: s.name.upper(),
                     estimate=big)
    [step] = plan.steps
    assert step.parent is None and "more than 50% of a full (1000 bytes)" in step.reason, step.reason
    plan = plan_tree([snaps[0], snaps[2]], held, GFS, time_of=lambda s: s.time, max_chain=30,
                     backup_id_for=lambda s: s.name.upper(), estimate=lambda c, p: 10 if p else 1000)
    [step] = plan.steps  # b's snapshot is gone here: c goes on a, and the plan says why
    assert step.parent == snaps[0] and "the snapshot of b is gone here" in step.reason, step.reason
    plan = plan_tree(snaps, held, GFS, time_of=lambda s: s.time, max_chain=30, backup_id_for=lambda s: s.name,
                     estimate=lambda c, p: 10 if p else 1000, unusable={"B": "found damaged by verify"})
    [step] = plan.steps
    assert step.parent == snaps[0] and "not a parent: b (found damaged by verify)" in step.reason


def test_anchors_are_this_periods_first_backups_and_the_base() -> None:
    held = [Held("A", "ua", _t(0), 0), Held("B", "ub", _t(3), 1, "A"), Held("C", "uc", _t(4), 2, "B")]
    found = {a.backup_id: a for a in anchors(held, GFS, _t(4.5), "b2")}
    assert set(found) == {"A", "B", "C"}  # November's first (and the base), this week's, today's
    assert found["B"].until == datetime(2026, 11, 30, tzinfo=UTC)
    assert found["B"].reason.startswith("anchor of the weekly tier for b2 until 2026-11-30 00:00Z")
    assert anchors(held, Policy(keep_last=3), _t(4.5), "b2") == []


# --- pricing -----------------------------------------------------------------------------------


def test_two_years_priced_the_issues_figures_and_the_tree_under_a_third() -> None:
    churn = Churn(100 << 30, 2 << 30, 0.1)
    linear = price(GFS, T, _t(730), timedelta(days=1), churn, strategy="linear", max_chain=30)
    tree = price(GFS, T, _t(730), timedelta(days=1), churn, strategy="tree", max_chain=30)
    same = simulate(GFS, T, _t(730), timedelta(days=1), max_chain=30)  # the linear simulator's count
    assert (linear.held, linear.parents_only) == (same.count, same.parents_only) and linear.parents_only > 80
    assert tree.held <= 23 and tree.parents_only <= 1 and tree.deepest <= 5
    assert tree.stored_end <= 0.35 * linear.stored_end and tree.stored_mean <= 0.35 * linear.stored_mean
    text = render_prices([linear, tree], churn)
    assert f"tree stores {tree.stored_end / linear.stored_end:.2f}x what linear does" in text and "held at the end" in text


def test_churn_model_saturates_at_the_working_set() -> None:
    churn = Churn(100, 10, 0.5)
    assert churn.delta(0) == 0 and churn.delta(1) < 10 and churn.delta(1000) <= 50
    with pytest.raises(ValueError):
        Churn(0, 1)
