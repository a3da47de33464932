"""btrsync list --from URL"""

from __future__ import annotations

import click

from btrsync.catalog.repository import Repository
from btrsync.cli.main import App, pass_app
from btrsync.cli.options import global_options
from btrsync.cli.output import emit_json, emit_table
from btrsync.errors import EXIT_STATUS_HELP
from btrsync.units import format_bytes


@click.command("list", epilog=EXIT_STATUS_HELP)
@global_options
@click.option("--from", "source", required=True, help="target URL or configured name")
@click.option("--json", "as_json", is_flag=True, help="print a JSON list of backups")
@pass_app
def list_cmd(app: App, source: str, as_json: bool) -> None:
    """List the backups on a target with their chains and sizes."""
    with app.target(source) as target:
        manifests = Repository.open(target, app.key()).manifests()
        app.state().record_target(target.display_url, manifests)
    rows = [m.summary() for m in manifests]
    if as_json:
        emit_json(rows)
        return
    emit_table([(r["id"], r["subvolume"], r["created"], r["kind"], r["parent"], r["depth"],
                 format_bytes(r["stream_bytes"]), format_bytes(r["stored_bytes"])) for r in rows],
               ["ID", "SUBVOLUME", "CREATED", "KIND", "PARENT", "DEPTH", "STREAM", "STORED"])


COMMANDS = [list_cmd]
