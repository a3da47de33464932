"""S3 settings, credentials, the boto3 client, and the translation of botocore errors.

Everything about *talking* to an S3 endpoint lives here, so that ``s3.py`` holds only the storage
logic (part sizes, multipart uploads, ranged reads).  The client is built for Backblaze B2's rules:
no flexible checksums (``when_required``), botocore's own retries off (btrsync's retry layer is
the only one that loops).  Credentials never appear in a repr, a log line or an exception.
"""

from __future__ import annotations

import configparser
import http.client
import logging
import os
import re
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any

import boto3
import botocore.session
import urllib3.exceptions
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    HTTPClientError,
    IncompleteReadError,
    NoCredentialsError,
    PartialCredentialsError,
    ProfileNotFound,
)
from botocore.exceptions import (
    ConnectionError as BotoConnectionError,
)

from btrsync.errors import BtrsyncError, ConfigError, TargetMissingError
from btrsync.secretfile import looks_like_secret, read_secret_file
from btrsync.targets.errors import (
    NotFound,
    PermissionDenied,
    QuotaExceeded,
    RangeError,
    TargetError,
)
from btrsync.targets.retry import transient
from btrsync.units import parse_size

log = logging.getLogger(__name__)

MIN_PART_SIZE = 5 * 1024 * 1024  # AWS and SeaweedFS: 5 MiB; B2: 5,000,000 bytes
MAX_PART_SIZE = 5_000_000_000  # B2 and AWS: 5 GB
MAX_PARTS = 10_000
MAX_OBJECT_SIZE = 10 * 10**12  # B2's largest file, 10 TB
DEFAULT_PART_SIZE = 16 * 1024 * 1024
# A store that stops answering (a frozen server, a dead route) is noticed after one socket timeout
# and given up on after the deadline: a push fails in minutes, not tens of minutes.  30 s without a
# byte is far beyond what S3 or B2 take to answer a request (a slow CompleteMultipartUpload sends
# whitespace meanwhile).  See docs/targets-s3.md, "Deadlines".
DEFAULT_CONNECT_TIMEOUT = 10.0
DEFAULT_READ_TIMEOUT = 30.0
DEFAULT_OPERATION_DEADLINE = 60.0
DEFAULT_CLEANUP_TIMEOUT = 10.0
MAX_SOCKET_TIMEOUT = 86400.0
GROWTH_START = 5_000  # parts kept at the configured size (5,000 x 16 MiB = 80 GiB)
GROWTH_STEP = 250  # then the part size doubles every this many parts
READ_BLOCK = 1 << 20

B2_CAPABILITIES_HINT = (
    "on Backblaze B2 the application key must be allowed this bucket and have the listBuckets, "
    "listFiles, readFiles, writeFiles and deleteFiles capabilities (see docs/targets-s3.md)"
)
_B2_ENDPOINT_RE = re.compile(r"^https?://s3\.([a-z0-9-]+)\.backblazeb2\.com/?$", re.IGNORECASE)


# -- settings and credentials ------------------------------------------------------------------
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


