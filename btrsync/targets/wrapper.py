"""``TargetWrapper``: a target that hands every verb to the target it wraps.

Retrying (``targets/retry.py``), counting (the benchmarks) and any other layer around a target
derive from it and override only the verbs they change; ``unwrap()`` gives the wrapped target
(restic's wrapper backends and their ``Unwrap``).  Attributes that are not part of ``Target``
(``S3Target.list_uploads``) are forwarded unchanged.
"""

from __future__ import annotations

import builtins
from collections.abc import Callable, Iterable, Iterator
from datetime import datetime
from typing import Any

from btrsync.targets.base import Leftover, ObjectInfo, Target


class TargetWrapper(Target):
    """Delegates every verb of ``Target`` to ``inner``."""

    def __init__(self, inner: Target) -> None:
        self.inner = inner
        self.capabilities = inner.capabilities
        self.display_url = inner.display_url

    def unwrap(self) -> Target:
        """The target this one wraps."""
        return self.inner

    def __getattr__(self, name: str) -> Any:
        if name == "inner":  # not set yet (copy, unpickle): do not recurse
            raise AttributeError(name)
        return getattr(self.inner, name)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.inner!r})"

    def put(self, key: str, parts: Iterable[bytes]) -> ObjectInfo:
        return self.inner.put(key, parts)

    def get(self, key: str, *, offset: int = 0, length: int | None = None) -> Iterator[bytes]:
        return self.inner.get(key, offset=offset, length=length)

    def stat(self, key: str) -> ObjectInfo:
        return self.inner.stat(key)

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        return self.inner.list(prefix)

    def delete(self, key: str) -> None:
        self.inner.delete(key)

    def discard(self, key: str) -> None:
        self.inner.discard(key)

    def discard_if(self, key: str, wanted: Callable[[bytes], bool], limit: int) -> bool:
        return self.inner.discard_if(key, wanted, limit)

    def probe(self) -> None:
        self.inner.probe()

    def free_space(self) -> int | None:
        return self.inner.free_space()

    def first_files(self, limit: int = 3) -> builtins.list[str]:
        return self.inner.first_files(limit)

    def clock(self) -> datetime | None:
        return self.inner.clock()

    def leftovers(self) -> builtins.list[Leftover]:
        return self.inner.leftovers()

    def remove_leftover(self, leftover: Leftover) -> None:
        self.inner.remove_leftover(leftover)

    def close(self) -> None:
        self.inner.close()

