"""botocore, urllib3 and socket errors to btrsync errors: none of them leaves the S3 package.

``what`` names the operation and the object; a message never carries a credential.
"""

from __future__ import annotations

import http.client
from collections.abc import Mapping
from datetime import datetime
from email.utils import parsedate_to_datetime

import urllib3.exceptions
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    HTTPClientError,
    IncompleteReadError,
    NoCredentialsError,
    PartialCredentialsError,
)
from botocore.exceptions import (
    ConnectionError as BotoConnectionError,
)

from btrsync.errors import BtrsyncError, TargetMissingError
from btrsync.targets.errors import (
    NotFound,
    PermissionDenied,
    QuotaExceeded,
    RangeError,
    TargetError,
)
from btrsync.targets.retry import transient

B2_CAPABILITIES_HINT = (
    "on Backblaze B2 the application key must be allowed this bucket and have the listBuckets, "
    "listFiles, readFiles, writeFiles and deleteFiles capabilities (see docs/targets-s3.md)"
)

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
STREAM_ERRORS = (BotoCoreError, *_NETWORK_ERRORS)


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
