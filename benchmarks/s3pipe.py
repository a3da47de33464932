"""The S3 end of the comparison pipelines: what ``aws s3 cp - s3://B/K`` and ``aws s3 cp s3://B/K -``
do, with boto3's managed transfer (``upload_fileobj`` from stdin, ``download_fileobj`` to stdout;
boto3's default ``TransferConfig``: 8 MiB parts, 10 threads, as the AWS CLI)::

    python -m benchmarks.s3pipe [--b2] up|down ENDPOINT CREDENTIALS_FILE BUCKET KEY [HWM_FILE]

With ``--b2`` the client is configured as ``aws s3 cp`` must be to work against Backblaze B2:
``request_checksum_calculation="when_required"`` (and the same for responses), because B2 answers
400 to the ``x-amz-checksum-*`` / ``x-amz-sdk-checksum-algorithm`` headers botocore >= 1.36 sends
by default (the B2-rules proxy of ``tests/support/b2proxy.py`` does the same), and botocore's
``standard`` retry mode (3 attempts, exponential backoff with jitter; the AWS CLI v2 default),
which retries ``503 SlowDown``.  What that leaves for integrity: with ``when_required`` an
``UploadPart`` carries neither a checksum header nor ``Content-MD5``, so botocore signs the
payload's SHA-256 (``x-amz-content-sha256``) over http and https alike; btrsync sends
``Content-MD5`` on every part and ``UNSIGNED-PAYLOAD`` over http and https alike (its frames are
authenticated end to end; to a plain http endpoint since session 11: botocore signed its payloads
there before).  Here, over http, the pipeline pays a SHA-256 per part and btrsync an MD5; so against B2
over https.  Without ``--b2`` botocore's defaults apply (a CRC32 per part as well, legacy
retries).

CREDENTIALS_FILE is an AWS-style INI file (``[default]`` with the key id and secret), never argv.
With HWM_FILE, the process's own peak RSS (``VmHWM``, bytes) is written there at the end.
"""

from __future__ import annotations

import configparser
import sys
from pathlib import Path

import boto3
from botocore.config import Config


def client(endpoint: str, credentials: Path, *, b2: bool = False):  # noqa: ANN201
    ini = configparser.ConfigParser()
    ini.read(credentials)
    sect = ini["default"]
    options: dict = {"s3": {"addressing_style": "path"}}
    if b2:
        options.update(request_checksum_calculation="when_required",
                       response_checksum_validation="when_required",
                       retries={"mode": "standard"})
    return boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                        aws_access_key_id=sect["aws_access_key_id"],
                        aws_secret_access_key=sect["aws_secret_access_key"],
                        config=Config(**options))


def vm_hwm() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


def main(argv: list[str]) -> int:
    b2 = argv[:1] == ["--b2"]
    if b2:
        argv = argv[1:]
    mode, endpoint, creds, bucket, key = argv[:5]
    s3 = client(endpoint, Path(creds), b2=b2)
    if mode == "up":
        s3.upload_fileobj(sys.stdin.buffer, bucket, key)
    elif mode == "down":
        s3.download_fileobj(bucket, key, _Stdout())
    else:
        print(f"unknown mode {mode!r}: up or down", file=sys.stderr)
        return 2
    if len(argv) > 5:
        Path(argv[5]).write_text(str(vm_hwm()))
    return 0


class _Stdout:
    """A non-seekable stdout for ``download_fileobj``: s3transfer then writes parts in order."""

    def write(self, data: bytes) -> int:
        return sys.stdout.buffer.write(data)

    def flush(self) -> None:
        sys.stdout.buffer.flush()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
