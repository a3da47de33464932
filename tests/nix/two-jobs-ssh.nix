# Two jobs (home to a NAS over ssh and to a USB disk; logs snapshot-only, disabled timer), an
# ssh target with identity and known_hosts files, an inline per-target policy and a restore drill.
{
  services.btrsync = {
    enable = true;
    keyFile = "/etc/btrsync/backup.key";
    maxParallelJobs = 2;
    monitoring.metricsDir = "/var/lib/node-exporter";
    targets.nas = {
      url = "ssh://backup@nas.lan/srv/backups/web1";
      identityFile = "/etc/btrsync/id_ed25519";
      knownHostsFile = "/etc/btrsync/known_hosts";
      port = 2222;
    };
    targets.usb = { url = "file:///mnt/usb disk/backups"; initialize = true; };
    retention.profiles.standard = {
      snapshots = { keepHourly = 24; keepDaily = 7; };
      backups = { keepDaily = 14; keepWeekly = 8; };
    };
    retention.defaultProfile = "standard";
    jobs.home = {
      subvolumes = [ "/home" ];
      snapshotDir = "/.snapshots";
      schedule = "Mon..Fri *-*-* 02:30:00";
      randomizedDelaySec = "15m";
      retention = "standard";
      targets.nas = { bwlimit = "10M"; keep = { keepDaily = 30; keepMonthly = 12; }; };
      targets.usb = { };
      verify = { drillEvery = "30d"; };
      lockWait = "10m";
      timerConfig = { AccuracySec = "1min"; Persistent = false; };
    };
    jobs.logs = {
      enable = false;
      subvolumes = [ "/var/log" ];
      snapshotDir = "/var/.snapshots";
      snapshots.keepHourly = 48;
      targets.usb.retention = "standard";
    };
    verifications.nas-drill = { target = "nas"; level = "restore"; sample = "1"; schedule = "monthly"; snapshotDirs = [ "/.snapshots" ]; };
  };
}
