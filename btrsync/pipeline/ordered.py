"""An ordered parallel map over a bounded window: the pipeline's only CPU concurrency."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")
R = TypeVar("R")


def ordered_map(fn: Callable[[T], R], items: Iterable[T], *, workers: int, window: int) -> Iterator[R]:
    """Apply ``fn`` on ``workers`` threads, yielding results in input order.

    At most ``window`` items are submitted but not yet yielded, which bounds memory to
    ``window`` inputs plus results.  If the consumer stops or ``fn`` raises, queued work is
    cancelled and the first error propagates.
    """
    if workers <= 1:
        yield from map(fn, items)
        return
    pending: deque[Future[R]] = deque()
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="btrsync-stage") as pool:
        try:
            for item in items:
                pending.append(pool.submit(fn, item))
                if len(pending) >= window:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        finally:
            for fut in pending:
                fut.cancel()
