"""File-level views of backups from their file indexes: ``ls``, ``find`` and ``index``.

``tree_of`` materialises the tree of any backup by replaying the file indexes of its chain
(``fileindex/tree.py``); no stream data is read.  ``listing`` keeps the result (sorted entries)
in ``state_dir/files/<repo_id>/<backup_id>.json.zst``, keyed by what pins each index of the chain,
so a second ``ls`` of the same backup reads one local file.  ``index_backups`` writes the index
of backups pushed before indexes existed, by reading their streams (under a lease on each).
"""

from __future__ import annotations

import bisect
import fnmatch
import json
import logging
import os
import stat
import tempfile
from contextlib import closing, suppress
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import zstandard

from btrsync.catalog.lease import Lease
from btrsync.catalog.manifest import Manifest
from btrsync.catalog.repository import Repository
from btrsync.errors import DamageError, UsageError
from btrsync.fileindex import store
from btrsync.fileindex.tree import Entry, FileTree, gc_paused, parent_clone_paths
from btrsync.read.chains import chain_for, restore_chain
from btrsync.read.chunks import raw_stream
from btrsync.sendstream.parser import StreamError, StreamParser

log = logging.getLogger(__name__)

CACHE_FORMAT = 2  # 2: the zstd frame carries a checksum (1 did not: a flipped bit could list wrong data)


def normalise(path: str) -> str:
    """A path inside a backup: relative, no empty, ``.`` or ``..`` components (``/`` is the root)."""
    parts = [p for p in path.strip("/").split("/") if p not in ("", ".")]
    if ".." in parts:
        raise UsageError(f"{path!r}: '..' is not allowed in a path inside a backup")
    return "/".join(parts)


def tree_of(repo: Repository, chain: list[Manifest], *, with_ops: bool = False) -> tuple[FileTree, int]:
    """The tree after the last link of ``chain`` and the stored bytes of the indexes read."""
    tree = FileTree(with_ops=with_ops)
    read = 0
    with gc_paused():
        for m in chain:
            data, stored = store.read_compressed(repo, m)
            read += stored
            where = f"backup {m.backup_id}"
            pcs = (parent_clone_paths(store.records_mentioning(data, m, b'"clone"'), m.parent_uuid)
                   if m.parent_uuid else set())
            tree.apply_link(store.iter_records(data, m), where=where, uuid=m.snapshot_uuid,
                            parent_uuid=m.parent_uuid, parent_clone_paths=sorted(pcs))
    return tree, read


# -- the local cache of listings --------------------------------------------------------------------
def _cache_key(chain: list[Manifest]) -> list[list[Any]]:
    return [[m.backup_id, m.snapshot_uuid, m.table.get("attempt"), m.stream_bytes,
             (m.files or {}).get("sha256")] for m in chain]


def _cache_path(state_root: Path | None, repo: Repository, backup_id: str) -> Path | None:
    if state_root is None:
        return None
    return state_root / "files" / repo.repo_id / f"{backup_id}.json.zst"


def _read_cache(path: Path, key: list[list[Any]]) -> list[Entry] | None:
    """The cached entries when ``path`` is a regular file (never followed if a symlink) holding a
    checksummed listing of ``key``; anything else is ignored (with a warning when it is not
    merely absent or out of date), never shown."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    except OSError as exc:
        log.warning("ignoring the file-index cache %s: %s", path, exc.strerror)
        return None
    try:
        with os.fdopen(fd, "rb") as f:
            if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
                raise ValueError("not a regular file")
            raw = f.read()
        if not zstandard.get_frame_parameters(raw).has_checksum:
            raise ValueError("no checksum")
        doc = json.loads(zstandard.ZstdDecompressor().decompress(raw))  # the frame's checksum is checked
        if not isinstance(doc, dict) or doc.get("format") != CACHE_FORMAT or doc.get("key") != key:
            return None
        return [Entry(*row) for row in doc["entries"]]
    except (OSError, ValueError, TypeError, KeyError, zstandard.ZstdError) as exc:
        log.warning("ignoring the unreadable file-index cache %s: %s", path, exc)
        return None


def _write_cache(path: Path, key: list[list[Any]], entries: list[Entry]) -> None:
    """Replace ``path`` by a new listing, written to a fresh temporary name (``O_EXCL``: nothing
    planted there is followed) and renamed over it."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    doc = {"format": CACHE_FORMAT, "key": key, "entries": [e.to_list() for e in entries]}
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(zstandard.ZstdCompressor(level=3, write_checksum=True).compress(
                json.dumps(doc, separators=(",", ":")).encode()))
        os.replace(tmp, path)
    except BaseException:
        with suppress(OSError):
            os.unlink(tmp)
        raise


