# The receiving side of ssh:// targets: a NAS whose btrsync user holds the repositories of two hosts.
{
  services.btrsync.sshAccess = {
    enable = true;
    home = "/srv/backups";
    authorizedKeys = [
      "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBtrsyncWeb1xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx root@web1"
      "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBtrsyncWeb2xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx root@web2"
    ];
  };
}
