"""Progress rendering on a fake clock, the size estimate's stream walk, the empty-start bucket."""

from __future__ import annotations

import io
import logging
import queue
import re
import threading
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path

import pytest

from btrsync.ops import estimate
from btrsync.ops.estimate import _previous
from btrsync.pipeline.throttle import Metered, TokenBucket
from btrsync.progress import MIN_SPAN, CallbackProgress, Estimate, Reporter, as_progress

MiB = 1 << 20


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class FakeTTY(io.StringIO):
    def isatty(self) -> bool:
        return True


def _reporter(tty: bool, clock: Clock, interval: float = 30.0, **kw: object) -> tuple[Reporter, io.StringIO]:
    stream = FakeTTY() if tty else io.StringIO()
    # a huge tick: the tests draw by calling the ticker's body themselves
    return Reporter(stream, tty=tty, kind="push", interval=interval, tick=3600, clock=clock, **kw), stream


def _tick(r: Reporter) -> None:
    with r._lock:
        if r.tty:
            r._draw(r.clock())
        elif r.interval > 0 and r.clock() - r._t_line >= r.interval:
            r._write_line(f"{r._who()}: {r.status(r.clock(), ', ')}")


def test_no_rate_from_the_first_milliseconds_then_a_windowed_rate() -> None:
    clock = Clock()
    r, _ = _reporter(True, clock)
    r.start("b1", Estimate(200 * MiB, "test"))
    r.phase("sending")
    clock.now += 0.01
    r.update(4 * MiB, 4 * MiB)  # a first frame after 10 ms: 400 MiB/s if taken at face value
    assert "/s" not in r.status()
    for _ in range(20):  # then a steady 5 MiB/s for 20 s
        clock.now += 1
        r.update(r._raw + 5 * MiB, r._stored + 5 * MiB)
    status = r.status()
    assert "5.0 MiB/s stored" in status, status
    assert "~" in status and "ETA ~" in status and "of ~200.0 MiB" in status


def test_a_stall_shows_the_rate_falling_and_no_eta_past_the_total() -> None:
    clock = Clock()
    r, _ = _reporter(True, clock)
    r.start("b1", Estimate(10 * MiB, "test"))
    r.phase("sending")
    for _ in range(4):
        clock.now += 1
        r.update(r._raw + 1 * MiB, r._stored + 1 * MiB)
    clock.now += 10  # nothing for ten seconds
    assert "0 B/s" in r.status()
    r.update(12 * MiB, 12 * MiB)  # the estimate was short
    status = r.status()
    assert "~99%" in status and "ETA" not in status, status


def test_an_exact_total_is_not_marked_but_its_eta_is() -> None:
    clock = Clock()
    r, _ = _reporter(True, clock, rate_of="raw")
    r.start("b1", Estimate(10 * MiB, "manifest", exact=True))
    r.phase("receiving")
    for _ in range(3):
        clock.now += 1
        r.update(r._raw + MiB, r._raw + MiB)
    status = r.status()
    assert status.startswith("receiving  30%  3.0 MiB of 10.0 MiB  1.0 MiB/s  ETA ~7s"), status


def test_terminal_line_is_erased_on_close_and_before_log_records() -> None:
    clock = Clock()
    stream = FakeTTY()
    root = logging.getLogger()
    handler = logging.StreamHandler(stream)
    root.addHandler(handler)
    try:
        with Reporter(stream, tty=True, kind="push", tick=3600, clock=clock) as r:
            r.start("b1", None)
            r.phase("sending")
            logging.getLogger("btrsync.test").warning("something happened")
            _tick(r)
        assert handler.stream is stream  # unhooked
    finally:
        root.removeHandler(handler)
    out = stream.getvalue()
    assert "\r\x1b[Ksomething happened\n" in out, repr(out)
    assert out.endswith("\r\x1b[K"), repr(out)  # the cursor is left on an empty line


def test_terminal_line_is_cut_to_the_width() -> None:
    clock = Clock()
    r, stream = _reporter(True, clock)
    r._width = lambda: 40  # type: ignore[method-assign]
    r.start("a-very-long-backup-name-" + "x" * 80, Estimate(MiB, "t"))
    line = stream.getvalue().split("\r\x1b[K")[-1]
    assert len(line) <= 39 and line.endswith("…")


