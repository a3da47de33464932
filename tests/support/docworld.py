"""The world the documentation's command blocks run in: a throwaway machine on loopback btrfs.

:class:`DocWorld` makes one btrfs filesystem on a loop device and uses its mount point ``W`` as
the machine's root for the placeholder paths of the docs (``/data`` is ``W/data``,
``/mnt/usb/backups`` is ``W/mnt/usb/backups``, ``/root/backup.key`` is ``W/root/backup.key``:
see :class:`tests.support.docblocks.PathMap`). ``btrsync`` is the one in ``.venv/bin``, first on
``PATH``; ``BTRSYNC_STATE_DIR`` and ``BTRSYNC_CONFIG`` point into ``W`` so nothing of the real
machine is read or written.

Named set-ups (``<!-- doc-test: setup=NAME -->``) build what a block needs, in this order of
dependencies, each at most once:

``data``      ``/data``, a subvolume with a few files (``etc/app.conf``, ``home/alice/...``, a sparse
              file, a symlink, a hard link); ``/data/.snapshots``, an empty directory (the README's
              layout); ``/mnt/usb/backups``, an empty directory (the mounted USB disk)
``backups``   + the key ``/root/backup.key``, a repository at ``file:///mnt/usb/backups`` holding
              ``data.20261120T030000Z`` (full) and ``data.20261126T030000Z`` (incremental), the
              snapshots in ``/data/.snapshots``; afterwards ``/data`` is damaged the way runbooks
              assume (``etc/app.conf`` overwritten, ``home/alice/notes.txt`` deleted)
``home``      ``/home``, a subvolume (``alice/notes.txt``, ``alice/photos/``), with read-only snapshots
              ``home.20261120T030000Z`` and ``home.20261126T030000Z`` beside it in ``/.snapshots``
              (a layout ``snapshot rollback`` accepts); afterwards ``alice/notes.txt`` is deleted
``system``    + backups of an old machine's subvolumes ``root`` and ``home``
              (``root.20261126T030000Z``, ``home.20261126T030000Z``) in the same repository
``disk``      an empty 2 GiB disk on a loop device with partition scanning; ``/dev/sdX`` in the
              docs is that device and ``/dev/sdX1``… its partitions
``targets``   + ``/etc/btrsync/config.toml`` with ``key_file`` and ``[targets.usb]`` (the
              repository above), so ``--from usb`` works
``b2``        + ``[targets.b2]``: a bucket on the test session's SeaweedFS server (credentials in
              ``/etc/btrsync/b2.credentials``), initialised and holding the same two backups

:meth:`DocWorld.close` unmounts everything mounted below ``W`` (deepest first), detaches every
loop device backed by a file below ``W`` or by the disk image, then unmounts, detaches and
deletes ``W`` itself, whether the blocks succeeded or not.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.support.loopfs import LoopBtrfs, _run, attach_loop, detach_loops_under, open_loop_btrfs, release_device, unmount

REPO_ROOT = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent

SETUP_ORDER = ("data", "backups", "system", "home", "disk", "targets", "b2")
DEPENDS = {"backups": ("data",), "system": ("backups",), "targets": ("backups",), "b2": ("targets",)}
STAMPS = ("2026-11-20T03:00:00Z", "2026-11-26T03:00:00Z")


class SetupError(RuntimeError):
    pass


class DocWorld:
    """One throwaway machine for one document's blocks."""

    def __init__(self, workdir: Path, *, s3_server: Callable[[], Any] | None = None) -> None:
        self.workdir = workdir
        self._s3_server = s3_server
        self.fs: LoopBtrfs | None = None
        self.disk_image: Path | None = None
        self.disk_device: str | None = None
        self.devices: dict[str, str] = {}
        self.done: list[str] = []
        self.config: dict[str, str] = {}   # toml sections by name, "" for the top level

    # -- life cycle ---------------------------------------------------------------------------------

    def open(self) -> DocWorld:
        self.fs = open_loop_btrfs(self.workdir / "world", "3G", "doc-world")
        w = self.root
        for sub in ("root", "etc/btrsync", "var/tmp", "var/lib/btrsync", "mnt", "tmp", "srv"):
            (w / sub).mkdir(parents=True, exist_ok=True)
        (w / "root").chmod(0o700)
        (w / "tmp").chmod(0o1777)
        self._write_config()
        return self

    @property
    def root(self) -> Path:
        assert self.fs is not None
        return self.fs.mountpoint

    def env(self) -> dict[str, str]:
        w = self.root
        return {
            "PATH": f"{VENV_BIN}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "HOME": str(w / "root"),
            "TMPDIR": str(w / "tmp"),
            "LANG": "C.UTF-8",
            "LC_ALL": "C.UTF-8",
            "TZ": "UTC",
            "TERM": "dumb",
            "BTRSYNC_STATE_DIR": str(w / "var/lib/btrsync"),
            "BTRSYNC_CONFIG": str(w / "etc/btrsync/config.toml"),
        }

    def close(self) -> None:
        """Unmount and detach everything the blocks and set-ups made, then remove the world."""
        errors: list[BaseException] = []
        if self.fs is not None and self.fs.mounted:
            w = str(self.root)
            mounts = _run(["findmnt", "-rn", "-o", "TARGET"], check=False).stdout.split("\n")
            below = sorted((m for m in mounts if m.startswith(w + "/")), key=len, reverse=True)
            for target in below:
                try:
                    unmount(Path(target))
                except Exception as exc:  # noqa: BLE001 - keep tearing down
                    errors.append(exc)
            detach_loops_under([self.root])
        if self.disk_device is not None:
            try:
                release_device(self.disk_device)
            except Exception as exc:  # noqa: BLE001
                errors.append(exc)
        if self.disk_image is not None:
            self.disk_image.unlink(missing_ok=True)
        if self.fs is not None:
            try:
                self.fs.close()
            except Exception as exc:  # noqa: BLE001
                errors.append(exc)
        if errors:
            raise errors[0]

    def __enter__(self) -> DocWorld:
        return self.open()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- set-ups ------------------------------------------------------------------------------------

    def setup(self, names: list[str]) -> None:
        unknown = [n for n in names if n not in SETUP_ORDER]
        if unknown:
            raise SetupError(f"unknown doc-test setup {', '.join(unknown)} (known: {', '.join(SETUP_ORDER)})")
        wanted: set[str] = set()

        def add(name: str) -> None:
            wanted.add(name)
            for dep in DEPENDS.get(name, ()):
                add(dep)

        for name in names:
            add(name)
        for name in SETUP_ORDER:
            if name in wanted and name not in self.done:
                getattr(self, "_setup_" + name)()
                self.done.append(name)

    def btrsync(self, *args: str) -> str:
        proc = subprocess.run([str(VENV_BIN / "btrsync"), *args], env=self.env(), capture_output=True,
                              text=True, stdin=subprocess.DEVNULL, timeout=300)
        if proc.returncode != 0:
            raise SetupError(f"set-up: btrsync {' '.join(args)} exited {proc.returncode}:\n"
                             f"{proc.stdout}{proc.stderr}")
        return proc.stdout

    @property
    def url(self) -> str:
        return f"file://{self.root}/mnt/usb/backups"

    @property
    def key(self) -> Path:
        return self.root / "root/backup.key"

    def _setup_data(self) -> None:
        w = self.root
        _run(["btrfs", "subvolume", "create", w / "data"])
        (w / "data/.snapshots").mkdir()
        (w / "mnt/usb/backups").mkdir(parents=True)
        d = w / "data"
        (d / "etc").mkdir()
        (d / "etc/app.conf").write_text("listen = 8080\nworkers = 4\n")
        (d / "home/alice/photos").mkdir(parents=True)
        (d / "home/alice/notes.txt").write_text("call the plumber\n")
        (d / "home/alice/photos/cat.jpg").write_bytes(os.urandom(256 * 1024))
        (d / "home/bob").mkdir()
        (d / "home/bob/todo.txt").write_text("backup drill on Friday\n")
        os.link(d / "home/bob/todo.txt", d / "home/bob/todo.hardlink")
        os.symlink("home/alice", d / "alice")
        with open(d / "sparse.img", "wb") as f:
            f.truncate(64 * 1024 * 1024)
            f.seek(32 * 1024 * 1024)
            f.write(b"middle of a sparse file\n")
        os.setxattr(d / "home/alice/notes.txt", "user.origin", b"doc-world")

    def _setup_backups(self) -> None:
        w = self.root
        self.btrsync("key", "generate", str(self.key))
        self.btrsync("init", "--to", self.url, "--key-file", str(self.key))
        d = w / "data"
        for n, stamp in enumerate(STAMPS):
            if n == 1:
                with open(d / "home/alice/notes.txt", "a") as f:
                    f.write("renew the passport\n")
                (d / "home/alice/photos/dog.jpg").write_bytes(os.urandom(128 * 1024))
            self.btrsync("snapshot", "create", str(d), "--snapshot-dir", str(d / ".snapshots"),
                         "--timestamp", stamp)
        self.btrsync("push", str(d), "--snapshot-dir", str(d / ".snapshots"), "--to", self.url,
                     "--key-file", str(self.key))
        # the damage a runbook starts from
        (d / "etc/app.conf").write_text("oops\n")
        (d / "home/alice/notes.txt").unlink()

    def _setup_system(self) -> None:
        old = self.root / "srv/oldhost"
        old.mkdir(parents=True)
        (old / ".snapshots").mkdir()
        for name in ("root", "home"):
            _run(["btrfs", "subvolume", "create", old / name])
        r = old / "root"
        for sub in ("etc", "boot/efi", "home", "usr/bin", "var/log"):
            (r / sub).mkdir(parents=True)
        (r / "etc/hostname").write_text("oldhost\n")
        (r / "etc/fstab").write_text(
            "UUID=0b3c5f4e-0000-4000-8000-000000000000 / btrfs subvol=root 0 0\n"
            "UUID=0b3c5f4e-0000-4000-8000-000000000000 /home btrfs subvol=home 0 0\n"
            "UUID=ABCD-1234 /boot/efi vfat umask=0077 0 2\n")
        (r / "usr/bin/hello").write_text("#!/bin/sh\necho hello\n")
        (r / "usr/bin/hello").chmod(0o755)
        (old / "home/alice").mkdir()
        (old / "home/alice/notes.txt").write_text("call the plumber\n")
        for name in ("root", "home"):
            self.btrsync("snapshot", "create", str(old / name), "--snapshot-dir", str(old / ".snapshots"),
                         "--timestamp", STAMPS[1])
            self.btrsync("push", str(old / name), "--snapshot-dir", str(old / ".snapshots"),
                         "--to", self.url, "--key-file", str(self.key))

    def _setup_home(self) -> None:
        w = self.root
        _run(["btrfs", "subvolume", "create", w / "home"])
        (w / ".snapshots").mkdir(exist_ok=True)
        h = w / "home"
        (h / "alice/photos").mkdir(parents=True)
        (h / "alice/notes.txt").write_text("call the plumber\n")
        (h / "alice/photos/cat.jpg").write_bytes(os.urandom(128 * 1024))
        for n, stamp in enumerate(STAMPS):
            if n == 1:
                with open(h / "alice/notes.txt", "a") as f:
                    f.write("renew the passport\n")
            self.btrsync("snapshot", "create", str(h), "--snapshot-dir", str(w / ".snapshots"),
                         "--timestamp", stamp)
        (h / "alice/notes.txt").unlink()

    def _setup_disk(self) -> None:
        self.disk_image = self.workdir / "newdisk.img"
        _run(["truncate", "-s", "2G", self.disk_image])
        device = attach_loop(self.disk_image, "--partscan")
        self.disk_device = device
        self.devices = {"/dev/sdX": device, **{f"/dev/sdX{n}": f"{device}p{n}" for n in range(1, 10)}}

    def _setup_targets(self) -> None:
        self.config[""] = f'key_file = "{self.key}"\n'
        self.config["targets.usb"] = f'url = "{self.url}"\n'
        self._write_config()

    def _setup_b2(self) -> None:
        if self._s3_server is None:
            raise SetupError("setup b2 needs the SeaweedFS server")
        server = self._s3_server()
        bucket = "doc-" + os.urandom(4).hex()
        server.create_bucket(bucket)
        creds = server.account.write_credentials_file(self.root / "etc/btrsync/b2.credentials")
        self.config["targets.b2"] = (f'url = "s3://{bucket}/hosts/web1"\nendpoint = "{server.account.endpoint}"\n'
                                     f'credentials_file = "{creds}"\n')
        self._write_config()
        w = self.root
        self.btrsync("init", "--to", "b2")
        self.btrsync("push", str(w / "data"), "--snapshot-dir", str(w / "data/.snapshots"), "--to", "b2")

    def _write_config(self) -> None:
        text = "# the doc test's configuration (tests/support/docworld.py)\n"
        text += self.config.get("", "")
        for name, body in self.config.items():
            if name:
                text += f"\n[{name}]\n{body}"
        (self.root / "etc/btrsync/config.toml").write_text(text)