@dataclass(frozen=True)
class S3Settings:
    """Per-target settings (all optional); unset ones come from the standard AWS env and files."""

    endpoint: str | None = None
    region: str | None = None
    credentials_file: Path | None = None
    profile: str | None = None
    part_size: int = DEFAULT_PART_SIZE
    max_inflight_parts: int = 4
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT
    read_timeout: float = DEFAULT_READ_TIMEOUT
    max_attempts: int = 5
    operation_deadline: float = DEFAULT_OPERATION_DEADLINE
    cleanup_timeout: float = DEFAULT_CLEANUP_TIMEOUT

    @classmethod
    def from_mapping(cls, settings: Mapping[str, Any]) -> S3Settings:
        """Build from a config mapping (``-`` or ``_`` in names); raises ``ConfigError``."""
        given = {str(k).replace("-", "_"): v for k, v in settings.items() if v is not None}
        try:
            made = cls(
                endpoint=_opt_str(given.get("endpoint")),
                region=_opt_str(given.get("region")),
                credentials_file=Path(given["credentials_file"]) if "credentials_file" in given else None,
                profile=_opt_str(given.get("profile")),
                part_size=parse_size(given.get("part_size", DEFAULT_PART_SIZE)),
                max_inflight_parts=int(given.get("max_inflight_parts", 4)),
                connect_timeout=float(given.get("connect_timeout", DEFAULT_CONNECT_TIMEOUT)),
                read_timeout=float(given.get("read_timeout", DEFAULT_READ_TIMEOUT)),
                max_attempts=int(given.get("max_attempts", 5)),
                operation_deadline=float(given.get("operation_deadline", DEFAULT_OPERATION_DEADLINE)),
                cleanup_timeout=float(given.get("cleanup_timeout", DEFAULT_CLEANUP_TIMEOUT)),
            )
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"invalid S3 target setting: {exc}") from None
        made.check()
        return made

    def check(self) -> None:
        """Raise ``ConfigError`` for values S3 or B2 would refuse."""
        if not MIN_PART_SIZE <= self.part_size <= MAX_PART_SIZE:
            raise ConfigError(
                f"S3 part_size {self.part_size} must be between {MIN_PART_SIZE} (5 MiB) and "
                f"{MAX_PART_SIZE} bytes"
            )
        if self.max_inflight_parts < 1 or self.max_attempts < 1:
            raise ConfigError("S3 max_inflight_parts and max_attempts must be at least 1")
        timeouts = (self.connect_timeout, self.read_timeout, self.operation_deadline, self.cleanup_timeout)
        if not all(0 < t < float("inf") for t in timeouts):
            raise ConfigError("S3 connect_timeout, read_timeout, operation_deadline and cleanup_timeout "
                              "must be positive numbers of seconds")
        # a socket cannot take a timeout past ~292 years (it failed every request, retried as a
        # network error); more than a day of silence is never what is meant
        if max(self.connect_timeout, self.read_timeout, self.cleanup_timeout) > MAX_SOCKET_TIMEOUT:
            raise ConfigError(f"S3 connect_timeout, read_timeout and cleanup_timeout are socket timeouts: at "
                              f"most {MAX_SOCKET_TIMEOUT:.0f} seconds (a day)")

    def cleanup_settings(self) -> S3Settings:
        """These settings with socket timeouts of at most ``cleanup_timeout``: for the requests
        made after one has given up (aborting the upload, removing the lease)."""
        return replace(self, connect_timeout=min(self.connect_timeout, self.cleanup_timeout),
                       read_timeout=min(self.read_timeout, self.cleanup_timeout))


def _opt_str(value: Any) -> str | None:
    return str(value) if value not in (None, "") else None


def _redact_url(url: str | None) -> str:
    """An endpoint URL without any ``user:password@`` part."""
    return re.sub(r"//[^/@]*@", "//", url) if url else "the default AWS endpoint"


def region_from_endpoint(endpoint: str | None) -> str | None:
    """``us-west-004`` for ``https://s3.us-west-004.backblazeb2.com`` (B2 signs with it)."""
    match = _B2_ENDPOINT_RE.match(endpoint or "")
    return match.group(1).lower() if match else None


_SECRET_VARIABLES = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN")


def _shared_credentials(profile: str | None) -> S3Credentials:
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


def make_client(settings: S3Settings) -> Any:
    """A botocore S3 client fit for B2: no flexible checksums, no botocore retries."""
    return make_clients(settings)[0]


def make_clients(settings: S3Settings) -> tuple[Any, Any]:
    """Two such clients from one session (the credentials read once): one with the settings'
    socket timeouts, and one with those of ``settings.cleanup_settings()``."""
    creds = (
        read_credentials_file(settings.credentials_file, settings.profile)
        if settings.credentials_file
        else _shared_credentials(settings.profile)
    )
    try:
        # always explicit: boto3's own chain would take secrets from the environment, run a
        # credential_process or ask instance metadata
        session = boto3.session.Session(
            botocore_session=_botocore_session(),
            aws_access_key_id=creds.key_id,
            aws_secret_access_key=creds.secret,
            aws_session_token=creds.session_token,
            # the profile's settings (region) from ~/.aws/config, when the credentials came from it
            profile_name=settings.profile if not settings.credentials_file else None,
        )
    except ProfileNotFound:
        raise ConfigError(f"AWS profile {settings.profile!r} not found in the AWS config files") from None
    env_endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    region = (
        settings.region
        or session.region_name
        or region_from_endpoint(settings.endpoint or env_endpoint)
        or "us-east-1"
    )

    def client(timeouts: S3Settings) -> Any:
        config = Config(
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
            retries={"total_max_attempts": 1, "mode": "standard"},
            connect_timeout=timeouts.connect_timeout,
            read_timeout=timeouts.read_timeout,
            max_pool_connections=max(10, 4 * settings.max_inflight_parts),
            s3={"addressing_style": "path" if settings.endpoint or env_endpoint else "auto"},
            signature_version="s3v4",
        )
        return session.client("s3", endpoint_url=settings.endpoint, region_name=region, config=config)

    return client(settings), client(settings.cleanup_settings())


