"""btrsync demo"""

from __future__ import annotations

from pathlib import Path

import click

from btrsync.cli.options import global_options
from btrsync.errors import EXIT_STATUS_HELP, BtrsyncError
from btrsync.ops.demo import run_demo


@click.command("demo", epilog=EXIT_STATUS_HELP)
@global_options
@click.option("--keep", is_flag=True, help="keep the demo's working directory")
@click.option("--workdir", type=click.Path(path_type=Path), help="parent of the demo directory [/var/tmp]")
def demo_cmd(keep: bool, workdir: Path | None) -> None:
    """A self-contained tour on throwaway loopback btrfs: snapshot, push, change, push
    incremental, restore, compare.  Needs root (it mounts loop devices).

    \b
    Examples:
      btrsync demo
      btrsync demo --keep --workdir /srv/tmp     # look at the target afterwards
    """
    result = run_demo(lambda line: click.echo(line), keep=keep, workdir=workdir)
    if not result.ok:
        raise BtrsyncError("demo: the restored snapshot differs from the original")
    click.echo("demo: all steps succeeded")


COMMANDS = [demo_cmd]
