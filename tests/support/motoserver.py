"""moto's S3 server on 127.0.0.1: a real HTTP S3 endpoint that implements Object Lock.

SeaweedFS (``s3server.py``) has no Object Lock; moto's server mode does: buckets created with
``ObjectLockEnabledForBucket``, ``ObjectLockMode``/``ObjectLockRetainUntilDate`` on PutObject,
``PutObjectRetention``, the lock headers on HeadObject, and ``AccessDenied`` for a locked
version's delete.  (It keeps no lock given at CreateMultipartUpload and answers GetObjectRetention
with a 500: btrsync sets the lock of a multipart object again after Complete, and the tests read
retention from HeadObject's headers, which is what btrsync reads too.)

One server per pytest session (per xdist worker), started on first use.
"""

from __future__ import annotations

import importlib.util
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from tests.support.s3server import S3Account, _die_with_parent, _port_is_free, _unavailable, _worker_slice

_KEY = pytest.StashKey["MotoServer"]()
_FAILED = pytest.StashKey[str]()


class MotoServer:
    """One ``python -m moto.server`` process on a free loopback port."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self.account = S3Account("", "btrsync-moto-key", "btrsync-moto-secret")

    def start(self) -> MotoServer:
        low, high = _worker_slice(56_000, 60_000)
        for port in range(low + int(uuid.uuid4().int % 97), high):
            if _port_is_free(port):
                break
        else:
            raise RuntimeError("no free loopback port for moto")
        self.port = port
        log = (self.workdir / "moto.log").open("wb")
        self.proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                                     stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                     preexec_fn=_die_with_parent)
        self.account = S3Account(f"http://127.0.0.1:{port}", "btrsync-moto-key", "btrsync-moto-secret")
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"moto exited with {self.proc.returncode}: {self.log_tail()}")
            try:
                socket.create_connection(("127.0.0.1", port), 0.5).close()
                return self
            except OSError:
                time.sleep(0.1)
        raise RuntimeError(f"moto did not listen on {port} within 60 s: {self.log_tail()}")

    def log_tail(self, lines: int = 20) -> str:
        path = self.workdir / "moto.log"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else ""

    def client(self) -> Any:
        import boto3
        from botocore.config import Config

        return boto3.client("s3", endpoint_url=self.account.endpoint, region_name="us-east-1",
                            aws_access_key_id=self.account.key_id, aws_secret_access_key=self.account.secret,
                            config=Config(request_checksum_calculation="when_required",
                                          s3={"addressing_style": "path"}))

    def create_bucket(self, *, locked: bool) -> str:
        """A new bucket, with Object Lock enabled (and so versioning) when ``locked``."""
        name = f"btrsync-{'lock' if locked else 'plain'}-{uuid.uuid4().hex[:10]}"
        self.client().create_bucket(Bucket=name, **({"ObjectLockEnabledForBucket": True} if locked else {}))
        return name

    def settings(self, tmp_path: Path, **extra: Any) -> dict[str, Any]:
        """S3 target settings for this server, the key in a file."""
        creds = self.account.write_credentials_file(tmp_path / f"moto-credentials-{uuid.uuid4().hex[:6]}")
        return {"endpoint": self.account.endpoint, "region": "us-east-1", "credentials_file": str(creds),
                "part_size": 5 * 1024 * 1024, **extra}

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def moto_server(request: pytest.FixtureRequest) -> MotoServer:
    """The session's moto server; skips (fails under CI) when moto is missing or cannot start."""
    stash = request.config.stash
    if _FAILED in stash:
        _unavailable(stash[_FAILED])
    if _KEY not in stash:
        if importlib.util.find_spec("moto") is None or importlib.util.find_spec("flask") is None:
            stash[_FAILED] = "moto's server is not installed: pip install 'moto[server]'"
            _unavailable(stash[_FAILED])
        server = MotoServer(request.getfixturevalue("tmp_path_factory").mktemp("moto"))
        try:
            server.start()
        except RuntimeError as exc:
            server.stop()
            stash[_FAILED] = f"moto could not start: {exc}"
            _unavailable(stash[_FAILED])
        request.config.add_cleanup(server.stop)
        stash[_KEY] = server
    return stash[_KEY]
