"""The settings of an ssh target: each one read by a function that refuses a name not listed in
:data:`btrsync.targets.settings.SSH` (what ``config check`` accepts), and the remote root.
"""

from __future__ import annotations

import os
import posixpath
from collections.abc import Mapping
from typing import Any

from btrsync.errors import ConfigError, UsageError
from btrsync.targets.safety import refuse_system_dir
from btrsync.targets.settings import SSH
from btrsync.targets.ssh.connection import SshConfig

HOST_KEY_VALUES = ("yes", "accept-new", "no")


def _listed(name: str) -> str:
    """``name``, which must be in btrsync.targets.settings.SSH (what config check accepts)."""
    if name not in SSH:
        raise AssertionError(f"ssh target setting {name!r} is read but not listed in btrsync/targets/settings.py")
    return name


def setting_str(settings: Mapping[str, Any], name: str) -> str | None:
    """A string setting, or ``None`` when unset; ``ConfigError`` for other types."""
    value = settings.get(_listed(name))
    if value is None or isinstance(value, str):
        return value or None
    raise ConfigError(f"ssh target setting {name!r} must be a string, not {type(value).__name__}")


def setting_path(settings: Mapping[str, Any], name: str) -> str | None:
    """A path setting with ``~`` expanded."""
    value = settings.get(_listed(name))
    if isinstance(value, os.PathLike):
        value = os.fspath(value)
    text = setting_str({name: value}, name)
    return os.path.expanduser(text) if text else None


def setting_int(settings: Mapping[str, Any], name: str, default: int | None = None) -> int | None:
    """A positive integer setting."""
    value = settings.get(_listed(name), default)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ConfigError(f"ssh target setting {name!r} must be a positive integer, not {value!r}")
    return value


def setting_strings(settings: Mapping[str, Any], name: str) -> tuple[str, ...]:
    """A list-of-strings setting (each one a single argument, never split on spaces)."""
    value = settings.get(_listed(name)) or ()
    if isinstance(value, str) or not all(isinstance(v, str) and "\n" not in v for v in value):
        raise ConfigError(f"ssh target setting {name!r} must be a list of strings")
    return tuple(value)


def host_key_checking(settings: Mapping[str, Any]) -> str:
    """``strict_host_key_checking``: ``yes`` (default), ``accept-new`` or ``no`` (true = yes)."""
    value = settings.get(_listed("strict_host_key_checking"), "yes")
    if isinstance(value, bool):
        value = "yes" if value else "no"
    if value not in HOST_KEY_VALUES:
        raise ConfigError(
            "ssh target setting 'strict_host_key_checking' must be one of "
            + ", ".join(HOST_KEY_VALUES)
        )
    return str(value)


def config_from_settings(
    host: str, user: str | None, port: int | None, settings: Mapping[str, Any]
) -> SshConfig:
    """The connection part of an ssh target's settings; the URL's user and port win."""
    return SshConfig(
        host=host,
        user=user or setting_str(settings, "user"),
        port=port or setting_int(settings, "port"),
        identity_file=setting_path(settings, "identity_file"),
        known_hosts_file=setting_path(settings, "known_hosts_file"),
        ssh_config=setting_path(settings, "ssh_config"),
        ssh_options=setting_strings(settings, "ssh_options"),
        strict_host_key_checking=host_key_checking(settings),
        connect_timeout=setting_int(settings, "connect_timeout", 30) or 30,
        server_alive_interval=setting_int(settings, "server_alive_interval", 15) or 15,
        control_persist=setting_int(settings, "control_persist", 120) or 120,
    )


def remote_root(url_path: str) -> str:
    """The remote root from a URL path: ``/abs/path``, or ``/~/rel`` for a path under home."""
    if "\0" in url_path or "\n" in url_path:
        raise UsageError("ssh target path must not contain NUL or newline characters")
    if url_path == "/~" or url_path.startswith("/~/"):
        root = url_path[3:].strip("/")
        if root and posixpath.normpath(root) == ".":
            raise UsageError(
                f"refusing ssh target directory {url_path}: it is the remote home directory itself; "
                "use a dedicated directory, e.g. ssh://host/~/backups"
            )
    else:
        root = url_path.rstrip("/")
        if url_path.startswith("/"):
            refuse_system_dir(url_path, "ssh target directory", resolve=False)
    if not root:
        raise UsageError("ssh URL must name a directory: ssh://[user@]host[:port]/path")
    return root



def checked_rsync_options(settings: Mapping[str, Any]) -> tuple[str, ...]:
    """The ``rsync_options`` setting, refusing the options the target itself depends on."""
    options = setting_strings(settings, "rsync_options")
    reserved = ("-e", "--rsh", "--rsync-path", "--partial-dir", "--inplace", "--append")
    for option in options:
        if option.split("=", 1)[0] in reserved:
            raise ConfigError(
                f"rsync option {option!r} is set by the ssh target itself; use the ssh_options "
                "or remote_rsync settings instead"
            )
    return options
