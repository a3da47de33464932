"""The token bucket, on a fake clock: no test sleeps."""

from __future__ import annotations

from btrsync.pipeline.throttle import TokenBucket, throttle


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def test_long_run_rate_matches_the_limit() -> None:
    clock = FakeClock()
    bucket = TokenBucket(rate=1_000_000, burst=256 * 1024, clock=clock)
    total = sum(len(b) for b in throttle((b"x" * 65536 for _ in range(1000)), bucket))
    achieved = total / clock.now
    assert abs(achieved - 1_000_000) / 1_000_000 < 0.05


def test_burst_passes_without_waiting() -> None:
    clock = FakeClock()
    bucket = TokenBucket(rate=1000, burst=10_000, clock=clock)
    bucket.take(10_000)
    assert clock.now == 0.0
    bucket.take(1000)
    assert abs(clock.now - 1.0) < 1e-9


def test_schedule_changes_the_rate_and_can_lift_it() -> None:
    clock = FakeClock()
    rates = iter([1000.0, None, 4000.0])
    current = [next(rates)]
    bucket = TokenBucket(rate=1000, burst=1000, clock=clock, schedule=lambda: current[0])
    bucket.take(1000)
    bucket.take(1000)
    assert abs(clock.now - 1.0) < 1e-9  # limited to 1000/s
    current[0] = next(rates)
    clock.now += 1.0
    start = clock.now
    for _ in range(100):
        bucket.take(10_000)
    assert clock.now == start  # unlimited: no waiting at all
    current[0] = next(rates)
    clock.now += 1.0
    start = clock.now
    for _ in range(9):
        bucket.take(4000)
    assert abs(clock.now - start - 7.75) < 1e-6  # (36000 - 1000 left - 4000 refilled in 1 s) / 4000


def test_schedule_windows() -> None:
    from datetime import datetime
    from zoneinfo import ZoneInfo

    import pytest

    from btrsync.pipeline.schedule import RateSchedule

    s = RateSchedule.parse("unlimited", ["Mon-Fri 08:00-18:00 5M", "22:00-06:00 1M"], tz="Europe/Berlin")
    berlin = ZoneInfo("Europe/Berlin")
    assert s.rate_at(datetime(2026, 11, 26, 9, 0, tzinfo=berlin)) == 5 << 20  # Thursday
    assert s.rate_at(datetime(2026, 11, 28, 9, 0, tzinfo=berlin)) is None  # Saturday
    assert s.rate_at(datetime(2026, 11, 28, 23, 0, tzinfo=berlin)) == 1 << 20
    assert s.rate_at(datetime(2026, 11, 29, 5, 59, tzinfo=berlin)) == 1 << 20  # after midnight
    assert s.rate_at(datetime(2026, 11, 26, 18, 0, tzinfo=berlin)) is None
    with pytest.raises(ValueError, match="bad bandwidth window"):
        RateSchedule.parse(None, ["8-18 5M"])
    with pytest.raises(ValueError, match="unknown day"):
        RateSchedule.parse(None, ["Mon-Fry 08:00-18:00 5M"])
