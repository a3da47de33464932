"""btrsync restore BACKUP [PATH...] --from URL --to DIR [--overwrite | --skip-existing]"""

from __future__ import annotations

from pathlib import Path

import click

from btrsync.cli.app import App, pass_app
from btrsync.cli.options import global_options
from btrsync.cli.output import emit_json, emit_table
from btrsync.errors import EXIT_STATUS_HELP, UsageError
from btrsync.ops.restore import restore
from btrsync.units import format_bytes


@click.command("restore", epilog=EXIT_STATUS_HELP)
@global_options
@click.argument("backup")
@click.argument("paths", nargs=-1)
@click.option("--from", "source", required=True, help="target URL or configured name")
@click.option("--to", "to", required=True, type=click.Path(path_type=Path),
              help="existing directory on any filesystem; the backup goes to DIR/<snapshot name>")
@click.option("--overwrite", is_flag=True, help="replace DIR/<snapshot name> if it exists (once the restore is complete); "
                                                     "with PATH..., replace only those paths")
@click.option("--skip-existing", is_flag=True,
              help="add only the paths missing from DIR/<snapshot name>; leave existing ones as they are")
@click.option("--workers", type=click.IntRange(1, 64), default=2, show_default=True,
              help="threads fetching and opening chunks")
@click.option("--json", "as_json", is_flag=True, help="print JSON")
@pass_app
def restore_cmd(app: App, backup: str, paths: tuple[str, ...], source: str, to: Path, overwrite: bool, skip_existing: bool,
                workers: int, as_json: bool) -> None:
    """Restore BACKUP, or only PATH... of it, onto any filesystem (ext4, xfs, tmpfs, NFS, ...).

    BACKUP is an id, a snapshot name, latest or SUBVOL@latest. The chain (the full, then each
    incremental) is replayed in user space into DIR/<snapshot name>; every chunk is
    authenticated before it is applied, and every path of the stream stays inside that
    directory (no symlink is ever followed; a stream that tries is refused with exit 4).
    Owners and device nodes need root; whatever the filesystem or your privileges cannot hold
    (some xattrs, owners as non-root) is listed as a warning.

    With PATH... (paths inside the backup, as 'btrsync ls' shows them), only those are restored,
    with their directories, at the same places under DIR/<snapshot name>; only the chunks the
    file indexes name for them are read, and the output says how much that was of the backup.

    If DIR/<snapshot name> exists the restore is refused, unless --overwrite (the complete
    restore replaces it; with PATH..., exactly those paths are replaced and nothing else there
    is touched) or --skip-existing (every path of the backup that does not exist there is
    added, every path that exists is left exactly as it is; directories merge).

    \b
    Examples:
      btrsync restore data@latest --from file:///mnt/usb/backups --to /srv/restore
      btrsync restore data.20261120T030000Z --from b2 --to /home/me/old --skip-existing
      btrsync restore latest --from usb --to /mnt/ext4 --overwrite --json
      btrsync restore data@latest home/me/thesis.tex etc/fstab --from usb --to /tmp/back
    """
    if overwrite and skip_existing:
        raise UsageError("--overwrite and --skip-existing exclude each other")
    existing = "overwrite" if overwrite else "skip" if skip_existing else "refuse"
    with app.repository(source, listing=True) as repo:  # the chain is found on the catalog first
        result = restore(repo, backup, to, existing=existing, workers=workers, paths=list(paths) or None)
    if as_json:
        emit_json(result.as_dict())
        return
    if result.selected is not None:
        assert result.fetched_bytes is not None and result.stored_bytes is not None
        share = (result.fetched_bytes + (result.index_bytes or 0)) / max(result.stored_bytes, 1)
        click.echo(f"restored {result.entries} entries ({result.files} files) of {len(result.selected)} path(s); "
                   f"read {format_bytes(result.fetched_bytes)} of chunks ({result.fetched_chunks}) and "
                   f"{format_bytes(result.index_bytes or 0)} of file indexes: {share:.1%} of the "
                   f"{format_bytes(result.stored_bytes)} the backup's chain stores")
    else:
        emit_table([(lk.backup_id, lk.kind, format_bytes(lk.stream_bytes), lk.commands,
                 format_bytes(lk.bytes_written), format_bytes(lk.bytes_cloned), f"{lk.seconds:.1f}s")
                    for lk in result.links],
                   ["BACKUP", "KIND", "STREAM", "COMMANDS", "WRITTEN", "CLONED", "TIME"])
    if result.replaced is not None:
        click.echo(f"--overwrite: replaced {len(result.replaced)} existing path(s)"
                   + (f" ({', '.join(result.replaced[:5])}{', ...' if len(result.replaced) > 5 else ''})"
                      if result.replaced else "")
                   + f", added {result.added}; nothing else in {result.path} was touched")
    if result.kept is not None:
        click.echo(f"--skip-existing: added {result.added} entries, left {result.kept} existing paths alone"
                   + (f" (e.g. {', '.join(result.kept_examples)})" if result.kept_examples else ""))
    for note in result.notes:
        click.echo(f"btrsync: warning: not restored: {note['count']} × {note['kind']} "
                   f"(e.g. {', '.join(note['examples'])})", err=True)
    click.echo(f"restored {result.backup_id} to {result.path}")


COMMANDS = [restore_cmd]