def test_plain_lines_every_interval_without_control_characters() -> None:
    clock = Clock()
    r, stream = _reporter(False, clock, interval=10)
    r.start("b1", Estimate(100 * MiB, "btrfs send --no-data"), index=2, count=3)
    r.phase("sending")
    for _ in range(95):
        clock.now += 0.25
        r.update(r._raw + MiB, r._stored + MiB)
        _tick(r)
    r.phase("committing")
    r.finish(ok=True)
    lines = stream.getvalue().splitlines()
    assert "\r" not in stream.getvalue() and "\x1b" not in stream.getvalue()
    assert lines[0] == ("btrsync: push b1 (2/3): starting; ~100.0 MiB to send "
                        "(estimate: btrfs send --no-data)")
    assert lines[-1].startswith("btrsync: push b1 (2/3): done in 24s: 95.0 MiB, 95.0 MiB stored, average")
    periodic = lines[1:-1]
    assert len(periodic) == 2, lines  # 23.75 s at one line per 10 s
    assert periodic[0].startswith("btrsync: push b1 (2/3): sending, ~40%, 40.0 MiB of ~100.0 MiB, 4.0 MiB/s")


def test_a_failure_is_a_plain_line_too() -> None:
    clock = Clock()
    r, stream = _reporter(False, clock)
    r.start("b1", None)
    clock.now += 3
    r.finish(ok=False)
    assert stream.getvalue().splitlines()[-1] == "btrsync: push b1: failed after 3s (0 B done)"


def test_older_callbacks_still_work_both_ways() -> None:
    seen: list[tuple[str, int, int]] = []
    adapted = as_progress(lambda name, raw, stored: seen.append((name, raw, stored)))
    assert isinstance(adapted, CallbackProgress)
    adapted.start("b1", None)
    adapted.phase("sending")
    adapted.update(5, 3)
    assert seen == [("b1", 5, 3)]
    # and a Reporter is itself a (name, raw, stored) callback, as verify calls it
    clock = Clock()
    r, stream = _reporter(False, clock, interval=1)
    r.kind = "verify"
    r("b1", 10, 10)
    r("b2", 20, 20)
    r.finish()
    text = stream.getvalue()
    assert "btrsync: verify b1: starting" in text and "btrsync: verify b1: done" in text
    assert "btrsync: verify b2: starting" in text


def test_one_budget_for_the_read_aheads_measure_and_a_walk_of_its_own(monkeypatch: pytest.MonkeyPatch) -> None:
    walks: list[float] = []
    monkeypatch.setattr(estimate, "_metadata_send", lambda snap, parent, budget, clock: walks.append(budget))
    silent: Future[int | None] = Future()  # a read-ahead that never tells
    assert estimate.estimate_push(Path("/nowhere"), None, [], "data", budget=0.2, measured=silent) is None
    assert walks == []  # the budget went on waiting: no second walk after it
    told: Future[int | None] = Future()
    told.set_result(None)  # too long for the read-ahead to measure: a walk in the whole budget
    estimate.estimate_push(Path("/nowhere"), None, [], "data", budget=5.0, measured=told)
    assert len(walks) == 1 and 4.5 < walks[0] <= 5.0


def test_previous_backup_is_the_fallback_estimate() -> None:
    class M:
        def __init__(self, subvolume: str, depth: int, t: int, size: int) -> None:
            self.subvolume, self.depth, self.snapshot_time, self.snapshot, self.stream_bytes = (
                subvolume, depth, t, f"s{t}", size)

    history = [M("data", 0, 1, 100), M("data", 1, 2, 5), M("data", 0, 3, 120), M("other", 0, 4, 999)]
    full = _previous(history, "data", full=True)  # type: ignore[arg-type]
    assert full == Estimate(120, "size of the previous full backup")
    incremental = _previous(history, "data", full=False)  # type: ignore[arg-type]
    assert incremental is not None and incremental.bytes == 5
    assert _previous(history, "nothing", full=True) is None  # type: ignore[arg-type]


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def test_an_empty_bucket_holds_the_limit_from_the_first_byte_however_late_it_is_used() -> None:
    clock = FakeClock()
    bucket = TokenBucket(rate=1000, clock=clock, initial=0)
    clock.now = 50.0  # created long before the transfer: no tokens accrue meanwhile
    passed: list[tuple[float, int]] = []
    metered = Metered(bucket, lambda n: passed.append((clock.now, n)))
    for _ in range(10):
        metered.take(500)
    total = 0
    for t, n in passed:
        total += n
        assert total <= 1000 * (t - 50.0) + 1e-6  # never more than the rate since the start
    assert abs(passed[-1][0] - 55.0) < 1e-9


class Ticks:
    """A fake clock for the redrawing thread: ``wait`` reports each tick it starts to wait and ends it
    (advancing the time by it) only when the test calls ``tick``."""

    def __init__(self) -> None:
        self.now = 100.0
        self.waits: queue.Queue[float] = queue.Queue()
        self._go = threading.Semaphore(0)

    def __call__(self) -> float:
        return self.now

    def wait(self, stop: threading.Event, seconds: float) -> bool:
        self.waits.put(seconds)
        while not stop.is_set():
            if self._go.acquire(timeout=0.01):
                self.now += seconds
                return False
        return True

    def tick(self) -> None:
        self._go.release()


