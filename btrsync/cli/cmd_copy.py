"""btrsync copy BACKUP... --from A --to B"""

from __future__ import annotations

from contextlib import nullcontext
from pathlib import Path

import click

from btrsync.audit import AuditLog
from btrsync.cli.app import App, pass_app
from btrsync.cli.options import global_options
from btrsync.cli.output import emit_json, emit_table
from btrsync.config.model import progress_interval
from btrsync.crypto.keys import load_key_file
from btrsync.errors import EXIT_STATUS_HELP, UsageError
from btrsync.jobs.aftercommand import after_command
from btrsync.ops.copy import CopyResult, CopySettings, copy_backups, raise_for_failures
from btrsync.ops.push.settings import settings_from
from btrsync.progress import reporter
from btrsync.units import format_bytes


@click.command("copy", epilog=EXIT_STATUS_HELP)
@global_options
@click.argument("backups", nargs=-1)
@click.option("--all", "copy_all", is_flag=True, help="every restorable backup of the source")
@click.option("--from", "source", required=True, help="source: target URL or configured name")
@click.option("--to", "dest", required=True, help="destination: target URL or configured name (initialised)")
@click.option("--from-key-file", type=click.Path(path_type=Path),
              help="the source repository's key file, when it is not the destination's [default: --key-file]")
@click.option("--bwlimit", help="limit stored bytes written per second, e.g. 25M (MiB/s) [default: [push] bwlimit]")
@click.option("--dry-run", is_flag=True, help="say what would be copied and how many bytes; copy nothing")
@click.option("--json", "as_json", is_flag=True, help="print JSON")
@pass_app
def copy_cmd(app: App, backups: tuple[str, ...], copy_all: bool, source: str, dest: str,
             from_key_file: Path | None, bwlimit: str | None, dry_run: bool, as_json: bool) -> None:
    """Copy BACKUPs (ids, snapshot names, latest, SUBVOL@latest) from one repository to another.

    Each backup comes with the links of its chain the destination lacks, parents first; links
    already there (same id, same snapshot) are not copied again. Every chunk is read back,
    authenticated and checked, then sealed for the destination (its key may differ: give the
    source's with --from-key-file). A copied backup keeps its id, snapshot time and host, so
    'btrsync list' shows it as on the source, and restores identical; each repository's
    retention then decides alone what it keeps. The manifest is written last: an interrupted
    copy commits nothing, and the next copy keeps its durable segments. A damaged source
    backup commits nothing and names the backup (exit 4); the other backups are still copied.

    Progress goes to stderr as for push (the total of each backup is exact: its manifest's
    stream size); none with --json.

    \b
    Examples:
      btrsync copy data@latest --from usb --to b2
      btrsync copy --all --from file:///mnt/usb/backups --to b2 --dry-run
      btrsync copy data.20261120T030000Z-0fa0cfa8 --from usb --to b2 --from-key-file /root/usb.key --json
    """
    if copy_all == bool(backups):
        raise UsageError("name the backups to copy (an id, a snapshot name, latest, SUBVOL@latest) or pass --all")
    push = settings_from(app.config.push, bwlimit=bwlimit)
    settings = CopySettings(workers=push.workers, segment_size=push.segment_size, bucket=push.bucket)
    source_key = load_key_file(from_key_file) if from_key_file is not None else None
    audit = AuditLog(app.state().root)
    progress = None if as_json or dry_run else reporter("copy", interval=progress_interval(app.config))
    with app.repository(source, key=source_key) as src, \
            app.repository(dest, write=not dry_run, lock=not dry_run) as dst:
        names = app.config.target_names(dst.target.display_url) + (dest,)
        with progress or nullcontext():  # its line is erased before anything else is printed
            result = copy_backups(src, dst, None if copy_all else list(backups), settings, dry_run=dry_run,
                                  audit=audit, progress=progress,
                                  policy_for=lambda sub: app.config.retention.backup_policy(sub, names))
        if not dry_run and any(b.status == "copied" for b in result.backups):
            # the job records and metrics of the destination; not the state's "held": a copy
            # destination needs no local snapshot as a parent, so it must pin none
            after_command(app.config, app.state().root, dst.target.display_url, manifests=result.held)
    if as_json:
        emit_json(result.as_dict())
    else:
        _render(result)
    raise_for_failures(result)


def _render(result: CopyResult) -> None:
    rows = [(b.backup_id, b.status, b.parent or "-", format_bytes(b.stored_bytes),
             format_bytes(b.moved_bytes) if b.status == "copied" else "-", b.error or "")
            for b in result.backups]
    if rows:
        emit_table(rows, ["BACKUP", "STATUS", "PARENT", "STORED", "MOVED", "NOTE"])
    t = result.totals()
    if result.dry_run:
        click.echo(f"would copy {t['backups']} backup(s), {format_bytes(t['stored_bytes'])} stored, from "
                   f"{result.source} to {result.destination} ({t['present']} already there)", err=True)
    else:
        click.echo(f"copied {t['backups']} backup(s) from {result.source} to {result.destination}: moved "
                   f"{format_bytes(t['moved_bytes'])} of {format_bytes(t['stored_bytes'])} stored "
                   f"({format_bytes(t['resumed_bytes'])} kept from an interrupted copy; {t['present']} already "
                   "there)", err=True)


COMMANDS = [copy_cmd]