def listing(repo: Repository, chain: list[Manifest], state_root: Path | None) -> list[Entry]:
    """The sorted entries of the chain's last backup, from the local cache when it is current."""
    path = _cache_path(state_root, repo, chain[-1].backup_id)
    key = _cache_key(chain)
    if path is not None and (cached := _read_cache(path, key)) is not None:
        return cached
    tree, _ = tree_of(repo, chain)
    entries = tree.entries()
    if path is not None:
        try:
            _write_cache(path, key, entries)
        except OSError as exc:
            log.warning("cannot cache the listing of %s in %s: %s", chain[-1].backup_id, path, exc)
    return entries


def _keys(entries: list[Entry]) -> list[bytes]:
    return [e.path.encode("utf-8", "surrogateescape") for e in entries]


def select(entries: list[Entry], path: str, *, recursive: bool) -> list[Entry]:
    """``path`` itself when it is not a directory; else its children (every descendant with
    ``recursive``). ``UsageError`` when the backup has no such path."""
    keys = _keys(entries)
    i = bisect.bisect_left(keys, path.encode("utf-8", "surrogateescape"))
    if i == len(entries) or entries[i].path != path:
        raise UsageError(f"no {path!r} in this backup")
    if entries[i].kind != "d":
        return [entries[i]]
    prefix = (path + "/").encode("utf-8", "surrogateescape") if path else b""
    start = bisect.bisect_left(keys, prefix) if path else 0
    out = []
    for k in range(start, len(entries)):
        if not keys[k].startswith(prefix):
            break
        if not keys[k]:
            continue  # the root itself
        if recursive or b"/" not in keys[k][len(prefix):]:
            out.append(entries[k])
    return out


def entry_dict(e: Entry) -> dict[str, Any]:
    return {"path": e.path, "type": e.kind, "size": e.size, "mode": format(e.mode, "04o"), "uid": e.uid,
            "gid": e.gid, "mtime": e.mtime_ns / 1e9, "target": e.target, "inode": e.ino, "links": e.nlink}


# -- find -------------------------------------------------------------------------------------------
@dataclass
class Sighting:
    backup_id: str
    snapshot: str
    status: str  # new | changed | same | gone
    entry: Entry | None


@dataclass
class Found:
    path: str
    history: list[Sighting] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {"path": self.path, "backups": [
            {"backup": s.backup_id, "snapshot": s.snapshot, "status": s.status,
             **({"entry": entry_dict(s.entry)} if s.entry is not None else {})} for s in self.history]}


def _same(a: Entry, b: Entry) -> bool:
    return (a.kind, a.size, a.mode, a.uid, a.gid, a.mtime_ns, a.target) == (b.kind, b.size, b.mode, b.uid, b.gid,
                                                                           b.mtime_ns, b.target)


