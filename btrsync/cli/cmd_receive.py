"""btrsync receive BACKUP --from URL --into DIR"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import asdict
from pathlib import Path

import click

from btrsync.cli.app import App, pass_app
from btrsync.cli.options import global_options
from btrsync.cli.output import emit_json, emit_table
from btrsync.cli.problems import report_catalog_problems
from btrsync.config.model import progress_interval
from btrsync.errors import EXIT_STATUS_HELP
from btrsync.ops.receive import receive
from btrsync.progress import reporter
from btrsync.units import format_bytes


@click.command("receive", epilog=EXIT_STATUS_HELP)
@global_options
@click.argument("backup")
@click.option("--from", "source", required=True, help="target URL or configured name")
@click.option("--into", required=True, type=click.Path(path_type=Path), help="directory on btrfs")
@click.option("--json", "as_json", is_flag=True, help="print JSON")
@pass_app
def receive_cmd(app: App, backup: str, source: str, into: Path, as_json: bool) -> None:
    """Restore BACKUP (an id, a snapshot name, latest or SUBVOL@latest) into DIR.

    Replays the chain (the full, then each incremental), skipping links already in DIR; every
    chunk's hash and authentication tag are checked before btrfs receive sees its bytes.
    Progress goes to stderr as for push (the total of each link is exact: its manifest's size).

    \b
    Examples:
      btrsync receive latest --from file:///mnt/usb/backups --into /mnt/restore
      btrsync receive data@latest --from b2 --into /mnt/restore --json
      btrsync receive data.20261120T030000Z-0fa0cfa8 --from usb --into /mnt/restore
    """
    with app.repository(source, listing=True) as repo:  # the chain is found on the catalog first
        known = app.state().target(repo.target.display_url)
        if known is not None and known.vanished:
            report_catalog_problems(None, repo.target.display_url, sorted(known.vanished))
        progress = None if as_json else reporter("receive", interval=progress_interval(app.config),
                                                 rate_of="raw")
        with progress or nullcontext():  # its line is erased before anything else is printed
            result = receive(repo, backup, into, progress=progress)
    if as_json:
        emit_json({"backup": result.backup_id, "into": result.into, "path": result.path,
                   "links": [asdict(link) for link in result.links]})
        return
    emit_table([(lk.backup_id, lk.action, lk.path, format_bytes(lk.stream_bytes)) for lk in result.links],
               ["BACKUP", "ACTION", "PATH", "BYTES"])


COMMANDS = [receive_cmd]
