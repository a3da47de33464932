"""Which segments a ``verify`` run reads: all, a deterministic slice (``--subset n/t``), a random
sample (``--sample 10%`` or ``--sample 50G``), those not verified recently (``--older-than``),
within a time budget (``--max-duration``)."""

from __future__ import annotations

import hashlib
import random
import re
from dataclasses import dataclass

from btrsync.errors import UsageError
from btrsync.units import parse_size


@dataclass(frozen=True, slots=True)
class Segment:
    backup_id: str
    number: int
    size: int


@dataclass(frozen=True, slots=True)
class Subset:
    """Slice ``n`` of ``t`` (1-based), stable across runs: ``verify --subset 1/7`` on Monday,
    ``2/7`` on Tuesday ... covers every segment in a week, like restic's read-data-subset."""

    n: int
    t: int

    @classmethod
    def parse(cls, text: str) -> Subset:
        m = re.fullmatch(r"(\d+)/(\d+)", text.strip())
        if not m or not 1 <= int(m[1]) <= int(m[2]):
            raise UsageError(f"--subset {text!r}: use n/t with 1 <= n <= t, e.g. 2/7")
        return cls(int(m[1]), int(m[2]))

    def contains(self, seg: Segment) -> bool:
        digest = hashlib.sha256(f"{seg.backup_id}/{seg.number}".encode()).digest()
        return int.from_bytes(digest[:8], "big") % self.t == self.n - 1


@dataclass(frozen=True, slots=True)
class Sample:
    """A random sample of segments: a fraction (``10%``) or a byte budget (``50G``)."""

    fraction: float | None = None
    bytes: int | None = None

    @classmethod
    def parse(cls, text: str) -> Sample:
        text = text.strip()
        try:
            if text.endswith("%"):
                value = float(text[:-1]) / 100
                if not 0 < value <= 1:
                    raise ValueError("a percentage must be above 0 and at most 100")
                return cls(fraction=value)
            return cls(bytes=parse_size(text))
        except ValueError as exc:
            raise UsageError(f"--sample {text!r}: {exc} (use e.g. 10% or 50G)") from None

    def choose(self, segments: list[Segment], rng: random.Random) -> list[Segment]:
        shuffled = list(segments)
        rng.shuffle(shuffled)
        if self.fraction is not None:
            count = max(1, round(len(shuffled) * self.fraction)) if shuffled else 0
            chosen = shuffled[:count]
        else:
            chosen, total = [], 0
            for seg in shuffled:
                if total >= (self.bytes or 0):
                    break
                chosen.append(seg)
                total += seg.size
        order = {(s.backup_id, s.number): i for i, s in enumerate(segments)}
        return sorted(chosen, key=lambda s: order[(s.backup_id, s.number)])
