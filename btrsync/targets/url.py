"""Target URLs: ``file:///path``, ``s3://BUCKET/PREFIX``, ``ssh://[user@]host[:port]/path``.

Parsed and checked here (system directories refused as roots) for the registry, which builds
targets from them, and for the targets that take a parsed URL (``SshTarget.from_url``,
``S3Target.from_url``).
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

from btrsync.errors import UsageError
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
