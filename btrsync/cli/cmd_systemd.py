"""btrsync systemd generate [--output DIR]; btrsync systemd on-failure UNIT"""

from __future__ import annotations

from pathlib import Path

import click

from btrsync.cli.app import App, pass_app, run_env
from btrsync.cli.options import global_options
from btrsync.errors import EXIT_STATUS_HELP, BtrsyncError, UsageError
from btrsync.jobs.runner import run_failure_hooks
from btrsync.jobs.systemd import generate, job_of_unit, write_units


@click.group("systemd", epilog=EXIT_STATUS_HELP)
def systemd_group() -> None:
    """systemd units of the jobs."""


@systemd_group.command("generate", epilog=EXIT_STATUS_HELP)
@global_options
@click.argument("jobs", nargs=-1)
@click.option("--output", type=click.Path(path_type=Path), default=Path("/etc/systemd/system"), show_default=True,
              help="directory to write the units to")
@click.option("--btrsync", "btrsync_path", metavar="PATH", help="the btrsync executable the units run "
                                                                "[default: this one]")
@pass_app
def generate_cmd(app: App, jobs: tuple[str, ...], output: Path, btrsync_path: str | None) -> None:
    """Write btrsync-JOB.service and btrsync-JOB.timer for each job (every job by default) and
    btrsync-on-failure@.service.  The key and the targets' credential files reach the service by
    LoadCredential=, never through the unit text or the environment.

    \b
    Examples:
      btrsync systemd generate                     # every job, into /etc/systemd/system
      btrsync systemd generate home --output /tmp/units
      systemctl daemon-reload && systemctl enable --now btrsync-home.timer
    """
    selected = app.config.jobs.select(list(jobs), all_jobs=False) if jobs else list(app.config.jobs.jobs.values())
    if not selected:
        raise UsageError("no jobs in the configuration ([jobs.NAME]; see docs/scheduling.md)")
    if app.config.path is None:
        raise UsageError(f"no configuration file at {app.config_path}: the units run 'btrsync --config FILE'")
    units = generate(app.config, selected, config_path=app.config.path, btrsync=btrsync_path)
    for path in write_units(units, output):
        click.echo(str(path))
    timers = [name for name in units if name.endswith(".timer")]
    click.echo(f"wrote {len(units)} unit(s); now: systemctl daemon-reload && systemctl enable --now "
               + " ".join(timers), err=True)


@systemd_group.command("on-failure", epilog=EXIT_STATUS_HELP)
@global_options
@click.argument("unit")
@pass_app
def on_failure_cmd(app: App, unit: str) -> None:
    """Run the on_failure hooks of the job whose unit failed (the OnFailure= unit calls this);
    nothing when btrsync already ran them for that run.

    \b
    Examples:
      btrsync systemd on-failure btrsync-home.service     # what btrsync-on-failure@.service runs
      btrsync systemd on-failure btrsync-home.service -v  # by hand, to test the hooks
    """
    job = job_of_unit(unit)
    if job is None or job not in app.config.jobs.jobs:
        raise UsageError(f"{unit} is not the unit of a configured job (btrsync-JOB.service)")
    results = run_failure_hooks(run_env(app), app.config.jobs.jobs[job], unit)
    failed = [r for r in results if not r.ok]
    if failed:
        raise BtrsyncError("; ".join(r.describe() for r in failed))


COMMANDS = [systemd_group]
