"""btrsync status [JOB...] [--json] [--stale-after 26h] [--check] [--refresh]"""

from __future__ import annotations

import click

from btrsync.cli.cmd_run import clock_for
from btrsync.cli.main import App, pass_app
from btrsync.cli.options import global_options
from btrsync.cli.output import emit_json, emit_table
from btrsync.errors import EXIT_STATUS_HELP, BtrsyncError, ExitCode, UsageError
from btrsync.jobs.status import PLUGIN_WORDS, StatusRow, age_text, check, refresh, status_rows
from btrsync.jobs.timespan import timespan
from btrsync.units import format_bytes

CHECK_HELP = """\b
EXIT STATUS with --check (monitoring-plugin codes)
  0 OK; 1 WARNING (a target failing, its newest backup still fresh);
  2 CRITICAL (a backup older than --stale-after, or failing without any);
  3 UNKNOWN (no job configured, or one that never ran).
"""


class CheckError(BtrsyncError):
    """``status --check`` found a problem: the monitoring-plugin code is the exit status."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.exit_code = ExitCode(code)  # 1, 2 and 3 are also btrsync codes: the plugin meaning wins here


@click.command("status", epilog=CHECK_HELP + EXIT_STATUS_HELP)
@global_options
@click.argument("jobs", nargs=-1)
@click.option("--json", "as_json", is_flag=True, help="print JSON")
@click.option("--stale-after", metavar="DUR", help="a newest backup older than DUR is stale [per job, default 26h]")
@click.option("--check", "as_check", is_flag=True, help="one line and a monitoring-plugin exit code (Nagios, Icinga)")
@click.option("--refresh", "do_refresh", is_flag=True, help="re-read the targets' catalogs first (network)")
@click.option("--now", "now_text", hidden=True, metavar="TIME", help="as if the time were TIME (tests)")
@pass_app
def status_cmd(app: App, jobs: tuple[str, ...], as_json: bool, stale_after: str | None, as_check: bool,
               do_refresh: bool, now_text: str | None) -> None:
    """Per job and target: last run, last success, age and size of the newest backup, duration,
    chain depth, last verification and drill, failures since the last success, and a verdict
    (ok, stale, failing, never).  Reads the local records only (fast, no network) unless --refresh.

    \b
    Examples:
      btrsync status                           # one line per job and target
      btrsync status --check --stale-after 30h # for Nagios/Icinga (NRPE)
    """
    selected = app.config.jobs.select(list(jobs), all_jobs=False) if jobs else list(app.config.jobs.jobs.values())
    try:
        threshold = timespan(stale_after) if stale_after else None
    except ValueError as exc:
        raise UsageError(f"--stale-after: {exc}") from None
    clock = clock_for(now_text)
    if do_refresh:
        for problem in refresh(app.config, app.state().root, selected, clock, lambda name: app.repository(name)):
            click.echo(f"btrsync: warning: refresh {problem}", err=True)
    rows = status_rows(app.config, app.state().root, clock.now(), stale_after=threshold, jobs=selected)
    if as_check:
        code, line = check(rows, clock.now())
        click.echo(line)
        if code:
            raise CheckError(f"status --check: {PLUGIN_WORDS[code]}", code)
        return
    if as_json:
        emit_json([r.as_dict() for r in rows])
        return
    if not rows:
        click.echo("no jobs in the configuration ([jobs.NAME]; see docs/scheduling.md)", err=True)
        return
    emit_table([_cells(r) for r in rows], ["JOB", "TARGET", "VERDICT", "LAST RUN", "LAST SUCCESS", "NEWEST AGE",
                                          "SIZE", "TIME", "DEPTH", "VERIFIED", "DRILL", "FAILS"])
    for r in rows:
        if r.verdict != "ok" and r.note:
            click.echo(f"{r.job}/{r.target}: {r.note}", err=True)


def _cells(r: StatusRow) -> tuple[object, ...]:
    def when(t):  # noqa: ANN001, ANN202
        return t.strftime("%Y-%m-%d %H:%M") if t else None

    verified = None if r.last_verify is None else f"{when(r.last_verify)} {'ok' if r.verify_ok else 'DAMAGE'}"
    drill = None if r.last_drill is None else f"{when(r.last_drill)} {'ok' if r.drill_ok else 'FAILED'}"
    return (r.job, r.target, r.verdict.upper() if r.verdict != "ok" else "ok",
            f"{when(r.last_run)} {r.last_run_status}" if r.last_run else None, when(r.last_success),
            age_text(r.newest_age) if r.newest_age is not None else None,
            format_bytes(r.newest_bytes) if r.newest_bytes is not None else None,
            f"{r.duration:.1f}s" if r.duration is not None else None, r.chain_depth, verified, drill, r.failures)


COMMANDS = [status_cmd]
