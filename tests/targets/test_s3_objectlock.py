"""S3 Object Lock on a real S3 server that implements it (moto's server mode on 127.0.0.1).

Retention is read back with boto3 from HeadObject's lock headers (moto's server answers
GetObjectRetention with a 500; HeadObject carries the same ``x-amz-object-lock-*`` values).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any

import pytest

from btrsync.errors import ConfigError
from btrsync.targets.errors import ObjectLocked, TargetError
from btrsync.targets.registry import open_target
from btrsync.targets.s3.objectlock import FOREVER_HORIZON, MAX_SKEW
from btrsync.targets.s3.settings import S3Settings
from btrsync.targets.s3.target import S3Target
from tests.support.motoserver import MotoServer, moto_server
from tests.targets.factories_s3 import TEST_BUCKET, no_sleep_policy, seaweed_settings

pytestmark = pytest.mark.remote
PART = 5 * 1024 * 1024
MARGIN = timedelta(days=7)


@pytest.fixture
def moto(request: pytest.FixtureRequest) -> MotoServer:
    return moto_server(request)


def locked_target(moto: MotoServer, tmp_path: Path, mode: str = "compliance", bucket: str | None = None,
                  **extra: Any) -> S3Target:
    settings = S3Settings.from_mapping(moto.settings(tmp_path, object_lock=mode, **extra))
    return S3Target(bucket or moto.create_bucket(locked=True), "repo", settings, no_sleep_policy())


def server_now(moto: MotoServer, bucket: str) -> datetime:
    date = moto.client().list_objects_v2(Bucket=bucket, MaxKeys=1)["ResponseMetadata"]["HTTPHeaders"]["date"]
    return parsedate_to_datetime(date).astimezone(UTC)


def lock_of(moto: MotoServer, bucket: str, key: str) -> tuple[str | None, datetime | None]:
    head = moto.client().head_object(Bucket=bucket, Key=key)
    until = head.get("ObjectLockRetainUntilDate")
    return head.get("ObjectLockMode"), until.astimezone(UTC) if until else None


def pieces(n: int) -> Iterator[bytes]:
    data = os.urandom(n)
    for i in range(0, n, 1 << 20):
        yield data[i : i + 1 << 20]


def test_every_object_of_a_backup_is_written_locked_until_the_policy_date_plus_the_margin(
        moto: MotoServer, tmp_path: Path) -> None:
    target = locked_target(moto, tmp_path)
    kept = datetime.now(UTC) + timedelta(days=40)
    target.hold_backup("b1", kept)
    target.put_bytes("data/b1/000000", b"segment")  # one PutObject
    target.put("data/b1/000001", pieces(PART + 12345))  # a multipart upload
    target.put_bytes("backups/b1/manifest", b"manifest")
    for key in ("data/b1/000000", "data/b1/000001", "backups/b1/manifest"):
        mode, until = lock_of(moto, target.bucket, f"repo/{key}")
        assert mode == "COMPLIANCE", key
        assert until is not None and kept + MARGIN <= until <= kept + MARGIN + timedelta(seconds=2), key


def test_a_backup_without_a_known_date_is_locked_for_the_margin_from_the_store_clock(
        moto: MotoServer, tmp_path: Path) -> None:
    target = locked_target(moto, tmp_path, mode="governance", object_lock_margin="3d")
    before = server_now(moto, target.bucket)
    target.put_bytes("data/b2/000000", b"x")
    mode, until = lock_of(moto, target.bucket, "repo/data/b2/000000")
    assert mode == "GOVERNANCE"
    assert until is not None and before + timedelta(days=3) <= until <= before + timedelta(days=3, seconds=30)


def test_leases_and_the_marker_are_not_locked(moto: MotoServer, tmp_path: Path) -> None:
    """A push removes its lease: locking it would leave a lease nobody may delete."""
    target = locked_target(moto, tmp_path)
    target.put_bytes("locks/b1.lease", b"{}")
    target.put_bytes("btrsync-repo.json", b"{}")
    assert lock_of(moto, target.bucket, "repo/locks/b1.lease") == (None, None)
    assert lock_of(moto, target.bucket, "repo/btrsync-repo.json") == (None, None)
    target.delete("locks/b1.lease")


def test_deleting_a_locked_object_is_refused_and_leaves_it_visible(moto: MotoServer, tmp_path: Path) -> None:
    """Without the check, the delete marker went first: the object vanished from listings (and a
    manifest from the catalog) while its locked version stayed stored."""
    target = locked_target(moto, tmp_path)
    target.put_bytes("backups/b1/manifest", b"m")
    with pytest.raises(ObjectLocked, match="compliance lock until") as caught:
        target.delete("backups/b1/manifest")
    assert caught.value.until is not None and caught.value.until > datetime.now(UTC) + MARGIN - timedelta(hours=1)
    assert [o.key for o in target.list("backups/")] == ["backups/b1/manifest"]


def test_retention_is_extended_never_shortened(moto: MotoServer, tmp_path: Path) -> None:
    target = locked_target(moto, tmp_path)
    target.put_bytes("data/b1/000000", b"x")
    target.put_bytes("backups/b1/manifest", b"m")
    later = datetime.now(UTC) + timedelta(days=100)
    assert target.extend_retention("b1", later) == 2
    _, until = lock_of(moto, target.bucket, "repo/backups/b1/manifest")
    assert until is not None and until >= later + MARGIN
    assert target.extend_retention("b1", datetime.now(UTC) + timedelta(days=10)) == 0  # shorter: untouched
    assert lock_of(moto, target.bucket, "repo/backups/b1/manifest")[1] == until
    assert target.retention("data/b1/000000").until == until  # type: ignore[union-attr]


def test_a_policy_that_keeps_forever_locks_a_year_ahead(moto: MotoServer, tmp_path: Path) -> None:
    target = locked_target(moto, tmp_path)
    target.hold_backup("b1", datetime.max.replace(tzinfo=UTC))
    target.put_bytes("data/b1/000000", b"x")
    _, until = lock_of(moto, target.bucket, "repo/data/b1/000000")
    assert until is not None and until <= datetime.now(UTC) + FOREVER_HORIZON + MARGIN + timedelta(minutes=1)


def test_a_lock_on_a_bucket_without_object_lock_fails_closed(moto: MotoServer, tmp_path: Path) -> None:
    """Careless operator: object_lock set, bucket created without Object Lock.  Nothing is written."""
    bucket = moto.create_bucket(locked=False)
    target = locked_target(moto, tmp_path, bucket=bucket)
    with pytest.raises(ConfigError, match="does not report Object Lock|does not have Object Lock"):
        target.probe()
    with pytest.raises(ConfigError):
        target.put_bytes("data/b1/000000", b"x")  # without a probe first, too
    assert moto.client().list_objects_v2(Bucket=bucket).get("KeyCount", 0) == 0


def test_a_lock_on_a_server_without_object_lock_fails_closed(request: pytest.FixtureRequest,
                                                             tmp_path: Path) -> None:
    """SeaweedFS has no Object Lock: the target refuses at probe (init, every open) and at put."""
    settings = seaweed_settings(request, tmp_path, object_lock="compliance")
    target = open_target(f"s3://{TEST_BUCKET}/t/{uuid.uuid4().hex[:12]}", settings)
    with pytest.raises(ConfigError, match="object_lock"):
        target.probe()
    with pytest.raises(ConfigError):
        target.put_bytes("data/b1/000000", b"x")
    assert list(target.list()) == []


def test_retain_until_comes_from_the_store_clock_not_a_skewed_host_clock(moto: MotoServer,
                                                                         tmp_path: Path) -> None:
    target = locked_target(moto, tmp_path)
    off = MAX_SKEW - timedelta(minutes=2)
    target.lock_clock.host_clock = lambda: datetime.now(UTC) - off  # this host runs 13 minutes late
    before = server_now(moto, target.bucket)
    target.put_bytes("data/b1/000000", b"x")
    _, until = lock_of(moto, target.bucket, "repo/data/b1/000000")
    assert until is not None and before + MARGIN <= until <= before + MARGIN + timedelta(seconds=30)


@pytest.mark.parametrize("off", [timedelta(days=400), -timedelta(hours=3)])
def test_a_host_clock_far_off_the_store_clock_is_refused(moto: MotoServer, tmp_path: Path, off: timedelta) -> None:
    """A host a year ahead would lock a compliance backup a year too long (unshortenable)."""
    target = locked_target(moto, tmp_path)
    target.lock_clock.host_clock = lambda: datetime.now(UTC) + off
    with pytest.raises(TargetError, match="clock is .* (ahead of|behind)"):
        target.put_bytes("data/b1/000000", b"x")
    assert moto.client().list_objects_v2(Bucket=target.bucket).get("KeyCount", 0) == 0


def test_the_registry_wrapped_target_takes_holds(moto: MotoServer, tmp_path: Path) -> None:
    bucket = moto.create_bucket(locked=True)
    target = open_target(f"s3://{bucket}/r", moto.settings(tmp_path, object_lock="governance"))
    target.probe()
    kept = datetime.now(UTC) + timedelta(days=30)
    target.hold_backup("b9", kept)  # type: ignore[attr-defined]  # RetryingTarget forwards it
    target.put_bytes("data/b9/000000", b"x")
    assert lock_of(moto, bucket, "r/data/b9/000000")[1] >= kept + MARGIN  # type: ignore[operator]


def test_locks_follow_b2_rules_md5_not_flexible_checksums(moto: MotoServer, tmp_path: Path) -> None:
    """PutObjectRetention's model requires a checksum, so botocore sent a CRC32 even with
    ``when_required``: B2 answers such a header with 400.  Through the B2-rules proxy (in front of
    moto here), every lock request goes with Content-MD5, and a key lacking writeFileRetentions
    is refused with a 403 naming the capability."""
    from tests.support.b2proxy import B2RulesProxy

    bucket = moto.create_bucket(locked=True)
    with B2RulesProxy(moto.port) as proxy:
        settings = S3Settings.from_mapping({**moto.settings(tmp_path, object_lock="compliance"),
                                            "endpoint": proxy.endpoint})
        target = S3Target(bucket, "repo", settings, no_sleep_policy())
        target.probe()
        target.put("data/b1/000000", pieces(PART + 1000))
        target.put_bytes("backups/b1/manifest", b"m")
        assert target.extend_retention("b1", datetime.now(UTC) + timedelta(days=90)) == 2
        assert proxy.rejected == []
        locks = proxy.ops("PutObjectRetention")
        assert len(locks) == 3 and all("content-md5" in s.headers for s in locks)
        proxy.capabilities.discard("writeFileRetentions")
        with pytest.raises(TargetError, match="writeFileRetentions"):
            target.put_bytes("data/b1/000001", b"x")


def test_a_child_kept_longer_extends_its_parent_before_it_is_sent(moto: MotoServer, tmp_path: Path) -> None:
    """The push holds a backup's date and extends the backup it is sent on to at least that date
    (ops/immutable.py): a parent is locked as long as its longest-lived child needs it."""
    from btrsync.ops.immutable import hold_for_step
    from btrsync.planner.plan import Step

    target = locked_target(moto, tmp_path)
    target.put_bytes("data/parent/000000", b"p")  # locked for the margin only (date unknown at upload)
    target.put_bytes("backups/parent/manifest", b"m")
    child_kept = datetime.now(UTC) + timedelta(days=60)
    step = Step(None, None, "parent", 1, "incremental", "monthly", child_kept)  # type: ignore[arg-type]
    hold_for_step(target, "child", step, [])
    for key in ("data/parent/000000", "backups/parent/manifest"):
        assert lock_of(moto, target.bucket, f"repo/{key}")[1] >= child_kept + MARGIN  # type: ignore[operator]
    target.put_bytes("data/child/000000", b"c")
    assert lock_of(moto, target.bucket, "repo/data/child/000000")[1] >= child_kept + MARGIN  # type: ignore[operator]


def test_config_check_refuses_a_misspelt_object_lock(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Careless operator: ``object_lock = "compliant"`` must not leave the bucket unlocked."""
    from btrsync.cli.main import main

    config = tmp_path / "config.toml"
    config.write_text('[targets.b2]\nurl = "s3://bucket/host"\nobject_lock = "compliant"\n')
    assert main(["--config", str(config), "config", "check"]) == 2
    assert "object_lock" in capsys.readouterr().err
    config.write_text('[targets.b2]\nurl = "s3://bucket/host"\nobject_lock = "governance"\nobject_lock_margin = "3d"\n')
    assert main(["--config", str(config), "config", "check"]) == 0
    with pytest.raises(ConfigError, match="object_lock_margin"):
        S3Settings.from_mapping({"object_lock": "compliance", "object_lock_margin": -1})
    with pytest.raises(ConfigError, match="not a duration"):
        S3Settings.from_mapping({"object_lock": "compliance", "object_lock_margin": "a week"})