_LOADER_LOCK = threading.Lock()
_LOADER: list[Any] = []


def _botocore_session() -> Any:
    """A new botocore session sharing one model loader, which halves the cost of a client."""
    session = botocore.session.get_session()
    with _LOADER_LOCK:
        if not _LOADER:
            _LOADER.append(session.get_component("data_loader"))
    session.register_component("data_loader", _LOADER[0])
    return session


# -- error translation -------------------------------------------------------------------------
_NOT_FOUND_CODES = frozenset("NoSuchKey NotFound 404 NoSuchUpload NoSuchVersion".split())
_DENIED_CODES = frozenset(
    "AccessDenied 403 InvalidAccessKeyId SignatureDoesNotMatch AllAccessDisabled Forbidden "
    "Unauthorized unauthorized".split()
)
_QUOTA_CODES = frozenset("QuotaExceeded cap_exceeded StorageQuotaExceeded".split())
_TRANSIENT_CODES = frozenset(
    "SlowDown RequestTimeout RequestTimeoutException Throttling ThrottlingException "
    "RequestLimitExceeded TooManyRequests InternalError ServiceUnavailable BadDigest".split()
)
_NETWORK_ERRORS = (urllib3.exceptions.HTTPError, http.client.HTTPException, OSError)
_CONNECTION_ERRORS = (BotoConnectionError, HTTPClientError, IncompleteReadError, *_NETWORK_ERRORS)
_STREAM_ERRORS = (BotoCoreError, *_NETWORK_ERRORS)


def translate_client_error(exc: ClientError, what: str) -> BtrsyncError:
    """The btrsync error for an S3 error answer (``what`` names the operation and object)."""
    error = exc.response.get("Error", {})
    meta = exc.response.get("ResponseMetadata", {})
    code, status = str(error.get("Code", "")), int(meta.get("HTTPStatusCode") or 0)
    message = str(error.get("Message", ""))[:300]
    detail = f"{what}: {code or status} {message}".rstrip()
    if code in _QUOTA_CODES or "cap exceeded" in message.lower() or "cap_exceeded" in message:
        return QuotaExceeded(f"{detail} (raise the account's caps or free space, then run again)")
    if code == "NoSuchBucket":
        return TargetMissingError(f"{detail} (create the bucket or fix the target URL)")
    if status == 416 or code == "InvalidRange":
        return RangeError(detail)
    if status == 404 or code in _NOT_FOUND_CODES:
        return NotFound(detail)
    if status == 403 or code in _DENIED_CODES:
        return PermissionDenied(f"{detail} (check the key id and secret; {B2_CAPABILITIES_HINT})")
    if code != "NotImplemented" and (status == 429 or status >= 500 or code in _TRANSIENT_CODES):
        return transient(detail, _retry_after(meta.get("HTTPHeaders", {})))
    return TargetError(detail)


def translate(exc: Exception, what: str) -> BtrsyncError:
    """The btrsync error for any exception botocore, urllib3 or the socket layer raises."""
    if isinstance(exc, ClientError):
        return translate_client_error(exc, what)
    if isinstance(exc, (NoCredentialsError, PartialCredentialsError)):
        return PermissionDenied(
            f"{what}: no complete S3 credentials found: set credentials_file in the target's settings"
        )
    if isinstance(exc, _CONNECTION_ERRORS):
        return transient(f"{what}: {type(exc).__name__}: {exc}")
    return TargetError(f"{what}: {type(exc).__name__}: {exc}")


def _retry_after(headers: Mapping[str, str]) -> float | None:
    """Seconds from a ``Retry-After`` header (a number or an HTTP date), if there is one."""
    value = headers.get("retry-after") or headers.get("Retry-After")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, (when - datetime.now(when.tzinfo)).total_seconds())


# -- the target --------------------------------------------------------------------------------
