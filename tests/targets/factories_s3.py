"""S3 target factories for the conformance suite.

* ``s3``: straight to a SeaweedFS server on 127.0.0.1 (``tests/support/s3server.py``);
* ``s3-b2rules``: the same server behind the B2-rules proxy (``tests/support/b2proxy.py``);
* ``s3-env``: a real bucket (for example on Backblaze B2) named by ``BTRSYNC_TEST_S3_URL``,
  ``BTRSYNC_TEST_S3_ENDPOINT`` and ``BTRSYNC_TEST_S3_CREDENTIALS_FILE`` (optionally
  ``BTRSYNC_TEST_S3_REGION``); skipped with the reason when they are unset.

Every test gets a fresh prefix.  The ``BTRSYNC_TEST_S3_*`` variables are read when this module is
imported, because the project-wide ``_clean_btrsync_env`` fixture removes ``BTRSYNC_*`` variables
before each test runs.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from btrsync.targets.base import Target
from btrsync.targets.registry import open_target
from btrsync.targets.retry import RetryPolicy
from btrsync.targets.s3.parts import MIN_PART_SIZE
from btrsync.targets.s3.settings import S3Settings
from btrsync.targets.s3.target import S3Target
from tests.support.b2proxy import B2_MIN_PART_SIZE, B2RulesProxy
from tests.support.s3server import SeaweedServer, session_server

TEST_BUCKET = "btrsync-test"
TEST_PART_SIZE = MIN_PART_SIZE
ENV_NAMES = ("BTRSYNC_TEST_S3_URL", "BTRSYNC_TEST_S3_ENDPOINT", "BTRSYNC_TEST_S3_CREDENTIALS_FILE")
ENV = {name: os.environ.get(name, "") for name in (*ENV_NAMES, "BTRSYNC_TEST_S3_REGION")}

_BUCKET_KEY = pytest.StashKey[str]()
_PROXY_KEY = pytest.StashKey[B2RulesProxy]()


def unique_prefix() -> str:
    return f"t/{uuid.uuid4().hex[:16]}"


def no_sleep_policy(attempts: int = 5, sleeps: list[float] | None = None) -> RetryPolicy:
    """A retry policy whose waits are recorded in ``sleeps`` instead of slept."""
    record = sleeps if sleeps is not None else []
    return RetryPolicy(attempts=attempts, sleep=record.append)


def silent_store_bounds(settings: dict[str, Any]) -> tuple[float, float, float]:
    """For S3 ``settings`` with explicit timeouts: the seconds one request, one operation (all its
    retries) and one clean-up request may take against a store that answers nothing, as
    docs/targets-s3.md ("Deadlines") gives them.  Computed here from the numbers, not by the code
    under test."""
    connect, read = float(settings["connect_timeout"]), float(settings["read_timeout"])
    deadline, cleanup = float(settings["operation_deadline"]), float(settings["cleanup_timeout"])
    request = connect + max(connect, read)
    quick = min(connect, cleanup) + max(min(connect, cleanup), min(read, cleanup))
    return request, request + deadline + request, quick


def seaweed(request: pytest.FixtureRequest) -> SeaweedServer:
    """The session's SeaweedFS server, with the shared test bucket created."""
    server = session_server(request)
    if _BUCKET_KEY not in request.config.stash:
        request.config.stash[_BUCKET_KEY] = server.create_bucket(TEST_BUCKET)
    return server


def b2_proxy(request: pytest.FixtureRequest) -> B2RulesProxy:
    """The session's B2-rules proxy in front of SeaweedFS, started on first use."""
    stash = request.config.stash
    if _PROXY_KEY not in stash:
        proxy = B2RulesProxy(seaweed(request).ports["s3"]).start()
        request.config.add_cleanup(proxy.stop)
        stash[_PROXY_KEY] = proxy
    return stash[_PROXY_KEY]


