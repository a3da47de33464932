# NixOS VM test of services.btrsync: a host with a btrfs disk backs up to a server over ssh
# (snapshot, push, prune, restore, metrics).
#
# IT HAS NEVER RUN.  It needs nixpkgs and KVM, which the machines btrsync is developed on do not
# have; run it with `nix build .#checks.x86_64-linux.vm` (flake.nix) or
#   nix-build -E 'import ./nix/tests/vm.nix { pkgs = import <nixpkgs> { }; }'
# tests/nix/test_module.py evaluates the node configurations below against its stubs and
# compiles the test script, which is as far as a machine without nixpkgs gets.
{ pkgs, module ? ../modules/backup }:
pkgs.testers.runNixOSTest {
  name = "btrsync";

  nodes.server = { ... }: {
    services.openssh.enable = true;
    users.users.backup = { isNormalUser = true; home = "/var/lib/backup"; createHome = true; };
    environment.systemPackages = [ pkgs.rsync ];
  };

  nodes.host = { config, ... }: {
    imports = [ module ];
    virtualisation.emptyDiskImages = [ 1024 ];          # /dev/vdb: the btrfs data disk
    services.prometheus.exporters.node.enable = true;
    services.btrsync = {
      enable = true;
      package = pkgs.callPackage ../package.nix { };
      keyFile = "/etc/btrsync/backup.key";               # made by the test script at runtime
      targets.nas = {
        url = "ssh://backup@server/var/lib/backup/web1";
        identityFile = "/etc/btrsync/id_ed25519";
        knownHostsFile = "/etc/btrsync/known_hosts";
      };
      retention.profiles.short = { snapshots.keepLast = 2; backups.keepLast = 2; };
      jobs.data = {
        subvolumes = [ "/data/home" ];
        snapshotDir = "/data/.snapshots";
        schedule = "hourly";
        retention = "short";
        targets.nas = { };
      };
    };
  };

  testScript = ''
    start_all()
    server.wait_for_unit("sshd.service")
    host.wait_for_unit("multi-user.target")

    with subtest("a btrfs disk, a key, an ssh key the server knows"):
        host.succeed("mkfs.btrfs -q /dev/vdb && mkdir -p /data && mount /dev/vdb /data")
        host.succeed("btrfs subvolume create /data/home && mkdir /data/.snapshots")
        host.succeed("echo one > /data/home/file")
        host.succeed("btrsync key generate /etc/btrsync/backup.key")
        host.succeed("ssh-keygen -q -t ed25519 -N ''' -f /etc/btrsync/id_ed25519")
        pub = host.succeed("cat /etc/btrsync/id_ed25519.pub").strip()
        server.succeed(
            "install -d -o backup -m 700 /var/lib/backup/.ssh /var/lib/backup/web1 && "
            f"echo '{pub}' > /var/lib/backup/.ssh/authorized_keys && "
            "chown backup /var/lib/backup/.ssh/authorized_keys /var/lib/backup/web1"
        )
        host.succeed("ssh-keyscan -t ed25519 server > /etc/btrsync/known_hosts")
        host.succeed("btrsync config check")
        # a new target is created once, on purpose (a push to a missing repository exits 10)
        host.succeed("btrsync init --to nas")

    with subtest("the unit snapshots and pushes"):
        # host.systemctl() does not check the exit status: succeed() does
        host.succeed("systemctl start btrsync-data.service")
        host.succeed("systemctl show -p Result btrsync-data.service | grep -q success")
        host.succeed("btrsync list --from nas | grep -q home")

    with subtest("retention prunes snapshots and backups to the last two"):
        for n in range(3):
            host.succeed(f"echo {n} > /data/home/file{n}")
            host.succeed("sleep 1 && systemctl start btrsync-data.service")
        host.succeed("test $(ls /data/.snapshots | wc -l) -le 2")
        host.succeed("btrsync list --from nas --json")

    with subtest("restore the newest backup and compare"):
        host.succeed("btrsync restore home@latest --from nas --to /tmp/restore")
        host.succeed("diff -r /data/home /tmp/restore/home || diff -r /data/home /tmp/restore")

    with subtest("metrics reach node_exporter"):
        host.wait_for_unit("prometheus-node-exporter.service")
        host.succeed("test -s /var/lib/prometheus-node-exporter-text-files/btrsync.prom")
        host.wait_until_succeeds("curl -sf localhost:9100/metrics | grep -q btrsync_job_last_run_status")

    with subtest("a failed run fails the unit"):
        server.succeed("systemctl stop sshd.service")
        host.succeed("echo late > /data/home/late")
        host.fail("systemctl start btrsync-data.service")
        host.succeed("systemctl is-failed btrsync-data.service")
  '';
}
