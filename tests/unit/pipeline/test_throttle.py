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
