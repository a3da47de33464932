"""``together``: independent reads of a target at once, with the errors of a sequential run."""

from __future__ import annotations

import functools
import threading

import pytest

from btrsync.targets.base import Capabilities
from btrsync.targets.errors import NotFound, TargetError
from btrsync.targets.memory import MemoryTarget
from btrsync.targets.together import together


class OneAtATime(MemoryTarget):
    capabilities = Capabilities(max_part_size=64 * 1024 * 1024, connections=1)


def test_the_calls_run_at_once_and_their_results_come_in_order() -> None:
    target = MemoryTarget()
    target.put_bytes("a", b"1")
    target.put_bytes("b", b"22")
    met = threading.Barrier(3, timeout=10)  # only passes when all three calls run at the same time

    def call(key: str) -> int:
        met.wait()
        return target.stat(key).size if key else 7

    assert together(target, lambda: call("a"), lambda: call("b"), lambda: call("")) == [1, 2, 7]


def test_the_first_failed_call_in_order_raises_after_all_have_ended() -> None:
    target = MemoryTarget()
    ended: list[str] = []

    def fails(kind: type[Exception], name: str) -> None:
        ended.append(name)
        raise kind(name)

    with pytest.raises(NotFound, match="second"):
        together(target, lambda: ended.append("first"), lambda: fails(NotFound, "second"),
                 lambda: fails(TargetError, "third"))
    assert sorted(ended) == ["first", "second", "third"]  # the third ran although the second failed


def test_a_target_of_one_connection_gets_the_calls_one_after_another() -> None:
    target = OneAtATime()
    threads: set[int] = set()

    def call() -> int:
        threads.add(threading.get_ident())
        return len(threads)

    assert together(target, call, call, call) == [1, 1, 1]
    assert threads == {threading.get_ident()}
    with pytest.raises(NotFound):  # sequential: an error ends the run as it would
        together(target, lambda: target.stat("missing"), lambda: pytest.fail("ran after an error"))


class TwoAtATime(MemoryTarget):
    capabilities = Capabilities(max_part_size=64 * 1024 * 1024, connections=2)


def test_no_more_calls_at_once_than_the_target_takes() -> None:
    """Deleting the versions of a lease refreshed a hundred times must not open a hundred connections."""
    target = TwoAtATime()
    lock = threading.Lock()
    running, most = [0], [0]

    def call(i: int) -> int:
        with lock:
            running[0] += 1
            most[0] = max(most[0], running[0])
        threading.Event().wait(0.01)
        with lock:
            running[0] -= 1
        return i

    assert together(target, *(functools.partial(call, i) for i in range(20))) == list(range(20))
    assert most[0] == 2


def test_a_signal_on_the_calling_thread_ends_the_wait_at_once() -> None:
    """Terminated (what btrsync.signals raises for SIGTERM) in the first call is raised while the
    others still run, and calls not started yet never start."""
    from btrsync.signals import Terminated

    target = TwoAtATime()
    release, started = threading.Event(), []

    def slow(i: int) -> None:
        started.append(i)
        release.wait(30)

    def terminated() -> None:
        while not started:  # the other thread has taken call 1
            threading.Event().wait(0.001)
        raise Terminated(15)

    with pytest.raises(Terminated):
        together(target, terminated, functools.partial(slow, 1), functools.partial(slow, 2))
    assert not release.is_set() and started == [1]  # call 1 still running, call 2 never started
    release.set()
