"""The S3 end of the comparison pipelines: what ``aws s3 cp - s3://B/K`` and ``aws s3 cp s3://B/K -``
do, with boto3's managed transfer (``upload_fileobj`` from stdin, ``download_fileobj`` to stdout;
boto3's default ``TransferConfig``: 8 MiB parts, 10 threads, as the AWS CLI)::

    python -m benchmarks.s3pipe up|down ENDPOINT CREDENTIALS_FILE BUCKET KEY [HWM_FILE]

CREDENTIALS_FILE is an AWS-style INI file (``[default]`` with the key id and secret), never argv.
With HWM_FILE, the process's own peak RSS (``VmHWM``, bytes) is written there at the end.
"""

from __future__ import annotations

import configparser
import sys
from pathlib import Path

import boto3
from botocore.config import Config


def client(endpoint: str, credentials: Path):  # noqa: ANN201
    ini = configparser.ConfigParser()
    ini.read(credentials)
    sect = ini["default"]
    return boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                        aws_access_key_id=sect["aws_access_key_id"],
                        aws_secret_access_key=sect["aws_secret_access_key"],
                        config=Config(s3={"addressing_style": "path"}))


def vm_hwm() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


def main(argv: list[str]) -> int:
    mode, endpoint, creds, bucket, key = argv[:5]
    s3 = client(endpoint, Path(creds))
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
