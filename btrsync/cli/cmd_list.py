"""btrsync list --from URL"""

from __future__ import annotations

from typing import Any

import click

from btrsync.cli.app import App, pass_app
from btrsync.cli.options import global_options
from btrsync.cli.output import emit_json, emit_table
from btrsync.cli.problems import report_catalog_problems
from btrsync.errors import EXIT_STATUS_HELP, DamageError
from btrsync.planner.tree import tiers
from btrsync.retention.lifetime import FOREVER
from btrsync.units import format_bytes


@click.command("list", epilog=EXIT_STATUS_HELP)
@global_options
@click.option("--from", "source", required=True, help="target URL or configured name")
@click.option("--check", is_flag=True,
              help="exit 4 when a manifest is damaged or a backup cannot be restored (broken chain)")
@click.option("--refresh", is_flag=True, help="rebuild this host's cache of the target's manifests")
@click.option("--json", "as_json", is_flag=True, help="print a JSON list of backups")
@pass_app
def list_cmd(app: App, source: str, check: bool, refresh: bool, as_json: bool) -> None:
    """List the backups on a target with their chains and sizes.

    A damaged manifest does not hide the other backups: it is listed as DAMAGED, and a backup
    whose chain is broken (a parent missing, damaged or not the one it was sent on) as BROKEN;
    warnings say what to do. With --check, either makes the exit status 4.

    \b
    Examples:
      btrsync list --from file:///mnt/usb/backups
      btrsync list --from b2 --json --check
    """
    with app.repository(source, listing=True) as repo:  # it lists the catalog first
        if refresh and repo.cache is not None:
            repo.cache.clear()
        catalog = repo.catalog(ahead=True)
        vanished = app.state().record_target(repo.target.display_url, catalog.manifests, repo_id=repo.repo_id,
                                             complete=not catalog.damaged)
    url = repo.target.display_url
    names = app.config.target_names(url) + ((source,) if source != url else ())
    lives = tiers(((m.backup_id, (m.host, m.subvolume), m.snapshot_time) for m in catalog.manifests),
                  lambda subvolume: app.config.retention.backup_policy(subvolume, names))
    rows: list[dict[str, Any]] = []
    for m in catalog.manifests:
        broken = catalog.broken.get(m.backup_id)
        life = lives.get(m.backup_id)
        rows.append({**m.summary(), "status": "broken" if broken else "ok",
                     "problem": broken.reason if broken else None,
                     "tier": life.tier if life else None, "period": life.period if life else None,
                     "kept_until": None if life is None else "forever" if life.until == FOREVER
                     else life.until.isoformat().replace("+00:00", "Z")})
    rows += [{"id": d.backup_id, "subvolume": d.subvolume, "status": "damaged", "problem": d.error}
             for d in catalog.damaged]
    problems = report_catalog_problems(catalog, url, vanished)
    if as_json:
        emit_json(rows)
    else:
        tiered = any(r.get("tier") for r in rows)
        emit_table([(r["id"], r["subvolume"], r.get("created"), r.get("kind"),
                     *((r.get("tier"), (r.get("kept_until") or "")[:10] or None) if tiered else ()),
                     r.get("parent"), r.get("depth"),
                     _size(r.get("stream_bytes")), _size(r.get("stored_bytes")),
                     _changes(r.get("changes")), None if r["status"] == "ok" else r["status"].upper())
                    for r in rows],
                   ["ID", "SUBVOLUME", "CREATED", "KIND", *(("TIER", "KEPT UNTIL") if tiered else ()), "PARENT",
                    "DEPTH", "STREAM", "STORED", "CHANGES", "STATUS"])
    if check and (catalog.damaged or catalog.broken):
        raise DamageError(f"{len(catalog.damaged)} damaged manifest(s) and {len(catalog.broken)} unrestorable "
                          f"backup(s) on {url}" + (f" ({len(problems)} problem(s) above)" if problems else ""))


def _changes(c: dict | None) -> str | None:
    """``+created -deleted ~renamed, bytes written`` from the parser's statistics at push time."""
    if not c:
        return None
    return (f"+{c.get('created', 0) + c.get('dirs_created', 0)} -{c.get('deleted', 0)} "
            f"~{c.get('renamed', 0)} {format_bytes(c.get('data_bytes', 0))}")


def _size(n: int | None) -> str | None:
    return None if n is None else format_bytes(n)


COMMANDS = [list_cmd]
