"""btrsync push SUBVOL --snapshot-dir DIR --to URL"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import asdict
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from btrsync.audit import AuditLog
from btrsync.catalog.repository import Repository
from btrsync.cli.app import App, pass_app, render_verify
from btrsync.cli.options import global_options
from btrsync.cli.output import emit_json, emit_table
from btrsync.cli.problems import report_catalog_problems
from btrsync.config.model import progress_interval
from btrsync.errors import EXIT_STATUS_HELP, DamageError
from btrsync.jobs.aftercommand import after_command
from btrsync.ops.push.run import PushResult, push, raise_for_failures
from btrsync.ops.push.settings import settings_from
from btrsync.progress import reporter
from btrsync.retention.lifetime import FOREVER
from btrsync.snapshots.store import subvolume_name
from btrsync.units import format_bytes

if TYPE_CHECKING:
    from btrsync.ops.verify import VerifyReport


@click.command("push", epilog=EXIT_STATUS_HELP)
@global_options
@click.argument("subvol", type=click.Path(path_type=Path))
@click.option("--snapshot-dir", required=True, type=click.Path(path_type=Path))
@click.option("--to", "to", required=True, help="target URL (file://, s3://, ssh://) or configured name")
@click.option("--dry-run", is_flag=True, help="print the plan (parent, full/incremental, why); send nothing")
@click.option("--bwlimit", help="limit stored bytes per second, e.g. 25M (MiB/s)")
@click.option("--max-chain", type=int, help="incrementals before a new full [default: 30]")
@click.option("--chain", type=click.Choice(["tree", "linear"]),
              help="tree: parents chosen by the target's retention policy, so prune deletes what the "
                   "policy drops; linear: each backup on the newest [default: chain of the target, else tree]")
@click.option("--backfill", is_flag=True,
              help="also send snapshots older than the newest backup on the target that its retention "
                   "would not keep")
@click.option("--verify", "verify_level", type=click.Choice(["none", "catalog", "data"]),
              help="after committing, re-read what was written (data: download it again) "
                   "[default: verify_after_push from the configuration, else none]")
@click.option("--json", "as_json", is_flag=True, help="print JSON")
@pass_app
def push_cmd(app: App, subvol: Path, snapshot_dir: Path, to: str, dry_run: bool, bwlimit: str | None,
             max_chain: int | None, chain: str | None, backfill: bool, verify_level: str | None,
             as_json: bool) -> None:
    """Send every snapshot of SUBVOL that the target lacks, oldest first, each on its best parent.

    The target must hold a repository ('btrsync init --to URL' creates one). SUBVOL must be a
    btrfs subvolume with at least one snapshot in --snapshot-dir; a push that finds nothing to
    send at all is an error, never a silent success.

    Progress goes to stderr: on a terminal a status line (phase, share of the estimated total,
    rate of stored bytes, ETA; '~' marks estimates), otherwise a line every progress_interval
    seconds ([push] in the configuration, env BTRSYNC_PROGRESS_INTERVAL; default 30, 0 for none).
    None with --json.

    \b
    Examples:
      btrsync push /data --snapshot-dir /data/.snapshots --to file:///mnt/usb/backups --dry-run
      btrsync push /data --snapshot-dir /data/.snapshots --to b2 --bwlimit 5M --verify catalog
      BTRSYNC_PROGRESS_INTERVAL=60 btrsync push /home --snapshot-dir /home/.snapshots --to usb
    """
    url, target_settings = app.config.target(to)
    settings = settings_from(app.config.push, bwlimit=bwlimit, max_chain=max_chain, target=target_settings,
                             chain=chain)
    policy = app.config.retention.backup_policy(subvolume_name(subvol), app.config.target_names(url) + (to,))
    progress = None if as_json or dry_run else reporter("push", interval=progress_interval(app.config))
    # the catalog's listing beside the marker's read: the plan needs it next
    with app.repository(to, write=not dry_run, lock=not dry_run, listing=True) as repo:
        with progress or nullcontext():  # its line is erased before anything else is printed
            result = push(subvol, snapshot_dir, repo, settings, dry_run=dry_run, progress=progress,
                          backfill=backfill, policy=policy, audit=AuditLog(app.state().root),
                          unusable=app.state().damaged_backups(repo.target.display_url))
        complete = not (result.catalog and result.catalog.damaged)
        # what vanished is judged on the catalog as found, before this push re-sent anything
        vanished = app.state().record_target(repo.target.display_url, result.catalog.manifests
                                             if result.catalog else [], repo_id=repo.repo_id, complete=complete)
        if result.results or result.anchors is not None:
            app.state().record_target(repo.target.display_url, result.held, repo_id=repo.repo_id,
                                      complete=complete, anchors=result.anchors_for())
        if result.results:
            after_command(app.config, app.state().root, repo.target.display_url, manifests=result.held)
        level = verify_level or app.config.push.verify_after_push
        pushed = [r.backup_id for r in result.results if r.status == "ok"]
        checked = _verify_pushed(app, repo, pushed, level) if pushed and level != "none" and not dry_run else None
    report_catalog_problems(result.catalog, repo.target.display_url, vanished)
    if as_json:
        emit_json({**_as_json(result, dry_run, vanished),
                   "verify": checked.summary() if checked is not None else None})
    else:
        _render(result, dry_run)
        if checked is not None:
            render_verify(checked, False)
    raise_for_failures(result)
    if checked is not None and not checked.ok:
        raise DamageError(f"verification after the push found damage in {len(checked.damaged)} backup(s) on "
                          f"{checked.target}: the upload path is broken; see docs/verify.md")


def _verify_pushed(app: App, repo: Repository, ids: list[str], level: str) -> VerifyReport:
    """Re-read what was just written, past any cache: a broken upload path is caught the same night."""
    # imported here: a push without --verify never loads the verifier (start-up of every push)
    from btrsync.ops.verify import Options, verify
    from btrsync.verify.ledger import Ledger

    report = verify(repo, ids, Options(level=level, workers=app.config.push.workers),
                    ledger=Ledger.for_repository(app.state().root, repo.repo_id))
    app.state().record_verification(repo.target.display_url, report.summary())
    return report


def _as_json(result: PushResult, dry_run: bool, vanished: list[str]) -> dict[str, Any]:
    return {
        "vanished": vanished,
        "target": result.target, "subvolume": result.subvolume, "dry_run": dry_run,
        "plan": [{"snapshot": s.snapshot.name, "kind": s.kind, "parent": s.parent.name if s.parent else None,
                  "parent_id": s.parent_backup_id, "depth": s.depth, "reason": s.reason, "tier": s.tier,
                  "kept_until": _until(s.kept_until), "estimated_bytes": s.estimated_bytes}
                 for s in result.plan.steps],
        "skipped": [{"snapshot": s.snapshot.name, "reason": s.reason} for s in result.plan.skipped],
        "backups": [asdict(r) for r in result.results],
    }


def _until(when: datetime | None) -> str | None:
    if when is None:
        return None
    return "forever" if when == FOREVER else when.isoformat().replace("+00:00", "Z")


def _render(result: PushResult, dry_run: bool) -> None:
    if not result.plan.steps:
        click.echo(f"{result.target} is up to date for {result.subvolume}")
    if dry_run:
        emit_table([(s.snapshot.name, s.kind, s.tier or "-", s.parent.name if s.parent else None,
                     format_bytes(s.estimated_bytes) if s.estimated_bytes is not None else "-",
                     (_until(s.kept_until) or "-")[:10], s.reason)
                    for s in result.plan.steps], ["SNAPSHOT", "KIND", "TIER", "PARENT", "ESTIMATE", "KEPT UNTIL", "WHY"])
    else:  # a failure's message is printed once, as the command's error, not in the table
        emit_table([(r.backup_id, r.kind, r.status, format_bytes(r.stream_bytes), format_bytes(r.stored_bytes),
                     f"{r.seconds:.1f}s") for r in result.results],
                   ["BACKUP", "KIND", "STATUS", "STREAM", "STORED", "TIME"])
    for skip in result.plan.skipped:
        click.echo(f"skipped {skip.snapshot.name}: {skip.reason}", err=True)


COMMANDS = [push_cmd]
