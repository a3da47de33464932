"""An HTTP proxy on 127.0.0.1 that makes an S3 server behave like Backblaze B2, and injects faults.

Point an S3 client at :attr:`B2RulesProxy.endpoint`; requests are forwarded verbatim (same method,
path, query and headers, ``Host`` included, so SigV4 signatures stay valid) to the upstream server,
except that the proxy enforces B2's rules first:

* any ``x-amz-checksum-*`` or ``x-amz-sdk-checksum-algorithm`` header is answered with B2's
  ``400 InvalidArgument`` "Unsupported header '...' received for this API call.";
* at ``CompleteMultipartUpload`` every part except the last must have at least ``min_part_size``
  bytes (B2's 5,000,000 by default; sizes are recorded per upload id as parts pass), otherwise
  ``400 EntityTooSmall``.

Faults are injected on demand with :meth:`B2RulesProxy.inject`, for the next N matching requests:

* ``"slowdown"``: ``503 SlowDown`` with ``Retry-After: 1`` instead of forwarding;
* ``"reset_request"``: read half the request body, then reset the connection (no answer);
* ``"reset_response"``: forward, send the status, headers and half the body, then reset;
* ``"internal_error"``: ``500 InternalError`` (transient: a retry layer retries it, so inject it
  more times than the retry budget to make it stick);
* ``"forbidden"``: ``403 AccessDenied`` (permanent).

Application key capabilities: :attr:`B2RulesProxy.capabilities` is the key's set (all of
:data:`CAPABILITIES` by default).  A request that needs one the key lacks is answered ``403
AccessDenied`` as B2 does, never forwarded (:func:`capability_needed`: deleting a file *version*
needs ``deleteFiles``, deleting by name only hides the file and needs ``writeFiles``; Object
Lock retention needs ``writeFileRetentions``).  Remove ``deleteFiles`` to act as a push host's
write-and-list-only key (docs/immutable.md, "Least privilege").

``after=N`` lets the first N matching requests through untouched, so a fault can hit, say, the
second page of a ``ListObjectsV2`` pagination.

Every request is recorded in :attr:`B2RulesProxy.seen` (operation, headers, ``Range``); per
operation, :attr:`~B2RulesProxy.in_flight`, :attr:`~B2RulesProxy.answered` and the largest number of
concurrent requests, :attr:`~B2RulesProxy.max_in_flight`, are counted.
"""

from __future__ import annotations

import http.client
import socket
import struct
import threading
import time
import xml.etree.ElementTree as ET
from collections import Counter
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

B2_MIN_PART_SIZE = 5_000_000
RELAY_PIECE = 1 << 20  # bytes of a GetObject answer passed on at a time
FAULT_KINDS = ("slowdown", "reset_request", "reset_response", "internal_error", "forbidden")
_ERROR_FAULTS = {
    "slowdown": (503, "SlowDown", "Please reduce your request rate."),
    "internal_error": (500, "InternalError", "We encountered an internal error. Please try again."),
    "forbidden": (403, "AccessDenied", "Access Denied"),
}
_CHECKSUM_HEADERS = ("x-amz-checksum-", "x-amz-sdk-checksum-algorithm")
_HOP_BY_HOP = {
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "te",
    "trailer",
    "upgrade",
}  # ``Expect`` is passed on: aws-sdk-go (rclone) signs it, and http.client skips a 100 Continue


@dataclass(frozen=True)
class Seen:
    """One request as the proxy received it."""

    method: str
    op: str
    path: str
    headers: dict[str, str]

    @property
    def range(self) -> str | None:
        return self.headers.get("range")


@dataclass
class _Fault:
    kind: str
    remaining: int
    op: str | None
    skip: int = 0  # matching requests still to let through before the fault applies


