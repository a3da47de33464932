# services.btrsync.sshAccess: the receiving side of ssh:// targets (a NAS, a backup server).
#
# A system user whose home holds the repositories (a host's target is
# ssh://<user>@<server>/~/<host>), and an authorized_keys entry per sending host.  The ssh target
# runs POSIX sh snippets (GNU coreutils and find: stat, mkdir, mv, rm, sync, df...) and rsync in
# the repository directory (btrsync/targets/sshconn.py), more than an rsync-only restriction
# allows; so each key is `restrict` (no pty, no forwarding, no agent, no X11, no ~/.ssh/rc) and
# forced to a wrapper that runs the requested command, and nothing without one, in a bubblewrap
# sandbox: the Nix store read-only, the user's home read-write, nothing else of the filesystem,
# no network, a PATH of exactly what the snippets use.  Does not need services.btrsync.enable.
{ config, lib, pkgs, ... }:
let
  inherit (lib) mkOption mkEnableOption mkIf types literalExpression;
  cfg = config.services.btrsync.sshAccess;
  tools = lib.makeBinPath (with pkgs; [ coreutils findutils rsync bash ]);
  wrapper = pkgs.writeShellScript "btrsync-ssh-access" ''
    # forced command of the btrsync keys: the command the client asked for, sandboxed
    if [ -z "''${SSH_ORIGINAL_COMMAND:-}" ]; then
      echo "btrsync-ssh-access: this key runs btrsync's commands only (no shell)" >&2
      exit 1
    fi
    exec ${pkgs.bubblewrap}/bin/bwrap --die-with-parent --unshare-all --new-session \
      --ro-bind /nix/store /nix/store --bind "$HOME" "$HOME" --proc /proc --dev /dev --tmpfs /tmp \
      --clearenv --setenv PATH ${tools} --setenv HOME "$HOME" --setenv LC_ALL C --chdir "$HOME" \
      ${pkgs.bash}/bin/sh -c "$SSH_ORIGINAL_COMMAND"
  '';
in
{
  options.services.btrsync.sshAccess = {
    enable = mkEnableOption "a user receiving btrsync backups over ssh (this host is the server of ssh:// targets)";

    user = mkOption {
      type = types.str;
      default = "btrsync";
      description = "The user the sending hosts log in as (`ssh://<user>@this-host/~/<repository>`).";
    };

    group = mkOption {
      type = types.str;
      default = "btrsync";
      description = "Its group.";
    };

    home = mkOption {
      type = types.str;
      default = "/var/lib/btrsync-receive";
      example = "/srv/backups";
      description = ''
        The user's home (mode 0700): the root of the repositories, and the only directory the
        sending hosts can write.  A host's target is `ssh://<user>@<server>/~/<name>`: the host
        makes the directory through its key (`ssh <user>@<server> mkdir <name>`), then the
        repository with `btrsync init` (or `initialize = true`).
      '';
    };

    forcedCommand = mkOption {
      type = types.package;
      default = wrapper;
      readOnly = true;
      internal = true;
      visible = false;
      description = "The forced command of every key (the wrapper above); tests run it under a real sshd.";
    };

    authorizedKeys = mkOption {
      type = types.listOf types.str;
      default = [ ];
      example = [ "ssh-ed25519 AAAAC3Nza... root@web1" ];
      description = ''
        Public keys of the sending hosts (the `.pub` of their target's `identityFile`).  Each is
        installed as `restrict,command="<wrapper>" <key>`: btrsync's commands run sandboxed in the
        home directory, nothing else (no shell, no forwarding).
      '';
    };
  };

  config = mkIf cfg.enable {
    users.groups.${cfg.group} = { };
    users.users.${cfg.user} = {
      isSystemUser = true;
      group = cfg.group;
      home = cfg.home;
      createHome = true;
      homeMode = "700";
      shell = pkgs.bash; # sshd runs the forced command with the user's shell
      openssh.authorizedKeys.keys = map (k: ''restrict,command="${wrapper}" ${k}'') cfg.authorizedKeys;
    };

    assertions = [ {
      assertion = lib.all (k: builtins.match "(ssh-|ecdsa-|sk-).*" k != null) cfg.authorizedKeys;
      message = "services.btrsync.sshAccess.authorizedKeys: give bare public keys (\"ssh-ed25519 AAAA... comment\"); the module adds the restrictions itself.";
    } ];
  };
}
