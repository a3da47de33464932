"""btrsync ls / find / index: backups as file trees, from their file indexes."""

from __future__ import annotations

import stat
import sys
from datetime import UTC, datetime
from pathlib import Path

import click

from btrsync.cli.app import App, pass_app
from btrsync.cli.options import global_options
from btrsync.cli.output import emit_json, emit_table
from btrsync.errors import EXIT_STATUS_HELP, DamageError, UsageError
from btrsync.fileindex.tree import Entry
from btrsync.ops import files
from btrsync.units import format_bytes

_TYPE_BITS = {"f": stat.S_IFREG, "d": stat.S_IFDIR, "l": stat.S_IFLNK, "c": stat.S_IFCHR, "b": stat.S_IFBLK,
              "p": stat.S_IFIFO, "s": stat.S_IFSOCK}


def _state_root(app: App) -> Path | None:
    try:
        return app.state().root
    except Exception:  # noqa: BLE001 - no state directory: no cache, still correct
        return None


def _time(ns: int) -> str:
    return datetime.fromtimestamp(ns / 1e9, UTC).strftime("%Y-%m-%d %H:%M")


def _shown(e: Entry, *, relative_to: str) -> str:
    return printable(e.path[len(relative_to) + 1:] if relative_to and e.path.startswith(relative_to + "/")
                     else e.path)


def printable(name: str) -> str:
    """A path as one line of a terminal: undecodable bytes as ``\\xNN``, and where it holds a
    control character (a newline in a name must not make two lines, nor an escape sequence
    drive the terminal) the whole of it in Python's escapes, as ``ls`` quotes such names."""
    shown = name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    if any(ord(c) < 32 or 127 <= ord(c) < 160 for c in shown):
        shown = shown.encode("unicode_escape").decode("ascii")
    return shown


@click.command("ls", epilog=EXIT_STATUS_HELP)
@global_options
@click.argument("backup")
@click.argument("path", required=False, default="")
@click.option("--from", "source", required=True, help="target URL or configured name")
@click.option("-l", "--long", "long_", is_flag=True, help="type, mode, owner, size, mtime and link target")
@click.option("-R", "--recursive", is_flag=True, help="everything below PATH, not only its entries")
@click.option("--json", "as_json", is_flag=True, help="print a JSON list of entries")
@pass_app
def ls_cmd(app: App, backup: str, path: str, source: str, long_: bool, recursive: bool, as_json: bool) -> None:
    """List PATH (default: the top) of BACKUP from the file indexes alone: no backup data is read.

    BACKUP is an id, a snapshot name, latest or SUBVOL@latest. The tree is rebuilt from the
    indexes of the backup's chain and kept in the state directory, so listing it again is
    fast. A backup pushed before btrsync kept file indexes needs 'btrsync index' once.

    \b
    Examples:
      btrsync ls data@latest --from file:///mnt/usb/backups
      btrsync ls data.20261120T030000Z home/me/projects --from usb --long
      btrsync ls latest etc --from b2 --recursive --json
    """
    where = files.normalise(path)
    with app.repository(source, listing=True) as repo:
        chain = files.chain_for(repo, backup)
        entries = files.listing(repo, chain, _state_root(app))
    chosen = files.select(entries, where, recursive=recursive)
    if as_json:
        emit_json([files.entry_dict(e) for e in chosen])
        return
    out = sys.stdout
    for e in chosen:
        name = _shown(e, relative_to=where)
        if not long_:
            out.write(f"{name}{'/' if e.kind == 'd' else ''}\n")
            continue
        mode = stat.filemode(_TYPE_BITS.get(e.kind, 0) | e.mode)
        target = f" -> {printable(e.target)}" if e.target is not None else ""
        out.write(f"{mode} {e.nlink:>3} {e.uid:>5} {e.gid:>5} {e.size:>12} {_time(e.mtime_ns)} {name}{target}\n")


def _parse_time(text: str) -> datetime:
    try:
        t = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise UsageError(f"--newer {text!r}: give an ISO time such as 2026-11-20 or 2026-11-20T03:00Z") from None
    return t if t.tzinfo is not None else t.replace(tzinfo=UTC)


@click.command("find", epilog=EXIT_STATUS_HELP)
@global_options
@click.argument("backups", nargs=-1, required=True)
@click.option("--from", "source", required=True, help="target URL or configured name")
@click.option("--name", "name", help="glob on the file name (on the whole path when it holds a '/')")
@click.option("--newer", "newer", help="modified after TIME (ISO 8601; UTC unless it says otherwise)")
@click.option("--json", "as_json", is_flag=True, help="print JSON")
@pass_app
def find_cmd(app: App, backups: tuple[str, ...], source: str, name: str | None, newer: str | None,
             as_json: bool) -> None:
    """Which of BACKUP... hold matching paths, and how each changed from one to the next.

    For every matching path: each backup (oldest first) and whether the path is new there,
    changed (type, size, mode, owner, mtime or link target), the same, or gone. From the file
    indexes alone.

    \b
    Examples:
      btrsync find data.20261101T030000Z data@latest --from usb --name '*.conf'
      btrsync find data.20261120T030000Z data.20261127T030000Z --from b2 --newer 2026-11-24 --json
    """
    with app.repository(source, listing=True) as repo:
        found = files.find(repo, list(backups), _state_root(app), name=name,
                           newer=_parse_time(newer) if newer is not None else None)
    if as_json:
        emit_json([f.as_dict() for f in found])
        return
    rows = []
    for f in found:
        for s in f.history:
            e = s.entry
            rows.append((printable(f.path), s.backup_id, s.status.upper(), None if e is None else format_bytes(e.size),
                         None if e is None else _time(e.mtime_ns)))
    emit_table(rows, ["PATH", "BACKUP", "STATUS", "SIZE", "MTIME"])


@click.command("index", epilog=EXIT_STATUS_HELP)
@global_options
@click.argument("backup")
@click.option("--from", "source", required=True, help="target URL or configured name")
@click.option("--workers", type=click.IntRange(1, 64), default=2, show_default=True,
              help="threads fetching and opening chunks")
@click.option("--json", "as_json", is_flag=True, help="print JSON")
@pass_app
def index_cmd(app: App, backup: str, source: str, workers: int, as_json: bool) -> None:
    """Write the file indexes that BACKUP's chain lacks (backups pushed before btrsync kept them).

    Reads the streams of the links without an index (every chunk authenticated) and stores
    their indexes beside their data; links whose index reads intact are left alone, so running
    it again does nothing. A damaged index is written again when no manifest pins it (one this
    command wrote); one the push wrote is pinned by its manifest and is reported (exit 4).
    Holds each backup's lease meanwhile, so prune and clean leave it alone.

    \b
    Examples:
      btrsync index data@latest --from file:///mnt/usb/backups
      btrsync index data.20261120T030000Z --from b2 --json
    """
    with app.repository(source, write=True) as repo:
        done = files.index_backups(repo, backup, workers=workers)
    if as_json:
        emit_json([d.__dict__ for d in done])
    else:
        emit_table([(d.backup_id, d.status, d.records or None,
                     format_bytes(d.stored_bytes) if d.stored_bytes else None) for d in done],
                   ["BACKUP", "INDEX", "RECORDS", "STORED"])
    damaged = [d for d in done if d.status == "damaged"]
    if damaged:
        raise DamageError(f"the file index of {damaged[0].backup_id} is damaged: {damaged[0].message}")


COMMANDS = [ls_cmd, find_cmd, index_cmd]