_UPLOAD_OPS = {
    "PUT": "UploadPart",
    "POST": "CompleteMultipartUpload",
    "DELETE": "AbortMultipartUpload",
    "GET": "ListParts",
}
_SUBRESOURCE_OPS = {
    ("POST", "uploads"): "CreateMultipartUpload",
    ("GET", "uploads"): "ListMultipartUploads",
    ("GET", "versions"): "ListObjectVersions",
    ("GET", "versioning"): "GetBucketVersioning",
    ("PUT", "versioning"): "PutBucketVersioning",
    ("PUT", "retention"): "PutObjectRetention",
    ("GET", "retention"): "GetObjectRetention",
    ("GET", "object-lock"): "GetObjectLockConfiguration",
    ("POST", "delete"): "DeleteObjects",
}
# B2 application key capabilities (https://www.backblaze.com/docs/cloud-storage-application-key-capabilities)
CAPABILITIES = frozenset(
    "listBuckets listFiles readFiles writeFiles deleteFiles readBucketRetentions readFileRetentions "
    "writeFileRetentions bypassGovernance".split()
)
_NEEDS = {
    "ListObjectsV2": "listFiles", "ListObjects": "listFiles", "ListObjectVersions": "listFiles",
    "ListMultipartUploads": "listFiles", "ListParts": "listFiles", "GetObject": "readFiles",
    "HeadObject": "readFiles", "PutObject": "writeFiles", "CreateMultipartUpload": "writeFiles",
    "UploadPart": "writeFiles", "CompleteMultipartUpload": "writeFiles", "AbortMultipartUpload": "writeFiles",
    "DeleteObjects": "deleteFiles", "PutObjectRetention": "writeFileRetentions",
    "GetObjectRetention": "readFileRetentions", "GetObjectLockConfiguration": "readBucketRetentions",
}
_BUCKET_OPS = {"HEAD": "HeadBucket", "PUT": "CreateBucket", "DELETE": "DeleteBucket"}
_OBJECT_OPS = {
    "GET": "GetObject",
    "HEAD": "HeadObject",
    "PUT": "PutObject",
    "DELETE": "DeleteObject",
}


def s3_operation(method: str, path: str, query: dict[str, list[str]]) -> str:
    """The S3 API operation a path-style request is (``UploadPart``, ``GetObject``, ...)."""
    if "uploadId" in query:
        return _UPLOAD_OPS.get(method, method)
    for (verb, marker), name in _SUBRESOURCE_OPS.items():
        if method == verb and marker in query:
            return name
    if "/" not in path.strip("/"):  # no key: a bucket operation
        if method == "GET":
            return "ListObjectsV2" if "list-type" in query else "ListObjects"
        return _BUCKET_OPS.get(method, method)
    return _OBJECT_OPS.get(method, method)


def capability_needed(op: str, query: dict[str, list[str]], headers: dict[str, str]) -> set[str]:
    """The B2 key capabilities a request needs (B2's S3-compatible API rules)."""
    if op == "DeleteObject":  # by name: hides the file (writeFiles); a version: deletes it
        return {"deleteFiles" if "versionId" in query else "writeFiles"}
    needed = {_NEEDS[op]} if op in _NEEDS else set()
    if op in ("PutObject", "CreateMultipartUpload") and "x-amz-object-lock-mode" in headers:
        needed.add("writeFileRetentions")
    if headers.get("x-amz-bypass-governance-retention", "").lower() == "true":
        needed.add("bypassGovernance")
    return needed


def error_xml(code: str, message: str) -> bytes:
    return (
        f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code>'
        f"<Message>{message}</Message></Error>"
    ).encode()


