"""Backup windows (across midnight, whole days, timezones) and target schedules."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from btrsync.config.windows import BackupWindow, TargetEvery
from btrsync.jobs.windowstop import WindowClosedError, WindowStop


def utc(day: int, hour: int, minute: int = 0) -> datetime:
    return datetime(2026, 11, day, hour, minute, tzinfo=UTC)  # 2026-11-16 is a Monday


def test_a_weeknight_window_crosses_midnight_and_the_weekend_is_open_all_day() -> None:
    w = BackupWindow.parse(["Mon-Fri 22:00-06:00", "Sat-Sun 00:00-24:00"], "UTC")
    assert w.is_open(utc(16, 23)) and w.is_open(utc(17, 5, 59))  # Monday night into Tuesday
    assert not w.is_open(utc(17, 6)) and not w.is_open(utc(17, 12))
    assert w.is_open(utc(21, 5))  # Saturday early: Friday night's window, and Saturday's
    assert w.is_open(utc(22, 23, 59))  # Sunday night
    assert w.is_open(utc(23, 3)) is False  # Monday 03:00: Sunday 22:00 is not a weekday window
    assert w.next_open(utc(17, 12)) == utc(17, 22)
    assert "opens Tue 2026-11-17 22:00 UTC" in w.closed_reason(utc(17, 12))


def test_a_named_timezone_decides_and_no_entries_mean_any_time() -> None:
    berlin = BackupWindow.parse(["01:00-02:00"], "Europe/Berlin")
    assert berlin.is_open(utc(17, 0, 30)) and not berlin.is_open(utc(17, 1, 30))
    assert BackupWindow.parse([]).always and BackupWindow.parse([]).is_open(utc(17, 12))
    with pytest.raises(ValueError, match="bad window"):
        BackupWindow.parse(["weekends"])


def test_target_every_counts_calendar_periods_or_elapsed_time() -> None:
    daily = TargetEvery.parse("daily")
    assert daily.is_due(None, utc(17, 3), None)[0]
    assert not daily.is_due(utc(17, 0, 10), utc(17, 23, 50), UTC)[0]
    assert daily.is_due(utc(17, 3, 10), utc(18, 3, 0), UTC)[0]  # a timer's random delay never skips a day
    weekly = TargetEvery.parse("weekly")
    assert not weekly.is_due(utc(16, 1), utc(22, 23), UTC)[0] and weekly.is_due(utc(22, 23), utc(23, 0, 1), UTC)[0]
    six = TargetEvery.parse("6h")
    assert not six.is_due(utc(17, 0), utc(17, 4), UTC)[0]
    assert six.is_due(utc(17, 0), utc(17, 5, 30), UTC)[0]  # within a tenth of 6h early still counts
    due, why = six.is_due(utc(17, 0), utc(17, 2), UTC)
    assert "last success 2h00m ago" in why
    with pytest.raises(ValueError):
        TargetEvery.parse("fortnightly")


def test_window_stop_refuses_the_next_segment_only_after_the_window_closed() -> None:
    """The runner's ``may_start_segment``: write_segments asks it before each segment."""
    open_ = [True]
    stop = WindowStop(lambda: open_[0], "Fri 00:00-06:00 (UTC)")
    stop(0)
    assert not stop.stopped
    open_[0] = False
    with pytest.raises(WindowClosedError, match="stopped before segment 000001; the next run resumes"):
        stop(1)
    assert stop.stopped


def test_a_last_success_in_the_future_is_due_not_skipped_until_then() -> None:
    """The clock once jumped ahead (to 2030, say) while a push succeeded; corrected, the target
    was 'not due' until 2030, and 'skipped' counts as good: no backup, every status ok."""
    for every in ("daily", "weekly", "6h"):
        due, why = TargetEvery.parse(every).is_due(utc(17, 3) + timedelta(days=4 * 365), utc(17, 3), UTC)
        assert due and "in the future" in why, (every, why)
