"""Retrying transient target failures: the one place in btrsync that loops on errors.

``RetryPolicy`` is the loop: exponential backoff with full jitter (delay drawn uniformly from
``[0, min(max_delay, base_delay * 2**n))``, as in the AWS architecture blog "Exponential Backoff And
Jitter"), a server's ``Retry-After`` honoured when the error carries one, at most ``attempts``
tries and at most ``budget`` seconds spent waiting in total.  Only ``TransientTargetError`` is
retried; every other exception passes straight through.  ``sleep`` and ``random`` are injectable so
tests never really wait.

``RetryingTarget`` wraps any target and retries whole verbs.  ``get`` resumes a broken download at
``offset + bytes already yielded`` instead of starting again.  ``put`` is retried only when doing so
cannot lose data: when ``parts`` can be iterated again (a list or tuple) or when the failed attempt
had not consumed any of it; a one-shot stream that failed half-way is not retried here (targets that
upload in parts, such as S3, resend single parts themselves).
"""

from __future__ import annotations

import builtins
import logging
import random as _random
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, TypeVar

from btrsync.targets.base import Leftover, ObjectInfo, Target
from btrsync.targets.errors import NotFound, TransientTargetError

log = logging.getLogger(__name__)
T = TypeVar("T")


def transient(message: str, retry_after: float | None = None) -> TransientTargetError:
    """A ``TransientTargetError`` carrying the server's ``Retry-After`` seconds, if it sent one."""
    exc = TransientTargetError(message)
    exc.retry_after = retry_after  # type: ignore[attr-defined]
    return exc


