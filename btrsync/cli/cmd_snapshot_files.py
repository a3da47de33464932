"""btrsync snapshot restore | rollback (subcommands of the ``snapshot`` group, btrsync.cli.app)"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import click

from btrsync.cli.app import snapshot
from btrsync.cli.options import global_options
from btrsync.cli.output import emit_json, emit_table
from btrsync.errors import EXIT_STATUS_HELP, UsageError
from btrsync.ops import snapshot_files as ops
from btrsync.units import format_bytes


@snapshot.command("restore", epilog=EXIT_STATUS_HELP)
@global_options
@click.argument("snapshot_path", metavar="SNAPSHOT", type=click.Path(path_type=Path))
@click.argument("paths", nargs=-1)
@click.option("--to", "to", required=True, type=click.Path(path_type=Path),
              help="existing directory; each PATH is restored to DIR/PATH")
@click.option("--overwrite", is_flag=True, help="replace DIR/PATH where it exists")
@click.option("--skip-existing", is_flag=True, help="add only what is missing under DIR/PATH; leave existing paths alone")
@click.option("--json", "as_json", is_flag=True, help="print JSON")
def restore(snapshot_path: Path, paths: tuple[str, ...], to: Path, overwrite: bool, skip_existing: bool,
            as_json: bool) -> None:
    """Copy PATHs (relative to the snapshot's root; default: everything) out of a read-only
    SNAPSHOT to DIR/PATH, with owners, modes, times, xattrs, symlinks and hard links.

    Sparse files stay sparse; on the snapshot's own filesystem the copies share extents with it
    (reflinks), elsewhere the data is copied. Nothing is followed: a symlink is copied as a
    symlink, and a symlink on the way to DIR/PATH is refused. An existing DIR/PATH is refused
    unless --overwrite (replaced whole) or --skip-existing (only missing paths are added).

    \b
    Examples:
      btrsync snapshot restore /data/.snapshots/data.20261120T030000Z etc/fstab --to /data
      btrsync snapshot restore /.snapshots/root.20261120T030000Z home/alice --to /tmp/alice
      btrsync snapshot restore /data/.snapshots/data.20261120T030000Z --to /mnt/copy --json
    """
    if overwrite and skip_existing:
        raise UsageError("--overwrite and --skip-existing exclude each other")
    existing = "overwrite" if overwrite else "skip" if skip_existing else "refuse"
    result = ops.snapshot_restore(snapshot_path, list(paths), to, existing=existing)
    if as_json:
        emit_json(asdict(result))
        return
    emit_table([(p.path, p.action, p.to) for p in result.paths], ["PATH", "ACTION", "TO"])
    for p in result.paths:
        if p.kept:
            click.echo(f"{p.path}: left {p.kept} existing paths alone, added {p.added}")
    for note in result.notes:
        click.echo(f"btrsync: warning: not restored: {note['count']} × {note['kind']} "
                   f"(e.g. {', '.join(note['examples'])})", err=True)
    click.echo(f"{result.entries} entries, {format_bytes(result.bytes)} "
               f"({format_bytes(result.reflinked_bytes)} shared with the snapshot)")


@snapshot.command("rollback", epilog=EXIT_STATUS_HELP)
@global_options
@click.argument("subvol", type=click.Path(path_type=Path))
@click.argument("snapshot_path", metavar="SNAPSHOT", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="print JSON")
def rollback(subvol: Path, snapshot_path: Path, as_json: bool) -> None:
    """Roll SUBVOL back to SNAPSHOT, the btrfs way: SUBVOL is moved aside to
    SUBVOL.rollback-<UTC stamp> and a writable snapshot of SNAPSHOT takes its place.

    SNAPSHOT must be a read-only snapshot on the same filesystem. A subvolume that is mounted
    on its own (subvol=) cannot be moved: mount the top level and roll back there. Stop what
    uses SUBVOL first: programs with files open in it keep using the old one. The commands to
    undo the rollback are printed.

    \b
    Examples:
      btrsync snapshot rollback /data /data-snapshots/data.20261120T030000Z
      btrsync snapshot rollback /mnt/top/@home /mnt/top/.snapshots/@home.20261120T030000Z
    """
    result = ops.rollback(subvol, snapshot_path)
    if as_json:
        emit_json(asdict(result))
        return
    click.echo(f"rolled {result.subvolume} back to {result.snapshot}")
    click.echo(f"the previous {result.subvolume} is now {result.moved_aside}")
    click.echo("to undo (deletes the rolled-back subvolume and whatever was written to it since):")
    for line in result.undo:
        click.echo(f"  {line}")


COMMANDS: list[click.Command] = []  # both are subcommands of `snapshot`, registered by importing this module
