# services.btrsync.targets.<name> (B2/S3, ssh and local directories) and the targets of each
# job (jobs.<name>.targets.<target>: when, how fast), plus the host-wide bandwidth limit.
{ config, lib, ... }:
let
  inherit (lib) mkOption types literalExpression;
  T = import ./types.nix { inherit lib; };
  cfg = config.services.btrsync;

  targetModule = { name, ... }: {
    options = {
      url = mkOption {
        type = types.str;
        example = "s3://my-bucket/hosts/web1";
        description = "`s3://BUCKET/PREFIX` (B2, S3, SeaweedFS...), `ssh://[USER@]HOST[:PORT]/PATH` or `file:///PATH`.";
      };
      endpoint = mkOption { type = types.nullOr types.str; default = null; example = "https://s3.us-west-004.backblazeb2.com"; description = "S3: the endpoint URL (B2: its S3 endpoint; the region is taken from it)."; };
      region = mkOption { type = types.nullOr types.str; default = null; description = "S3: the region, when the endpoint does not say it."; };
      credentialsFile = T.secretPath ''
        S3: runtime path of the credentials file (`key_id=` / `secret=` lines, or an AWS
        credentials file).  Required for S3 targets.  A string naming a runtime path, never a Nix
        path; passed with `LoadCredential=` as `target-<name>`.
      '';
      identityFile = T.secretPath "ssh: runtime path of the private key (a string, never a Nix path); passed with `LoadCredential=` as `ssh-<name>`.";
      knownHostsFile = mkOption {
        type = types.nullOr (types.either types.str types.path);
        default = null;
        example = literalExpression ''pkgs.writeText "nas-known-hosts" "nas.lan ssh-ed25519 AAAA..."'';
        description = "ssh: the known_hosts file with the server's key (public: a store path is fine).  Required for ssh targets: host keys are always checked.";
      };
      user = mkOption { type = types.nullOr types.str; default = null; description = "ssh: the user, when the URL has none."; };
      port = mkOption { type = types.nullOr types.port; default = null; description = "ssh: the port, when the URL has none."; };
      quota = mkOption { type = types.nullOr types.str; default = null; example = "1T"; description = "Stored bytes this target may hold (status and alerts say when it fills)."; };
      initialize = mkOption {
        type = types.bool;
        default = false;
        description = ''
          Create the repository on the first run of a job pushing here (`ExecStartPre=btrsync init
          --to <name> --if-empty`): where the location is empty and reachable.  Never over an existing
          repository (another key's fails the run with exit 12), never where this host knew one and no
          longer finds it (exit 10: is the disk mounted?), never on a mount point of /etc/fstab
          that is not mounted, never in a non-empty directory or prefix.
        '';
      };
      extraSettings = mkOption {
        type = types.attrsOf types.anything;
        default = { };
        example = { part_size = "64M"; };
        description = "Other settings of `[targets.<name>]` (docs/targets-s3.md, docs/targets-ssh.md).";
      };
    };
  };

  jobTargetModule = { name, ... }: {
    options = {
      every = mkOption { type = types.nullOr types.str; default = null; example = "daily"; description = "Push only when due: hourly, daily, weekly, monthly or a duration (6h); default: every run."; };
      bwlimit = mkOption { type = types.nullOr types.str; default = null; example = "5M"; description = "Stored bytes per second to this target (default: `services.btrsync.bwlimit`)."; };
      bwlimitSchedule = mkOption { type = types.nullOr (types.listOf types.str); default = null; example = [ "Mon-Fri 08:00-18:00 1M" ]; description = "Windows with their own limit, over `bwlimit`."; };
      window = mkOption { type = types.nullOr (types.listOf types.str); default = null; description = "This target's own window (default: the job's)."; };
      maxChain = mkOption { type = types.nullOr types.ints.unsigned; default = null; description = "Incrementals before a new full (default: 30)."; };
      backfill = mkOption { type = types.bool; default = false; description = "Also send older snapshots retention would not keep."; };
    };
  };
in
{
  options.services.btrsync = {
    targets = mkOption {
      type = types.attrsOf (types.submodule targetModule);
      default = { };
      description = "Where backups go, by name; jobs refer to them in `jobs.<name>.targets`.";
    };
    jobs = mkOption {
      type = types.attrsOf (types.submodule {
        options.targets = mkOption {
          type = types.attrsOf (types.submodule jobTargetModule);
          default = { };
          example = literalExpression ''{ usb = { }; b2 = { every = "daily"; bwlimit = "5M"; }; }'';
          description = "Targets of the job, by the name of a `services.btrsync.targets` entry (none: snapshots only).";
        };
      });
    };
    bwlimit = mkOption { type = types.nullOr types.str; default = null; example = "25M"; description = "Host-wide default upload limit, stored bytes per second."; };
    bwlimitSchedule = mkOption { type = types.listOf types.str; default = [ ]; example = [ "Mon-Fri 08:00-18:00 5M" ]; description = "Windows over `bwlimit`, e.g. slower during office hours."; };
  };

  config = lib.mkIf cfg.enable {
    services.btrsync.settings = {
      targets = lib.mapAttrs (n: t: T.compact {
        inherit (t) url endpoint region user port quota;
        initialize = if t.initialize then true else null;
        credentials_file = if t.credentialsFile == null then null else toString t.credentialsFile;
        identity_file = if t.identityFile == null then null else toString t.identityFile;
        known_hosts_file = if t.knownHostsFile == null then null else "${t.knownHostsFile}";
      } // t.extraSettings) cfg.targets;
      push = T.compact { bwlimit = cfg.bwlimit; } // lib.optionalAttrs (cfg.bwlimitSchedule != [ ]) { bwlimit_schedule = cfg.bwlimitSchedule; };
      jobs = lib.mapAttrs (_: j: {
        targets = lib.mapAttrs (_: jt: T.compact {
          inherit (jt) every bwlimit window backfill;
          bwlimit_schedule = jt.bwlimitSchedule;
          max_chain = jt.maxChain;
        }) j.targets;
      }) cfg.jobs;
    };

    assertions = lib.concatLists (lib.mapAttrsToList (jn: j: lib.mapAttrsToList (tn: _: {
      assertion = cfg.targets ? ${tn} || lib.hasInfix "://" tn;
      message = "services.btrsync.jobs.${jn}.targets.${tn}: no target named \"${tn}\" (defined in services.btrsync.targets: ${
        if cfg.targets == { } then "none" else lib.concatStringsSep ", " (lib.attrNames cfg.targets)}).";
    }) j.targets) cfg.jobs)
    ++ lib.concatLists (lib.mapAttrsToList (n: t: [
      { assertion = !(T.isS3 t.url) || t.credentialsFile != null;
        message = "services.btrsync.targets.${n} (${t.url}) is an S3 target without credentials: set credentialsFile to the runtime path of its key file (e.g. config.services.onepassword-secrets.secretPaths.b2Credentials).";
      }
      { assertion = !(T.isSsh t.url) || t.knownHostsFile != null;
        message = "services.btrsync.targets.${n} (${t.url}) is an ssh target without knownHostsFile: give the server's host key in a known_hosts file (host keys are always checked).";
      }
      { assertion = T.isS3 t.url || T.isSsh t.url || lib.hasPrefix "file:///" t.url;
        message = "services.btrsync.targets.${n}.url = \"${t.url}\": use s3://, ssh:// or file:/// (an absolute directory).";
      }
    ]) cfg.targets);
  };
}
