"""btrsync prune --from URL; btrsync snapshot prune SUBVOL; btrsync retention simulate"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import click

from btrsync.audit import AuditLog
from btrsync.cli.app import App, pass_app, snapshot
from btrsync.cli.options import global_options
from btrsync.cli.output import emit_json, emit_table
from btrsync.errors import EXIT_STATUS_HELP, DamageError, UsageError
from btrsync.jobs.aftercommand import after_command
from btrsync.ops.prune import PruneResult, prune_backups, prune_snapshots
from btrsync.planner.plan import DEFAULT_MAX_CHAIN
from btrsync.planner.pricing import STRATEGIES, Churn, price, render_prices
from btrsync.retention import Policy, parse_duration, render_simulation, simulate
from btrsync.snapshots.naming import parse_timestamp
from btrsync.snapshots.store import subvolume_name
from btrsync.units import format_bytes, parse_size

F = TypeVar("F", bound=Callable[..., Any])
RULES = ("last", "hourly", "daily", "weekly", "monthly", "yearly")


def keep_options(f: F) -> F:
    """--keep-last … --keep-yearly N, --keep-within DUR, --timezone TZ."""
    f = click.option("--timezone", help="calendar for hourly…yearly periods [config, else UTC]")(f)
    f = click.option("--keep-within", metavar="DUR", help="keep everything newer than DUR (36h, 7d, 2w)")(f)
    for rule in reversed(RULES):
        f = click.option(f"--keep-{rule}", metavar="N", help=f"keep {rule} points (a count or 'unlimited')")(f)
    return f


def policy_from_flags(flags: dict[str, Any], default_tz: str) -> Policy | None:
    settings = {f"keep_{r}": flags[f"keep_{r}"] for r in RULES if flags.get(f"keep_{r}") is not None}
    if flags.get("keep_within"):
        settings["keep_within"] = flags["keep_within"]
    if not settings:
        return None
    try:
        return Policy.from_mapping({**settings, "timezone": flags.get("timezone") or default_tz})
    except ValueError as exc:
        raise UsageError(str(exc)) from None


def _now(text: str | None) -> datetime:
    return parse_timestamp(text) if text else datetime.now(UTC)


def _render(result: PruneResult, as_json: bool) -> None:
    if as_json:
        emit_json([d.as_dict() for d in result.decisions])
        return
    emit_table([(d.id, d.created.strftime("%Y-%m-%d %H:%M"), d.action.upper() if d.action == "delete" else d.action,
                 "; ".join(d.reasons)) for d in result.decisions], ["ID", "CREATED", "ACTION", "WHY"])
    verb = "would delete" if result.dry_run else "deleted"
    click.echo(f"{verb} {len(result.deleted)} of {len(result.decisions)}"
               + (f", {format_bytes(result.freed)}" if result.freed else ""), err=True)


@click.command("prune", epilog=EXIT_STATUS_HELP)
@global_options
@click.option("--from", "source", required=True, help="target URL or configured name")
@keep_options
@click.option("--now", "now_text", metavar="TIME", help="with --dry-run: evaluate the policy as of TIME")
@click.option("--dry-run", is_flag=True, help="print keep/delete with the rule that decided each")
@click.option("--json", "as_json", is_flag=True, help="print the decisions as JSON")
@pass_app
def prune_cmd(app: App, source: str, now_text: str | None, dry_run: bool, as_json: bool, **flags: Any) -> None:
    """Apply retention to a target's backups; never deletes a backup a kept one depends on.

    Without --keep-* flags, each subvolume's profile from the configuration applies
    (backups, or the profile's override for this target); a subvolume without one keeps all.

    On an S3 target with object_lock, a backup whose lock has not expired (on the store's clock)
    is kept with the reason, as is one the store refuses to delete (a push host's key without
    delete rights): reported, exit 0.  Kept backups' locks are extended to the policy's dates.

    \b
    Examples:
      btrsync prune --from usb --keep-daily 14 --keep-weekly 8 --keep-monthly 24 --dry-run
      btrsync prune --from b2                     # each subvolume's profile from the configuration
      btrsync prune --from b2 --dry-run --now 2027-01-01T00:00:00Z --json
    """
    rcfg = app.config.retention
    flag_policy = policy_from_flags(flags, rcfg.timezone)
    url, _ = app.config.target(source)
    names = app.config.target_names(url) + (source,)

    def policy_for(subvolume: str) -> Policy | None:
        return flag_policy or rcfg.backup_policy(subvolume, names)

    def policy_text(subvolume: str) -> str:
        p = policy_for(subvolume)
        return p.describe() if p else "keep all"

    if now_text and not dry_run:
        raise UsageError("--now evaluates the policy as of another time, a simulation: it needs --dry-run")
    with app.repository(source, write=not dry_run, lock=True) as repo:
        result = prune_backups(repo, policy_for, _now(now_text), dry_run=dry_run,
                               audit=AuditLog(app.state().root), policy_text=policy_text)
        if not dry_run:
            app.state().record_target(repo.target.display_url, result.remaining, repo_id=repo.repo_id,
                                      deleted=result.deleted, complete=not result.damaged)
            after_command(app.config, app.state().root, repo.target.display_url, manifests=result.remaining,
                          deleted=len(result.deleted))  # job records and the metrics file
    for line in result.damaged:
        click.echo(f"btrsync: warning: {line}", err=True)
    _render(result, as_json)
    result.raise_for_damage()


@snapshot.command("prune", epilog=EXIT_STATUS_HELP)
@global_options
@click.argument("subvol", type=click.Path(path_type=Path))
@click.option("--snapshot-dir", required=True, type=click.Path(path_type=Path))
@keep_options
@click.option("--protect-for", "protect_for", multiple=True, metavar="URL",
              help="also ask this target (live) which snapshots it holds; targets known from earlier "
                   "pushes are always protected")
@click.option("--now", "now_text", metavar="TIME", help="with --dry-run: evaluate the policy as of TIME")
@click.option("--dry-run", is_flag=True, help="print keep/delete with the rule that decided each")
@click.option("--json", "as_json", is_flag=True, help="print the decisions as JSON")
@pass_app
def snapshot_prune_cmd(app: App, subvol: Path, snapshot_dir: Path, protect_for: tuple[str, ...],
                       now_text: str | None, dry_run: bool, as_json: bool, **flags: Any) -> None:
    """Apply retention to local snapshots of SUBVOL; never deletes the newest snapshot a target
    also holds, nor newer ones it has not received yet.

    \b
    Examples:
      btrsync snapshot prune /data --snapshot-dir /data/.snapshots --keep-hourly 24 --dry-run
      btrsync snapshot prune /data --snapshot-dir /data/.snapshots --protect-for usb
    """
    if now_text and not dry_run:
        raise UsageError("--now evaluates the policy as of another time, a simulation: it needs --dry-run")
    name = subvolume_name(subvol)
    policy = policy_from_flags(flags, app.config.retention.timezone) or app.config.retention.snapshot_policy(name)
    held_by = dict(app.state().targets(strict=True))
    for source in protect_for:
        with app.repository(source) as repo:
            catalog = repo.catalog()
            if catalog.damaged:
                raise DamageError(f"cannot tell which snapshots {repo.target.display_url} holds: "
                                  + catalog.damaged[0].advice(repo.target.display_url))
            app.state().record_target(repo.target.display_url, catalog.manifests, repo_id=repo.repo_id)
            held_by[repo.target.display_url] = app.state().targets(strict=True)[repo.target.display_url]
    result = prune_snapshots(snapshot_dir, name, policy, _now(now_text), held_by=held_by, dry_run=dry_run,
                             audit=AuditLog(app.state().root))
    _render(result, as_json)


@click.group("retention", epilog=EXIT_STATUS_HELP)
def retention() -> None:
    """Explore retention policies."""


@retention.command("simulate", epilog=EXIT_STATUS_HELP)
@global_options
@keep_options
@click.option("--profile", help="use this profile's policy from the configuration")
@click.option("--snapshots", "for_snapshots", is_flag=True, help="with --profile: the local snapshot policy")
@click.option("--every", default="1h", show_default=True, help="how often a backup is made")
@click.option("--span", default="1y", show_default=True, help="how long to simulate")
@click.option("--max-chain", type=int, default=None, help="full every N+1 backups, as push does")
@click.option("--size", help="price the chain strategies for a volume of this size (e.g. 100G)")
@click.option("--churn", default="1G/d", show_default=True,
              help="with --size: bytes written a day, on the working set (e.g. 2G/d)")
@click.option("--working-set", "working_set", default="10%", show_default=True,
              help="with --size: the share of the volume the writes fall on")
@click.option("--full-threshold", type=click.FloatRange(0, 1, min_open=True), default=0.5, show_default=True,
              help="with --size: tree sends a full when the best delta is more than this share of one")
@pass_app
def simulate_cmd(app: App, profile: str | None, for_snapshots: bool, every: str, span: str,
                 max_chain: int | None, size: str | None, churn: str, working_set: str, full_threshold: float,
                 **flags: Any) -> None:
    """What a policy holds after SPAN of backups every EVERY: counts per rule and a timeline.

    With --size, also what each chain strategy costs over the span (docs/retention.md, "The
    tree"): backups held, stored bytes (now, peak, mean), bytes uploaded, fulls and the
    deepest restore, for linear chains (a full every max-chain + 1, default 30) and the
    retention-aware tree, under a churn model: --churn bytes a day written at random on
    --working-set of the volume.

    \b
    Examples:
      btrsync retention simulate --keep-hourly 24 --keep-daily 7 --keep-monthly 12
      btrsync retention simulate --profile standard --every 1d --span 2y --max-chain 30
      btrsync retention simulate --keep-daily 7 --keep-weekly 4 --keep-monthly 12 --every 1d --span 2y \\
          --size 100G --churn 2G/d --working-set 10%
    """
    policy = policy_from_flags(flags, app.config.retention.timezone)
    if policy is None and profile:
        chosen = app.config.retention.profiles.get(profile)
        if chosen is None:
            raise UsageError(f"no retention profile {profile!r} in the configuration")
        policy = chosen.snapshots if for_snapshots else chosen.backups
    if policy is None:
        raise UsageError("give --keep-* flags or --profile NAME")
    try:
        step, length = parse_duration(every), parse_duration(span)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    start = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    churn_model = _churn(size, churn, working_set) if size is not None else None
    result = simulate(policy, start, start + length, step, max_chain=max_chain,
                      prune_every=max(step, timedelta(days=1)))
    click.echo(render_simulation(result))
    if churn_model is not None:
        priced = [price(policy, start, start + length, step, churn_model, strategy=s,
                        max_chain=DEFAULT_MAX_CHAIN if max_chain is None else max_chain,
                        full_threshold=full_threshold, prune_every=max(step, timedelta(days=1)))
                  for s in STRATEGIES]
        click.echo("\n" + render_prices(priced, churn_model))


def _churn(size: str, churn: str, working_set: str) -> Churn:
    try:
        share = float(working_set.rstrip("%")) / (100 if working_set.endswith("%") else 1)
        per = churn.lower().removesuffix("/d").removesuffix("/day")
        return Churn(parse_size(size), parse_size(per), share)
    except ValueError as exc:
        raise UsageError(f"--size/--churn/--working-set: {exc}") from None


COMMANDS = [prune_cmd, retention]
