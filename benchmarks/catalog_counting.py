"""Benchmark 8's request counting: a ``Target`` wrapper that counts every verb (GETs per object kind),
and, on S3, the HTTP requests per operation (botocore's ``before-send`` event)."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from datetime import datetime
from typing import Any

from btrsync.targets.base import ObjectInfo, Target
from btrsync.targets.wrapper import TargetWrapper


def object_kind(key: str) -> str:
    if key.startswith("backups/") and key.endswith("/manifest"):
        return "manifest"
    if key.startswith("data/"):
        return "index" if key.endswith(".idx") else "segment"
    if key.startswith("locks/"):
        return "lease"
    if key == "btrsync-repo.json":
        return "marker"
    return "other"


class CountingTarget(TargetWrapper):
    """Delegates every verb to ``inner`` and counts it (GETs also per object kind).

    ``simulate_versions`` fills ``ObjectInfo.version`` of listed objects that have none with a
    token derived from the size: a projection of a listing that carries versions (benchmark only;
    the size alone would not be a safe version)."""

    def __init__(self, inner: Target, *, simulate_versions: bool = False) -> None:
        super().__init__(inner)
        self.simulate_versions = simulate_versions
        self.counts: Counter[str] = Counter()
        self.http: Counter[str] | None = None  # S3: HTTP requests per operation
        self._lock = threading.Lock()

    def _count(self, *names: str) -> None:
        with self._lock:
            for name in names:
                self.counts[name] += 1

    def put(self, key: str, parts: Iterable[bytes]) -> ObjectInfo:
        self._count("put", f"put {object_kind(key)}")
        return self.inner.put(key, parts)

    def get(self, key: str, *, offset: int = 0, length: int | None = None) -> Iterator[bytes]:
        self._count("get", f"get {object_kind(key)}")
        return self.inner.get(key, offset=offset, length=length)

    def stat(self, key: str) -> ObjectInfo:
        self._count("stat")
        return self.inner.stat(key)

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        self._count("list")
        for obj in self.inner.list(prefix):
            with self._lock:
                self.counts["listed"] += 1
                self.counts["listed with version"] += obj.version is not None
            if self.simulate_versions and obj.version is None:
                obj = ObjectInfo(obj.key, obj.size, f"sim-{obj.size}")
            yield obj

    def delete(self, key: str) -> None:
        self._count("delete")
        self.inner.delete(key)

    def discard_if(self, key: str, wanted: Callable[[bytes], bool], limit: int) -> bool:
        return Target.discard_if(self, key, wanted, limit)  # as before: a counted get, then discard

    def probe(self) -> None:
        self._count("probe")
        self.inner.probe()

    def first_files(self, limit: int = 3) -> list[str]:
        return Target.first_files(self, limit)  # as before: through the counted list()

    def clock(self) -> datetime | None:
        return None  # as before: the benchmark's leases are judged by the writers' clocks alone

    def report(self) -> dict[str, Any]:
        out: dict[str, Any] = dict(sorted(self.counts.items()))
        if self.http is not None:
            out["http"] = dict(sorted(self.http.items()))
        return out


def open_spec(spec: dict[str, Any], *, simulate_versions: bool = False) -> CountingTarget:
    """The target a spec names, wrapped as the command line wraps it, then counted."""
    if spec["kind"] == "dir":
        from btrsync.targets.local import LocalTarget

        return CountingTarget(LocalTarget(spec["path"]), simulate_versions=simulate_versions)
    from btrsync.targets.retry import RetryingTarget
    from btrsync.targets.s3.settings import S3Settings
    from btrsync.targets.s3.target import S3Target

    settings = S3Settings.from_mapping({"endpoint": spec["endpoint"], "region": spec["region"],
                                        "credentials_file": spec["credentials_file"]})
    s3 = S3Target(spec["bucket"], spec["prefix"], settings)
    http: Counter[str] = Counter()
    lock = threading.Lock()

    def on_send(event_name: str = "", **_: Any) -> None:
        with lock:
            http[event_name.rsplit(".", 1)[-1]] += 1

    s3._client.meta.events.register("before-send.s3", on_send)
    counted = CountingTarget(RetryingTarget(s3), simulate_versions=simulate_versions)
    counted.http = http
    return counted
