"""RetryPolicy and RetryingTarget: backoff arithmetic, what is retried, and resumed reads."""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator

import pytest

from btrsync.targets.base import ObjectInfo
from btrsync.targets.errors import NotFound, PermissionDenied, TransientTargetError
from btrsync.targets.memory import MemoryTarget
from btrsync.targets.retry import Outage, RetryingTarget, RetryPolicy, retry_after_of, transient

MiB = 1 << 20


def policy(sleeps: list[float], **kwargs: object) -> RetryPolicy:
    """A policy that records its waits instead of sleeping; jitter draws 1.0 unless told."""
    kwargs.setdefault("random", lambda: 1.0)
    return RetryPolicy(sleep=sleeps.append, **kwargs)  # type: ignore[arg-type]


def failing(times: int, error: Exception | None = None) -> tuple[list[int], object]:
    """A callable failing ``times`` times (transiently unless ``error``), then returning "ok"."""
    calls: list[int] = []

    def fn() -> str:
        calls.append(1)
        if len(calls) <= times:
            raise error or TransientTargetError(f"failure {len(calls)}")
        return "ok"

    return calls, fn


def test_backoff_doubles_up_to_the_maximum_delay() -> None:
    """Without jitter the delays are base * 2**n, capped at max_delay."""
    sleeps: list[float] = []
    calls, fn = failing(5)
    assert policy(sleeps, attempts=6, base_delay=0.5, max_delay=3.0).call(fn) == "ok"  # type: ignore[arg-type]
    assert sleeps == [0.5, 1.0, 2.0, 3.0, 3.0]
    assert len(calls) == 6


def test_full_jitter_draws_between_zero_and_the_ceiling() -> None:
    """Full jitter scales the ceiling by a uniform draw."""
    p = RetryPolicy(base_delay=1.0, max_delay=10.0, random=lambda: 0.25)
    assert [p.delay(n) for n in (1, 2, 3, 4, 5)] == [0.25, 0.5, 1.0, 2.0, 2.5]


def test_retry_after_is_honoured() -> None:
    """A server's Retry-After replaces the computed delay."""
    sleeps: list[float] = []
    _calls, fn = failing(2, transient("slow down", retry_after=7.0))
    assert policy(sleeps, max_delay=1.0).call(fn) == "ok"  # type: ignore[arg-type]
    assert sleeps == [7.0, 7.0]
    assert retry_after_of(transient("x", 2)) == 2.0
    assert retry_after_of(TransientTargetError("x")) is None


def test_gives_up_after_the_attempts_with_the_last_error() -> None:
    """attempts counts the first try; the last transient error is raised, saying how hard it was
    tried (a target that keeps failing, e.g. full behind its 500s, reads otherwise as a blip)."""
    sleeps: list[float] = []
    calls, fn = failing(10)
    with pytest.raises(TransientTargetError, match=r"failure 3 \(gave up after 3 attempts over \d+\.\ds\)"):
        policy(sleeps, attempts=3).call(fn)  # type: ignore[arg-type]
    assert len(calls) == 3 and len(sleeps) == 2


def test_gives_up_when_the_time_budget_is_spent() -> None:
    """The total waiting time never exceeds the budget, even with attempts left."""
    sleeps: list[float] = []
    calls, fn = failing(10, transient("slow", retry_after=4.0))
    with pytest.raises(TransientTargetError):
        policy(sleeps, attempts=10, budget=10.0).call(fn)  # type: ignore[arg-type]
    assert sleeps == [4.0, 4.0]
    assert len(calls) == 3


