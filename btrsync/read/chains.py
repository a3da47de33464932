"""Which backup a spec names, and the links to replay for it (full first).

``BACKUP`` is an id, a snapshot name, ``latest`` or ``SUBVOL@latest``.  A damaged backup, a
missing, damaged or mismatched parent, or a loop is damage (``DamageError``, exit 4), never
silently another backup; ``catalog/chains.walk_chain`` decides the links.
"""

from __future__ import annotations

from btrsync.catalog.chains import walk_chain
from btrsync.catalog.manifest import Manifest
from btrsync.catalog.repository import Catalog, Repository
from btrsync.errors import BackupNotFoundError, DamageError, UsageError


def resolve(manifests: list[Manifest], spec: str) -> Manifest:
    """BACKUP as an id, a snapshot name, ``latest`` or ``SUBVOL@latest``."""
    if not manifests:
        raise BackupNotFoundError("the target holds no backups")
    if spec == "latest" or spec.endswith("@latest"):
        pool = manifests if spec == "latest" else [m for m in manifests if m.subvolume == spec[:-7]]
        subvols = sorted({m.subvolume for m in pool})
        if not pool:
            raise BackupNotFoundError(f"no backups of subvolume {spec[:-7]!r} (have: "
                                      f"{', '.join(sorted({m.subvolume for m in manifests}))})")
        if len(subvols) > 1:
            raise UsageError(f"'latest' is ambiguous: the target holds {', '.join(subvols)}; "
                             f"say which, e.g. {subvols[0]}@latest")
        return max(pool, key=lambda m: (m.snapshot_time, m.snapshot))
    matches = [m for m in manifests if spec in (m.backup_id, m.snapshot)]
    if len(matches) == 1:
        return matches[0]
    if len(matches) > 1:
        raise UsageError(f"{spec!r} names several backups ({', '.join(m.backup_id for m in matches)}); "
                         "use the id")
    raise BackupNotFoundError(f"no backup {spec!r} on the target (see 'btrsync list')")


def restore_chain(catalog: Catalog, spec: str, url: str) -> list[Manifest]:
    """The links to replay for BACKUP ``spec``, full first; a damaged backup, or a ``latest`` that
    a damaged newer manifest may hide, is damage (exit 4), never silently another backup."""
    for d in catalog.damaged:
        if d.matches(spec):
            raise DamageError(f"backup {d.backup_id} cannot be restored: {d.advice(url)}")
    last = resolve(catalog.manifests, spec)
    if spec == "latest" or spec.endswith("@latest"):
        newer = [d for d in catalog.damaged if d.subvolume in (last.subvolume, None)
                 and (d.snapshot_time is None or d.snapshot_time > last.snapshot_time)]
        if newer:
            raise DamageError(f"'{spec}' is ambiguous: a newer backup of {last.subvolume} may exist but its "
                              f"manifest is damaged ({newer[0].key}); restore a backup by its id "
                              f"(the newest intact one is {last.backup_id}) or repair the manifest")
    return walk_chain({m.backup_id: m for m in catalog.manifests}, last, {d.backup_id for d in catalog.damaged})


def chain_for(repo: Repository, spec: str) -> list[Manifest]:
    """``restore_chain`` of ``spec`` in ``repo``'s catalog."""
    return restore_chain(repo.catalog(ahead=True), spec, repo.target.display_url)
