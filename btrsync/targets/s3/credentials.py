"""S3 access keys, read only from files: a credentials file or the AWS shared credentials file.

Credentials never appear in a repr, a log line or an exception; secrets in the environment are
refused (they reach every child process).
"""

from __future__ import annotations

import configparser
import os
from dataclasses import dataclass, field

from btrsync.errors import ConfigError
from btrsync.secretfile import looks_like_secret, read_secret_file


@dataclass(frozen=True)
class S3Credentials:
    """An access key; the secret never appears in ``repr``."""

    key_id: str
    secret: str = field(repr=False)
    session_token: str | None = field(default=None, repr=False)


CREDENTIALS_FILE_LIMIT = 64 * 1024  # a few lines; a larger file is refused unread
_CREDENTIALS_NOT_A_PATH = (
    "the S3 credentials_file setting is not a path (it looks like a secret: it was not printed; "
    "put the key id and the secret in a file and set credentials_file to the file's path)"
)

# Accepted names (lower-cased) for the key id and the secret in a credentials file.
_KEY_ID_NAMES = "aws_access_key_id key_id keyid application_key_id applicationkeyid".split()
_SECRET_NAMES = "aws_secret_access_key application_key applicationkey secret_access_key".split()


def read_credentials_file(path: str | os.PathLike[str], profile: str | None = None) -> S3Credentials:
    """Read an access key from an AWS-style INI file or a ``key_id=``/``application_key=`` file.

    INI files (``[profile]`` sections with ``aws_access_key_id`` and ``aws_secret_access_key``) use
    section ``profile`` or ``default``.  Simple files hold ``name=value`` lines, where the key id
    may be named ``key_id``, ``keyID``, ``application_key_id`` or ``AWS_ACCESS_KEY_ID`` and the
    secret ``application_key``, ``applicationKey`` or ``AWS_SECRET_ACCESS_KEY`` (``export``
    prefixes, quotes and ``#`` comments are allowed, so a shell environment file works too).  The
    file is read like a key file (:func:`btrsync.secretfile.read_secret_file`: no links, owned by
    the caller or root, no group or other access, at most 64 KiB).  Raises ``ConfigError``;
    messages name the file and the expected names, never the values.
    """
    path = os.fspath(path)  # as given: Path() would drop a leading ./ that marks it as a path
    data = read_secret_file(
        path,
        what="S3 credentials file",
        limit=CREDENTIALS_FILE_LIMIT,
        error=ConfigError,
        not_a_path=_CREDENTIALS_NOT_A_PATH,
    )
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"cannot read S3 credentials file {path}: not UTF-8 text") from None
    is_ini = any(line.strip().startswith("[") for line in text.splitlines())
    values = _ini_values(path, text, profile) if is_ini else _simple_values(text)
    key_id = next((values[n] for n in _KEY_ID_NAMES if values.get(n)), None)
    secret = next((values[n] for n in _SECRET_NAMES if values.get(n)), None)
    if not key_id or not secret:
        raise ConfigError(
            f"S3 credentials file {path} lacks a key id or secret: write 'key_id=...' and "
            "'application_key=...' lines, or an AWS [default] section with aws_access_key_id "
            "and aws_secret_access_key"
        )
    return S3Credentials(key_id, secret, values.get("aws_session_token") or None)


def _ini_values(path: str, text: str, profile: str | None) -> dict[str, str]:
    parser = configparser.RawConfigParser()
    try:
        parser.read_string(text, source=str(path))
    except configparser.Error:
        # configparser's messages quote the offending line, which may hold the secret
        raise ConfigError(f"S3 credentials file {path} is not a valid INI file") from None
    section = profile or "default"
    if not parser.has_section(section):
        # section names are names, but never echo one that looks like a pasted secret
        found = ", ".join("?" if looks_like_secret(s) else s for s in parser.sections()) or "none"
        raise ConfigError(f"S3 credentials file {path} has no [{section}] section (found: {found})")
    return {k.lower(): v.strip() for k, v in parser.items(section)}


def _simple_values(text: str) -> dict[str, str]:
    values: dict[str, str] = {}
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        name, _, value = line.removeprefix("export ").partition("=")
        values[name.strip().lower()] = value.strip().strip("'\"")
    return values



_SECRET_VARIABLES = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN")


def shared_credentials(profile: str | None) -> S3Credentials:
    """Without ``credentials_file``: the AWS shared credentials file (``AWS_SHARED_CREDENTIALS_FILE``,
    else ``~/.aws/credentials``), section ``profile`` (else ``AWS_PROFILE``, else ``default``), read
    with the checks of every secret file.  Secrets in the environment are refused: btrsync takes
    credentials only from files (they reach every child process and ``/proc/PID/environ``)."""
    present = [name for name in _SECRET_VARIABLES if os.environ.get(name)]
    if present:
        raise ConfigError(
            f"{', '.join(present)} set in the environment: btrsync takes S3 credentials only from a file "
            "(the environment reaches every child process); write them to a file, e.g. 'key_id=...' and "
            "'application_key=...' lines, mode 0600, and name it in the target's credentials_file "
            "(a systemd EnvironmentFile with 'export AWS_...' lines works as is)")
    path = os.environ.get("AWS_SHARED_CREDENTIALS_FILE") or os.path.expanduser("~/.aws/credentials")
    if not os.path.lexists(path):
        raise ConfigError(
            "no S3 credentials: set credentials_file in the target's settings (a systemd credential "
            "target-NAME then replaces that file in a unit); see docs/targets-s3.md")
    return read_credentials_file(path, profile or os.environ.get("AWS_PROFILE") or None)
