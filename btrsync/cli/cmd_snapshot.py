"""btrsync snapshot create | list | delete"""

from __future__ import annotations

from pathlib import Path

import click

from btrsync.audit import AuditLog
from btrsync.cli.app import App, pass_app, snapshot
from btrsync.cli.options import global_options
from btrsync.cli.output import emit_json, emit_table
from btrsync.errors import EXIT_STATUS_HELP, BtrsyncError, PartialError, SnapshotError
from btrsync.ops import snapshots as ops
from btrsync.snapshots.naming import parse_timestamp


@snapshot.command("create", epilog=EXIT_STATUS_HELP)
@global_options
@click.argument("subvol", type=click.Path(path_type=Path))
@click.option("--snapshot-dir", required=True, type=click.Path(path_type=Path),
              help="directory for snapshots, on the same btrfs filesystem")
@click.option("--timestamp", help="snapshot time (ISO 8601, UTC if no zone) instead of now")
def create(subvol: Path, snapshot_dir: Path, timestamp: str | None) -> None:
    """Create a read-only snapshot SUBVOL.<YYYYMMDDTHHMMSSZ> and print its path.

    \b
    Examples:
      btrsync snapshot create /data --snapshot-dir /data/.snapshots
      btrsync snapshot create /data --snapshot-dir /data/.snapshots --timestamp 2026-11-20T03:00:00Z
    """
    when = parse_timestamp(timestamp) if timestamp else None
    click.echo(ops.create(subvol, snapshot_dir, when).path)


@snapshot.command("list", epilog=EXIT_STATUS_HELP)
@global_options
@click.argument("subvol", required=False, type=click.Path(path_type=Path))
@click.option("--snapshot-dir", required=True, type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="print JSON")
@pass_app
def list_(app: App, subvol: Path | None, snapshot_dir: Path, as_json: bool) -> None:
    """List snapshots with time, uuid, parent and the targets known to hold them.

    \b
    Examples:
      btrsync snapshot list /data --snapshot-dir /data/.snapshots
      btrsync snapshot list --snapshot-dir /data/.snapshots --json    # every subvolume's
    """
    rows = ops.describe(snapshot_dir, subvol, app.state())
    if as_json:
        emit_json(rows)
        return
    emit_table([(r["name"], r["created"], r["uuid"], r["parent_uuid"], "yes" if r["readonly"] else "NO",
                 ", ".join(r["targets"]) or None, "; ".join(r["anchor"]) or None) for r in rows],
               ["SNAPSHOT", "CREATED", "UUID", "PARENT UUID", "RO", "ON TARGETS", "KEPT AS ANCHOR"])


@snapshot.command("delete", epilog=EXIT_STATUS_HELP)
@global_options
@click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--force", is_flag=True, help="delete even the newest snapshot a target also holds")
@pass_app
def delete(app: App, paths: tuple[Path, ...], force: bool) -> None:
    """Delete snapshots; refuses the newest snapshot a target also holds unless --force.

    Every path is tried; exit 3 when some were deleted and others refused, 1 when none was.

    \b
    Examples:
      btrsync snapshot delete /data/.snapshots/data.20261120T030000Z
      btrsync snapshot delete /data/.snapshots/data.2025* --force
    """
    failures: list[str] = []
    for path in paths:
        try:
            ops.delete(path, app.state(), force=force, audit=AuditLog(app.state().root))
        except BtrsyncError as exc:
            if len(paths) == 1:
                raise
            failures.append(str(exc))
            click.echo(f"btrsync: not deleted: {exc}", err=True)
            continue
        click.echo(f"deleted {path}", err=True)
    if failures:
        if len(failures) < len(paths):
            raise PartialError(f"deleted {len(paths) - len(failures)} of {len(paths)} snapshots; "
                               f"{len(failures)} refused (see above)")
        raise SnapshotError(f"none of the {len(paths)} snapshots was deleted (see above)")


COMMANDS = [snapshot]
