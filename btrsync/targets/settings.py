"""The settings of a ``[targets.NAME]`` table, per kind of target: the one list of what is read.

``btrsync config check`` (every command that reads the configuration) refuses any other key, with
a did-you-mean hint: a misspelt ``qouta`` or ``credentails_file`` was silently ignored before, and
an S3 target then looked for credentials elsewhere.  This module imports nothing, so that reading
the configuration never imports botocore; the target modules keep to these lists:
``S3Settings`` has exactly the fields of :data:`S3` (a test compares them), and the ssh setting
readers (``btrsync.targets.ssh.settings.setting_*``) refuse a name that is not in :data:`SSH`.
Names may be written with ``-`` or ``_``.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from typing import Any

# read for every kind: the configuration (url), capacity (quota), the push's backup tree, and
# 'systemd generate' (initialize: 'btrsync init --if-empty' before each run of a job's unit)
COMMON = ("url", "quota", "chain", "full_threshold", "initialize")
FILE: tuple[str, ...] = ()
# btrsync.targets.s3.settings.S3Settings
S3 = ("endpoint", "region", "credentials_file", "profile", "part_size", "max_inflight_parts", "connect_timeout",
      "read_timeout", "max_attempts", "operation_deadline", "cleanup_timeout", "object_lock", "object_lock_margin")
# btrsync.targets.ssh.settings.config_from_settings and btrsync.targets.ssh.target.SshTarget.from_url
SSH = ("user", "port", "identity_file", "known_hosts_file", "ssh_config", "ssh_options", "strict_host_key_checking",
       "connect_timeout", "server_alive_interval", "control_persist", "spool_dir", "rsync_options", "io_timeout",
       "remote_rsync", "max_attempts")
KINDS: dict[str, tuple[str, ...]] = {"file": FILE, "s3": S3, "ssh": SSH}


def known(kind: str) -> tuple[str, ...]:
    """Every setting a target of ``kind`` (file, s3, ssh) reads."""
    return COMMON + KINDS[kind]


def kind_of(url: str) -> str | None:
    scheme = url.split("://", 1)[0].lower() if "://" in url else ""
    return scheme if scheme in KINDS else None


def unknown_settings(url: str, settings: Mapping[str, Any]) -> list[str]:
    """One line per key of ``settings`` a target at ``url`` does not read, or reads but cannot take
    ('KEY: why'); none for a URL of an unknown kind (opening it says what is wrong)."""
    kind = kind_of(url)
    if kind is None:
        return []
    names = known(kind)
    problems = []
    for key in settings:
        name = str(key).replace("-", "_")
        if name in names:
            if (why := _bad_value(name, settings[key])) is not None:
                problems.append(f"{key}: {why}")
            continue
        hint = difflib.get_close_matches(name, names, n=1)
        others = [k for k, v in KINDS.items() if name in v]
        why = "unknown setting"
        if others:
            why += f" of {kind} targets (it is one of {' and '.join(others)} targets)"
        elif hint:
            why += f" (did you mean {hint[0]!r}?)"
        problems.append(f"{key}: {why}; {kind} targets read {', '.join(names)}")
    return problems


#: the values of S3 Object Lock (btrsync.targets.s3.objectlock.MODES; docs/immutable.md)
OBJECT_LOCK_MODES = ("governance", "compliance")


def _bad_value(name: str, value: Any) -> str | None:
    """Why ``value`` cannot be the value of setting ``name`` (checked here: ``object_lock``, whose
    typo must not leave a bucket unlocked), or ``None``."""
    if name == "object_lock" and not (isinstance(value, str) and value.lower() in OBJECT_LOCK_MODES):
        return f"must be \"governance\" or \"compliance\", not {value!r} (see docs/immutable.md)"
    return None
