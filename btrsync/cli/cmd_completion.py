"""btrsync completion bash|zsh|fish"""

from __future__ import annotations

import click
from click.shell_completion import get_completion_class

from btrsync.cli.options import global_options
from btrsync.errors import EXIT_STATUS_HELP

SHELLS = ("bash", "zsh", "fish")
COMPLETE_VAR = "_BTRSYNC_COMPLETE"


@click.command("completion", epilog=EXIT_STATUS_HELP)
@global_options
@click.argument("shell", type=click.Choice(SHELLS))
@click.pass_context
def completion(ctx: click.Context, shell: str) -> None:
    """Print the shell completion script for SHELL.

    Commands, options, paths, and btrsync's own names complete: configured target and job
    names, and the backup ids, snapshot names and SUBVOL@latest of a target as this host last
    recorded them (its state directory; a target is never contacted while you type).

    Install it where the shell looks (docs/completion.md; the Nix package installs all three).

    \b
    Examples:
      btrsync completion bash > /usr/share/bash-completion/completions/btrsync
      btrsync completion zsh > /usr/local/share/zsh/site-functions/_btrsync
      btrsync completion fish > /usr/share/fish/vendor_completions.d/btrsync.fish
      eval "$(btrsync completion bash)"     # this bash session only
    """
    root = ctx.find_root()
    cls = get_completion_class(shell)
    assert cls is not None  # click ships all three
    click.echo(cls(root.command, {}, "btrsync", COMPLETE_VAR).source())


COMMANDS = [completion]
