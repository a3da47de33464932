"""btrsync status [JOB...] [--json] [--stale-after 26h] [--check] [--refresh]"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any

import click

from btrsync.cli.app import App, clock_for, pass_app
from btrsync.cli.options import global_options
from btrsync.cli.output import emit_json, emit_table
from btrsync.config.timespan import timespan
from btrsync.errors import EXIT_STATUS_HELP, BtrsyncError, ConfigError, ExitCode, KeyFileError, UsageError
from btrsync.jobs.status import PLUGIN_WORDS, UNKNOWN, StatusRow, age_text, check, plugin_text, refresh, status_rows
from btrsync.units import format_bytes

CHECK_HELP = """\b
EXIT STATUS with --check (monitoring-plugin codes)
  0 OK; 1 WARNING (a target failing, its newest backup still fresh);
  2 CRITICAL (a backup older than --stale-after, or failing without any);
  3 UNKNOWN (no job configured, one that never ran, a record that cannot
  be read, or the check itself failed: a bad option, a missing or invalid
  configuration, an unknown job, an unreadable state directory), always
  with one 'BTRSYNC UNKNOWN - ...' line saying what to fix.
"""

log = logging.getLogger(__name__)


class CheckError(BtrsyncError):
    """``status --check`` found a problem: the monitoring-plugin code is the exit status."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.exit_code = ExitCode(code)  # 1, 2 and 3 are also btrsync codes: the plugin meaning wins here
        self.answered = True  # its plugin line is the whole answer on stdout, --json or not


def _unknown(what: str) -> CheckError:
    """Print the plugin's UNKNOWN line (one line, stdout) and return the error that exits 3."""
    click.echo(f"BTRSYNC UNKNOWN - {plugin_text(what)}")
    return CheckError(f"status --check: UNKNOWN: {what}", UNKNOWN)


def _what_to_do(exc: BaseException) -> str:
    """What went wrong evaluating the check, and what to do about it."""
    if isinstance(exc, UsageError):
        return f"{exc}; fix the check's command line (btrsync status --help)"
    if isinstance(exc, (ConfigError, KeyFileError)):
        return f"{exc}; fix the configuration (btrsync config check)"
    if isinstance(exc, BtrsyncError):
        return str(exc)
    if isinstance(exc, OSError):
        where = f" ({exc.filename})" if exc.filename else ""
        return (f"cannot read the state: {exc.strerror or exc}{where}; check that the check runs as a user "
                "who may read the state directory, and its disk")
    return f"the check failed unexpectedly ({type(exc).__name__}: {exc}); run it with --debug and report it"


class _StatusCommand(click.Command):
    """``status``: with ``--check``, even click's own errors (an unknown option, a missing value)
    are the plugin's UNKNOWN (exit 3), never exit 2, which a monitoring system reads as CRITICAL."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        checking = "--check" in args[: args.index("--")] if "--" in args else "--check" in args
        try:
            return super().parse_args(ctx, args)
        except click.UsageError as exc:
            if checking:
                raise _unknown(f"{exc.format_message()}; fix the check's command line (btrsync status "
                               "--help)") from None
            raise


@click.command("status", cls=_StatusCommand, epilog=CHECK_HELP + EXIT_STATUS_HELP)
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
    (ok, stale, failing, unknown, never).  Reads the local records only (fast, no network) unless --refresh.

    \b
    Examples:
      btrsync status                           # one line per job and target
      btrsync status --check --stale-after 30h # for Nagios/Icinga (NRPE)
    """
    if as_check:
        try:
            code, line = _check(app, jobs, stale_after, do_refresh, now_text)
        except Exception as exc:  # noqa: BLE001 - whatever it is, the plugin's answer is UNKNOWN, exit 3
            log.debug("status --check failed", exc_info=True)
            raise _unknown(_what_to_do(exc)) from None
        click.echo(line)
        if code:
            raise CheckError(f"status --check: {PLUGIN_WORDS[code]}", code)
        return
    rows, _now = _rows(app, jobs, stale_after, do_refresh, now_text)
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


def _rows(app: App, jobs: tuple[str, ...], stale_after: str | None, do_refresh: bool,
          now_text: str | None) -> tuple[list[StatusRow], datetime]:
    selected = app.config.jobs.select(list(jobs), all_jobs=False) if jobs else list(app.config.jobs.jobs.values())
    try:
        threshold = timespan(stale_after) if stale_after else None
    except ValueError as exc:
        raise UsageError(f"--stale-after {stale_after!r}: {exc}") from None
    clock = clock_for(now_text)
    if do_refresh:
        for problem in refresh(app.config, app.state().root, selected, clock, lambda name: app.repository(name, listing=True)):
            click.echo(f"btrsync: warning: refresh {problem}", err=True)
    now = clock.now()
    return status_rows(app.config, app.state().root, now, stale_after=threshold, jobs=selected), now


def _check(app: App, jobs: tuple[str, ...], stale_after: str | None, do_refresh: bool,
           now_text: str | None) -> tuple[int, str]:
    return check(*_rows(app, jobs, stale_after, do_refresh, now_text))


def _outcome(ok: Any, damaged: int | None) -> str:
    """ok; DAMAGE only when something was found damaged; FAILED when it did not complete."""
    return "ok" if ok else "DAMAGE" if damaged else "FAILED"


def _cells(r: StatusRow) -> tuple[object, ...]:
    def when(t):  # noqa: ANN001, ANN202
        return t.strftime("%Y-%m-%d %H:%M") if t else None

    verified = None if r.last_verify is None else f"{when(r.last_verify)} {_outcome(r.verify_ok, r.verify_damaged)}"
    drill = None if r.last_drill is None else f"{when(r.last_drill)} {_outcome(r.drill_ok, r.drill_damaged)}"
    return (r.job, r.target, r.verdict.upper() if r.verdict != "ok" else "ok",
            f"{when(r.last_run)} {r.last_run_status}" if r.last_run else None, when(r.last_success),
            age_text(r.newest_age) if r.newest_age is not None else None,
            format_bytes(r.newest_bytes) if r.newest_bytes is not None else None,
            f"{r.duration:.1f}s" if r.duration is not None else None, r.chain_depth, verified, drill, r.failures)


COMMANDS = [status_cmd]
