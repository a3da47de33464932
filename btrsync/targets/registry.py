"""Target URLs to target objects: the one place where targets are constructed and wrapped."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

from btrsync.errors import UsageError
from btrsync.targets.base import Target
from btrsync.targets.safety import refuse_system_dir


@dataclass(frozen=True, slots=True)
class TargetURL:
    scheme: str
    host: str
    path: str
    user: str | None = None
    port: int | None = None


def parse_url(url: str) -> TargetURL:
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme == "file":
        if parts.netloc not in ("", "localhost"):
            raise UsageError(f"file URL {url!r} must look like file:///absolute/path")
        path = unquote(parts.path)
        if not path.startswith("/"):
            raise UsageError(f"file URL {url!r} must name an absolute path")
        refuse_system_dir(path, "target directory")
        return TargetURL("file", "", path.rstrip("/") or "/")
    if scheme == "s3":
        if not parts.hostname:
            raise UsageError(f"S3 URL {url!r} must look like s3://BUCKET/PREFIX")
        return TargetURL("s3", parts.netloc, unquote(parts.path).strip("/"))
    if scheme == "ssh":
        if not parts.hostname:
            raise UsageError(f"ssh URL {url!r} must look like ssh://[user@]host[:port]/path")
        path = unquote(parts.path)
        if path.startswith("/") and not is_home_relative(path):
            refuse_system_dir(path, f"ssh target directory on {parts.hostname}", resolve=False)
        return TargetURL("ssh", parts.hostname, path, parts.username, parts.port)
    raise UsageError(f"unsupported target URL {url!r}: use file:///path, s3://BUCKET/PREFIX or ssh://host/path")


def is_home_relative(url_path: str) -> bool:
    """``ssh://host/~/dir`` names ``dir`` under the remote user's home directory."""
    return url_path == "/~" or url_path.startswith("/~/")


def open_target(url: str, settings: Any = None) -> Target:
    """Build the target for ``url`` (``settings`` carries per-target configuration)."""
    parsed = parse_url(url)
    if parsed.scheme == "file":
        from btrsync.targets.local import LocalTarget

        return LocalTarget(parsed.path)
    if parsed.scheme == "s3":
        from btrsync.targets.retry import RetryingTarget
        from btrsync.targets.s3 import S3Target

        # S3Target resends single parts inside put(); the wrapper retries whole reads, lists, deletes
        return RetryingTarget(S3Target.from_url(parsed, settings or {}))
    from btrsync.targets.retry import RetryingTarget
    from btrsync.targets.ssh import SshTarget

    # SshTarget retries its own rsync transfers inside put(); the wrapper retries the other verbs
    return RetryingTarget(SshTarget.from_url(parsed, settings or {}))
