"""An in-memory target: the reference implementation for unit tests and fault injection."""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime, timedelta

import xxhash

from btrsync.targets.base import (
    Capabilities,
    ObjectInfo,
    Target,
    check_range,
    validate_key,
    validate_prefix,
)
from btrsync.targets.errors import NotFound


class MemoryTarget(Target):
    capabilities = Capabilities(max_part_size=64 * 1024 * 1024, connections=8)

    def __init__(self) -> None:
        self.objects: dict[str, bytes] = {}
        # when put() last wrote each key, on clock(); an object placed in ``objects`` directly has none
        self.modified: dict[str, datetime] = {}
        #: added to the real time by ``clock()`` (a test moves the target's clock with it)
        self.clock_offset = timedelta(0)
        self._lock = threading.Lock()
        self.display_url = "memory://"

    def put(self, key: str, parts: Iterable[bytes]) -> ObjectInfo:
        validate_key(key)
        data = b"".join(bytes(p) for p in parts)  # an exception here stores nothing
        with self._lock:
            self.objects[key] = data
            self.modified[key] = now = self._now()
        return ObjectInfo(key, len(data), xxhash.xxh3_64_hexdigest(data), now)  # the version a listing shows

    def get(self, key: str, *, offset: int = 0, length: int | None = None) -> Iterator[bytes]:
        data = self._data(key)
        end = check_range(key, len(data), offset, length)
        step = 1 << 20
        for pos in range(offset, end, step):
            yield data[pos : min(pos + step, end)]

    def stat(self, key: str) -> ObjectInfo:
        return ObjectInfo(key, len(self._data(key)), modified=self._modified(key))

    def clock(self) -> datetime:
        return self._now()

    def _now(self) -> datetime:
        return datetime.now(UTC) + self.clock_offset

    def _modified(self, key: str) -> datetime | None:
        """put()'s time; ``None`` for an object a test placed in ``objects`` directly."""
        with self._lock:
            return self.modified.get(key) if key in self.objects else None

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        validate_prefix(prefix)
        with self._lock:
            items = sorted((k, v) for k, v in self.objects.items() if k.startswith(prefix))
        for key, data in items:
            # the version changes when it is replaced
            yield ObjectInfo(key, len(data), xxhash.xxh3_64_hexdigest(data), self._modified(key))

    def delete(self, key: str) -> None:
        validate_key(key)
        with self._lock:
            self.modified.pop(key, None)
            if self.objects.pop(key, None) is None:
                raise NotFound(f"{key} not found on {self.display_url}")

    def _data(self, key: str) -> bytes:
        validate_key(key)
        with self._lock:
            try:
                return self.objects[key]
            except KeyError:
                raise NotFound(f"{key} not found on {self.display_url}") from None
