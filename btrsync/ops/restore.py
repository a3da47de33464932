"""Restore a backup onto any filesystem, without btrfs: replay its chain in user space.

Data flow::

    resolve BACKUP, chain (full first)                       read/chains.py, as receive does
    DIR/.btrsync-restore.<snapshot>/   work directory, 0700: tree/ (the restore), pins-N/
    for each link:
      incremental: scan its stream for clones from the parent          (pass 1, data not used)
      read/chunks.py: target.get ─► [workers: xxh3 → GCM open → zstd -d → size + xxh3]
                      ordered, bounded window ─► Applier (restore/apply/): every command confined to tree/
    place tree/ at DIR/<snapshot>: new (rename, no replace) | --overwrite (exchange, old removed)
                                   | --skip-existing (merge: only paths that do not exist)
    syncfs before and after placing: when restore returns, the restore is on disk
    remove the work directory (also on any failure: nothing half-restored is left at DIR/<snapshot>)

Every chunk is authenticated before any of its bytes is applied. A stream that names a path
outside the tree or through a symlink is refused (``DamageError``, exit 4).
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import socket
import stat
import time
from collections.abc import Callable
from contextlib import closing
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from btrsync.catalog.manifest import Manifest
from btrsync.catalog.repository import Repository
from btrsync.catalog.segment_index import chain_read_ahead
from btrsync.errors import DamageError, LockedError, UsageError
from btrsync.fdio import syncfs, write_all
from btrsync.ops.files import normalise, tree_of
from btrsync.procs import pid_alive
from btrsync.read.chains import chain_for
from btrsync.read.chunks import raw_stream
from btrsync.restore import RestoreError, fsutil, place
from btrsync.restore.apply import Applier, scan_parent_clones
from btrsync.restore.meta import Notes
from btrsync.restore.paths import DIR_FLAGS, Tree
from btrsync.restore.selective import SelectiveRestore

log = logging.getLogger(__name__)

EXISTING_MODES = ("refuse", "overwrite", "skip")
WORK_PREFIX = ".btrsync-restore."
MARKER = "btrsync-restore.json"
JOURNAL = "aside.json"  # --overwrite of selected paths without atomic exchange: what is aside


@dataclass
class RestoredLink:
    backup_id: str
    snapshot: str
    kind: str  # full | incremental
    stream_bytes: int
    commands: int
    bytes_written: int
    bytes_cloned: int
    parent_clones: int
    preserved_bytes: int
    scan_seconds: float
    seconds: float


@dataclass
class RestoreResult:
    backup_id: str
    snapshot: str
    to: str
    path: str
    existing: str
    links: list[RestoredLink] = field(default_factory=list)
    notes: list[dict[str, Any]] = field(default_factory=list)
    added: int | None = None  # --skip-existing: entries added; --overwrite of paths: paths added
    kept: int | None = None  # --skip-existing: existing paths left alone
    kept_examples: list[str] = field(default_factory=list)
    replaced: list[str] | None = None  # --overwrite of selected paths: those that existed and were replaced
    reflinked_bytes: int = 0
    seconds: float = 0.0
    # selected paths only (``restore BACKUP PATH...``): what was read to restore them
    selected: list[str] | None = None
    files: int | None = None  # regular files restored
    entries: int | None = None  # paths restored, ancestors included
    fetched_bytes: int | None = None  # stored bytes of the chunks read
    fetched_chunks: int | None = None
    index_bytes: int | None = None  # stored bytes of the chain's file indexes read
    stored_bytes: int | None = None  # stored bytes of the whole chain
    fetched_share: float | None = None  # (chunks + indexes read) / stored bytes of the chain

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _exists(dir_fd: int, name: str) -> os.stat_result | None:
    try:
        return os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return None


def _try_lock(fd: int) -> bool:
    """An exclusive flock on ``fd`` without waiting.  Where the filesystem cannot lock (ENOLCK on
    some NFS and FUSE mounts), the marker's own word decides: held while the host and pid it
    names (this host) still run, so a live restore's work directory is never taken for leftovers."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    except OSError as exc:
        log.debug("cannot lock a restore's work directory marker here: %s", exc)
        return not _marker_holder_runs(fd)
    return True


