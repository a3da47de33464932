"""The ``btrsync`` command group: global options, logging, and the one exception -> exit code map."""

from __future__ import annotations

import atexit
import logging
import os
import sys
import threading
from pathlib import Path

import click

from btrsync import __version__
from btrsync.cli.app import App
from btrsync.cli.commands import COMMAND_MODULES
from btrsync.cli.completion import attach as attach_completers  # light: its readers import lazily
from btrsync.cli.options import configure_logging
from btrsync.cli.output import begin_command, emit_json_error
from btrsync.config.model import DEFAULT_CONFIG
from btrsync.errors import EXIT_STATUS_HELP, BtrsyncError, ExitCode
from btrsync.memory import release_large_buffers
from btrsync.signals import Terminated, end_after_cleanup, signals_raise

log = logging.getLogger("btrsync")

SIGNAL_EXITS = frozenset({ExitCode.HANGUP, ExitCode.INTERRUPTED, ExitCode.TERMINATED})


class _LazyGroup(click.Group):
    """Imports a command's modules (``btrsync.cli.commands``) when the command is asked for."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(self.commands) | set(COMMAND_MODULES))

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in self.commands and cmd_name in COMMAND_MODULES:
            _load(*COMMAND_MODULES[cmd_name])
        return self.commands.get(cmd_name)


@click.group(cls=_LazyGroup, epilog=EXIT_STATUS_HELP, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="btrsync")
@click.option("--config", "config_path", type=click.Path(path_type=Path), envvar="BTRSYNC_CONFIG",
              help=f"configuration file [default: {DEFAULT_CONFIG}; env BTRSYNC_CONFIG]")
@click.option("--key-file", type=click.Path(path_type=Path), envvar="BTRSYNC_KEY_FILE",
              help="file holding the 256-bit key (env BTRSYNC_KEY_FILE); never the key itself")
@click.option("--state-dir", type=click.Path(path_type=Path), envvar="BTRSYNC_STATE_DIR",
              help="local state directory [default: /var/lib/btrsync]")
@click.option("-v", "--verbose", count=True, help="more log output (-vv for debug)")
@click.option("--debug", is_flag=True, help="show tracebacks and debug logs")
@click.pass_context
def cli(ctx: click.Context, config_path: Path | None, key_file: Path | None, state_dir: Path | None,
        verbose: int, debug: bool) -> None:
    """btrfs send/receive replication: snapshots, encrypted pushes, verified restores."""
    configure_logging(verbose, debug)
    explicit = config_path is not None
    ctx.obj = App(config_path or DEFAULT_CONFIG, explicit, key_file, state_dir, debug, verbose)


def _load(*modules: str) -> None:
    """Import ``btrsync.cli.<module>`` for each and add the commands it contributes."""
    import importlib

    for name in modules:
        for command in importlib.import_module(f"btrsync.cli.{name}").COMMANDS:
            if command.name not in cli.commands:
                attach_completers(command)  # backup ids, target and job names (btrsync/cli/completion.py)
                cli.add_command(command)


def _register() -> None:
    """Every ``btrsync/cli/cmd_*.py`` module's ``COMMANDS``, whether the table in
    ``btrsync.cli.commands`` names it or not (the tests compare the two)."""
    import pkgutil

    import btrsync.cli as package

    _load(*(info.name for info in sorted(pkgutil.iter_modules(package.__path__), key=lambda i: i.name)
            if info.name.startswith("cmd_")))


def main(argv: list[str] | None = None, *, process: bool = False) -> int:
    """Run the CLI; every outcome becomes one of the documented exit codes.

    SIGTERM, SIGHUP and SIGINT raise ``Terminated`` in the main thread (``btrsync.signals``), so
    every ``with``/``finally`` cleans up before the exit status 128 + signal number.  ``process``
    (the ``btrsync`` executable): after that cleanup, threads still running get a grace period,
    then the process exits without them.
    """
    with signals_raise():
        code = _main(argv)
        if process and code in SIGNAL_EXITS:
            end_after_cleanup(code)
        return code


def _main(argv: list[str] | None) -> int:
    debug = "--debug" in (argv if argv is not None else sys.argv[1:])
    as_json = "--json" in (argv if argv is not None else sys.argv[1:])  # a failure is JSON on stdout too
    begin_command()
    try:
        cli.main(args=argv, prog_name="btrsync", standalone_mode=False)
        return ExitCode.OK
    except Terminated as exc:
        if debug:
            log.debug("stopped by %s", exc.name, exc_info=True)
        # a command whose signal is its normal end (a mount) notes what it did; a transfer resumes
        after = (getattr(exc, "__notes__", None) or ["cleaned up, run the command again to resume"])[-1]
        click.echo(f"btrsync: {exc.describe()}; {after}", err=True)
        if as_json:
            emit_json_error(f"{exc.describe()}; {after}", exc.exit_code, "Terminated")
        return exc.exit_code
    except BtrsyncError as exc:
        if debug:
            log.exception("failed")
        click.echo(f"btrsync: error: {exc}", err=True)
        if as_json and not getattr(exc, "answered", False):  # status --check printed its one line already
            emit_json_error(str(exc), int(exc.exit_code), type(exc).__name__)
        return int(exc.exit_code)
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except click.ClickException as exc:
        exc.show()
        if as_json:
            emit_json_error(exc.format_message(), ExitCode.USAGE if exc.exit_code == 2 else exc.exit_code,
                            type(exc).__name__)
        return ExitCode.USAGE if exc.exit_code == 2 else exc.exit_code
    except (KeyboardInterrupt, click.Abort):
        click.echo("btrsync: interrupted", err=True)
        if as_json:
            emit_json_error("interrupted", ExitCode.INTERRUPTED, "Interrupted")
        return ExitCode.INTERRUPTED
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return ExitCode.FAILURE
    except OSError as exc:  # the machine, not btrsync: a full or read-only state directory, EIO
        if debug:
            log.exception("failed")
        where = f" ({exc.filename})" if exc.filename else ""
        message = f"{exc.strerror or exc}{where}: a system error; fix it and run the command again"
        click.echo(f"btrsync: error: {message}", err=True)
        if as_json:
            emit_json_error(message, ExitCode.FAILURE, type(exc).__name__)
        return ExitCode.FAILURE


def entry() -> None:
    release_large_buffers()  # the btrsync process: S3 parts are unmapped when freed (btrsync/memory.py)
    _no_core_dumps()
    try:
        code = main(process=True)
    except SystemExit as exc:  # click's shell completion ends with sys.exit
        if not isinstance(exc.code, int | None):
            raise
        code = exc.code or 0
    if code not in SIGNAL_EXITS:  # after a signal, the interpreter's exit and its watchdog (signals.py)
        exit_without_teardown(code)
    sys.exit(code)


def exit_without_teardown(code: int) -> None:
    """End the process as the interpreter would, without its teardown of every module and object:
    that teardown costs a short command ~40 ms and one that loaded boto3 ~100 ms (a push to S3,
    ``status --check`` from a monitor, every completion).  The exit handlers still run (logging's
    flush, the ssh connections' and spools' finalizers) and stdout and stderr are flushed (none
    when started closed: ``>&-``); output that cannot be written is said on stderr and makes a
    success exit 120, as the interpreter does.  Returns (and the interpreter exits as usual,
    joining them) while a thread that is not a daemon is alive."""
    main_thread = threading.main_thread()
    if any(t is not main_thread and not t.daemon and t.is_alive() for t in threading.enumerate()):
        return
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        if stream is None or stream.closed:
            continue
        try:
            stream.flush()
        except (OSError, ValueError) as exc:
            code = code or 120
            if stream is sys.stdout:
                _say_on_stderr(f"btrsync: error: the output could not be written: {exc}")
    os._exit(code)


def _say_on_stderr(line: str) -> None:
    try:
        os.write(2, (line + "\n").encode(errors="replace"))
    except OSError:
        pass


def _no_core_dumps() -> None:
    """A core file of btrsync would hold the key (and S3 secrets) in clear."""
    import resource

    try:
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    except (ValueError, OSError) as exc:
        log.debug("core dumps stay enabled: %s", exc)
