"""btrsync verify --from URL [BACKUP...]"""

from __future__ import annotations

from pathlib import Path

import click

from btrsync.cli.app import App, pass_app, render_verify
from btrsync.cli.options import global_options
from btrsync.errors import EXIT_STATUS_HELP, BtrsyncError, DamageError, UsageError
from btrsync.jobs.aftercommand import after_command
from btrsync.ops.verify import LEVELS, Options, verify
from btrsync.units import parse_interval
from btrsync.verify.ledger import Ledger
from btrsync.verify.selection import Sample, Subset


def _duration(option: str, text: str | None):  # noqa: ANN202
    if text is None:
        return None
    try:
        return parse_interval(text)
    except ValueError as exc:
        raise UsageError(f"{option} {text!r}: {exc}") from None


def _positive(option: str, value):  # noqa: ANN001, ANN202
    if value is not None and value.total_seconds() <= 0:
        raise UsageError(f"{option} must be longer than 0: a verification that may read nothing checks nothing")
    return value


@click.command("verify", epilog=EXIT_STATUS_HELP)
@global_options
@click.argument("backups", nargs=-1)
@click.option("--from", "source", required=True, help="target URL or configured name")
@click.option("--all", "all_", is_flag=True, help="every backup (the default when none is named)")
@click.option("--level", type=click.Choice(LEVELS), default="data", show_default=True,
              help="catalog: manifests, chains, objects; data: + every chunk; stream: + the send stream "
                   "parsed; restore: + a scratch restore, compared with the local snapshot")
@click.option("--subset", metavar="n/t", help="read only slice n of t of the segments (stable across runs)")
@click.option("--sample", metavar="P%|SIZE|N",
              help="read a random sample of segments (10%, 50G); with --level restore: N random drills")
@click.option("--older-than", metavar="DUR", help="read only segments not verified within DUR (30d)")
@click.option("--max-duration", metavar="DUR", help="stop starting new segments after DUR (2h)")
@click.option("--scratch-dir", type=click.Path(path_type=Path), default=Path("/var/tmp/btrsync-drills"),
              show_default=True, help="where restore drills make their sparse scratch image")
@click.option("--snapshot-dir", "snapshot_dirs", multiple=True, type=click.Path(path_type=Path),
              help="local snapshot directories to compare restore drills with")
@click.option("--json", "as_json", is_flag=True, help="one object per backup, then a summary")
@pass_app
def verify_cmd(app: App, backups: tuple[str, ...], source: str, all_: bool, level: str, subset: str | None,
               sample: str | None, older_than: str | None, max_duration: str | None, scratch_dir: Path,
               snapshot_dirs: tuple[Path, ...], as_json: bool) -> None:
    """Check backups without restoring them, or by a scratch restore (exit 4 on damage).

    Levels are cumulative; catalog costs a listing and the manifests, data downloads what it
    checks (no btrfs or root needed), stream parses whole streams, restore replays chains into a
    scratch btrfs on a loop device. Damage in one backup never stops the others; backups that
    depend on a damaged one are reported as affected. The ledger in the state directory records
    which segments were verified when, for --older-than.

    \b
    Examples:
      btrsync verify --from b2 --level catalog          # nightly, cheap
      btrsync verify --from b2 --subset 3/7             # a seventh of the data each night
      btrsync verify --from usb --level restore --sample 1 --snapshot-dir /data/.snapshots
    """
    if all_ and backups:
        raise UsageError("name backups or give --all, not both")
    drills = None
    sampled = None
    if sample is not None:
        if level == "restore":  # a number of drills: a share of segments means nothing to a drill
            if not sample.strip().isdigit() or int(sample) < 1:
                raise UsageError(f"--sample {sample!r} with --level restore: give the number of backups to "
                                 "drill (e.g. --sample 1); every selected backup is drilled without it")
            drills = int(sample)
        else:
            sampled = Sample.parse(sample)
    options = Options(level=level, subset=Subset.parse(subset) if subset else None, sample=sampled, drills=drills,
                      older_than=_duration("--older-than", older_than),
                      max_duration=_positive("--max-duration", _duration("--max-duration", max_duration)),
                      scratch_dir=scratch_dir,
                      snapshot_dirs=snapshot_dirs, workers=app.config.push.workers)
    with app.repository(source, listing=True) as repo:  # it reads the catalog first
        ledger = Ledger.for_repository(app.state().root, repo.repo_id)
        report = verify(repo, list(backups) or None, options, ledger=ledger)
        app.state().record_verification(repo.target.display_url, report.summary())
    after_command(app.config, app.state().root)  # the metrics file shows this verification
    render_verify(report, as_json)
    if report.damaged:
        first = report.damaged[0]
        detail = first.problems[0].message if first.problems else first.note or first.result
        raise DamageError(f"{len(report.damaged)} backup(s) damaged or affected on {report.target}; "
                          f"first: {first.backup_id}: {detail} (see docs/verify.md)")
    if not report.ok:  # a drill that could not be set up: no finding, and no pass (exit 1)
        raise BtrsyncError(str(report.first_problem()))


COMMANDS = [verify_cmd]
