"""Target URLs to target objects: the one place where targets are constructed and wrapped."""

from __future__ import annotations

from typing import Any

from btrsync.targets.base import Target
from btrsync.targets.url import parse_url


def open_target(url: str, settings: Any = None) -> Target:
    """Build the target for ``url`` (``settings`` carries per-target configuration)."""
    parsed = parse_url(url)
    if parsed.scheme == "file":
        from btrsync.targets.local import LocalTarget

        return LocalTarget(parsed.path)
    if parsed.scheme == "s3":
        from btrsync.targets.retry import RetryingTarget
        from btrsync.targets.s3.target import S3Target

        # S3Target resends single parts inside put(); the wrapper retries whole reads, lists, deletes
        return RetryingTarget(S3Target.from_url(parsed, settings or {}))
    from btrsync.targets.retry import RetryingTarget
    from btrsync.targets.ssh.target import SshTarget

    # SshTarget retries its own rsync transfers inside put(); the wrapper retries the other verbs
    return RetryingTarget(SshTarget.from_url(parsed, settings or {}))