def _marker_holder_runs(fd: int) -> bool:
    try:
        doc = json.loads(os.pread(fd, 4096, 0) or b"{}")
        pid, host = int(doc.get("pid", 0)), str(doc.get("host", socket.gethostname()))
    except (OSError, ValueError, TypeError, RecursionError):
        return False
    if pid <= 0 or pid == os.getpid():
        return False
    if host != socket.gethostname():
        return True  # another host's: it cannot be told from here, so it is not removed
    return pid_alive(pid)


def _remove_work(to_fd: int, work: str, lock_fd: int) -> None:
    """Remove the work directory; its marker stays locked (``lock_fd``, closed here) until nothing
    else is left, so no other restore takes a live work directory for leftovers.  The marker goes
    last, once closed: on NFS and FUSE (sshfs) an unlinked file that is still open lives on as a
    hidden ``.nfsXXXX``/``.fuse_hiddenXXXX`` file, and the directory would never be empty."""
    try:
        try:
            wfd = os.open(work, DIR_FLAGS, dir_fd=to_fd)
        except FileNotFoundError:
            return
        try:
            for entry in os.listdir(wfd):
                if entry != MARKER:
                    place.remove_tree(wfd, entry)
        finally:
            os.close(wfd)
    finally:
        os.close(lock_fd)
    place.remove_tree(to_fd, work)


def _put_back_old_tree(to_fd: int, to: Path, work: str) -> None:
    """An ``--overwrite`` cut off (SIGKILL, a power cut) between the renames of its fallback (no
    atomic exchange, e.g. NFS) left the old tree, or the old version of a selected path (named
    in the work directory's journal), in the work directory and nothing in its place: it goes
    back before the leftovers are removed, never with them."""
    name, aside = work[len(WORK_PREFIX):], place.aside_name("tree")
    try:
        wfd = os.open(work, DIR_FLAGS, dir_fd=to_fd)
    except OSError:
        return
    try:
        if _exists(wfd, aside) is not None and _exists(to_fd, name) is None:
            os.rename(aside, name, src_dir_fd=wfd, dst_dir_fd=to_fd)
            log.warning("put %s back where it was: an interrupted --overwrite had moved it aside", to / name)
        _put_back_path(wfd, to_fd, to / name, name)
    finally:
        os.close(wfd)


def _put_back_path(wfd: int, to_fd: int, dest: Path, name: str) -> None:
    """The selected path the journal names, back from its aside where its place is empty."""
    try:
        fd = os.open(JOURNAL, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=wfd)
    except OSError:
        return
    try:
        doc = json.loads(os.pread(fd, 1 << 16, 0))
        path, aside = place.outermost([str(doc["path"])])[0], str(doc["aside"])
    except (OSError, ValueError, TypeError, KeyError, IndexError, RecursionError):
        return
    finally:
        os.close(fd)
    if not path or ".." in path.split("/") or ".." in aside.split("/") or aside.startswith("/"):
        return
    parts, aparts = path.split("/"), ["tree", *aside.split("/")]
    try:
        tfd = os.open(name, DIR_FLAGS, dir_fd=to_fd)
    except OSError:
        return
    try:
        dfd, depth = place.walk_existing(tfd, parts[:-1])
        sfd, sdepth = place.walk_existing(wfd, aparts[:-1])
        try:
            if depth == len(parts) - 1 and sdepth == len(aparts) - 1 and _exists(dfd, parts[-1]) is None \
                    and _exists(sfd, aparts[-1]) is not None:
                os.rename(aparts[-1], parts[-1], src_dir_fd=sfd, dst_dir_fd=dfd)
                log.warning("put %s back where it was: an interrupted --overwrite had moved it aside",
                            dest / path)
        finally:
            os.close(dfd)
            os.close(sfd)
    except OSError as exc:
        log.warning("could not put %s back from the work directory (%s); it is still there: move it back "
                    "yourself before another restore into %s", dest / path, exc.strerror or exc, dest.parent)
        raise
    finally:
        os.close(tfd)


