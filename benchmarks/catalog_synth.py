"""Benchmark 8's synthetic catalog: backup headers of four subvolumes in chains of up to 30, the one
huge full backup, its chunk records; deterministic (seeded), so the parent and every measuring child
rebuild the same catalog. Also the two sizes the benchmark runs at (quick, full)."""

from __future__ import annotations

import math
import random
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

MiB = 1 << 20
GiB = 1 << 30
CHUNK_SIZE = 4 * MiB
SEGMENT_SIZE = 128 * MiB
PER_SEGMENT = 32  # chunk records per segment index (128 MiB segments of ~3 MiB frames)
SUBVOLUMES = ("root", "home", "var", "srv")
MAX_DEPTH = 30  # chains of a full and up to 30 incrementals
EVERY = timedelta(hours=6)
T0 = datetime(2025, 1, 1, tzinfo=UTC)


@dataclass(frozen=True)
class Sizes:
    backups: int
    chunks: int
    setup_workers: int = 4  # threads writing headers / indexes (setup, and the table of the commit)
    # list, plan and prune of the one-backup catalog too (the same code as for many backups: quick
    # mode leaves them out to stay within CI's budget)
    table_catalog_commands: bool = True


SIZES = {"quick": Sizes(backups=500, chunks=20_000, table_catalog_commands=False),
         "full": Sizes(backups=10_000, chunks=2_500_000)}


@dataclass(frozen=True, slots=True)
class Header:
    """What a synthetic manifest header needs; ``manifest()`` makes the real thing."""

    subvolume: str
    snapshot: str
    time: datetime
    uuid: str
    parent_uuid: str | None
    parent_id: str | None
    depth: int
    stream_bytes: int
    stored_bytes: int
    chunk_count: int
    segments: int
    attempt: str
    digest: str

    @property
    def backup_id(self) -> str:
        from btrsync.catalog.layout import backup_id_for

        return backup_id_for(self.snapshot, self.uuid)

    def manifest(self, key_id: str, host: str) -> Any:
        from btrsync import __version__
        from btrsync.catalog.manifest import Manifest

        finished = self.time + timedelta(minutes=3 if self.depth else 45)
        return Manifest(
            backup_id=self.backup_id, host=host, subvolume=self.subvolume, source_path=f"/{self.subvolume}",
            snapshot=self.snapshot, snapshot_time=self.time, snapshot_uuid=self.uuid,
            parent_uuid=self.parent_uuid, parent_id=self.parent_id, depth=self.depth,
            send={"proto": 2, "compressed_data": True, "stream_version": 2,
                  "commands": max(3, self.stream_bytes // 40_000)},
            compression={"algorithm": "zstd", "level": 3, "per_chunk": True},
            encryption={"algorithm": "AES-256-GCM", "kdf": "HKDF-SHA256", "frame": "BSC1", "key_id": key_id},
            chunk_size=CHUNK_SIZE, chunk_count=self.chunk_count,
            table={"attempt": self.attempt, "digest": self.digest},
            stream_bytes=self.stream_bytes, stored_bytes=self.stored_bytes, segments=self.segments,
            started=self.time + timedelta(seconds=5), finished=finished,
            tool={"btrsync": __version__, "btrfs_progs": "6.2", "kernel": "6.1.0-bench"},
        )


def _uuid(rng: random.Random) -> str:
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


def synthetic_headers(n: int, seed: int = 7) -> list[Header]:
    """``n`` backups over ``SUBVOLUMES`` (round robin), oldest first, chains of up to 30."""
    rng = random.Random(seed)
    per = [n // len(SUBVOLUMES) + (i < n % len(SUBVOLUMES)) for i in range(len(SUBVOLUMES))]
    out: list[Header] = []
    for sv, count in zip(SUBVOLUMES, per, strict=True):
        prev: Header | None = None
        for i in range(count):
            t = T0 + i * EVERY
            depth = i % (MAX_DEPTH + 1)
            full = depth == 0
            stream = (rng.randint(20, 200) * GiB if full else int(rng.lognormvariate(math.log(300 * MiB), 1.2)))
            stream = max(stream, 64 * 1024)
            stored = int(stream * rng.uniform(0.45, 0.9))
            chunks = max(1, math.ceil(stream / CHUNK_SIZE))
            h = Header(sv, f"{sv}.{t:%Y%m%dT%H%M%SZ}", t, _uuid(rng),
                       None if full else prev.uuid, None if full else prev.backup_id,  # type: ignore[union-attr]
                       depth, stream, stored, chunks, max(1, math.ceil(stored / SEGMENT_SIZE)),
                       f"{rng.getrandbits(64):016x}", f"{rng.getrandbits(256):064x}")
            out.append(h)
            prev = h
    out.sort(key=lambda h: (h.time, h.snapshot))
    return out


def big_header(chunks: int, seed: int = 11) -> Header:
    """The one huge full backup (table fields filled in by the commit child)."""
    rng = random.Random(seed)
    t = T0 + timedelta(days=400)
    return Header("data", f"data.{t:%Y%m%dT%H%M%SZ}", t, _uuid(rng), None, None, 0, chunks * CHUNK_SIZE,
                  0, chunks, math.ceil(chunks / PER_SEGMENT), "", "")


def next_header(headers: list[Header], subvolume: str = SUBVOLUMES[0], seed: int = 13) -> Header:
    """One more backup of ``subvolume`` after the newest of ``headers``."""
    rng = random.Random(seed)
    last = [h for h in headers if h.subvolume == subvolume][-1]
    t = last.time + EVERY
    depth = 0 if last.depth >= MAX_DEPTH else last.depth + 1
    return Header(subvolume, f"{subvolume}.{t:%Y%m%dT%H%M%SZ}", t, _uuid(rng),
                  None if depth == 0 else last.uuid, None if depth == 0 else last.backup_id, depth,
                  200 * MiB, 150 * MiB, 50, 2, f"{rng.getrandbits(64):016x}", f"{rng.getrandbits(256):064x}")


def index_params(h: Header, key_id: str, attempt: str) -> dict[str, Any]:
    """The parameters a push records in each segment index (see ``ops.push.attempt.Attempt.params``)."""
    return {"snapshot_uuid": h.uuid, "parent_uuid": h.parent_uuid, "chunk_size": CHUNK_SIZE, "zstd_level": 3,
            "send": {"proto": 2, "compressed_data": True}, "key_id": key_id, "attempt": attempt}


def segment_records(segment: int, count: int, rng: random.Random) -> list[Any]:
    """``count`` chunk records of one segment: 4 MiB raw, 2-4 MiB stored, back to back."""
    from btrsync.catalog.manifest import ChunkRecord

    out, offset = [], 0
    for _ in range(count):
        stored = rng.randint(2 * MiB, 4 * MiB - 64 * 1024)
        out.append(ChunkRecord(segment, offset, stored, CHUNK_SIZE, f"{rng.getrandbits(128):032x}",
                               f"{rng.getrandbits(128):032x}"))
        offset += stored
    return out
