"""Usage: bytes stored per subvolume and per chain, from the manifests; quota share; free space."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from btrsync.catalog.manifest import Manifest
from btrsync.catalog.repository import Catalog, Repository


@dataclass(slots=True)
class ChainUsage:
    full: str
    backups: int = 0
    stream_bytes: int = 0
    stored_bytes: int = 0
    newest: str = ""


@dataclass(slots=True)
class SubvolumeUsage:
    subvolume: str
    backups: int = 0
    stream_bytes: int = 0
    stored_bytes: int = 0
    chains: list[ChainUsage] = field(default_factory=list)


@dataclass(slots=True)
class UsageReport:
    target: str
    subvolumes: list[SubvolumeUsage]
    stored_bytes: int
    uncommitted_bytes: int
    quota_bytes: int | None
    free_bytes: int | None
    catalog: Catalog | None = None  # damaged manifests and broken chains are reported beside the sums

    @property
    def quota_share(self) -> float | None:
        if not self.quota_bytes:
            return None
        return (self.stored_bytes + self.uncommitted_bytes) / self.quota_bytes

    def as_dict(self) -> dict[str, Any]:
        return {
            "target": self.target, "stored_bytes": self.stored_bytes,
            "uncommitted_bytes": self.uncommitted_bytes, "quota_bytes": self.quota_bytes,
            "quota_share": self.quota_share, "free_bytes": self.free_bytes,
            "damaged_manifests": [d.key for d in self.catalog.damaged] if self.catalog else [],
            "subvolumes": [
                {"subvolume": s.subvolume, "backups": s.backups, "stream_bytes": s.stream_bytes,
                 "stored_bytes": s.stored_bytes,
                 "chains": [vars_of(c) for c in s.chains]}
                for s in self.subvolumes],
        }


def vars_of(chain: ChainUsage) -> dict[str, Any]:
    return {"full": chain.full, "backups": chain.backups, "stream_bytes": chain.stream_bytes,
            "stored_bytes": chain.stored_bytes, "newest": chain.newest}


def chain_roots(manifests: list[Manifest]) -> dict[str, str]:
    """backup id -> id of the full its chain starts from (itself for a full; '?' if broken)."""
    by_id = {m.backup_id: m for m in manifests}
    roots: dict[str, str] = {}
    for m in manifests:
        cur, seen = m, set()
        while cur.parent_id is not None and cur.parent_id in by_id and cur.backup_id not in seen:
            seen.add(cur.backup_id)
            cur = by_id[cur.parent_id]
        roots[m.backup_id] = cur.backup_id if cur.parent_id is None else "?"
    return roots


def usage(repo: Repository, *, quota_bytes: int | None = None) -> UsageReport:
    catalog = repo.catalog()
    manifests = catalog.manifests
    roots = chain_roots(manifests)
    subvols: dict[str, SubvolumeUsage] = {}
    chains: dict[tuple[str, str], ChainUsage] = defaultdict(lambda: ChainUsage(""))
    for m in manifests:
        sv = subvols.setdefault(m.subvolume, SubvolumeUsage(m.subvolume))
        sv.backups += 1
        sv.stream_bytes += m.stream_bytes
        sv.stored_bytes += m.stored_bytes
        chain = chains[(m.subvolume, roots[m.backup_id])]
        chain.full = roots[m.backup_id]
        chain.backups += 1
        chain.stream_bytes += m.stream_bytes
        chain.stored_bytes += m.stored_bytes
        chain.newest = m.backup_id
    for (subvolume, _root), chain in chains.items():
        subvols[subvolume].chains.append(chain)
    uncommitted = sum(o.size for o in repo.orphaned_data())
    return UsageReport(repo.target.display_url, sorted(subvols.values(), key=lambda s: s.subvolume),
                       sum(m.stored_bytes for m in manifests), uncommitted, quota_bytes,
                       repo.target.free_space(), catalog)