@pytest.mark.parametrize("tty", [True, False])
def test_the_thread_redraws_every_tick_on_a_terminal_and_writes_a_line_every_interval_elsewhere(tty: bool) -> None:
    clock = Ticks()
    stream = FakeTTY() if tty else io.StringIO()
    with Reporter(stream, tty=tty, kind="push", interval=1.0, tick=0.25, clock=clock, wait=clock.wait) as r:
        r.start("b1", Estimate(100 * MiB, "test"))
        r.phase("sending")
        before = stream.getvalue()
        shown = []
        for _ in range(8):  # two seconds of ticks; the thread's next wait means it is done with this one
            assert clock.waits.get(timeout=10) == 0.25
            shown.append(stream.getvalue()[len(before):])
            clock.tick()
        assert clock.waits.get(timeout=10) == 0.25
        shown.append(stream.getvalue()[len(before):])
    if tty:  # one redraw per tick, each with the time elapsed on the reporter's clock
        assert [s.count("\r\x1b[K") for s in shown] == list(range(9))
        frames = shown[-1].split("\r\x1b[K")[1:]
        assert [f.split("  ")[-2] for f in frames] == ["0:00"] * 3 + ["0:01"] * 4 + ["0:02"]
    else:  # a plain line once a second (every fourth tick), never a control character
        assert [s.count("\n") for s in shown] == [0, 0, 0, 0, 1, 1, 1, 1, 2]
        assert [ln.split(", ")[-1] for ln in shown[-1].splitlines()] == ["0:01", "0:02"]
        assert "\r" not in stream.getvalue() and "\x1b" not in stream.getvalue()


class SharedClock:
    """One fake clock for a token bucket and a reporter: a wait for tokens advances it, and
    ``on_tick`` runs at every 0.25 s it passes (where the redrawing thread would draw)."""

    def __init__(self) -> None:
        self.now = 0.0
        self.on_tick: Callable[[], None] = lambda: None

    def __call__(self) -> float:
        return self.now

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        end = self.now + seconds
        while (next_tick := (int(self.now / 0.25 + 1e-9) + 1) * 0.25) <= end:
            self.now = next_tick
            self.on_tick()
        self.now = end

    def wait(self, event: threading.Event, seconds: float) -> bool:
        self.sleep(seconds)
        return event.is_set()


def _shown_rate(status: str) -> float | None:
    m = re.search(r"([\d.]+) (B|KiB|MiB|GiB)/s stored", status)
    return float(m.group(1)) * {"B": 1, "KiB": 1 << 10, "MiB": MiB, "GiB": 1 << 30}[m.group(2)] if m else None


def test_the_rate_of_what_passed_an_empty_bucket_stays_within_the_limit_and_its_burst() -> None:
    """A push's progress as push.py wires it (a Metered empty-start bucket reporting to the
    reporter), 4 MiB frames at 5 MiB/s with a 3 s stall in the middle, shown four times a second
    on the same fake clock: no rate before MIN_SPAN, the limit in steady flow, and after the stall
    never more than the one second's burst the bucket saved, spread over the window."""
    limit, window, shown = 5 * MiB, 5.0, 0.05 * MiB
    clock = SharedClock()
    r, _ = _reporter(True, clock, window=window)  # type: ignore[arg-type]
    bucket = TokenBucket(rate=limit, clock=clock, initial=0)
    passed = 0

    def on_pass(n: int) -> None:
        nonlocal passed
        passed += n
        r.update(passed, passed)

    metered = Metered(bucket, on_pass)
    r.start("b1", Estimate(80 * MiB, "test"))
    r.phase("sending")
    began, seen = clock.now, []
    clock.on_tick = lambda: seen.append((clock.now - began, _shown_rate(r.status())))
    for frame in range(20):
        if frame == 10:
            clock.sleep(3)  # the producer stalls: the bucket fills up to its burst meanwhile
        metered.take(4 * MiB)
    assert all(rate is None for t, rate in seen if t < MIN_SPAN)
    rates = [(t, rate) for t, rate in seen if rate is not None]
    # until the stall (after ten frames, at 8 s) the bucket saved nothing: the limit, to the display's decimal
    assert all(rate <= limit + shown for t, rate in rates if t < 8.0), rates
    assert rates and all(rate <= limit * (1 + 1 / MIN_SPAN) + shown for _, rate in rates), rates
    assert all(rate <= limit * (1 + 1 / window) + shown for t, rate in rates if t >= window), rates
    steady = [rate for t, rate in rates if window <= t <= 9 * 0.8]  # before the stall: the limit itself
    assert steady and all(abs(rate - limit) <= 0.2 * limit for rate in steady), steady