def fresh_b2_proxy(request: pytest.FixtureRequest) -> B2RulesProxy:
    """The session's proxy with faults, records and delays cleared and B2's part minimum."""
    proxy = b2_proxy(request)
    proxy.reset()
    proxy.min_part_size = B2_MIN_PART_SIZE
    return proxy


def seaweed_settings(
    request: pytest.FixtureRequest, tmp_path: Path, *, via_proxy: bool = False, **extra: Any
) -> dict[str, Any]:
    """Target settings for the session's server (or its proxy), credentials in a file."""
    server = seaweed(request)
    endpoint = b2_proxy(request).endpoint if via_proxy else server.account.endpoint
    creds = server.account.write_credentials_file(tmp_path / f"s3-credentials-{uuid.uuid4().hex[:6]}")
    return {
        "endpoint": endpoint,
        "region": server.account.region,
        "credentials_file": str(creds),
        "part_size": TEST_PART_SIZE,
        **extra,
    }


def seaweed_target(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    *,
    via_proxy: bool = False,
    bucket: str = TEST_BUCKET,
    prefix: str | None = None,
    policy: RetryPolicy | None = None,
    **extra: Any,
) -> S3Target:
    """An S3Target on a fresh prefix of ``bucket`` at SeaweedFS (or behind the proxy)."""
    settings = S3Settings.from_mapping(seaweed_settings(request, tmp_path, via_proxy=via_proxy, **extra))
    return S3Target(
        bucket, unique_prefix() if prefix is None else prefix, settings, policy or no_sleep_policy()
    )


def make_s3(tmp_path: Path, request: pytest.FixtureRequest) -> Target:
    settings = seaweed_settings(request, tmp_path)
    return open_target(f"s3://{TEST_BUCKET}/{unique_prefix()}", settings)


def make_s3_b2rules(tmp_path: Path, request: pytest.FixtureRequest) -> Target:
    fresh_b2_proxy(request)
    settings = seaweed_settings(request, tmp_path, via_proxy=True)
    return open_target(f"s3://{TEST_BUCKET}/{unique_prefix()}", settings)


def env_settings() -> dict[str, Any]:
    """Settings for the real bucket named by the BTRSYNC_TEST_S3_* variables (skip if unset)."""
    missing = [name for name in ENV_NAMES if not ENV[name]]
    if missing:
        pytest.skip(
            f"{', '.join(missing)} not set: the s3-env target runs the suite against a real "
            "bucket (see docs/targets-s3.md)"
        )
    settings = {
        "endpoint": ENV["BTRSYNC_TEST_S3_ENDPOINT"],
        "credentials_file": ENV["BTRSYNC_TEST_S3_CREDENTIALS_FILE"],
        "part_size": TEST_PART_SIZE,
    }
    if ENV["BTRSYNC_TEST_S3_REGION"]:
        settings["region"] = ENV["BTRSYNC_TEST_S3_REGION"]
    return settings


def make_s3_env(tmp_path: Path, request: pytest.FixtureRequest) -> Target:
    settings = env_settings()
    base = ENV["BTRSYNC_TEST_S3_URL"].rstrip("/")
    url = f"{base}/btrsync-test/{uuid.uuid4().hex[:16]}"
    request.addfinalizer(lambda: empty_prefix(url, settings))
    return open_target(url, settings)


def empty_prefix(url: str, settings: dict[str, Any]) -> None:
    """Delete every object and unfinished upload under ``url`` (real buckets cost money)."""
    target = open_target(url, settings)
    assert isinstance(target, S3Target)
    try:
        for upload in target.list_uploads():
            target.abort_upload(upload.key, upload.upload_id)
        for info in target.list():
            target.delete(info.key)
    finally:
        target.close()


FACTORIES: dict[str, Callable[[Path, pytest.FixtureRequest], Target]] = {
    "s3": make_s3,
    "s3-b2rules": make_s3_b2rules,
    "s3-env": make_s3_env,
}
