"""btrsync key generate FILE"""

from __future__ import annotations

from pathlib import Path

import click

from btrsync.cli.options import global_options
from btrsync.crypto.keys import generate_key_file
from btrsync.errors import EXIT_STATUS_HELP


@click.group(epilog=EXIT_STATUS_HELP)
def key() -> None:
    """Manage encryption keys."""


@key.command("generate", epilog=EXIT_STATUS_HELP)
@global_options
@click.argument("file", type=click.Path(path_type=Path))
def generate(file: Path) -> None:
    """Write a new random 256-bit key to FILE (mode 0600); never overwrites.

    Keep a copy off the machine: without the key no backup can be restored.

    \b
    Examples:
      btrsync key generate /root/backup.key
      btrsync key generate /etc/btrsync/key && cp /etc/btrsync/key /mnt/safe/btrsync.key
    """
    k = generate_key_file(file)
    click.echo(f"key written to {file} (key id {k.key_id})", err=True)


COMMANDS = [key]
