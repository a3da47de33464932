"""Options every command accepts, before or after the command name (``push ... --key-file F``)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from btrsync.cli.app import App

F = TypeVar("F", bound=Callable[..., Any])


#: libraries whose debug output holds secrets or whole payloads: botocore logs the signed headers
#: (Authorization, X-Amz-Security-Token) and every request body (16 MiB parts); never below WARNING
QUIET_LIBRARIES = ("botocore", "boto3", "s3transfer", "urllib3")


def configure_logging(verbose: int, debug: bool) -> None:
    level = logging.DEBUG if debug or verbose > 1 else logging.INFO if verbose else logging.WARNING
    logging.basicConfig(format="btrsync: %(levelname)s %(message)s", force=True)
    logging.getLogger().setLevel(level)
    for name in QUIET_LIBRARIES:
        logging.getLogger(name).setLevel(logging.WARNING)


def _setter(attr: str) -> Callable[[click.Context, click.Parameter, Any], None]:
    def callback(ctx: click.Context, _param: click.Parameter, value: Any) -> None:
        if value is None or value is False or value == 0:
            return
        app = ctx.find_object(App)
        if app is None:
            return
        if attr == "config_path":
            app.config_path, app.config_explicit = value, True
        else:
            setattr(app, attr, value)
        if attr in ("verbose", "debug"):
            configure_logging(app.verbose, app.debug)

    return callback


def global_options(f: F) -> F:
    """Attach --config, --key-file, --state-dir, -v and --debug to a leaf command."""
    decorators = [
        click.option("--config", type=click.Path(path_type=Path), expose_value=False,
                     callback=_setter("config_path"), help="configuration file"),
        click.option("--key-file", type=click.Path(path_type=Path), expose_value=False,
                     callback=_setter("key_file"), help="file holding the key (never the key itself)"),
        click.option("--state-dir", type=click.Path(path_type=Path), expose_value=False,
                     callback=_setter("state_dir"), help="local state directory"),
        click.option("-v", "--verbose", count=True, expose_value=False, callback=_setter("verbose"),
                     help="more log output"),
        click.option("--debug", is_flag=True, expose_value=False, callback=_setter("debug"),
                     help="tracebacks and debug logs"),
    ]
    for decorate in reversed(decorators):
        f = decorate(f)
    return f
