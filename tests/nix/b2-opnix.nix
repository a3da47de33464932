# A host backing up to Backblaze B2 with its key and B2 credentials from 1Password (OpNix),
# per-data-type retention, a weekly verification on its own timer, node_exporter and Prometheus.
{ config, pkgs, ... }:
{
  imports = [ ./opnix-stub.nix ];
  services.onepassword-secrets = {
    enable = true;
    secrets = {
      btrsyncKey = { reference = "op://Backups/btrsync-web1/key"; mode = "0600"; };
      b2Credentials = { reference = "op://Backups/b2-web1/credentials"; mode = "0600"; };
    };
  };
  services.prometheus.enable = true;
  services.prometheus.exporters.node.enable = true;
  services.btrsync = {
    enable = true;
    keyFile = config.services.onepassword-secrets.secretPaths.btrsyncKey;
    targets.b2 = {
      url = "s3://my-bucket/hosts/web1";
      endpoint = "https://s3.us-west-004.backblazeb2.com";
      credentialsFile = config.services.onepassword-secrets.secretPaths.b2Credentials;
      quota = "1T";
    };
    bwlimit = "20M";
    bwlimitSchedule = [ "Mon-Fri 08:00-18:00 5M" ];
    retention = {
      timezone = "Europe/Berlin";
      profiles.standard = {
        snapshots = { keepHourly = 24; keepDaily = 7; };
        backups = { keepDaily = 14; keepWeekly = 8; keepMonthly = 24; };
        targets.b2 = { keepMonthly = 36; keepYearly = 5; };
      };
      profiles.databases = {
        snapshots.keepHourly = 48;
        backups = { keepWithin = "7d"; keepDaily = 30; keepMonthly = 12; };
      };
      subvolumes.postgres = "databases";
    };
    jobs.home = {
      subvolumes = [ "/home" "/srv/postgres" ];
      snapshotDir = "/.snapshots";
      schedule = "*-*-* 01:30:00";
      randomizedDelaySec = "20m";
      window = [ "Mon-Fri 22:00-06:00" "Sat-Sun 00:00-24:00" ];
      timezone = "Europe/Berlin";
      retention = "standard";
      targets.b2 = { every = "daily"; };
      verify = { level = "data"; sample = "5%"; drillEvery = "30d"; };
      hooks.onFailure = [ [ "/run/current-system/sw/bin/logger" "-t" "btrsync" "backup failed" ] ];
      # a dump before the snapshot: pg_dumpall from the hooks' PATH, written where the unit lets it
      hooks.pre = [ [ "pg_dumpall" "-f" "/srv/db/dump.sql" ] ];
      hooks.path = [ pkgs.postgresql ];
      hooks.extraPackages = [ pkgs.curl ];  # the same list under services.restic's name
      inhibitsSleep = true;
      hooks.readWritePaths = [ "/srv/db" ];
    };
    verifications.b2-weekly = { target = "b2"; level = "data"; subset = "1/7"; schedule = "Sun 03:00"; };
  };
}