def find(repo: Repository, specs: list[str], state_root: Path | None, *, name: str | None = None,
         newer: datetime | None = None) -> list[Found]:
    """Paths matching ``name`` (a glob on the name, or on the whole path when it holds a ``/``) or
    with an mtime after ``newer``, in any of the backups, with their state in each (oldest first)."""
    if (name is None) == (newer is None):
        raise UsageError("give exactly one of --name GLOB and --newer TIME")
    catalog = repo.catalog(ahead=True)
    chains = [restore_chain(catalog, s, repo.target.display_url) for s in specs]
    chains.sort(key=lambda c: (c[-1].snapshot_time, c[-1].backup_id))
    seen: dict[str, Found] = {}
    previous: dict[str, Entry] = {}
    limit = None if newer is None else int(newer.timestamp() * 1_000_000_000)
    for chain in chains:
        last = chain[-1]
        current: dict[str, Entry] = {}
        for e in listing(repo, chain, state_root):
            if not e.path:
                continue
            if name is not None:
                subject = e.path if "/" in name else e.path.rsplit("/", 1)[-1]
                if not fnmatch.fnmatchcase(subject, name):
                    continue
            elif e.mtime_ns <= limit and e.path not in seen:  # type: ignore[operator]
                continue  # an old file, unless an earlier backup had it newer
            current[e.path] = e
        for path, e in current.items():
            before = previous.get(path)
            status = "new" if before is None else "same" if _same(before, e) else "changed"
            seen.setdefault(path, Found(path)).history.append(Sighting(last.backup_id, last.snapshot, status, e))
        for path in previous.keys() - current.keys():
            seen[path].history.append(Sighting(last.backup_id, last.snapshot, "gone", None))
        previous = current
    return [seen[p] for p in sorted(seen)]


# -- index: backups pushed before the file index -----------------------------------------------------
@dataclass
class Indexed:
    backup_id: str
    status: str  # written | present | rewritten (was damaged, pinned by nothing) | damaged (pinned)
    records: int = 0
    stored_bytes: int = 0
    message: str | None = None


def index_problem(repo: Repository, m: Manifest) -> str | None:
    """None when ``m``'s file index authenticates and reads through to its trailer; else why not."""
    try:
        data, _ = store.read_compressed(repo, m)
        for _ in store.iter_records(data, m):
            pass
    except DamageError as exc:
        return str(exc)
    return None


def index_backups(repo: Repository, spec: str, *, workers: int = 2) -> list[Indexed]:
    """Write the missing file indexes of ``spec``'s chain (idempotent), each under a lease that
    keeps prune and clean away from the backup while its index is written."""
    repo.require_writable()
    chain = chain_for(repo, spec)
    done: list[Indexed] = []
    for m in chain:
        written = "written"
        if store.has_index(repo, m):
            problem = index_problem(repo, m)
            if problem is None:
                done.append(Indexed(m.backup_id, "present"))
                continue
            if m.files:
                done.append(Indexed(m.backup_id, "damaged", message=(
                    f"{problem}; its manifest pins it, so it cannot be rewritten: the backup may still restore "
                    "whole ('btrsync restore' or 'receive' without paths); see docs/verify.md")))
                continue
            log.warning("rewriting the damaged file index of %s (no manifest pins it): %s", m.backup_id, problem)
            written = "rewritten"
        with Lease(repo.target, m.backup_id, m.backup_id):
            writer = store.IndexWriter(m.backup_id, m.snapshot_uuid, m.parent_uuid, str(m.table.get("attempt")))
            try:
                parser = StreamParser()
                with closing(raw_stream(repo, m, workers=workers)) as chunks:
                    for chunk in chunks:
                        for ev in parser.feed(chunk):
                            writer.add(ev)
                parser.finish()
                writer.finish(stream_bytes=m.stream_bytes, commands=int(parser.commands))
                if store.has_index(repo, m) and (written == "written" or index_problem(repo, m) is None):
                    done.append(Indexed(m.backup_id, "present"))  # another writer was faster: theirs is as good
                    continue
                info = writer.upload(repo)
            except StreamError as exc:
                raise DamageError(f"backup {m.backup_id}: {exc}") from None
            finally:
                writer.close()
        log.info("file index written backup=%s records=%d", m.backup_id, info["records"])
        done.append(Indexed(m.backup_id, written, info["records"], info["stored_bytes"]))
    return done
