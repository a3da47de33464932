"""The S3 target, ``s3://BUCKET/PREFIX``: AWS S3, Backblaze B2's S3 API, SeaweedFS and friends.

Objects live under ``PREFIX/`` + key.  ``put`` re-chunks the stream into parts: an object that fits
in one part is stored with a single ``PutObject``; a larger one becomes a multipart upload whose
``CompleteMultipartUpload`` is the commit point, and which is aborted on any exception (including
one from the parts iterator, or ``KeyboardInterrupt``), so nothing half-written stays behind.

Backblaze B2 rules followed here (docs/targets-s3.md has the details and sources):

* no flexible checksums: B2 answers 400 to any ``x-amz-checksum-*`` or
  ``x-amz-sdk-checksum-algorithm`` header, which botocore >= 1.36 sends by default, so the client
  is built with ``request_checksum_calculation="when_required"``; integrity comes from
  ``Content-MD5`` on every ``PutObject`` and ``UploadPart`` instead;
* parts of at least 5 MiB except the last (B2 needs 5,000,000 bytes, AWS and SeaweedFS 5 MiB, so
  the larger wins), at most 5 GB each and 10,000 per object; the part size grows as an upload
  goes on (``part_size_for``) so that a stream of unknown length up to 10 TB fits;
* ``DeleteObject`` only hides an object in a versioned bucket (B2's default), so ``delete`` also
  removes every version and delete marker of the key.

Memory: one budget of ``max_inflight_parts`` part uploads is shared by every ``put`` of the target
(concurrent segment puts draw from the same slots), and each running ``put`` holds one more part
(the one being filled or waiting for a slot): ``(max_inflight_parts + puts) x part size`` at most.
A put hands its first part to an upload before it fills the second, so the bound holds from its
first part on.

Only requests inside ``put`` are retried here (a failed part is resent alone: parts are ``bytes``);
``get``, ``stat``, ``list`` and ``delete`` raise ``TransientTargetError`` for ``RetryingTarget`` to
retry.  botocore's own retries are off so that only btrsync's retry layer loops, and no botocore or
urllib3 exception leaves this module.

Deadlines (docs/targets-s3.md): the socket timeouts bound one request, ``operation_deadline`` the
retries of one, counted from its first failure.  This target and its ``RetryingTarget`` share one
policy (``verb_policy``) and so one ``Outage``: after any operation has given up, each request
gets one attempt on a client with ``cleanup_timeout`` until one succeeds, and the retries of a verb
never multiply with those inside it.
"""

from __future__ import annotations

import builtins
import contextlib
import functools
import logging
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from datetime import datetime
from email.utils import parsedate_to_datetime
from typing import Any

from btrsync.errors import BtrsyncError, ConfigError, TargetMissingError
from btrsync.targets.base import (
    Capabilities,
    Leftover,
    ObjectInfo,
    Target,
    check_range,
    is_valid_key,
    validate_key,
    validate_prefix,
)
from btrsync.targets.errors import (
    NotFound,
    ObjectLocked,
    PermissionDenied,
    RangeError,
    TargetError,
    TransientTargetError,
)
from btrsync.targets.retry import Outage, RetryPolicy
from btrsync.targets.s3.client import make_clients, redact_url
from btrsync.targets.s3.errors import B2_CAPABILITIES_HINT, translate
from btrsync.targets.s3.objectlock import Holds, LockClock, Retention, backup_of, lock_until
from btrsync.targets.s3.parts import check_part_number, drain, marked_parts, part_size_for
from btrsync.targets.s3.reads import aware, byte_count, stream_body
from btrsync.targets.s3.settings import S3Settings
from btrsync.targets.s3.uploads import BoundedUploads, Upload, md5_b64
from btrsync.targets.s3.versions import Version, removal_of
from btrsync.targets.together import together

log = logging.getLogger(__name__)