def _journal(work_fd: int) -> Callable[[str, str | None], None]:
    """Writes, durably, which selected path an exchange without atomic support has moved aside
    and where, and removes it when the exchange is done (``_put_back_path`` reads it)."""
    def note(path: str, aside: str | None) -> None:
        if aside is None:
            os.unlink(JOURNAL, dir_fd=work_fd)
            return
        fd = os.open(JOURNAL + ".tmp", os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600,
                     dir_fd=work_fd)
        try:
            write_all(fd, json.dumps({"path": path, "aside": aside}).encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(JOURNAL + ".tmp", JOURNAL, src_dir_fd=work_fd, dst_dir_fd=work_fd)
        os.fsync(work_fd)
    return note


def _claim_work_dir(to_fd: int, to: Path, work: str, backup_id: str) -> int:
    """Create the private work directory, removing the leftovers of an interrupted restore; returns
    the descriptor of its marker, which holds a ``flock`` for the restore's lifetime, so a restore
    running at the same time into the same place is refused (exit 11) instead of removed."""
    if _exists(to_fd, work) is not None:
        try:
            fd = os.open(f"{work}/{MARKER}", os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=to_fd)
        except OSError:
            raise UsageError(f"{to / work} exists and is not a btrsync restore's work directory; "
                             "move it away") from None
        try:
            if not _try_lock(fd):
                raise LockedError(f"another restore is writing {to / work} ({_owner(fd)}); wait for it "
                                  "to finish, or stop it and run this again")
            _put_back_old_tree(to_fd, to, work)
            log.warning("removing %s: the leftovers of an interrupted restore", to / work)
        except BaseException:
            os.close(fd)
            raise
        _remove_work(to_fd, work, fd)
    try:
        os.mkdir(work, 0o700, dir_fd=to_fd)
    except FileExistsError:
        raise LockedError(f"another restore started writing {to / work}; wait for it to finish") from None
    try:
        # locked under a temporary name, then renamed: whoever opens the marker finds it locked
        fd = os.open(f"{work}/.{MARKER}", os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600,
                     dir_fd=to_fd)
        try:
            _try_lock(fd)
            write_all(fd, json.dumps({"backup": backup_id, "pid": os.getpid(), "host": socket.gethostname(),
                                      "started": datetime.now(UTC).isoformat(timespec="seconds")}).encode())
            os.rename(f"{work}/.{MARKER}", f"{work}/{MARKER}", src_dir_fd=to_fd, dst_dir_fd=to_fd)
        except BaseException:
            os.close(fd)
            raise
    except BaseException:
        place.discard(to_fd, work, to)  # an unmarked work directory would block the next run
        raise
    return fd


def _owner(fd: int) -> str:
    try:
        doc = json.loads(os.pread(fd, 4096, 0))
        return f"pid {int(doc['pid'])}, since {doc['started']}"
    except (OSError, ValueError, TypeError, KeyError):
        return "its marker is unreadable"


def restore(repo: Repository, spec: str, to: Path, *, existing: str = "refuse", workers: int = 2,
            paths: list[str] | None = None) -> RestoreResult:
    """Restore backup ``spec`` to ``to/<snapshot name>`` on any filesystem (see the module doc).

    ``existing`` says what to do when ``to/<snapshot name>`` exists: ``refuse`` (exit 2),
    ``overwrite`` (replace it whole, once the restore is complete), ``skip`` (add only the paths
    of the backup that do not exist there; leave every existing path as it is).

    ``paths`` (inside the backup) restores only those, with their ancestors, at the same places
    under ``to/<snapshot name>``, reading only the chunks that the chain's file indexes name for
    them (``restore/selective.py``).
    """
    if existing not in EXISTING_MODES:
        raise UsageError(f"existing must be one of {', '.join(EXISTING_MODES)}")
    if not to.is_dir():
        raise UsageError(f"{to} is not a directory; create it first (any filesystem will do)")
    chain = chain_for(repo, spec)
    last = chain[-1]
    name = last.snapshot
    selection = None
    if paths is not None:
        selection = _materialise(repo, chain, paths)
    if "/" in name or name in ("", ".", ".."):
        raise DamageError(f"backup {last.backup_id}: snapshot name {name!r} is not a single path component")
    try:
        to_fd = os.open(to, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as exc:
        raise RestoreError(f"cannot open {to}: {exc.strerror}") from None
    t0 = time.monotonic()
    result = RestoreResult(last.backup_id, name, str(to), str(to / name), existing)
    work = WORK_PREFIX + name
    try:
        there = _exists(to_fd, name)
        if there is not None:
            if existing == "refuse":
                raise UsageError(f"{to / name} already exists; restore elsewhere, or pass --overwrite to "
                                 "replace it or --skip-existing to add only what is missing")
            if existing == "skip" and not stat.S_ISDIR(there.st_mode):
                raise UsageError(f"{to / name} exists and is not a directory (symlinks are never "
                                 "followed); --skip-existing merges into a directory only")
            if existing == "overwrite":
                _check_overwrite(to_fd, to, name, there, selection)
        lock_fd = _claim_work_dir(to_fd, to, work, last.backup_id)
        try:
            work_fd = place.open_own_dir(to_fd, work)
            try:
                os.mkdir("tree", 0o700, dir_fd=work_fd)
                tree_fd = os.open("tree", DIR_FLAGS, dir_fd=work_fd)
                notes = Notes()
                try:
                    with Tree(tree_fd) as tree:
                        if selection is not None:
                            caps = _restore_selected(repo, chain, selection, tree, work_fd, notes, workers, result)
                        else:
                            applier = Applier(tree, work_fd, notes)
                            with chain_read_ahead(repo, chain) as done:  # replayed one after another
                                for link in chain:
                                    result.links.append(_restore_link(repo, applier, link, workers))
                                    done(link)
                            applier.finish()
                            caps = applier.caps
                finally:
                    os.close(tree_fd)
                result.notes = notes.as_list()
                result.reflinked_bytes = caps.reflinked
                syncfs(work_fd)  # durable before it takes its name
                _place(work_fd, to_fd, name, existing, there is not None, result,
                       _replaced_paths(selection))
                syncfs(to_fd)
            finally:
                os.close(work_fd)
        finally:
            try:
                _remove_work(to_fd, work, lock_fd)
            except OSError as exc:  # never over the outcome: a finished restore, or what ended it
                log.warning("could not remove the work directory %s (%s); remove it yourself",
                            to / work, exc.strerror or exc)
    except OSError as exc:  # the destination cannot be written (read-only, full, no permission, I/O error)
        raise RestoreError(f"cannot restore into {to}: {exc.strerror or exc}"
                           + (f" ({exc.filename})" if exc.filename else "")
                           + "; restore into a directory you can write, with room for what is restored") from None
    finally:
        os.close(to_fd)
    result.seconds = round(time.monotonic() - t0, 3)
    log.info("restore finished backup=%s path=%s seconds=%.1f", last.backup_id, result.path, result.seconds)
    return result


@dataclass
class _Selection:
    paths: list[str]
    tree: Any  # fileindex.tree.FileTree, with ops
    index_bytes: int


def _materialise(repo: Repository, chain: list[Manifest], paths: list[str]) -> _Selection:
    wanted = list(dict.fromkeys(normalise(p) for p in paths))
    ftree, index_bytes = tree_of(repo, chain, with_ops=True)
    for p in wanted:
        if ftree.lookup(p) is None:
            raise UsageError(f"no {p!r} in backup {chain[-1].backup_id} ('btrsync ls' shows what it holds); "
                             "nothing was restored")
    return _Selection(wanted, ftree, index_bytes)


def _restore_selected(repo: Repository, chain: list[Manifest], sel: _Selection, tree: Tree, work_fd: int,
                      notes: Notes, workers: int, result: RestoreResult) -> fsutil.Caps:
    t0 = time.monotonic()
    job = SelectiveRestore(repo, chain, sel.tree, tree, work_fd, notes, workers=workers)
    try:
        chosen = job.select(sel.paths)
        job.rebuild([n.inode for _, n in chosen])
        job.build(chosen)
    finally:
        job.close()
    result.selected = sel.paths
    result.files, result.entries = job.stats.files, job.stats.entries
    result.fetched_bytes, result.fetched_chunks = job.fetched.stored_bytes, job.fetched.chunks
    result.index_bytes = sel.index_bytes
    result.stored_bytes = sum(m.stored_bytes for m in chain)
    result.fetched_share = round((result.fetched_bytes + result.index_bytes) / max(result.stored_bytes, 1), 6)
    log.info("selective restore backup=%s paths=%d files=%d fetched_bytes=%d of %d seconds=%.1f",
             chain[-1].backup_id, len(sel.paths), job.stats.files, job.fetched.stored_bytes,
             result.stored_bytes, time.monotonic() - t0)
    return job.caps


def _restore_link(repo: Repository, applier: Applier, link: Manifest, workers: int) -> RestoredLink:
    t0 = time.monotonic()
    clones: dict[str, list[tuple[int, int]]] = {}
    if link.parent_uuid is not None:
        with closing(raw_stream(repo, link, workers=workers)) as chunks:
            clones = scan_parent_clones(chunks, link.parent_uuid, f"backup {link.backup_id}")
    t1 = time.monotonic()
    log.info("restore link backup=%s parent_clone_sources=%d", link.backup_id, len(clones))
    with closing(raw_stream(repo, link, workers=workers)) as chunks:
        stats = applier.apply_link(chunks, backup_id=link.backup_id, snapshot_uuid=link.snapshot_uuid,
                                   parent_uuid=link.parent_uuid, parent_clones=clones)
    t2 = time.monotonic()
    return RestoredLink(link.backup_id, link.snapshot, "full" if link.parent_id is None else "incremental",
                        link.stream_bytes, stats.commands, stats.bytes_written, stats.bytes_cloned,
                        stats.parent_clones, stats.preserved_bytes, round(t1 - t0, 3), round(t2 - t0, 3))


def _replaced_paths(selection: _Selection | None) -> list[str] | None:
    """What ``--overwrite`` replaces: the selected paths, or ``None`` for the whole tree."""
    if selection is None or "" in selection.paths:
        return None
    return place.outermost(selection.paths)


def _check_overwrite(to_fd: int, to: Path, name: str, there: os.stat_result, selection: _Selection | None) -> None:
    """Refuse ``--overwrite`` before anything is restored where it would remove what no backup
    holds: a mount or subvolumes inside what is replaced, or, for selected paths, anything but
    them (a destination that is not a directory, a file where the backup has a directory)."""
    paths = _replaced_paths(selection)
    if paths is None:
        if why := place.foreign_within(to_fd, name):
            raise UsageError(f"{to / name} cannot be replaced: {why}")
        return
    if not stat.S_ISDIR(there.st_mode):
        raise UsageError(f"{to / name} exists and is not a directory (symlinks are never followed); selected "
                         "paths replace only themselves inside a directory: restore elsewhere")
    dfd = os.open(name, DIR_FLAGS, dir_fd=to_fd)
    try:
        if why := place.check_replace_paths(dfd, paths):
            raise UsageError(f"cannot replace in {to / name}: {why}; nothing was restored")
    finally:
        os.close(dfd)


def _place(work_fd: int, to_fd: int, name: str, existing: str, exists: bool, result: RestoreResult,
           paths: list[str] | None) -> None:
    try:
        if not exists:
            place.move_into_place(work_fd, "tree", to_fd, name)
        elif existing == "overwrite" and paths is not None:
            # selected paths: exactly they are replaced; everything else in DIR/<snapshot> stays
            sfd, dfd = os.open("tree", DIR_FLAGS, dir_fd=work_fd), os.open(name, DIR_FLAGS, dir_fd=to_fd)
            try:
                replaced = place.replace_paths(sfd, dfd, paths, journal=_journal(work_fd))
            finally:
                os.close(sfd)
                os.close(dfd)
            result.replaced, result.added = replaced.replaced, len(replaced.added)
        elif existing == "overwrite":
            place.swap_into_place(work_fd, "tree", to_fd, name)  # the old one is removed with the work dir
        else:
            merged = place.merge_tree(work_fd, "tree", to_fd, name)
            result.added, result.kept, result.kept_examples = merged.added, merged.kept, merged.kept_examples
    except FileExistsError:
        raise RestoreError(f"{result.path} appeared while the restore ran; nothing was replaced "
                           "(run again with --overwrite or --skip-existing)") from None
    except OSError as exc:
        raise RestoreError(f"cannot put the restored tree at {result.path}: {exc.strerror}") from None
