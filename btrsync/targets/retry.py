"""Retrying transient target failures: the one place in btrsync that loops on errors.

``RetryPolicy`` is the loop: exponential backoff with full jitter (delay drawn uniformly from
``[0, min(max_delay, base_delay * 2**n))``, as in the AWS architecture blog "Exponential Backoff And
Jitter"), a server's ``Retry-After`` honoured when the error carries one, at most ``attempts``
tries, at most ``budget`` seconds spent waiting in total and, when the policy has a ``deadline``,
no retry once that many seconds of wall time have passed since the operation first failed (the
time spent *in* attempts counts: a store that takes a socket timeout to fail each one is not
retried for minutes; a long attempt that worked until it failed, such as a part upload on a slow
link, still gets its retries).  Only ``TransientTargetError`` is retried; every other exception passes straight through.
``sleep``, ``clock`` and ``random`` are injectable so tests never really wait.

A policy may carry an ``Outage``, shared by every operation under it: once one operation has given
up, later ones get a single attempt each (no retries) until one succeeds, so the clean-up after a
failure against a store that stopped answering (aborting an upload, removing a lease) takes one
attempt per request instead of a whole deadline each.  A give-up says how many attempts were made
and how long they took, from the first attempt's start.

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
from typing import TypeVar

from btrsync.targets.base import Leftover, ObjectInfo, Target
from btrsync.targets.errors import NotFound, TransientTargetError
from btrsync.targets.wrapper import TargetWrapper

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
    ``deadline`` (``None``: none) bounds the retries of one operation in wall time: no retry
    starts, and no wait is begun that would end, ``deadline`` seconds or more after its first
    failure.  An attempt is not interrupted here: the caller's own timeouts bound it (for S3, the
    socket timeouts), so an operation against a store that answers nothing ends within one attempt
    + ``deadline`` + one attempt.
    """

    attempts: int = 5
    base_delay: float = 0.5
    max_delay: float = 30.0
    budget: float = 300.0
    deadline: float | None = None
    outage: Outage | None = field(default=None, repr=False, compare=False)
    sleep: Callable[[float], None] = field(default=time.sleep, repr=False, compare=False)
    random: Callable[[], float] = field(default=_random.random, repr=False, compare=False)
    clock: Callable[[], float] = field(default=time.monotonic, repr=False, compare=False)

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
                result = fn()
            except TransientTargetError as exc:
                if not attempts.pause(exc):
                    raise attempts.gave_up(exc) from None
            else:
                attempts.succeeded()
                return result


