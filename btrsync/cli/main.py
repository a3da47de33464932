"""The ``btrsync`` command group: global options, logging, and the one exception -> exit code map."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import click

from btrsync import __version__
from btrsync.catalog.cache import CatalogCache
from btrsync.catalog.repository import Repository
from btrsync.cli.commands import COMMAND_MODULES
from btrsync.cli.options import configure_logging
from btrsync.cli.output import begin_command, emit_json_error
from btrsync.config.credentials import apply_credentials
from btrsync.config.model import DEFAULT_CONFIG, Config, load_config
from btrsync.crypto.keys import MasterKey, load_key_file
from btrsync.errors import EXIT_STATUS_HELP, BtrsyncError, ExitCode, KeyFileError
from btrsync.locking import target_lock
from btrsync.memory import release_large_buffers
from btrsync.signals import Terminated, end_after_cleanup, signals_raise
from btrsync.state import State
from btrsync.targets.base import Target
from btrsync.targets.registry import open_target

log = logging.getLogger("btrsync")


@dataclass
class App:
    """Lazily loaded configuration, key and state shared by every command."""

    config_path: Path | None
    config_explicit: bool
    key_file: Path | None
    state_dir: Path | None
    debug: bool
    verbose: int = 0
    _config: Config | None = field(default=None, repr=False)

    @property
    def config(self) -> Config:
        if self._config is None:
            # under systemd, the unit's credentials (LoadCredential=) replace the targets' secret
            # files for every command: run, verify, list, receive ...
            self._config = apply_credentials(load_config(self.config_path, explicit=self.config_explicit),
                                             os.environ.get("CREDENTIALS_DIRECTORY"))
        return self._config

    def key(self) -> MasterKey:
        path = self.key_file or self.config.key_file
        if path is None:
            raise KeyFileError("no key: pass --key-file FILE, set BTRSYNC_KEY_FILE, or set key_file in "
                               "the configuration (create a key with 'btrsync key generate FILE')")
        return load_key_file(path)

    def state(self) -> State:
        return State(self.state_dir or self.config.state_dir)

    def lock(self, name: str) -> AbstractContextManager[None]:
        """A local lock (exit 11 when another process holds it): per repository, per job."""
        return target_lock(self.state().root, name)

    def target(self, url_or_name: str) -> Target:
        url, settings = self.config.target(url_or_name)
        return open_target(url, settings)

    @contextmanager
    def repository(self, url_or_name: str, *, write: bool = False, lock: bool = False) -> Iterator[Repository]:
        """Open the repository at a target, checked against what this host knows of it.

        Exit 10 when there is none (``btrsync init`` creates one) or when the URL now holds a
        different repository than this host saw there; 12 for a wrong key.  ``write`` refuses
        read-only (format 1) repositories; ``lock`` takes the local lock of the repository (by
        its id, however the URL is spelled), exit 11 when another process holds it.
        """
        with self.target(url_or_name) as target:
            repo = Repository.open(target, self.key())
            self.state().bind(target.display_url, repo.repo_id, repo.info.format)
            repo.cache = CatalogCache.for_repository(self.state().root, repo.repo_id)
            if write:
                repo.require_writable()
            with self.lock(f"repository {repo.repo_id}") if lock else nullcontext():
                yield repo


pass_app = click.make_pass_decorator(App)

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
        click.echo(f"btrsync: {exc.describe()}; cleaned up, run the command again to resume", err=True)
        if as_json:
            emit_json_error(f"{exc.describe()}; cleaned up, run the command again to resume", exc.exit_code,
                            "Terminated")
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
    sys.exit(main(process=True))


def _no_core_dumps() -> None:
    """A core file of btrsync would hold the key (and S3 secrets) in clear."""
    import resource

    try:
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    except (ValueError, OSError) as exc:
        log.debug("core dumps stay enabled: %s", exc)
