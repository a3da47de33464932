"""btrsync run [JOB...|--all]: the timer's entry point, also the manual trigger."""

from __future__ import annotations

from typing import Any

import click

from btrsync.cli.app import App, pass_app, run_env
from btrsync.cli.options import global_options
from btrsync.cli.output import emit_json, emit_table
from btrsync.config.timespan import timespan
from btrsync.errors import EXIT_STATUS_HELP, BtrsyncError, ExitCode, UsageError
from btrsync.jobs.outcome import RunReport
from btrsync.jobs.runner import run_jobs
from btrsync.units import format_bytes


class RunFailedError(BtrsyncError):
    """Some or all jobs of a run failed (exit 3 or 1), or found their lock held (11)."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.exit_code = ExitCode(code)


@click.command("run", epilog=EXIT_STATUS_HELP)
@global_options
@click.argument("jobs", nargs=-1)
@click.option("--all", "all_jobs", is_flag=True, help="every enabled job")
@click.option("--dry-run", is_flag=True, help="print what would happen: windows, plans, prunes; change nothing")
@click.option("--wait", "wait_text", metavar="DUR",
              help="wait up to DUR (10m) for a job or target lock another run holds, instead of exit 11")
@click.option("--json", "as_json", is_flag=True, help="print JSON")
@click.option("--now", "now_text", hidden=True, metavar="TIME", help="run as if the time were TIME (tests)")
@pass_app
def run_cmd(app: App, jobs: tuple[str, ...], all_jobs: bool, dry_run: bool, wait_text: str | None,
            as_json: bool, now_text: str | None) -> None:
    """Run jobs of the configuration: lock, window, hooks, snapshot, push, prune, verify, metrics.

    Per job: take its lock; outside its window skip it (exit 0); run the pre hooks; snapshot
    every subvolume; push to each target that is due (a failing target never stops the next);
    prune each target whose push succeeded, and the local snapshots only when no target failed;
    verify per policy; run the post and on_success/on_failure hooks; record the run and write
    the metrics file.  At most max_parallel_jobs jobs work at once on this host; others queue.

    Exit 0 when every job that ran succeeded, 3 when some jobs or targets failed and others
    succeeded, 1 when all failed, 11 when the lock was held (see --wait).

    \b
    Examples:
      btrsync run --all                 # what the timers do, all jobs
      btrsync run home --dry-run        # the plan of job 'home'
      systemctl start btrsync-home      # the same job, as its systemd unit
    """
    selected = app.config.jobs.select(list(jobs), all_jobs=all_jobs)
    if not selected:
        click.echo("btrsync: no enabled job in the configuration ([jobs.NAME]; see docs/scheduling.md)", err=True)
    try:
        wait = timespan(wait_text).total_seconds() if wait_text else None
    except ValueError as exc:
        raise UsageError(f"--wait: {exc}") from None
    report = run_jobs(run_env(app, dry_run=dry_run, wait=wait, now=now_text), selected)
    if as_json:
        emit_json({"exit_code": report.exit_code, "dry_run": dry_run, "jobs": [j.as_dict() for j in report.jobs]})
    else:
        render(report, dry_run)
    if report.exit_code:
        raise RunFailedError(summary(report), report.exit_code)


def summary(report: RunReport) -> str:
    bad = [j for j in report.jobs if j.status not in ("ok", "skipped")]
    parts = []
    for j in bad:
        why = j.error or "; ".join(p for t in j.targets if (p := t.problem())) or j.status
        parts.append(f"{j.job} {j.status}: {why}")
    return f"{len(bad)} of {len(report.jobs)} job(s) not ok: " + " | ".join(parts)


def render(report: RunReport, dry_run: bool) -> None:
    rows: list[tuple[Any, ...]] = []
    for j in report.jobs:
        if not j.targets:
            rows.append((j.job, "-", j.status, "-", "-", "-", "-", f"{j.seconds:.1f}s", j.reason or j.error))
        for t in j.targets:
            note = t.error or t.reason or t.prune_skipped
            if t.verify:
                note = (note + "; " if note else "") + f"verify {t.verify['level']} " + \
                    ("ok" if t.verify.get("ok") else "DAMAGE")
            done = sum(1 for b in t.backups if b["status"] == "ok")  # a stopped or failed push made none
            rows.append((j.job, t.name, t.status, done if not dry_run else len(t.plan),
                         format_bytes(t.stream_bytes), format_bytes(t.stored_bytes), len(t.pruned),
                         f"{t.seconds:.1f}s", note))
    emit_table(rows, ["JOB", "TARGET", "STATUS", "PLANNED" if dry_run else "BACKUPS", "STREAM", "STORED",
                      "PRUNED", "TIME", "NOTE"])
    for j in report.jobs:
        extra = []
        if j.snapshots:
            extra.append(f"{'would take snapshots' if dry_run else 'snapshots'} {', '.join(j.snapshots)}")
        if j.local_pruned:
            extra.append(f"{len(j.local_pruned)} local snapshot(s) pruned")
        if j.local_prune_skipped:
            extra.append(f"local prune {j.local_prune_skipped}")
        if dry_run and j.hooks:
            extra.append("would run hooks " + ", ".join(f"{h['kind']}: {' '.join(h['argv'])}" for h in j.hooks))
        if extra:
            click.echo(f"{j.job}: " + "; ".join(extra), err=True)


COMMANDS = [run_cmd]