class S3Target(Target):
    """Objects in one bucket under one prefix; thread-safe (boto3 clients are)."""

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        settings: S3Settings | None = None,
        policy: RetryPolicy | None = None,
    ) -> None:
        if not bucket or "@" in bucket or "/" in bucket:
            raise ConfigError(
                "S3 target URL must look like s3://BUCKET/PREFIX, without credentials "
                "(put those in credentials_file)"
            )
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        if self.prefix:
            validate_prefix(self.prefix)
        self.settings = settings or S3Settings()
        self.settings.check()
        self.policy = policy or RetryPolicy(
            attempts=self.settings.max_attempts, deadline=self.settings.operation_deadline, outage=Outage()
        )
        # RetryingTarget retries whole verbs under this same policy: one deadline, one outage state
        self.verb_policy = self.policy
        self.display_url = f"s3://{bucket}/{self.prefix}"
        self.capabilities = Capabilities(
            max_part_size=self.settings.part_size, connections=self.settings.max_inflight_parts
        )
        self._client, self._make_cleanup_client = make_clients(self.settings)
        self._cleanup: Any = None  # made on the first request of an outage (``_cleanup_client``)
        self._cleanup_made = threading.Lock()
        # one budget of parts in flight for every put of this target (concurrent segment puts share it)
        self._part_slots = threading.Semaphore(self.settings.max_inflight_parts)
        self.endpoint = redact_url(self._client.meta.endpoint_url)
        # Object Lock (objectlock.py, docs/immutable.md): None, governance or compliance
        self.lock_mode = self.settings.object_lock
        self.lock_clock = LockClock(self.clock, self.display_url)
        self._holds = Holds()
        self._lock_check = threading.Lock()
        self._lock_supported = False

    @classmethod
    def from_url(cls, parsed: Any, settings: Mapping[str, Any]) -> S3Target:
        """Build from a parsed ``s3://BUCKET/PREFIX`` URL and the target's settings."""
        return cls(parsed.host, parsed.path, S3Settings.from_mapping(settings))

    def __enter__(self) -> S3Target:
        return self

    def __repr__(self) -> str:
        return f"S3Target({self.display_url!r}, endpoint={self.endpoint!r})"

    # -- helpers ---------------------------------------------------------------------------
    def _full(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    def _relative(self, full: str) -> str:
        return full[len(self.prefix) + 1 :] if self.prefix else full

    def _what(self, verb: str, key: str) -> str:
        return f"{verb} {key} on {self.display_url}"

    def _cleanup_client(self) -> Any:
        """The client with ``cleanup_timeout``, made once, when an outage first needs it (a
        botocore session must not make two clients at once: the lock)."""
        with self._cleanup_made:
            if self._cleanup is None:
                self._cleanup = self._make_cleanup_client()
            return self._cleanup

    def _request(self, op: str, what: str, **kwargs: Any) -> dict[str, Any]:
        """Call client method ``op`` once, translating every failure to a btrsync error.

        After a request has given up (the policy's outage), and until one succeeds, requests use
        the client with ``cleanup_timeout``: the abort and the lease removal after a failure then
        wait seconds, not a read timeout each, on a store that stopped answering."""
        outage = self.policy.outage
        client = self._cleanup_client() if outage is not None and outage.down else self._client
        try:
            return getattr(client, op)(**kwargs)  # type: ignore[no-any-return]
        except Exception as exc:  # translated, never leaked
            raise translate(exc, what) from None

    def _retried(
        self, op: str, what: str, cancel: threading.Event | None = None, **kwargs: Any
    ) -> dict[str, Any]:
        return self.policy.call(lambda: self._request(op, what, **kwargs), what, cancel)

    # -- put -------------------------------------------------------------------------------
    def put(self, key: str, parts: Iterable[bytes]) -> ObjectInfo:
        full = self._full(validate_key(key))
        marked = marked_parts(parts, lambda n: part_size_for(n, self.settings.part_size))
        first, more = next(marked)
        if not more:
            return self._put_single(key, full, first)
        # the first part goes to an upload before the second is filled: one part per running put
        head = [first]
        del first
        chunks = (part for part, _more in marked)
        return ObjectInfo(key, self._put_multipart(key, full, drain(head, chunks)))

    def _put_single(self, key: str, full: str, data: bytes) -> ObjectInfo:
        answer = self._retried(
            "put_object",
            self._what("put", key),
            Bucket=self.bucket,
            Key=full,
            Body=data,
            ContentMD5=md5_b64(data),
            **self._lock_args(key),
        )
        return ObjectInfo(key, len(data), answer.get("ETag"))  # the version a listing shows

    def _put_multipart(self, key: str, full: str, chunks: Iterator[bytes]) -> int:
        """Upload ``chunks`` as parts; Complete commits, any exception aborts.  Returns the size."""
        lock = self._lock_args(key)
        created = self._retried(
            "create_multipart_upload",
            self._what("start upload of", key),
            Bucket=self.bucket,
            Key=full,
            **lock,
        )
        upload_id = created["UploadId"]
        uploads = BoundedUploads(
            self.settings.max_inflight_parts,
            self._part_slots,
            lambda n, data, cancel: self._upload_part(key, upload_id, n, data, cancel),
        )
        try:
            size = 0
            for number, data in enumerate(chunks, start=1):
                check_part_number(number, size, self._what("put", key))
                size += len(data)
                uploads.submit(number, data)
                del data  # the upload holds the only reference now
            self._complete(key, upload_id, uploads.finish(), size)
        except BaseException:
            try:
                uploads.cancel()
            finally:
                self._abort_quietly(key, upload_id)
            raise
        if lock:  # a store may take the lock at Complete only from the create (moto takes none)
            self._put_retention(key, lock["ObjectLockMode"], lock["ObjectLockRetainUntilDate"])
        return size

    def _upload_part(
        self, key: str, upload_id: str, number: int, data: bytes, cancel: threading.Event
    ) -> str:
        what = self._what(f"upload part {number} of", key)
        answer = self._retried(
            "upload_part",
            what,
            cancel,
            Bucket=self.bucket,
            Key=self._full(key),
            UploadId=upload_id,
            PartNumber=number,
            Body=data,
            ContentMD5=md5_b64(data),
        )
        return str(answer["ETag"])

    def _complete(self, key: str, upload_id: str, parts: builtins.list[dict[str, Any]], size: int) -> None:
        """Complete the upload; a ``NoSuchUpload`` on a retry means a lost answer to a success."""
        what = self._what("complete upload of", key)
        attempt = 0

        def complete() -> None:
            nonlocal attempt
            attempt += 1
            try:
                self._request(
                    "complete_multipart_upload",
                    what,
                    Bucket=self.bucket,
                    Key=self._full(key),
                    UploadId=upload_id,
                    MultipartUpload={"Parts": parts},
                )
            except NotFound:
                if attempt == 1 or self.stat(key).size != size:
                    raise

        self.policy.call(complete, what)

    def _abort_quietly(self, key: str, upload_id: str) -> None:
        """Abort after a failure; never raises.  When the store has stopped answering, this is one
        short attempt (see ``_request``) and one warning for all the uploads left this way."""
        try:
            self.abort_upload(key, upload_id)
        except NotFound:
            pass
        except BtrsyncError as exc:
            outage = self.policy.outage
            if outage is None or outage.first("abort"):
                log.warning(
                    "could not abort the unfinished upload of %s (%s); its parts stay stored until "
                    "'btrsync clean' removes them: run it once %s answers again",
                    self._what("", key).strip(),
                    exc,
                    self.endpoint,
                )
            else:
                log.info("could not abort the unfinished upload of %s either: %s", key, exc)

    # -- reading ---------------------------------------------------------------------------
    def get(self, key: str, *, offset: int = 0, length: int | None = None) -> Iterator[bytes]:
        full = self._full(validate_key(key))
        return self._read(key, full, offset, length)

    def _read(self, key: str, full: str, offset: int, length: int | None) -> Iterator[bytes]:
        if offset < 0 or (length is not None and length <= 0):
            check_range(key, self.stat(key).size, offset, length)
            return
        opened = self._open_range(key, full, offset, length)
        if opened is None:
            return
        body, count = opened
        yield from stream_body(body, count, self._what("get", key))

    def _open_range(self, key: str, full: str, offset: int, length: int | None) -> tuple[Any, int] | None:
        """Start a GET of the range; returns the body and its byte count (None: empty range)."""
        kwargs: dict[str, Any] = {}
        if offset or length is not None:
            last = "" if length is None else str(offset + length - 1)
            kwargs["Range"] = f"bytes={offset}-{last}"
        try:
            answer = self._request(
                "get_object", self._what("get", key), Bucket=self.bucket, Key=full, **kwargs
            )
        except RangeError:
            check_range(key, self.stat(key).size, offset, length)  # raises unless offset == size
            return None
        body = answer["Body"]
        try:
            count = byte_count(key, answer, offset, length)
        except BaseException:
            body.close()
            raise
        return body, count

    def stat(self, key: str) -> ObjectInfo:
        answer = self._request(
            "head_object",
            self._what("stat", key),
            Bucket=self.bucket,
            Key=self._full(validate_key(key)),
        )
        return ObjectInfo(key, int(answer["ContentLength"]), modified=aware(answer.get("LastModified")))

    def first_files(self, limit: int = 3) -> builtins.list[str]:
        """Up to ``limit`` keys under the prefix, whatever they are."""
        what = f"list {self.display_url}"
        page = self._retried("list_objects_v2", what, Bucket=self.bucket,
                             Prefix=self._full("") if self.prefix else "", MaxKeys=limit)
        return [self._relative(str(o.get("Key", ""))) for o in page.get("Contents", [])][:limit]

    def clock(self) -> datetime | None:
        """The store's time, from the ``Date`` header of a one-key listing (the permission a
        push and a clean need anyway); ``None`` if the answer carries none."""
        what = f"read the clock of {self.display_url}"
        answer = self._retried("list_objects_v2", what, Bucket=self.bucket, Prefix=self._full("locks/"), MaxKeys=1)
        date = answer.get("ResponseMetadata", {}).get("HTTPHeaders", {}).get("date")
        try:
            return aware(parsedate_to_datetime(date)) if date else None
        except (TypeError, ValueError):
            log.debug("%s: unreadable Date header %r", what, date)
            return None

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        """Every object under the prefix, sorted, or an error: a failed page (after the retry
        layer's budget, for transient ones) raises, never returns the pages before it."""
        validate_prefix(prefix)
        full_prefix = self._full(prefix) if self.prefix else prefix
        what = f"list {prefix!r} on {self.display_url}"
        found: builtins.list[ObjectInfo] = []
        token: dict[str, str] = {}
        while True:
            page = self._request("list_objects_v2", what, Bucket=self.bucket, Prefix=full_prefix, **token)
            for o in page.get("Contents", []):
                key = self._relative(str(o.get("Key", "")))
                size = o.get("Size")
                if not is_valid_key(key) or not isinstance(size, int) or size < 0:
                    log.warning("object %r in %s is not one btrsync writes: skipped", key[:200], self.display_url)
                    continue
                found.append(ObjectInfo(key, size, o.get("ETag"), aware(o.get("LastModified"))))
            if not page.get("IsTruncated"):
                break
            following = page.get("NextContinuationToken")
            if not following or following == token.get("ContinuationToken"):
                raise TargetError(f"{what}: the listing does not advance (continuation token "
                                  f"{str(following)[:40]!r}); the store misbehaves, nothing was decided from it")
            token = {"ContinuationToken": following}
        found.sort(key=lambda o: o.key)
        yield from found

    # -- deleting --------------------------------------------------------------------------
    def delete(self, key: str) -> None:
        """Delete ``key`` and, in a versioned bucket, every version and delete marker of it."""
        validate_key(key)
        self.stat(key)  # S3 answers a delete of a missing key with success; we raise NotFound
        self.discard(key)

    def discard(self, key: str) -> None:
        """``delete`` without asking first whether ``key`` is there (a missing key leaves nothing
        behind either: a delete marker it made in a versioned bucket is a version, removed below)."""
        full = self._full(validate_key(key))
        what = self._what("delete", key)
        self._refuse_if_locked(key)  # before the delete marker: a locked object is not even hidden
        self._request("delete_object", what, Bucket=self.bucket, Key=full)

        def remove(version_id: str) -> None:
            try:
                self._request("delete_object", what, Bucket=self.bucket, Key=full, VersionId=version_id)
            except PermissionDenied as exc:
                if self.lock_mode is None or backup_of(key) is None:
                    raise PermissionDenied(f"{exc}; the key is hidden (a delete marker) but its stored versions "
                                           "stay: this key may not delete versions (B2: no deleteFiles)") from None
                raise ObjectLocked(f"{what}: an older version is still locked ({exc}); the key is hidden, "
                                   "and its stored versions go once their retention has expired") from None

        # every version at once (a lease refreshed ten times has eleven, and the marker)
        together(self, *(functools.partial(remove, v) for v in self._versions_of(full, what)))

    def _versions_of(self, full: str, what: str) -> builtins.list[str]:
        """Version ids of exactly ``full``, delete markers included ([] if unsupported)."""
        return [v.id for v in self._version_entries(full, what)]

    def _version_entries(self, full: str, what: str) -> builtins.list[Version]:
        """The versions of exactly ``full`` as the store lists them: stored versions newest first,
        then the delete markers ([] if the store lists no versions)."""
        stored: builtins.list[Version] = []
        markers: builtins.list[Version] = []
        following: dict[str, str] = {}
        while True:
            try:
                page = self._request("list_object_versions", what, Bucket=self.bucket, Prefix=full, **following)
            except TargetError as exc:
                if "NotImplemented" not in str(exc):
                    raise
                return stored + markers
            for entries, into, marker in ((page.get("Versions", []), stored, False),
                                          (page.get("DeleteMarkers", []), markers, True)):
                into.extend(Version(e["VersionId"], marker, aware(e.get("LastModified")))
                            for e in entries if e["Key"] == full and e.get("VersionId") not in (None, ""))
            entries = page.get("Versions", []) + page.get("DeleteMarkers", [])
            if not page.get("IsTruncated") or any(e["Key"] != full for e in entries):
                return stored + markers  # keys come sorted: once another key shows up, ours are all seen
            following = {
                "KeyMarker": page["NextKeyMarker"],
                "VersionIdMarker": page.get("NextVersionIdMarker", ""),
            }

    def discard_if(self, key: str, wanted: Callable[[bytes], bool], limit: int) -> bool:
        """``Target.discard_if`` without its race where the bucket keeps versions (B2 always does).

        The object's head and the key's versions are read at once; if ``wanted``, the versions
        older than the one read are deleted, at once, then the one read (so a failure half-way
        never makes an older version current), and no delete marker is made: a version another
        host stored after the read stays, current.  One version (a push shorter than a lease
        refresh): two round trips, where read, delete, list and delete took four.  Without a
        listing (refused, unsupported) only the version read goes.  Without versions (no version
        id, or ``null``) the object is deleted as read: S3 has no delete conditional on what was
        read there.  A key that may not delete versions (B2 without deleteFiles) hides the object,
        as ``discard`` does, only when the listing shows the version read is still the newest."""
        full = self._full(validate_key(key))
        what = self._what("delete", key)

        def listing() -> builtins.list[Version] | None:
            try:
                return self._version_entries(full, what)
            except TargetError as exc:  # never worse than no listing: the version read still goes
                log.debug("%s: no listing of its versions (%s); only the version read is deleted", what, exc)
                return None

        read, versions = together(self, functools.partial(self._head, key, full, limit), listing)
        if read is None or not wanted(read[0]):
            return False
        self._refuse_if_locked(key)
        removal = removal_of(versions, read[1])
        if removal.thorough:
            self.discard(key)  # versions the listing cannot place against the one read: all go
        elif removal.plain:
            self._request("delete_object", what, Bucket=self.bucket, Key=full)
        else:
            def remove(version_id: str) -> None:
                self._request("delete_object", what, Bucket=self.bucket, Key=full, VersionId=version_id)

            try:
                together(self, *(functools.partial(remove, v) for v in removal.older))
                remove(removal.read)
            except PermissionDenied as exc:
                if removal.newest:  # hidden as discard leaves it; never over a newer version
                    self._request("delete_object", what, Bucket=self.bucket, Key=full)
                raise PermissionDenied(f"{exc}; {'the key is hidden (a delete marker) but ' if removal.newest else ''}"
                                       "its stored versions stay: this key may not delete versions "
                                       "(B2: no deleteFiles)") from None
        return True

    def _head(self, key: str, full: str, limit: int) -> tuple[bytes, str | None] | None:
        """The first ``limit + 1`` bytes of ``key`` and the id of the version they came from;
        ``None`` if there is no such object."""
        try:
            answer = self._request("get_object", self._what("get", key), Bucket=self.bucket, Key=full,
                                   Range=f"bytes=0-{limit}")
        except NotFound:
            return None
        except RangeError:  # an empty object has no byte 0
            return b"", None
        length = answer.get("ContentLength")
        # a store that ignored the Range sends more, one that did not say how much may send less
        count = limit + 1 if length is None else min(int(length), limit + 1)
        data = bytearray()
        for block in stream_body(answer["Body"], count, self._what("get", key), short_ok=length is None):
            data += block
        return bytes(data), answer.get("VersionId")

    # -- unfinished uploads (btrsync clean) ------------------------------------------------
    def list_uploads(self) -> builtins.list[Upload]:
        """Unfinished multipart uploads under the prefix, oldest first."""
        full_prefix = f"{self.prefix}/" if self.prefix else ""
        what = f"list unfinished uploads on {self.display_url}"
        found: builtins.list[Upload] = []
        markers: dict[str, str] = {}
        while True:
            page = self._request(
                "list_multipart_uploads", what, Bucket=self.bucket, Prefix=full_prefix, **markers
            )
            found.extend(
                Upload(self._relative(u["Key"]), u["UploadId"], u["Initiated"])
                for u in page.get("Uploads", [])
            )
            if not page.get("IsTruncated"):
                break
            markers = {
                "KeyMarker": page["NextKeyMarker"],
                "UploadIdMarker": page.get("NextUploadIdMarker", ""),
            }
        found.sort(key=lambda u: (u.initiated, u.key))
        return found

    def abort_upload(self, key: str, upload_id: str) -> None:
        """Abort one unfinished upload (retried); ``NotFound`` if the store says it is gone."""
        self._retried(
            "abort_multipart_upload",
            self._what("abort upload of", key),
            Bucket=self.bucket,
            Key=self._full(key),
            UploadId=upload_id,
        )

    def leftovers(self) -> builtins.list[Leftover]:
        """Unfinished uploads under the prefix, with the bytes their parts hold (billed on B2)."""
        return [Leftover("unfinished upload", u.key, self._parts_size(u), u) for u in self.list_uploads()]

    def remove_leftover(self, leftover: Leftover) -> None:
        """Abort an unfinished upload that ``leftovers`` reported (gone already is fine)."""
        upload = leftover.handle
        if not isinstance(upload, Upload):
            raise TypeError(f"not a leftover of {self.display_url}: {leftover!r}")
        with contextlib.suppress(NotFound):
            self.abort_upload(upload.key, upload.upload_id)

    def _parts_size(self, upload: Upload) -> int:
        """Total size of the parts uploaded so far (0 if the upload has ended meanwhile)."""
        what = self._what("list parts of", upload.key)
        size, marker = 0, 0
        while True:
            try:
                page = self._request(
                    "list_parts",
                    what,
                    Bucket=self.bucket,
                    Key=self._full(upload.key),
                    UploadId=upload.upload_id,
                    PartNumberMarker=marker,
                )
            except NotFound:
                return size
            size += sum(int(p["Size"]) for p in page.get("Parts", []))
            if not page.get("IsTruncated"):
                return size
            marker = int(page["NextPartNumberMarker"])

    # -- the rest of the interface ---------------------------------------------------------
    def probe(self) -> None:
        """Check that the bucket exists and the key may use it (retried)."""
        what = f"check bucket {self.bucket} at {self.endpoint}"
        try:
            self._retried("head_bucket", what, Bucket=self.bucket)
        except NotFound:
            raise TargetMissingError(
                f"bucket {self.bucket} does not exist at {self.endpoint}: create it, or fix the "
                "bucket name or endpoint"
            ) from None
        except PermissionDenied:
            raise PermissionDenied(
                f"access to bucket {self.bucket} at {self.endpoint} was denied: check the key id "
                f"and secret; {B2_CAPABILITIES_HINT}"
            ) from None
        except TransientTargetError as exc:
            raise TargetMissingError(f"cannot reach {self.endpoint}: {exc}") from None
        if self.lock_mode is not None:
            self._require_lock_support()

    # -- Object Lock (objectlock.py, docs/immutable.md) -------------------------------------
    def hold_backup(self, backup_id: str, kept_until: datetime | None) -> None:
        """Lock the objects of ``backup_id`` written from now on until ``kept_until`` (when the
        retention policy keeps the backup until; ``None``: not known yet) plus the margin."""
        if self.lock_mode is not None and kept_until is not None:
            self._holds.set(backup_id, kept_until)

    def lock_until(self, kept_until: datetime | None) -> datetime:
        """The retain-until date an object written now for ``kept_until`` gets (store's clock)."""
        return lock_until(kept_until, self.lock_clock.now(), self.settings.object_lock_margin)

    def retention(self, key: str) -> Retention | None:
        """The lock the store holds on ``key`` (``None``: none); ``NotFound`` if there is no object."""
        answer = self._retried("head_object", self._what("read the retention of", key), Bucket=self.bucket,
                               Key=self._full(validate_key(key)))
        mode, until = answer.get("ObjectLockMode"), aware(answer.get("ObjectLockRetainUntilDate"))
        return Retention(str(mode).lower(), until) if mode and until is not None else None

    def extend_retention(self, backup_id: str, kept_until: datetime | None) -> int:
        """Extend the lock of every object of ``backup_id`` to :meth:`lock_until` where it is
        shorter (never shortened); the manifest last.  Returns how many objects were extended."""
        if self.lock_mode is None:
            return 0
        self._require_lock_support()
        until = self.lock_until(kept_until)
        keys = [o.key for prefix in (f"data/{backup_id}/", f"backups/{backup_id}/")
                for o in self.policy.call(lambda p=prefix: builtins.list(self.list(p)), f"list {prefix}")]
        extended = 0
        for key in keys:
            held = self.retention(key)
            if held is not None and held.until >= until:
                continue
            mode = "compliance" if "compliance" in (self.lock_mode, held.mode if held else None) else "governance"
            self._put_retention(key, mode.upper(), until)
            extended += 1
        return extended

    def _lock_args(self, key: str) -> dict[str, Any]:
        """The Object Lock arguments of a write of ``key`` (none for leases and the marker)."""
        if self.lock_mode is None:
            return {}
        backup_id = backup_of(key)
        if backup_id is None:
            return {}
        self._require_lock_support()
        until = self.lock_until(self._holds.get(backup_id))
        return {"ObjectLockMode": self.lock_mode.upper(), "ObjectLockRetainUntilDate": until}

    def _put_retention(self, key: str, mode: str, until: datetime) -> None:
        self._retried("put_object_retention", self._what("lock", key), Bucket=self.bucket, Key=self._full(key),
                      Retention={"Mode": mode, "RetainUntilDate": until})

    def _refuse_if_locked(self, key: str) -> None:
        """Raise ``ObjectLocked`` when ``key``'s lock has not expired on the store's clock."""
        if self.lock_mode is None or backup_of(key) is None:
            return
        held = self.retention(key)
        if held is not None and held.until > self.lock_clock.now():
            raise ObjectLocked(f"{self._what('delete', key)}: refused, {held.describe()} (S3 Object Lock)",
                               held.until, held.mode)

    def _require_lock_support(self) -> None:
        """Fail closed unless the bucket has Object Lock enabled (checked once per target)."""
        with self._lock_check:
            if self._lock_supported:
                return
            what = f"read the Object Lock configuration of bucket {self.bucket} at {self.endpoint}"
            advice = (f"object_lock = \"{self.lock_mode}\" is set for {self.display_url}, so nothing is written "
                      "unlocked: use a bucket created with Object Lock enabled (docs/immutable.md), or remove "
                      "object_lock from the target's settings")
            try:
                answer = self._retried("get_object_lock_configuration", what, Bucket=self.bucket)
            except PermissionDenied as exc:
                raise PermissionDenied(f"{exc}; with object_lock the key must be allowed to read the bucket's "
                                       "Object Lock configuration (B2: readBucketRetentions)") from None
            except TransientTargetError:
                raise
            except TargetError as exc:
                raise ConfigError(f"{self.endpoint} does not report Object Lock for bucket {self.bucket} "
                                  f"({str(exc)[-160:]}): {advice}") from None
            enabled = answer.get("ObjectLockConfiguration", {}).get("ObjectLockEnabled")
            if enabled != "Enabled":
                raise ConfigError(f"bucket {self.bucket} at {self.endpoint} does not have Object Lock enabled: "
                                  f"{advice}")
            self._lock_supported = True

    def close(self) -> None:
        self._client.close()
        if self._cleanup is not None:
            self._cleanup.close()
