"""btrsync clean --from URL; btrsync usage --from URL"""

from __future__ import annotations

from dataclasses import asdict

import click

from btrsync.audit import AuditLog
from btrsync.cli.app import App, pass_app
from btrsync.cli.options import global_options
from btrsync.cli.output import emit_json, emit_table
from btrsync.cli.problems import report_catalog_problems
from btrsync.errors import EXIT_STATUS_HELP, ConfigError
from btrsync.jobs.aftercommand import after_command
from btrsync.ops.clean import clean
from btrsync.ops.usage import usage
from btrsync.units import format_bytes, parse_size


@click.command("clean", epilog=EXIT_STATUS_HELP)
@global_options
@click.option("--from", "source", required=True, help="target URL or configured name")
@click.option("--dry-run", is_flag=True, help="list what would be removed")
@click.option("--json", "as_json", is_flag=True, help="print JSON")
@pass_app
def clean_cmd(app: App, source: str, dry_run: bool, as_json: bool) -> None:
    """Remove leftovers of interrupted pushes and prunes: data without a manifest, stale leases,
    temporary files, unfinished multipart uploads.  Uploads in progress are left alone.

    \b
    Examples:
      btrsync clean --from usb --dry-run
      btrsync clean --from b2 --json
    """
    with app.repository(source, write=not dry_run, lock=True) as repo:
        result = clean(repo, dry_run=dry_run, audit=AuditLog(app.state().root))
    if not dry_run:
        after_command(app.config, app.state().root)  # the metrics file
    if as_json:
        emit_json({"freed_bytes": result.freed, "items": [asdict(i) for i in result.items]})
        return
    emit_table([(i.kind, i.key, format_bytes(i.size), i.action) for i in result.items],
               ["KIND", "KEY", "SIZE", "ACTION"])
    click.echo(f"{'would free' if dry_run else 'freed'} {format_bytes(result.freed)}", err=True)


@click.command("usage", epilog=EXIT_STATUS_HELP)
@global_options
@click.option("--from", "source", required=True, help="target URL or configured name")
@click.option("--json", "as_json", is_flag=True, help="print JSON")
@pass_app
def usage_cmd(app: App, source: str, as_json: bool) -> None:
    """Bytes stored per subvolume and chain; the share of the configured quota; free space.

    \b
    Examples:
      btrsync usage --from b2
      btrsync usage --from file:///mnt/usb/backups --json
    """
    _url, settings = app.config.target(source)
    try:
        quota = parse_size(settings["quota"]) if settings.get("quota") else None
    except ValueError as exc:
        raise ConfigError(f"quota of target {source}: {exc}") from None
    with app.repository(source) as repo:
        report = usage(repo, quota_bytes=quota)
    report_catalog_problems(report.catalog, repo.target.display_url)
    if as_json:
        emit_json(report.as_dict())
        return
    rows = []
    for sv in report.subvolumes:
        for ch in sv.chains:
            rows.append((sv.subvolume, ch.full, ch.backups, format_bytes(ch.stream_bytes),
                         format_bytes(ch.stored_bytes)))
    emit_table(rows, ["SUBVOLUME", "CHAIN (FULL)", "BACKUPS", "STREAM", "STORED"])
    click.echo(f"total stored {format_bytes(report.stored_bytes)}"
               + (f", uncommitted {format_bytes(report.uncommitted_bytes)}" if report.uncommitted_bytes else "")
               + (f", {report.quota_share:.1%} of quota {format_bytes(report.quota_bytes or 0)}"
                  if report.quota_share is not None else "")
               + (f", {format_bytes(report.free_bytes)} free" if report.free_bytes is not None else ""))


COMMANDS = [clean_cmd, usage_cmd]
