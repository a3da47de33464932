# The smallest useful host: hourly snapshots of /home kept a day, no target, no key.
{
  services.btrsync = {
    enable = true;
    jobs.home = {
      subvolumes = [ "/home" ];
      snapshotDir = "/home/.snapshots";
      schedule = "hourly";
      snapshots = { keepHourly = 24; };
    };
  };
}