def retry_after_of(exc: BaseException) -> float | None:
    """The ``Retry-After`` seconds an error carries, if any."""
    value = getattr(exc, "retry_after", None)
    return float(value) if value is not None else None


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how long to retry a transient failure.

    ``attempts`` counts the first try too.  ``budget`` bounds the total seconds slept between the
    attempts of one operation; a ``Retry-After`` longer than what is left of it ends the retries.
    """

    attempts: int = 5
    base_delay: float = 0.5
    max_delay: float = 30.0
    budget: float = 300.0
    sleep: Callable[[float], None] = field(default=time.sleep, repr=False, compare=False)
    random: Callable[[], float] = field(default=_random.random, repr=False, compare=False)

    def delay(self, retry: int, retry_after: float | None = None) -> float:
        """Seconds to wait before retry number ``retry`` (1 for the first retry)."""
        if retry_after is not None:
            return max(0.0, retry_after)
        ceiling = min(self.max_delay, self.base_delay * 2.0 ** (retry - 1))
        return self.random() * ceiling

    def start(self, what: str = "", cancel: threading.Event | None = None) -> Attempts:
        """Per-operation state for a hand-written retry loop (see ``Attempts.pause``)."""
        return Attempts(self, what, cancel)

    def call(self, fn: Callable[[], T], what: str = "", cancel: threading.Event | None = None) -> T:
        """Call ``fn`` until it returns or raises something not worth retrying.

        Raises the last ``TransientTargetError`` when the attempts or the budget are spent, or as
        soon as ``cancel`` is set.
        """
        attempts = self.start(what, cancel)
        while True:
            try:
                return fn()
            except TransientTargetError as exc:
                if not attempts.pause(exc):
                    raise attempts.gave_up(exc) from None


@dataclass
class Attempts:
    """The attempts made so far at one operation under one ``RetryPolicy``."""

    policy: RetryPolicy
    what: str = ""
    cancel: threading.Event | None = None
    made: int = 1
    slept: float = 0.0

    def pause(self, exc: BaseException) -> bool:
        """Wait before the next attempt and return True; return False when it is time to give up."""
        delay = self.policy.delay(self.made, retry_after_of(exc))
        if self.made >= self.policy.attempts or self.slept + delay > self.policy.budget:
            return False
        if self.cancel is not None and self.cancel.is_set():
            return False
        log.info(
            "retrying %s in %.1fs (attempt %d of %d): %s",
            self.what or "target operation",
            delay,
            self.made + 1,
            self.policy.attempts,
            exc,
        )
        self.policy.sleep(delay)
        self.slept += delay
        self.made += 1
        return True

    def gave_up(self, exc: TransientTargetError) -> TransientTargetError:
        """``exc``, saying how hard it was tried (an operator must tell a flaky moment from a
        target that keeps failing: a full disk behind a 500, revoked credentials behind a 503)."""
        if self.made <= 1:
            return exc
        tried = TransientTargetError(f"{exc} (gave up after {self.made} attempts over {self.slept:.0f}s)")
        tried.retry_after = getattr(exc, "retry_after", None)  # type: ignore[attr-defined]
        return tried

    def progressed(self) -> None:
        """Reset the attempt count (not the time budget) after an attempt that made progress."""
        self.made = 1


class RetryingTarget(Target):
    """Retries the verbs of ``inner`` on ``TransientTargetError`` under ``policy``.

    Thread-safe when ``inner`` is.  Attributes that are not part of ``Target`` (for example
    ``S3Target.list_uploads``) are forwarded to ``inner`` unchanged.
    """

    def __init__(self, inner: Target, policy: RetryPolicy | None = None) -> None:
        self.inner = inner
        self.policy = policy or RetryPolicy()
        self.capabilities = inner.capabilities
        self.display_url = inner.display_url

    def __getattr__(self, name: str) -> Any:
        if name == "inner":  # not set yet (copy, unpickle): do not recurse
            raise AttributeError(name)
        return getattr(self.inner, name)

    def __repr__(self) -> str:
        return f"RetryingTarget({self.inner!r})"

    def _call(self, fn: Callable[[], T], what: str) -> T:
        return self.policy.call(fn, f"{what} on {self.display_url}")

    def put(self, key: str, parts: Iterable[bytes]) -> ObjectInfo:
        if not isinstance(parts, Iterator):
            return self._call(lambda: self.inner.put(key, parts), f"put {key}")
        attempts = self.policy.start(f"put {key} on {self.display_url}")
        while True:
            counted = _CountingIterator(parts)
            try:
                return self.inner.put(key, counted)
            except TransientTargetError as exc:
                if counted.consumed or not attempts.pause(exc):
                    raise

    def get(self, key: str, *, offset: int = 0, length: int | None = None) -> Iterator[bytes]:
        attempts = self.policy.start(f"get {key} on {self.display_url}")
        done = 0
        while True:
            remaining = None if length is None else length - done
            yielded_before = done
            try:
                for block in self.inner.get(key, offset=offset + done, length=remaining):
                    done += len(block)
                    yield block
            except TransientTargetError as exc:
                if done > yielded_before:
                    attempts.progressed()
                if not attempts.pause(exc):
                    raise
            else:
                return

    def stat(self, key: str) -> ObjectInfo:
        return self._call(lambda: self.inner.stat(key), f"stat {key}")

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        return iter(self._call(lambda: list(self.inner.list(prefix)), f"list {prefix!r}"))

    def delete(self, key: str) -> None:
        """Delete ``key``; ``NotFound`` on a retry means the lost earlier attempt did it."""
        first = True

        def attempt() -> None:
            nonlocal first
            try:
                self.inner.delete(key)
            except NotFound:
                if first:
                    raise
            finally:
                first = False

        self._call(attempt, f"delete {key}")

    def probe(self) -> None:
        self._call(self.inner.probe, "probe")

    def free_space(self) -> int | None:
        return self._call(self.inner.free_space, "free space")

    def first_files(self, limit: int = 3) -> builtins.list[str]:
        return self._call(lambda: self.inner.first_files(limit), "look for files")

    def clock(self) -> datetime | None:
        return self._call(self.inner.clock, "read the clock")

    def leftovers(self) -> builtins.list[Leftover]:
        return self._call(self.inner.leftovers, "list leftovers")

    def remove_leftover(self, leftover: Leftover) -> None:
        self._call(lambda: self.inner.remove_leftover(leftover), f"remove {leftover.key}")

    def close(self) -> None:
        self.inner.close()


class _CountingIterator(Iterator[bytes]):
    """Passes parts through and remembers whether any was taken."""

    def __init__(self, parts: Iterator[bytes]) -> None:
        self._parts = parts
        self.consumed = False

    def __next__(self) -> bytes:
        part = next(self._parts)
        self.consumed = True
        return part
