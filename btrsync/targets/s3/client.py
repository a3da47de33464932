"""The S3 clients of a target (botocore's, as boto3 makes them), built for Backblaze B2's rules.

Made from a botocore session directly: boto3 adds only its managed transfers and resources,
which btrsync does not use, and importing it (with s3transfer) cost every S3 command ~50 ms of
start-up.

No flexible checksums (``when_required``): B2 answers 400 to any ``x-amz-checksum-*`` or
``x-amz-sdk-checksum-algorithm`` header, which botocore >= 1.36 sends by default.  botocore's own
retries are off: btrsync's retry layer is the only one that loops.
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
import threading
from collections.abc import Callable
from typing import Any

import botocore.session
from botocore.config import Config
from botocore.exceptions import ProfileNotFound

from btrsync import __version__
from btrsync.errors import ConfigError
from btrsync.targets.s3.credentials import read_credentials_file, shared_credentials
from btrsync.targets.s3.settings import S3Settings

_B2_ENDPOINT_RE = re.compile(r"^https?://s3\.([a-z0-9-]+)\.backblazeb2\.com/?$", re.IGNORECASE)


def redact_url(url: str | None) -> str:
    """An endpoint URL without any ``user:password@`` part."""
    return re.sub(r"//[^/@]*@", "//", url) if url else "the default AWS endpoint"


def region_from_endpoint(endpoint: str | None) -> str | None:
    """``us-west-004`` for ``https://s3.us-west-004.backblazeb2.com`` (B2 signs with it)."""
    match = _B2_ENDPOINT_RE.match(endpoint or "")
    return match.group(1).lower() if match else None



def make_client(settings: S3Settings) -> Any:
    """A botocore S3 client fit for B2: no flexible checksums, no botocore retries."""
    return make_clients(settings)[0]


def make_clients(settings: S3Settings) -> tuple[Any, Callable[[], Any]]:
    """Such a client with the settings' socket timeouts, and how to make one more from the same
    session (the credentials read once) with those of ``settings.cleanup_settings()``: that one
    is needed only in an outage, and each client costs every S3 command ~13 ms of start-up."""
    creds = (
        read_credentials_file(settings.credentials_file, settings.profile)
        if settings.credentials_file
        else shared_credentials(settings.profile)
    )
    try:
        # always explicit: botocore's own chain would take secrets from the environment, run a
        # credential_process or ask instance metadata
        session = _botocore_session()
        if settings.profile and not settings.credentials_file:
            # the profile's settings (region) from ~/.aws/config, when the credentials came from it
            session.set_config_variable("profile", settings.profile)
        session.set_credentials(creds.key_id, creds.secret, creds.session_token)  # (both always there)
        session_region = session.get_config_variable("region")
    except ProfileNotFound as exc:  # the setting's, or AWS_PROFILE's
        missing = exc.kwargs.get("profile", settings.profile)
        raise ConfigError(f"AWS profile {missing!r} not found in the AWS config files") from None
    env_endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    region = (
        settings.region
        or session_region
        or region_from_endpoint(settings.endpoint or env_endpoint)
        or "us-east-1"
    )

    # over plain http botocore hashes every body with SHA-256 for the signature (over https a put
    # with Content-MD5 is sent UNSIGNED-PAYLOAD already): each put carries Content-MD5, which the
    # store checks, and every frame is authenticated end to end (AES-256-GCM under the repository's
    # key), so that hash cost 0.6-4 CPU s per GiB uploaded (SHA-NI or not) for nothing
    plain_http = (settings.endpoint or env_endpoint or "").lower().startswith("http://")
    unsigned = {"payload_signing_enabled": False} if plain_http else {}

    def client(timeouts: S3Settings) -> Any:
        config = Config(
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
            retries={"total_max_attempts": 1, "mode": "standard"},
            connect_timeout=timeouts.connect_timeout,
            read_timeout=timeouts.read_timeout,
            max_pool_connections=max(10, 4 * settings.max_inflight_parts),
            s3={"addressing_style": "path" if settings.endpoint or env_endpoint else "auto", **unsigned},
            signature_version="s3v4",
        )
        made = session.create_client("s3", endpoint_url=settings.endpoint, region_name=region, config=config)
        for operation in MD5_OPERATIONS:
            made.meta.events.register(f"before-sign.s3.{operation}", md5_instead_of_flexible_checksum)
        return made

    return client(settings), lambda: client(settings.cleanup_settings())


# Operations whose model requires a checksum: botocore then sends a CRC32 even "when_required",
# which B2 refuses (400); they get Content-MD5 of the body instead, as S3 has always accepted.
MD5_OPERATIONS = ("PutObjectRetention",)
_FLEXIBLE_CHECKSUM_HEADERS = ("x-amz-checksum-", "x-amz-sdk-checksum-algorithm")


def md5_instead_of_flexible_checksum(request: Any, **_: Any) -> None:
    """A ``before-sign`` hook: drop the flexible checksum headers, set ``Content-MD5``."""
    for name in list(request.headers.keys()):
        if name.lower().startswith(_FLEXIBLE_CHECKSUM_HEADERS):
            del request.headers[name]
    body = request.body or b""
    if isinstance(body, str):
        body = body.encode()
    if isinstance(body, bytes | bytearray):
        request.headers["Content-MD5"] = base64.b64encode(hashlib.md5(body, usedforsecurity=False).digest()).decode()


_LOADER_LOCK = threading.Lock()
_LOADER: list[Any] = []


def _botocore_session() -> Any:
    """A new botocore session sharing one model loader, which halves the cost of a client."""
    session = botocore.session.get_session()
    session.user_agent_extra = f"btrsync/{__version__}"
    with _LOADER_LOCK:
        if not _LOADER:
            _LOADER.append(session.get_component("data_loader"))
    session.register_component("data_loader", _LOADER[0])
    return session
