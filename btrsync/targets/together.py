"""Independent reads of a target at once.

Every call a command makes in turn is a round trip it waits for: ~1 ms on a local disk, 50-150 ms
to a store on another continent (B2, S3).  Reads that do not depend on each other (the bucket
check and the repository marker; the listings and checks right before a commit) are made at once
instead, so a push pays one round trip for each group rather than one for each call.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from btrsync.targets.base import Target


def together(target: Target, *calls: Callable[[], Any]) -> list[Any]:
    """The results of ``calls``, in order, made at once on ``target``: at most as many at a time as
    the target takes (``capabilities.connections``; one after another when that is one).  When
    calls fail, the error of the first failed one in order is raised once all have ended, as if
    they had run one after another; so pass only calls that may run even when an earlier one fails
    (reads, or deleting versions of one key).  The first call runs on this thread: a signal
    (``btrsync.signals``) ends the wait at once, the calls not started yet are dropped, and those
    running end on their own (daemon threads)."""
    limit = min(target.capabilities.connections, len(calls))
    if limit < 2:
        return [call() for call in calls]
    outcomes: list[tuple[bool, Any]] = [(False, None)] * len(calls)
    waiting = list(range(len(calls) - 1, 0, -1))  # popped from the end: call 1 first
    lock = threading.Lock()

    def run(i: int, caught: type[BaseException]) -> None:
        try:
            outcomes[i] = (True, calls[i]())
        except caught as exc:  # raised on the calling thread below
            outcomes[i] = (False, exc)

    def worker(caught: type[BaseException] = BaseException) -> None:
        while True:
            with lock:
                if not waiting:
                    return
                i = waiting.pop()
            run(i, caught)

    threads = [threading.Thread(target=worker, name="btrsync-together", daemon=True) for _ in range(limit - 1)]
    for thread in threads:
        thread.start()
    try:
        run(0, Exception)  # a signal on this thread is raised at once, never kept for later
        worker(Exception)  # then this thread takes its share of the rest
        for thread in threads:
            thread.join()
    except BaseException:  # a signal: start nothing more, wait for nothing
        with lock:
            waiting.clear()
        raise
    results = []
    for ok, value in outcomes:
        if not ok:
            raise value
        results.append(value)
    return results
