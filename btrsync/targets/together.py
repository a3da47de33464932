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
    """The results of ``calls``, in order, made at once on ``target`` (one after another when the
    target takes one call at a time).  When calls fail, the error of the first failed one in order
    is raised once all have ended, as if they had run one after another; so pass only calls that
    may run even when an earlier one fails (reads).  The first call runs on this thread: a signal
    (``btrsync.signals``) ends the wait at once, and the other calls end on their own."""
    if len(calls) < 2 or target.capabilities.connections < 2:
        return [call() for call in calls]
    outcomes: list[tuple[bool, Any]] = [(False, None)] * len(calls)

    def run(i: int) -> None:
        try:
            outcomes[i] = (True, calls[i]())
        except BaseException as exc:  # noqa: BLE001 - raised on the calling thread below
            outcomes[i] = (False, exc)

    threads = [threading.Thread(target=run, args=(i,), name="btrsync-together", daemon=True)
               for i in range(1, len(calls))]
    for thread in threads:
        thread.start()
    try:
        first = calls[0]()
    except Exception as exc:  # noqa: BLE001 - raised once the others have ended
        outcomes[0] = (False, exc)
    else:
        outcomes[0] = (True, first)
    for thread in threads:
        thread.join()
    results = []
    for ok, value in outcomes:
        if not ok:
            raise value
        results.append(value)
    return results