class SlowClock:
    """A clock that only the test moves: each attempt and each wait advance it."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def test_the_deadline_counts_the_time_spent_in_attempts_and_the_message_the_truth() -> None:
    """Each attempt at a store that answers nothing lasts a socket timeout (30 s here).  Retries
    stop once ``deadline`` seconds have passed since the first failure (no wait that would end
    past it is begun), however many attempts are left, and the error says how many attempts were
    made over how much wall time since the first began, not the seconds slept."""
    clock = SlowClock()
    calls: list[float] = []

    def frozen() -> None:
        calls.append(clock.now)
        clock.now += 30.0
        raise TransientTargetError("read timeout")

    p = RetryPolicy(attempts=50, deadline=60.0, sleep=clock.sleep, clock=clock, random=lambda: 1.0)
    with pytest.raises(TransientTargetError, match=r"read timeout \(gave up after 3 attempts over 91\.5s\)"):
        p.call(frozen)
    # failures at +30, +60.5, +91.5; the third wait (2 s) would end 63.5 s after the first failure
    assert calls == [1000.0, 1030.5, 1061.5]


def test_a_long_attempt_that_fails_is_still_retried_under_the_deadline() -> None:
    """The deadline runs from the first failure: a part that took longer than the deadline to
    upload on a slow link, then failed, is resent."""
    clock = SlowClock()
    calls: list[int] = []

    def slow_then_fine() -> str:
        calls.append(1)
        clock.now += 500.0
        if len(calls) == 1:
            raise TransientTargetError("connection reset")
        return "ok"

    p = RetryPolicy(deadline=60.0, sleep=clock.sleep, clock=clock, random=lambda: 1.0)
    assert p.call(slow_then_fine) == "ok"
    assert len(calls) == 2


def test_after_one_operation_gives_up_the_next_get_one_attempt_until_one_succeeds() -> None:
    """A shared ``Outage``: once an operation has given up, a failing one is not retried (its error
    says why), so the clean-up after a failure costs one attempt per request; the first success
    ends the outage and retries resume."""
    outage = Outage()
    p = policy([], attempts=3, outage=outage)
    calls, fn = failing(10)
    with pytest.raises(TransientTargetError, match=r"gave up after 3 attempts"):
        p.call(fn, "upload part 1")  # type: ignore[arg-type]
    assert outage.down and len(calls) == 3
    calls, fn = failing(10)
    with pytest.raises(TransientTargetError, match=r"failure 1 \(not retried: upload part 1 gave up [\d.]+s ago\)"):
        p.call(fn, "abort upload")  # type: ignore[arg-type]
    assert len(calls) == 1
    assert outage.first("abort") and not outage.first("abort")  # one warning per outage
    assert p.call(lambda: "ok") == "ok"
    assert not outage.down
    calls, fn = failing(2)
    assert p.call(fn) == "ok" and len(calls) == 3  # type: ignore[arg-type]


def test_an_inner_give_up_is_not_retried_again_outside() -> None:
    """A target that retries inside a verb (S3 puts) under the same policy as its RetryingTarget:
    the attempts do not multiply, and the message is the inner one, unchanged."""
    clock = SlowClock()
    p = RetryPolicy(attempts=4, sleep=clock.sleep, clock=clock, random=lambda: 1.0, outage=Outage())
    inner_calls: list[int] = []

    class InsideRetries(MemoryTarget):
        def stat(self, key: str) -> ObjectInfo:
            def once() -> ObjectInfo:
                inner_calls.append(1)
                raise TransientTargetError("503")
            return p.call(once, "stat")

    target = RetryingTarget(InsideRetries(), p)
    with pytest.raises(TransientTargetError, match=r"^503 \(gave up after 4 attempts over [\d.]+s\)$"):
        target.stat("k")
    assert len(inner_calls) == 4


def test_permanent_errors_are_not_retried() -> None:
    """Only TransientTargetError is retried."""
    sleeps: list[float] = []
    calls, fn = failing(1, PermissionDenied("no"))
    with pytest.raises(PermissionDenied):
        policy(sleeps).call(fn)  # type: ignore[arg-type]
    assert len(calls) == 1 and sleeps == []


def test_cancel_stops_retrying() -> None:
    """A set cancel event ends the retries at the next failure."""
    cancel = threading.Event()
    cancel.set()
    calls, fn = failing(3)
    with pytest.raises(TransientTargetError):
        policy([]).call(fn, "op", cancel)  # type: ignore[arg-type]
    assert len(calls) == 1


class FlakyTarget(MemoryTarget):
    """A memory target whose verbs fail transiently on a script, recording what was asked."""

    def __init__(self, fail: dict[str, int] | None = None, break_get_after: int = 0) -> None:
        super().__init__()
        self.fail = dict(fail or {})
        self.break_get_after = break_get_after  # blocks a get yields before breaking (once each)
        self.gets: list[tuple[int, int | None]] = []
        self.calls: dict[str, int] = {}

    def _maybe_fail(self, verb: str) -> None:
        self.calls[verb] = self.calls.get(verb, 0) + 1
        if self.fail.get(verb, 0) > 0:
            self.fail[verb] -= 1
            raise TransientTargetError(f"{verb} failed")

    def put(self, key: str, parts: Iterable[bytes]) -> ObjectInfo:
        self._maybe_fail("put_before")
        data = b"".join(parts)
        self._maybe_fail("put")
        return super().put(key, [data])

    def get(self, key: str, *, offset: int = 0, length: int | None = None) -> Iterator[bytes]:
        self.gets.append((offset, length))
        for n, block in enumerate(super().get(key, offset=offset, length=length)):
            if n == self.break_get_after and self.fail.get("get", 0) > 0:
                self.fail["get"] -= 1
                raise TransientTargetError("connection reset")
            yield block

    def stat(self, key: str) -> ObjectInfo:
        self._maybe_fail("stat")
        return super().stat(key)

    def delete(self, key: str) -> None:
        super().delete(key)
        self._maybe_fail("delete")  # deleted, but the answer is "lost"


def test_get_resumes_at_the_offset_already_yielded() -> None:
    """A broken download continues at offset + bytes yielded, never from the start."""
    inner = FlakyTarget({"get": 2}, break_get_after=1)
    data = bytes(range(256)) * (14 * MiB // 256)
    inner.put("k", [data])
    target = RetryingTarget(inner, policy([]))
    assert target.read("k", offset=100, length=len(data) - 200) == data[100:-100]
    total = len(data) - 200
    assert inner.gets == [(100, total), (100 + MiB, total - MiB), (100 + 2 * MiB, total - 2 * MiB)]


def test_progress_resets_the_attempt_count() -> None:
    """A download that makes progress between failures is not cut off by the attempt limit."""
    inner = FlakyTarget({"get": 5}, break_get_after=1)
    data = b"x" * (8 * MiB)
    inner.put("k", [data])
    assert RetryingTarget(inner, policy([], attempts=2)).read("k") == data


def test_stat_is_retried_and_permanent_errors_pass_through() -> None:
    """Transient failures are retried; NotFound is raised at once."""
    sleeps: list[float] = []
    inner = FlakyTarget({"stat": 2})
    inner.put("k", [b"abc"])
    target = RetryingTarget(inner, policy(sleeps))
    assert target.stat("k").size == 3
    assert len(sleeps) == 2
    with pytest.raises(NotFound):
        target.stat("missing")


def test_put_of_a_list_is_retried_whole() -> None:
    """Parts that can be iterated again are simply sent again."""
    inner = FlakyTarget({"put": 2})
    RetryingTarget(inner, policy([])).put("k", [b"ab", b"cd"])
    assert inner.read("k") == b"abcd"
    assert inner.calls["put"] == 3


def test_put_of_a_consumed_stream_is_not_retried() -> None:
    """A one-shot stream that was partly read cannot be resent, so the error is raised."""
    inner = FlakyTarget({"put": 1})
    with pytest.raises(TransientTargetError):
        RetryingTarget(inner, policy([])).put("k", iter([b"ab", b"cd"]))
    assert inner.calls["put"] == 1


def test_put_of_an_untouched_stream_is_retried() -> None:
    """A failure before the stream was read loses nothing, so it is retried."""
    inner = FlakyTarget({"put_before": 1})
    RetryingTarget(inner, policy([])).put("k", iter([b"ab", b"cd"]))
    assert inner.read("k") == b"abcd"


def test_delete_whose_answer_was_lost_succeeds() -> None:
    """NotFound on a retried delete means the first attempt did delete."""
    inner = FlakyTarget({"delete": 1})
    inner.put("k", [b"x"])
    RetryingTarget(inner, policy([])).delete("k")
    with pytest.raises(NotFound):
        RetryingTarget(inner, policy([])).delete("k")


def test_other_attributes_are_forwarded() -> None:
    """Extra methods of the inner target (like S3Target.list_uploads) stay reachable."""
    inner = MemoryTarget()
    inner.list_uploads = lambda: ["u"]  # type: ignore[attr-defined]
    target = RetryingTarget(inner)
    assert target.list_uploads() == ["u"]  # type: ignore[attr-defined]
    assert target.display_url == inner.display_url
    assert "memory://" in repr(target) or "MemoryTarget" in repr(target)
