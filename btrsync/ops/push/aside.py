"""The push's progress estimate, made beside the send rather than before it."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from btrsync.progress import Estimate, Progress

log = logging.getLogger(__name__)


class EstimatedAside:
    """A ``Progress`` started once its estimate is known, the estimate made on a thread of its own
    while the push runs (``btrfs send --no-data`` costs a metadata walk: never before the send).
    Phases and updates before that are replayed (the latest of each); ``finish`` waits for the
    estimate (bounded by its budget) so that no metadata send outlives the push."""

    def __init__(self, progress: Progress, estimate: Callable[[], Estimate | None], name: str,
                 index: int, count: int) -> None:
        self._progress, self._name, self._index, self._count = progress, name, index, count
        self._lock = threading.Lock()
        self._started = False
        self._phase: str | None = None
        self._update: tuple[int, int] | None = None
        self._thread = threading.Thread(target=self._estimate, args=(estimate,), name="btrsync-estimate",
                                         daemon=True)
        self._thread.start()

    def _estimate(self, estimate: Callable[[], Estimate | None]) -> None:
        try:
            found = estimate()
        except Exception as exc:  # noqa: BLE001 - an estimate never fails a push
            log.debug("estimate failed: %s", exc)
            found = None
        self._start(found)

    def _start(self, found: Estimate | None) -> None:
        with self._lock:
            if self._started:
                return
            self._started = True
            self._progress.start(self._name, found, index=self._index, count=self._count)
            if self._phase is not None:
                self._progress.phase(self._phase)
            if self._update is not None:
                self._progress.update(*self._update)

    def start(self, name: str, estimate: Estimate | None = None, *, index: int = 1, count: int = 1) -> None:
        pass  # started by the estimate

    def phase(self, name: str) -> None:
        with self._lock:
            if self._started:
                self._progress.phase(name)
            else:
                self._phase = name

    def update(self, raw: int, stored: int) -> None:
        with self._lock:
            if self._started:
                self._progress.update(raw, stored)
            else:
                self._update = (raw, stored)

    def finish(self, ok: bool = True) -> None:
        self._thread.join()
        self._start(None)
        self._progress.finish(ok)