class B2RulesProxy:
    """A threaded proxy in front of ``upstream_port`` on 127.0.0.1 enforcing B2's rules."""

    def __init__(self, upstream_port: int, *, min_part_size: int = B2_MIN_PART_SIZE) -> None:
        self.upstream = ("127.0.0.1", upstream_port)
        self.min_part_size = min_part_size
        self.delays: dict[str, float] = {}  # op -> seconds to hold each such request
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self.reset()

    # -- control API -------------------------------------------------------------------------
    def reset(self) -> None:
        """Forget faults, records and delays (part sizes of open uploads are kept)."""
        with self._lock:
            self.seen: list[Seen] = []
            self.rejected: list[str] = []
            self.faults: list[_Fault] = []
            self.in_flight: Counter[str] = Counter()
            self.max_in_flight: Counter[str] = Counter()
            self.answered: Counter[str] = Counter()
            self.delays = {}
            self.latency = 0.0  # seconds to hold every request: a store far away
            self.open: list[Seen] = []  # requests in flight now
            # each request with those in flight when it came: which calls a client made at once
            self.alongside: list[tuple[Seen, tuple[Seen, ...]]] = []
            self.capabilities: set[str] = set(CAPABILITIES)
            self.denied: list[str] = []  # "op key" of each request refused for a missing capability
            if not hasattr(self, "part_sizes"):
                self.part_sizes: dict[str, dict[int, int]] = {}

    def inject(self, kind: str, count: int = 1, op: str | None = None, *, after: int = 0) -> None:
        """Make ``count`` requests (of operation ``op``, or any) fail with ``kind``, once ``after``
        matching requests have passed untouched."""
        if kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault {kind!r}; use one of {FAULT_KINDS}")
        with self._lock:
            self.faults.append(_Fault(kind, count, op, after))

    def ops(self, op: str) -> list[Seen]:
        """The recorded requests of one operation."""
        with self._lock:
            return [s for s in self.seen if s.op == op]

    @property
    def endpoint(self) -> str:
        assert self._server is not None, "proxy not started"
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def start(self) -> B2RulesProxy:
        handler = type("_BoundHandler", (_Handler,), {"proxy": self})
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, name="b2proxy", daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> B2RulesProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- used by the handler -----------------------------------------------------------------
    def _take_fault(self, op: str) -> str | None:
        with self._lock:
            for fault in self.faults:
                if fault.remaining > 0 and fault.op in (None, op):
                    if fault.skip > 0:
                        fault.skip -= 1
                        continue
                    fault.remaining -= 1
                    return fault.kind
        return None

    def _enter(self, seen: Seen) -> None:
        with self._lock:
            self.seen.append(seen)
            self.alongside.append((seen, tuple(self.open)))
            self.open.append(seen)
            self.in_flight[seen.op] += 1
            self.max_in_flight[seen.op] = max(self.max_in_flight[seen.op], self.in_flight[seen.op])

    def _leave(self, seen: Seen) -> None:
        op = seen.op
        with self._lock:
            self.open.remove(seen)
            self.in_flight[op] -= 1
            self.answered[op] += 1

    def _record_part(self, query: dict[str, list[str]], size: int) -> None:
        with self._lock:
            parts = self.part_sizes.setdefault(query["uploadId"][0], {})
            parts[int(query["partNumber"][0])] = size

    def _too_small_part(self, query: dict[str, list[str]], body: bytes) -> int | None:
        """The number of a non-last part below ``min_part_size`` in a Complete request, if any."""
        root = ET.fromstring(body)  # noqa: S314 - XML from the tests' own clients
        numbers = sorted(int(e.text or 0) for e in root.iter() if e.tag.endswith("PartNumber"))
        with self._lock:
            sizes = self.part_sizes.get(query["uploadId"][0], {})
            return next(
                (n for n in numbers[:-1] if sizes.get(n, self.min_part_size) < self.min_part_size),
                None,
            )


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    proxy: B2RulesProxy

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        self._handle()

    do_PUT = do_POST = do_DELETE = do_HEAD = do_GET

    def _handle(self) -> None:
        split = urlsplit(self.path)
        query = parse_qs(split.query, keep_blank_values=True)
        op = s3_operation(self.command, split.path, query)
        seen = Seen(self.command, op, self.path, {k.lower(): v for k, v in self.headers.items()})
        self.proxy._enter(seen)
        self._seen: Seen | None = seen
        try:
            self._serve(op, query, seen)
        finally:
            self._leave()

    def _leave(self) -> None:
        """Count the request as answered: called before the answer goes out, so the client can
        never see an answer to a request the proxy still counts as in flight."""
        if self._seen is not None:
            self.proxy._leave(self._seen)
            self._seen = None

    def _serve(self, op: str, query: dict[str, list[str]], seen: Seen) -> None:
        fault = self.proxy._take_fault(op)
        if fault == "reset_request":
            self.rfile.read(int(self.headers.get("content-length") or 0) // 2)
            self._reset()
            return
        body = self._read_body()
        missing = capability_needed(op, query, seen.headers) - self.proxy.capabilities
        if missing:
            self.proxy.denied.append(f"{op} {urlsplit(seen.path).path}")
            self._answer(403, {"Content-Type": "application/xml"},
                         error_xml("AccessDenied", f"not entitled: the key lacks {', '.join(sorted(missing))}"))
        elif refusal := self._refusal(op, query, seen, body):
            self._answer(400, {"Content-Type": "application/xml"}, refusal)
        elif fault in _ERROR_FAULTS:
            status, code, message = _ERROR_FAULTS[fault]
            headers = {"Content-Type": "application/xml"}
            if fault == "slowdown":
                headers["Retry-After"] = "1"
            self._answer(status, headers, error_xml(code, message))
        elif op == "GetObject" and fault is None:
            time.sleep(self.proxy.latency + self.proxy.delays.get(op, 0.0))
            self._relay(body)
        else:
            time.sleep(self.proxy.latency + self.proxy.delays.get(op, 0.0))
            status, headers, answer = self._forward(body)
            if op == "UploadPart" and status == 200:
                self.proxy._record_part(query, len(body))
            if fault == "reset_response":
                self._answer_then_reset(status, headers, answer)
            else:
                self._answer(status, headers, answer)

    def _refusal(
        self, op: str, query: dict[str, list[str]], seen: Seen, body: bytes
    ) -> bytes | None:
        """B2's error body when the request breaks one of its rules, else None."""
        bad = next((h for h in seen.headers if h.startswith(_CHECKSUM_HEADERS)), None)
        if bad is not None:
            self.proxy.rejected.append(f"{op}: header {bad}")
            return error_xml(
                "InvalidArgument", f"Unsupported header '{bad}' received for this API call."
            )
        if op == "CompleteMultipartUpload" and (small := self.proxy._too_small_part(query, body)):
            self.proxy.rejected.append(f"{op}: part {small} too small")
            return error_xml(
                "EntityTooSmall",
                "Your proposed upload is smaller than the minimum allowed object size.",
            )
        return None

    def _read_body(self) -> bytes:
        if self.headers.get("transfer-encoding", "").lower() == "chunked":
            chunks = []
            while size := int(self.rfile.readline().split(b";")[0], 16):
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                pass
            return b"".join(chunks)
        return self.rfile.read(int(self.headers.get("content-length") or 0))

    def _upstream(self, body: bytes) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse]:
        """Send the request upstream as it came; the connection and its response (unread)."""
        conn = http.client.HTTPConnection(*self.proxy.upstream, timeout=60)
        try:
            conn.putrequest(self.command, self.path, skip_host=True, skip_accept_encoding=True)
            for name, value in self.headers.items():
                if name.lower() not in _HOP_BY_HOP and name.lower() != "content-length":
                    conn.putheader(name, value)
            if body or self.command in ("PUT", "POST"):
                conn.putheader("Content-Length", str(len(body)))
            conn.endheaders(body or None)
            return conn, conn.getresponse()
        except BaseException:
            conn.close()
            raise

    def _forward(self, body: bytes) -> tuple[int, list[tuple[str, str]], bytes]:
        conn, resp = self._upstream(body)
        try:
            return resp.status, resp.getheaders(), resp.read()
        finally:
            conn.close()

    def _relay(self, body: bytes) -> None:
        """Forward and pass the answer on as it arrives (a GetObject of a large object is not
        held whole in memory, and its first bytes reach the client before its last leave the
        server, as from B2)."""
        conn, resp = self._upstream(body)
        try:
            length = resp.getheader("content-length")
            if length is None:  # a chunked answer: pass it on whole, with its length
                self._answer(resp.status, resp.getheaders(), resp.read())
                return
            self._send_head(resp.status, resp.getheaders(), int(length))
            while piece := resp.read(RELAY_PIECE):
                self.wfile.write(piece)
        finally:
            conn.close()

    def _send_head(
        self, status: int, headers: list[tuple[str, str]] | dict[str, str], length: int
    ) -> None:
        self._leave()
        self.send_response_only(status)
        items = headers.items() if isinstance(headers, dict) else headers
        for name, value in items:
            if name.lower() not in _HOP_BY_HOP and name.lower() != "content-length":
                self.send_header(name, value)
        self.send_header("Content-Length", str(length))
        self.end_headers()

    def _answer(
        self, status: int, headers: list[tuple[str, str]] | dict[str, str], body: bytes
    ) -> None:
        length = len(body)
        if self.command == "HEAD":
            found = dict(
                (k.lower(), v)
                for k, v in (headers.items() if isinstance(headers, dict) else headers)
            )
            length = int(found.get("content-length", 0))
        self._send_head(status, headers, length)
        if self.command != "HEAD":
            self.wfile.write(body)

    def _answer_then_reset(self, status: int, headers: list[tuple[str, str]], body: bytes) -> None:
        self._send_head(status, headers, len(body))
        self.wfile.write(body[: len(body) // 2])
        self.wfile.flush()
        time.sleep(0.05)  # let the client read what was sent before the reset
        self._reset()

    def _reset(self) -> None:
        """Close the client connection with a TCP RST (SO_LINGER 0)."""
        self._leave()
        self.close_connection = True
        sock = self.connection
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()
