"""Errors raised by targets, classified where the knowledge is: permanent or transient.

Each target translates its SDK's or subprocess's failures into these types at its own boundary; only
the retry wrapper loops, and only on ``TransientTargetError``.
"""

from __future__ import annotations

from btrsync.errors import BtrsyncError, ExitCode


class TargetError(BtrsyncError):
    """A target operation failed."""


class NotFound(TargetError):
    """The object does not exist on the target."""


class PermissionDenied(TargetError):
    """The target refused the operation (credentials, capabilities, file modes)."""


class QuotaExceeded(TargetError):
    """The target is full or over its quota; nothing was left half-written."""


class RangeError(TargetError):
    """A read asked for bytes past the end of an object."""


class InvalidKey(TargetError):
    """An object key is not acceptable (checked before any I/O)."""

    exit_code = ExitCode.USAGE


class TransientTargetError(TargetError):
    """A timeout, throttling answer, 5xx or reset connection: retrying may succeed."""


class ObjectLocked(TargetError):
    """The object is under a retention lock (S3 Object Lock) that has not expired; nothing was
    changed.  ``until`` is the retain-until date the store holds (aware UTC), ``mode`` its mode."""

    def __init__(self, message: str, until: object = None, mode: str | None = None) -> None:
        super().__init__(message)
        self.until = until
        self.mode = mode
