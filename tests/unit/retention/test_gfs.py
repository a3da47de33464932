"""Example-based tests of the GFS retention engine: exact kept points on hand-made histories."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from btrsync.retention import (
    UNLIMITED,
    Decision,
    Item,
    Policy,
    decide,
    deletion_order,
    parse_duration,
    period_label,
    reason_rule,
    render_simulation,
    simulate,
    simulated_history,
)

UTC = timezone.utc


def at(text: str) -> datetime:
    """A UTC instant from ``YYYY-MM-DDTHH:MM``."""
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def history(*times: str, chain: bool = False) -> list[Item]:
    """Items ``i0``, ``i1``... at the given UTC times; with ``chain`` each is on the previous."""
    return [
        Item(f"i{n}", at(t), f"i{n - 1}" if chain and n else None) for n, t in enumerate(times)
    ]


def kept(decisions: list[Decision]) -> dict[str, tuple[str, ...]]:
    """Kept ids and their reasons."""
    return {d.id: d.reasons for d in decisions if d.kept}


def deleted(decisions: list[Decision]) -> dict[str, tuple[str, ...]]:
    """Deleted ids and their reasons."""
    return {d.id: d.reasons for d in decisions if not d.kept}


def rule_hits(decisions: list[Decision], rule: str) -> dict[str, str]:
    """Id -> the reason given by ``rule`` (``"daily"``...), for items that rule keeps."""
    return {d.id: r for d in decisions for r in d.reasons if reason_rule(r) == rule}


# --- parse_duration and Policy ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("36h", timedelta(hours=36)),
        ("7d", timedelta(days=7)),
        ("2w", timedelta(days=14)),
        ("1m", timedelta(days=31)),
        ("1y", timedelta(days=366)),
        ("1y6m", timedelta(days=366 + 6 * 31)),
        (" 2 weeks 1 day ", timedelta(days=15)),
        ("12H", timedelta(hours=12)),
    ],
)
def test_parse_duration(text: str, expected: timedelta) -> None:
    assert parse_duration(text) == expected


@pytest.mark.parametrize("text", ["", "7", "7x", "d", "0d", "-1d", "1.5d", "7d junk", "1min"])
def test_parse_duration_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_duration(text)


def test_parse_duration_rejects_non_strings() -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_duration(7)  # type: ignore[arg-type]


def test_from_mapping_builds_the_policy() -> None:
    policy = Policy.from_mapping(
        {
            "keep_last": 3,
            "keep_daily": "7",
            "keep_monthly": "unlimited",
            "keep_yearly": "*",
            "keep_within": "36h",
            "timezone": "Europe/Berlin",
            "week_start": "Sun",
        }
    )
    assert policy == Policy(
        keep_last=3, keep_daily=7, keep_monthly=UNLIMITED, keep_yearly=UNLIMITED,
        keep_within="36h", timezone="Europe/Berlin", week_start=6,
    )  # fmt: skip
    assert policy.within == timedelta(hours=36)
    assert "keep_monthly=unlimited" in policy.describe()


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"keep_dayly": 7}, r"keep_dayly: unknown retention setting; did you mean 'keep_daily'\?"),
        ({"keep-weekly": 4}, r"did you mean 'keep_weekly'"),
        ({"frobnicate": 1}, r"frobnicate: unknown retention setting; known: keep_last"),
        ({"keep_daily": -3}, r"keep_daily: expected a whole number >= 0 or 'unlimited', got -3"),
        ({"keep_hourly": True}, r"keep_hourly: expected a whole number"),
        ({"keep_weekly": 1.5}, r"keep_weekly: expected a whole number"),
        ({"keep_monthly": "lots"}, r"keep_monthly: expected a whole number"),
        ({"keep_within": "7 parsecs"}, r"keep_within: invalid duration '7 parsecs'"),
        ({"keep_within": 7}, r"keep_within: expected a duration"),
        ({"timezone": "Europe/Berln"}, r"timezone: unknown IANA timezone 'Europe/Berln'"),
        ({"timezone": "../etc"}, r"timezone: unknown IANA timezone"),
        ({"timezone": ""}, r"timezone: expected an IANA name"),
        ({"week_start": "someday"}, r"week_start: expected 0 \(Monday\) \.\. 6 \(Sunday\)"),
        ({"week_start": "t"}, r"week_start: expected"),
        ({"week_start": 7}, r"week_start: expected"),
    ],
)
def test_from_mapping_names_the_bad_key(settings: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Policy.from_mapping(settings)


def test_from_mapping_rejects_non_mappings() -> None:
    with pytest.raises(ValueError, match="retention: expected a mapping"):
        Policy.from_mapping(["keep_daily", 7])  # type: ignore[arg-type]


def test_constructor_validates_too() -> None:
    with pytest.raises(ValueError, match="keep_last"):
        Policy(keep_last=-2)


@pytest.mark.parametrize(
    ("policy", "empty"),
    [
        (Policy(), True),
        (Policy(timezone="Europe/Berlin"), True),
        (Policy(keep_last=0, keep_daily=0), True),
        (Policy(keep_last=1), False),
        (Policy(keep_yearly=UNLIMITED), False),
        (Policy(keep_within="1h"), False),
    ],
)
def test_is_empty(policy: Policy, empty: bool) -> None:
    assert policy.is_empty() is empty


# --- basic rules ------------------------------------------------------------------------------


def test_no_items_no_decisions() -> None:
    assert decide([], Policy(keep_daily=7), at("2026-11-24T12:00")) == []


def test_empty_policy_keeps_everything() -> None:
    items = history("2026-11-01T00:00", "2026-11-02T00:00", "2026-11-03T00:00")
    for policy in (Policy(), Policy(keep_daily=0)):
        decisions = decide(items, policy, at("2026-11-24T00:00"))
        assert kept(decisions) == dict.fromkeys(["i0", "i1", "i2"], ("no policy",))


def test_decisions_are_oldest_first_and_keep_the_item_time() -> None:
    berlin = datetime(2026, 11, 2, 9, tzinfo=timezone(timedelta(hours=1)))
    items = [Item("b", at("2026-11-03T00:00")), Item("a", berlin), Item("c", at("2026-11-01"))]
    decisions = decide(items, Policy(keep_last=3), at("2026-11-24T00:00"))
    assert [d.id for d in decisions] == ["c", "a", "b"]
    assert decisions[1].time is berlin


def test_equal_times_are_ordered_by_id() -> None:
    items = [Item("b", at("2026-11-03T00:00")), Item("a", at("2026-11-03T00:00"))]
    decisions = decide(items, Policy(keep_daily=1), at("2026-11-24T00:00"))
    assert kept(decisions) == {"a": ("daily 2026-11-03",), "b": ("newest",)}


def test_keep_last() -> None:
    items = history(*(f"2026-11-0{d}T00:00" for d in range(1, 6)))
    decisions = decide(items, Policy(keep_last=2), at("2026-11-24T00:00"))
    assert kept(decisions) == {"i3": ("last 2",), "i4": ("newest", "last 2")}
    assert deleted(decisions) == {"i0": (), "i1": (), "i2": ()}


def test_keep_last_more_than_there_are() -> None:
    items = history("2026-11-01T00:00", "2026-11-02T00:00")
    assert len(kept(decide(items, Policy(keep_last=5), at("2026-11-24T00:00")))) == 2


def test_newest_is_always_kept_and_others_are_superseded() -> None:
    items = history("2026-11-20T08:00", "2026-11-20T12:00", "2026-11-20T18:00")
    decisions = decide(items, Policy(keep_daily=1), at("2026-11-20T19:00"))
    assert kept(decisions) == {"i0": ("daily 2026-11-20",), "i2": ("newest",)}
    assert deleted(decisions) == {"i1": ("superseded in daily 2026-11-20",)}


def test_hourly_in_utc() -> None:
    items = history("2026-11-24T12:10", "2026-11-24T12:50", "2026-11-24T13:05", "2026-11-24T14:00")
    decisions = decide(items, Policy(keep_hourly=2), at("2026-11-24T14:30"))
    assert rule_hits(decisions, "hourly") == {
        "i2": "hourly 2026-11-24T13", "i3": "hourly 2026-11-24T14",
    }  # fmt: skip
    assert deleted(decisions) == {"i0": (), "i1": ()}


def test_keep_within_is_relative_to_now_and_inclusive() -> None:
    items = history("2026-11-22T23:59", "2026-11-23T00:00", "2026-11-24T00:00")
    decisions = decide(items, Policy(keep_within="36h"), at("2026-11-24T12:00"))
    assert kept(decisions) == {"i1": ("within 36h",), "i2": ("newest", "within 36h")}


def test_keep_within_keeps_only_the_newest_when_backups_stopped() -> None:
    items = history("2026-01-01T00:00", "2026-01-02T00:00")
    decisions = decide(items, Policy(keep_within="7d"), at("2026-11-24T00:00"))
    assert kept(decisions) == {"i1": ("newest",)}


# --- calendar periods -------------------------------------------------------------------------


def test_daily_uses_the_policy_timezone() -> None:
    items = history("2026-11-18T12:00", "2026-11-19T22:30", "2026-11-19T23:30", "2026-11-20T12:00")
    now = at("2026-11-20T13:00")
    berlin = decide(items, Policy(keep_daily=3, timezone="Europe/Berlin"), now)
    assert rule_hits(berlin, "daily") == {
        "i0": "daily 2026-11-18", "i1": "daily 2026-11-19", "i2": "daily 2026-11-20",
    }  # fmt: skip
    in_utc = decide(items, Policy(keep_daily=3), now)
    assert rule_hits(in_utc, "daily") == {
        "i0": "daily 2026-11-18", "i1": "daily 2026-11-19", "i3": "daily 2026-11-20",
    }  # fmt: skip


def test_dst_fall_back_hour_counts_twice_in_berlin() -> None:
    # 2026-10-25 01:00Z: 03:00 CEST becomes 02:00 CET, so 02:xx local happens twice.
    times = ["2026-10-24T23:30", "2026-10-25T00:00", "2026-10-25T00:30", "2026-10-25T01:00",
             "2026-10-25T01:30", "2026-10-25T02:00"]  # fmt: skip
    policy = Policy(keep_hourly=10, timezone="Europe/Berlin")
    decisions = decide(history(*times), policy, at("2026-10-25T02:10"))
    assert rule_hits(decisions, "hourly") == {
        "i0": "hourly 2026-10-25T01",
        "i1": "hourly 2026-10-25T02+02:00",
        "i3": "hourly 2026-10-25T02+01:00",
        "i5": "hourly 2026-10-25T03",
    }
    assert deleted(decisions) == {
        "i2": ("superseded in hourly 2026-10-25T02+02:00",),
        "i4": ("superseded in hourly 2026-10-25T02+01:00",),
    }
    two_hours = Policy(keep_hourly=2, timezone="Europe/Berlin")
    two = decide(history(*times), two_hours, at("2026-10-26T00:00"))
    assert set(rule_hits(two, "hourly")) == {"i3", "i5"}


def test_dst_spring_forward_day_has_23_hours_in_berlin() -> None:
    # 2026-03-29 01:00Z: 02:00 CET becomes 03:00 CEST.  Local 2026-03-29 runs 28T23:00Z..29T22:00Z.
    start, end = at("2026-03-28T20:00"), at("2026-03-30T00:00")
    items = simulated_history(start, end, timedelta(hours=1))
    policy = Policy(keep_daily=3, timezone="Europe/Berlin")
    decisions = decide(items, policy, end)
    daily = {d.time: r for d in decisions for r in d.reasons if r.startswith("daily")}
    assert daily == {
        at("2026-03-28T20:00"): "daily 2026-03-28",
        at("2026-03-28T23:00"): "daily 2026-03-29",
        at("2026-03-29T22:00"): "daily 2026-03-30",
    }
    hourly = decide(items, Policy(keep_hourly=UNLIMITED, timezone="Europe/Berlin"), end)
    labels = {d.time: r for d in hourly for r in d.reasons if r.startswith("hourly")}
    assert labels[at("2026-03-29T00:00")] == "hourly 2026-03-29T01"
    assert labels[at("2026-03-29T01:00")] == "hourly 2026-03-29T03"
    assert len(labels) == len(items)


def test_weekly_iso_weeks_start_on_monday() -> None:
    # 2026-11-22 is a Sunday (end of 2026-W47), 2026-11-23 a Monday (2026-W48).
    items = history("2026-11-16T00:00", "2026-11-22T23:59", "2026-11-23T00:00", "2026-11-25T00:00")
    decisions = decide(items, Policy(keep_weekly=2), at("2026-11-26T00:00"))
    assert rule_hits(decisions, "weekly") == {"i0": "weekly 2026-W47", "i2": "weekly 2026-W48"}
    assert deleted(decisions) == {"i1": ("superseded in weekly 2026-W47",)}


def test_weekly_with_sunday_start() -> None:
    items = history("2026-11-21T12:00", "2026-11-22T00:00", "2026-11-23T00:00", "2026-11-29T00:00")
    policy = Policy.from_mapping({"keep_weekly": 5, "week_start": "sunday"})
    decisions = decide(items, policy, at("2026-11-30T00:00"))
    assert rule_hits(decisions, "weekly") == {
        "i0": "weekly from 2026-11-15",
        "i1": "weekly from 2026-11-22",
        "i3": "weekly from 2026-11-29",
    }


def test_week_and_year_boundaries() -> None:
    # 2026-12-28 (Mon) .. 2027-01-03 (Sun) is ISO week 2026-W53; 2027-01-04 starts 2027-W01.
    items = history("2026-12-27T12:00", "2026-12-28T12:00", "2026-12-31T12:00",
                    "2027-01-01T12:00", "2027-01-04T12:00")  # fmt: skip
    decisions = decide(items, Policy(keep_weekly=3, keep_yearly=2), at("2027-01-05T00:00"))
    assert rule_hits(decisions, "weekly") == {
        "i0": "weekly 2026-W52", "i1": "weekly 2026-W53", "i4": "weekly 2027-W01",
    }  # fmt: skip
    assert rule_hits(decisions, "yearly") == {"i0": "yearly 2026", "i3": "yearly 2027"}
    assert deleted(decisions) == {"i2": ("superseded in weekly 2026-W53",)}


def test_monthly_and_unlimited() -> None:
    items = history("2026-01-15T00:00", "2026-02-01T00:00", "2026-02-20T00:00", "2026-04-01T00:00")
    decisions = decide(items, Policy(keep_monthly=UNLIMITED), at("2026-11-24T00:00"))
    assert rule_hits(decisions, "monthly") == {
        "i0": "monthly 2026-01", "i1": "monthly 2026-02", "i3": "monthly 2026-04",
    }  # fmt: skip
    assert deleted(decisions) == {"i2": ("superseded in monthly 2026-02",)}


def test_empty_periods_use_no_slot() -> None:
    # Backups on the 1st, 2nd, 5th and 9th only: keep_daily=3 keeps the 3 newest days that have one.
    items = history("2026-11-01T10:00", "2026-11-02T10:00", "2026-11-05T10:00", "2026-11-09T10:00")
    decisions = decide(items, Policy(keep_daily=3), at("2026-11-24T00:00"))
    assert set(kept(decisions)) == {"i1", "i2", "i3"}


def test_finest_superseding_period_is_named() -> None:
    items = history("2026-11-20T00:00", "2026-11-20T06:00", "2026-11-21T00:00")
    decisions = decide(items, Policy(keep_daily=5, keep_monthly=5), at("2026-11-22T00:00"))
    assert deleted(decisions) == {"i1": ("superseded in daily 2026-11-20",)}


def test_zero_count_rule_keeps_nothing_but_others_apply() -> None:
    items = history("2026-11-20T00:00", "2026-11-21T00:00", "2026-11-22T00:00")
    decisions = decide(items, Policy(keep_daily=0, keep_last=1), at("2026-11-23T00:00"))
    assert kept(decisions) == {"i2": ("newest", "last 1")}


def test_period_label() -> None:
    when = at("2026-11-19T23:30")
    berlin = Policy(timezone="Europe/Berlin")
    assert period_label("daily", when, berlin) == "2026-11-20"
    assert period_label("hourly", when, berlin) == "2026-11-20T00"
    assert period_label("weekly", when, Policy()) == "2026-W47"


# --- future items, protection, chains ---------------------------------------------------------


def test_future_items_are_kept_and_take_no_slot() -> None:
    items = history("2026-11-23T08:00", "2026-11-24T08:00", "2026-11-26T08:00")
    decisions = decide(items, Policy(keep_daily=1), at("2026-11-24T12:00"))
    assert kept(decisions) == {
        "i1": ("newest", "daily 2026-11-24"),
        "i2": ("in the future",),
    }


def test_only_future_items() -> None:
    items = history("2026-11-26T08:00", "2026-11-27T08:00")
    decisions = decide(items, Policy(keep_last=1), at("2026-11-24T12:00"))
    assert kept(decisions) == {"i0": ("in the future",), "i1": ("in the future",)}


def test_protected_items_are_kept_with_their_reason() -> None:
    items = history("2026-11-01T00:00", "2026-11-02T00:00", "2026-11-03T00:00")
    protected = {"i0": "newest common with b2", "i2": "upload in progress", "gone": "ignored"}
    decisions = decide(items, Policy(keep_last=1), at("2026-11-24T00:00"), protected=protected)
    assert kept(decisions) == {
        "i0": ("newest common with b2",),
        "i2": ("upload in progress", "newest", "last 1"),
    }


def test_parents_of_kept_items_are_kept() -> None:
    # i0 full <- i1 <- i2 <- i3 ; i4 full <- i5
    items = history(*(f"2026-11-0{d}T00:00" for d in range(1, 7)), chain=True)
    items[4] = Item("i4", items[4].time, None)
    decisions = decide(items, Policy(keep_daily=0, keep_last=0, keep_within="1h"), at("2026-11-24"))
    assert kept(decisions) == {
        "i4": ("parent of kept i5",),
        "i5": ("newest",),
    }
    decisions = decide(items, Policy(keep_weekly=2), at("2026-11-06T12:00"))
    # 2026-11-01 is a Sunday (W44), 11-02..11-06 are W45: weekly keeps i0 and i1; newest i5.
    assert kept(decisions) == {
        "i0": ("weekly 2026-W44",),
        "i1": ("weekly 2026-W45",),
        "i4": ("parent of kept i5",),
        "i5": ("newest",),
    }
    items[4] = Item("i4", items[4].time, "i3")
    decisions = decide(items, Policy(keep_weekly=2), at("2026-11-06T12:00"))
    assert kept(decisions)["i2"] == ("parent of kept i5",)
    assert kept(decisions)["i3"] == ("parent of kept i5",)


def test_missing_parents_are_fine() -> None:
    items = [Item("a", at("2026-11-01T00:00"), "long-gone"), Item("b", at("2026-11-02T00:00"), "a")]
    assert set(kept(decide(items, Policy(keep_last=1), at("2026-11-24T00:00")))) == {"a", "b"}


def test_parent_cycles_terminate() -> None:
    items = [Item("a", at("2026-11-01T00:00"), "b"), Item("b", at("2026-11-02T00:00"), "a"),
             Item("c", at("2026-11-03T00:00"), "c")]  # fmt: skip
    decisions = decide(items, Policy(keep_last=1), at("2026-11-24T00:00"))
    assert kept(decisions) == {"c": ("newest", "last 1")}
    assert deletion_order(decisions, items) in (["b", "a"], ["a", "b"])


def test_naive_times_and_duplicates_are_rejected() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        Item("x", datetime(2026, 11, 24))
    with pytest.raises(ValueError, match="now: expected a timezone-aware"):
        decide([], Policy(), datetime(2026, 11, 24))
    with pytest.raises(ValueError, match="duplicate item ids: 'a'"):
        decide([Item("a", at("2026-11-01T00:00"))] * 2, Policy(), at("2026-11-24T00:00"))


# --- deletion order ---------------------------------------------------------------------------


def test_deletion_order_deletes_children_first() -> None:
    # Two chains, deleted entirely except the newest full; a child dated before its parent.
    items = [
        Item("f1", at("2026-11-01T00:00")),
        Item("f1.a", at("2026-11-02T00:00"), "f1"),
        Item("f1.b", at("2026-11-03T00:00"), "f1.a"),
        Item("f2", at("2026-11-04T00:00")),
        Item("f2.a", at("2026-11-03T12:00"), "f2"),
        Item("f3", at("2026-11-05T00:00")),
    ]
    decisions = decide(items, Policy(keep_last=1), at("2026-11-24T00:00"))
    # Ready (no doomed child) newest first: f2.a before f1.b; f2 becomes ready after f2.a.
    assert deletion_order(decisions, items) == ["f2.a", "f2", "f1.b", "f1.a", "f1"]


def test_deletion_order_rejects_unknown_ids() -> None:
    decision = Decision("ghost", at("2026-11-01T00:00"), "delete")
    with pytest.raises(ValueError, match="unknown items: ghost"):
        deletion_order([decision], [])


# --- simulation -------------------------------------------------------------------------------


def test_simulated_history_chains() -> None:
    items = simulated_history(at("2026-01-01T00:00"), at("2026-01-01T05:00"), timedelta(hours=1),
                              max_chain=2)  # fmt: skip
    assert [i.parent for i in items] == [None, "#0", "#1", None, "#3", "#4"]
    assert [i.parent for i in simulated_history(at("2026-01-01T00:00"), at("2026-01-01T01:00"),
                                                timedelta(hours=1))] == [None, None]  # fmt: skip


def test_simulated_history_uses_elapsed_time_across_dst() -> None:
    start = datetime(2026, 10, 24, 12, tzinfo=Policy(timezone="Europe/Berlin").tz)
    items = simulated_history(start, start + timedelta(days=2), timedelta(hours=1))
    gaps = {b.time - a.time for a, b in zip(items, items[1:])}
    assert gaps == {timedelta(hours=1)}


def test_simulated_history_validates() -> None:
    with pytest.raises(ValueError, match="every > 0"):
        simulated_history(at("2026-01-02T00:00"), at("2026-01-01T00:00"), timedelta(hours=1))
    with pytest.raises(ValueError, match="use a larger step"):
        simulated_history(at("2020-01-01T00:00"), at("2026-01-01T00:00"), timedelta(minutes=1))
    with pytest.raises(ValueError, match="max_chain"):
        simulated_history(at("2026-01-01T00:00"), at("2026-01-02T00:00"), timedelta(hours=1),
                          max_chain=-1)  # fmt: skip


def test_simulate_a_month_with_fulls_on_the_first_backup_of_each_day() -> None:
    policy = Policy(keep_hourly=24, keep_daily=7, keep_weekly=4, keep_monthly=12)
    start, end = at("2026-11-01T00:00"), at("2026-11-30T23:00")
    result = simulate(policy, start, end, timedelta(hours=1), max_chain=23)
    # Fulls fall on 00:00, the first backup of each day, so no kept point needs a parent.
    assert result.created == 30 * 24
    assert result.consistent
    assert result.parents_only == 0
    assert result.oldest_kept == start
    assert result.per_rule == {
        "newest": 1, "hourly": 24, "daily": 7, "weekly": 4, "monthly": 1,
    }  # fmt: skip
    # Nov 30 00..23h; days Nov 24..29; weeks from Nov 9, 16, 23 (Nov 30 is a Monday); Nov 1.
    assert result.count == len(result.kept_times) == 24 + 6 + 3 + 1
    assert result.prune_runs == 30 + 1


def test_simulate_a_month_with_misaligned_chains() -> None:
    policy = Policy(keep_hourly=24, keep_daily=7, keep_weekly=4, keep_monthly=12)
    start, end = at("2026-11-01T01:00"), at("2026-11-30T23:00")
    result = simulate(policy, start, end, timedelta(hours=1), max_chain=7)
    # Fulls at 01, 09, 17h: every 00:00 point needs the 7 backups since 17:00 the day before.
    assert result.consistent
    assert result.parents_only == 7 * (1 + 6 + 3)  # hourly's oldest, 6 daily, 3 weekly
    assert result.count == 24 + 6 + 3 + 1 + result.parents_only


def test_simulate_prune_cadence_does_not_change_the_outcome() -> None:
    policy = Policy(keep_last=3, keep_hourly=6, keep_daily=3, keep_weekly=2, keep_within="10h",
                    timezone="Europe/Berlin")  # fmt: skip
    start, end = at("2026-10-20T00:00"), at("2026-10-30T00:00")
    every = timedelta(minutes=45)
    after_each = simulate(policy, start, end, every, max_chain=5, prune_every=None)
    daily = simulate(policy, start, end, every, max_chain=5)
    assert after_each.prune_runs == after_each.created + 1
    assert after_each.held == daily.held
    assert after_each.consistent and daily.consistent


def test_render_simulation() -> None:
    policy = Policy(keep_daily=7, keep_monthly=3, timezone="Europe/Berlin")
    result = simulate(policy, at("2026-09-01T00:00"), at("2026-11-30T00:00"), timedelta(hours=6),
                      max_chain=3)  # fmt: skip
    text = render_simulation(result)
    assert "policy   keep_daily=7 keep_monthly=3 timezone=Europe/Berlin" in text
    assert "a full every 4 backups (max_chain 3)" in text
    assert "same as one prune at the end: yes" in text
    assert f"held     {result.count} backups, oldest 2026-09-01 02:00" in text
    for month in ("2026-09", "2026-10", "2026-11"):
        assert f"  {month} " in text
    assert "monthly 2026-11" in text
    assert text.endswith("\n")


def test_render_empty_simulation() -> None:
    result = simulate(Policy(), at("2026-01-01T00:00"), at("2026-01-01T00:00"), timedelta(hours=1))
    assert "no policy (keeps everything)" in render_simulation(result)
    assert result.count == 1 and result.per_rule == {"no policy": 1}


def test_reason_rule() -> None:
    assert reason_rule("daily 2026-11-20") == "daily"
    assert reason_rule("within 36h") == "within"
    assert reason_rule("newest") == "newest"
    assert reason_rule("parent of kept #4") == "parent"
    assert reason_rule("in the future") == "future"
    assert reason_rule("upload in progress") == "protected"
    assert reason_rule("daily") == "protected"