class Outage:
    """Whether operations under one policy have lately given up (thread-safe).

    Set by an operation that gave up after retrying (its attempts or its deadline spent), cleared
    by any operation that succeeds.  While it is set, an operation that fails is not retried.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._since: float | None = None
        self._told: set[str] = set()
        self.what = ""

    def begin(self, what: str) -> None:
        with self._lock:
            if self._since is None:
                self._since, self.what = self._clock(), what
                self._told = set()

    def end(self) -> None:
        with self._lock:
            self._since = None

    def first(self, topic: str) -> bool:
        """True the first time ``topic`` is asked about in this outage (one warning, not one per
        request), and whenever there is no outage."""
        with self._lock:
            if self._since is None:
                return True
            told = topic in self._told
            self._told.add(topic)
            return not told

    @property
    def down(self) -> bool:
        return self._since is not None

    def describe(self) -> str:
        """How long ago, and at what, retries last gave up (for messages)."""
        with self._lock:
            since, what = self._since, self.what
        if since is None:
            return ""
        return f"{what} gave up {self._clock() - since:.1f}s ago"


@dataclass
class Attempts:
    """The attempts made so far at one operation under one ``RetryPolicy``."""

    policy: RetryPolicy
    what: str = ""
    cancel: threading.Event | None = None
    made: int = 1
    slept: float = 0.0
    started: float = field(default=-1.0)  # when the first attempt began (policy.clock)
    failing_since: float | None = None  # when the first failure (since the last progress) came
    # why the retries ended: "" (not yet), "spent" (attempts, budget or deadline), "outage", "cancelled"
    ended: str = ""

    def __post_init__(self) -> None:
        if self.started < 0:
            self.started = self.policy.clock()

    @property
    def elapsed(self) -> float:
        """Wall seconds since the first attempt began (attempts and waits)."""
        return max(0.0, self.policy.clock() - self.started)

    def pause(self, exc: BaseException) -> bool:
        """Wait before the next attempt and return True; return False when it is time to give up."""
        policy = self.policy
        now = policy.clock()
        if self.failing_since is None:
            self.failing_since = now
        delay = policy.delay(self.made, retry_after_of(exc))
        if self.cancel is not None and self.cancel.is_set():
            self.ended = "cancelled"
            return False
        if getattr(exc, "gave_up", False) or (policy.outage is not None and policy.outage.down):
            self.ended = "outage"  # another operation (or the one inside this) has given up already
            return False
        if (self.made >= policy.attempts or self.slept + delay > policy.budget
                or (policy.deadline is not None and now + delay - self.failing_since >= policy.deadline)):
            self.ended = "spent"
            if policy.outage is not None:
                policy.outage.begin(self.what or "a target operation")
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
        target that keeps failing: a full disk behind a 500, revoked credentials behind a 503):
        the attempts made and the wall time since the first began, waits and attempts alike."""
        if getattr(exc, "gave_up", False):
            return exc  # said already, by the operation inside this one
        outage = self.policy.outage
        if self.made > 1:
            note = f"gave up after {self.made} attempts over {self.elapsed:.1f}s"
        elif self.ended == "outage" and outage is not None and outage.down:
            note = f"not retried: {outage.describe()}"
        else:
            return exc
        tried = TransientTargetError(f"{exc} ({note})")
        tried.retry_after = getattr(exc, "retry_after", None)  # type: ignore[attr-defined]
        tried.gave_up = True  # type: ignore[attr-defined]
        return tried

    def progressed(self) -> None:
        """Reset the attempt count and the deadline (not the waiting budget) after an attempt that
        made progress (a resumed download that broke again is a new failure, not an old one)."""
        self.made = 1
        self.failing_since = None
        self.succeeded()

    def succeeded(self) -> None:
        """An attempt worked: the store answers again."""
        if self.policy.outage is not None:
            self.policy.outage.end()


class RetryingTarget(TargetWrapper):
    """Retries the verbs of ``inner`` on ``TransientTargetError`` under ``policy``.

    Thread-safe when ``inner`` is.  Attributes that are not part of ``Target`` (for example
    ``S3Target.list_uploads``) are forwarded to ``inner`` unchanged (``TargetWrapper``).
    """

    def __init__(self, inner: Target, policy: RetryPolicy | None = None) -> None:
        super().__init__(inner)
        # a target may name the policy its whole verbs are to be retried under (S3: its deadline and
        # its outage state, shared with the retries inside its puts)
        self.policy = policy or getattr(inner, "verb_policy", None) or RetryPolicy()

    def _call(self, fn: Callable[[], T], what: str) -> T:
        return self.policy.call(fn, f"{what} on {self.display_url}")

    def put(self, key: str, parts: Iterable[bytes]) -> ObjectInfo:
        if not isinstance(parts, Iterator):
            return self._call(lambda: self.inner.put(key, parts), f"put {key}")
        attempts = self.policy.start(f"put {key} on {self.display_url}")
        while True:
            counted = _CountingIterator(parts)
            try:
                info = self.inner.put(key, counted)
            except TransientTargetError as exc:
                if counted.consumed or not attempts.pause(exc):
                    raise attempts.gave_up(exc) from None
            else:
                attempts.succeeded()
                return info

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
                    raise attempts.gave_up(exc) from None
            else:
                attempts.succeeded()
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

    def discard(self, key: str) -> None:
        self._call(lambda: self.inner.discard(key), f"delete {key}")

    def discard_if(self, key: str, wanted: Callable[[bytes], bool], limit: int) -> bool:
        """Retried whole: an attempt after one that deleted finds nothing (False), as it should."""
        return self._call(lambda: self.inner.discard_if(key, wanted, limit), f"delete {key}")

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


class _CountingIterator(Iterator[bytes]):
    """Passes parts through and remembers whether any was taken."""

    def __init__(self, parts: Iterator[bytes]) -> None:
        self._parts = parts
        self.consumed = False

    def __next__(self) -> bytes:
        part = next(self._parts)
        self.consumed = True
        return part
