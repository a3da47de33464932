"""Multipart uploads: parts sent on bounded threads, and the record of an unfinished upload.

Memory: one budget of ``max_inflight_parts`` part uploads is shared by every ``put`` of a target
(the ``slots`` semaphore), so at most that many part buffers belong to uploads at once.
"""

from __future__ import annotations

import base64
import builtins
import hashlib
import threading
from collections.abc import Callable
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from datetime import datetime
from typing import Any, NamedTuple


def md5_b64(data: bytes) -> str:
    return base64.b64encode(hashlib.md5(data, usedforsecurity=False).digest()).decode("ascii")


class Upload(NamedTuple):
    """An unfinished multipart upload (``btrsync clean`` lists and aborts them)."""

    key: str
    upload_id: str
    initiated: datetime


class BoundedUploads:
    """Runs part uploads on ``limit`` threads; ``submit`` blocks while ``limit`` are in flight.

    Modelled on s3transfer's ``BoundedExecutor``: a slot is acquired before a part is submitted and
    released by the future's done callback, so at most ``limit`` part buffers belong to uploads.
    """

    def __init__(self, limit: int, slots: threading.Semaphore,
                 upload: Callable[[int, bytes, threading.Event], str]) -> None:
        self._slots = slots  # shared with the target's other puts: one budget of parts in flight
        self._pool = ThreadPoolExecutor(max_workers=limit, thread_name_prefix="btrsync-s3-part")
        self._upload = upload
        self._futures: dict[int, Future[str]] = {}
        self._failure: BaseException | None = None
        self.cancelled = threading.Event()

    def submit(self, number: int, data: bytes) -> None:
        """Start uploading part ``number``; re-raises the error of a part that already failed."""
        self._slots.acquire()
        if self._failure is not None:
            self._slots.release()
            raise self._failure
        future = self._pool.submit(self._upload, number, data, self.cancelled)
        future.add_done_callback(self._on_done)  # never one holding ``data``: futures are kept
        self._futures[number] = future

    def _on_done(self, future: Future[str]) -> None:
        if not future.cancelled() and future.exception() is not None and self._failure is None:
            self._failure = future.exception()
        self._slots.release()

    def finish(self) -> builtins.list[dict[str, Any]]:
        """Wait for all parts; return the ``Parts`` for CompleteMultipartUpload, or raise."""
        done, _pending = wait(self._futures.values(), return_when=FIRST_EXCEPTION)
        for future in done:
            if future.exception() is not None:
                raise future.exception()  # type: ignore[misc]
        self._pool.shutdown()
        return [{"PartNumber": n, "ETag": f.result()} for n, f in sorted(self._futures.items())]

    def cancel(self) -> None:
        """Stop retrying, drop parts not yet started and wait for those in flight."""
        self.cancelled.set()
        self._pool.shutdown(wait=True, cancel_futures=True)
