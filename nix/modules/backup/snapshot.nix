# services.btrsync.jobs.<name>: the subvolumes, their snapshots and local retention, and when the
# job runs (its timer) and what runs around it.  The targets of a job are in remote.nix, its
# retention profile in retention.nix, its verification in verify.nix.
{ config, lib, pkgs, ... }:
let
  inherit (lib) mkOption types literalExpression;
  T = import ./types.nix { inherit lib; };
  cfg = config.services.btrsync;
  argv = types.listOf (types.listOf types.str);
  jobModule = { name, ... }: {
    options = {
      enable = mkOption {
        type = types.bool;
        default = true;
        description = "A disabled job keeps its service (for manual runs) but has no timer and is skipped by `btrsync run --all`.";
      };
      subvolumes = mkOption {
        type = types.listOf types.str;
        default = [ ];
        example = [ "/home" "/srv/data" ];
        description = "btrfs subvolumes to snapshot and send (absolute paths; at least one).";
      };
      snapshotDir = mkOption {
        type = types.str;
        example = "/.snapshots";
        description = "Directory of their read-only snapshots, on the same filesystem as the subvolumes.";
      };
      schedule = mkOption {
        type = types.str;
        default = "daily";
        example = "*-*-* 01:30:00";
        description = "systemd `OnCalendar=` of the job's timer (systemd.time(7)).";
      };
      randomizedDelaySec = mkOption {
        type = types.str;
        default = "0";
        example = "20m";
        description = "The timer's `RandomizedDelaySec=`: spreads the start of many hosts' backups.";
      };
      timerConfig = mkOption {
        type = types.attrsOf (types.oneOf [ types.str types.int types.bool (types.listOf types.str) ]);
        default = { };
        example = { OnCalendar = [ "" "Mon..Fri 01:30" "Sat 04:00" ]; AccuracySec = "1min"; };
        description = ''
          `[Timer]` settings of `btrsync-<name>.timer` over the module's (`OnCalendar=` from
          `schedule`, `Persistent=`, `RandomizedDelaySec=`, `Unit=`); as services.restic.backups.<name>.timerConfig.
          An `OnCalendar` here replaces `schedule` for the timer only: `btrsync config check` no
          longer sees it.
        '';
      };
      persistent = mkOption {
        type = types.bool;
        default = true;
        description = "The timer's `Persistent=`: a run missed while the machine was off happens at boot.";
      };
      window = mkOption {
        type = types.listOf types.str;
        default = [ ];
        example = [ "Mon-Fri 22:00-06:00" "Sat-Sun 00:00-24:00" ];
        description = "When the job may run (empty: any time); outside it the run is skipped with the reason.";
      };
      windowEnd = mkOption {
        type = types.enum [ "continue" "stop" ];
        default = "continue";
        description = "A push running past the window's end continues, or stops at the next segment boundary and resumes next run.";
      };
      timezone = mkOption {
        type = types.nullOr types.str;
        default = null;
        example = "Europe/Berlin";
        description = "Timezone of the windows and target schedules (default: the host's local time).";
      };
      snapshots = mkOption {
        type = T.policy;
        default = { };
        example = literalExpression "{ keepHourly = 24; keepDaily = 7; }";
        description = "Local snapshot retention of this job, over its profile's `snapshots` (nothing set: the profile's).";
      };
      hooks = {
        pre = mkOption { type = argv; default = [ ]; example = [ [ "/run/current-system/sw/bin/pg_dumpall" "-f" "/srv/db/dump.sql" ] ]; description = "Commands (argv lists) before the snapshot; a failure skips the job."; };
        post = mkOption { type = argv; default = [ ]; description = "Commands after the job's work, whatever its outcome (`BTRSYNC_STATUS` says it)."; };
        onSuccess = mkOption { type = argv; default = [ ]; description = "Commands after `post` when the job succeeded."; };
        onFailure = mkOption { type = argv; default = [ ]; example = [ [ "curl" "-fsS" "https://hc-ping.com/UUID/fail" ] ]; description = "Commands after `post` when the job failed (also run by btrsync-on-failure@ when the unit was killed)."; };
        timeout = mkOption { type = types.str; default = "5m"; description = "Each hook is killed, with its process group, after this."; };
        readWritePaths = mkOption {
          type = types.listOf types.str;
          default = [ ];
          example = [ "/srv/db" ];
          description = ''
            Where the hooks write (a database dump, a marker file): added to the job unit's
            `ReadWritePaths=`; everything else but btrsync's own directories is read-only there
            (`ProtectSystem=strict`), so a hook writing elsewhere fails with "Read-only file system".
          '';
        };
        path = mkOption {
          type = types.listOf (types.either types.package types.str);
          default = [ ];
          example = literalExpression "[ config.services.postgresql.package pkgs.curl ]";
          description = ''
            Packages (their `bin`) or directories put in front of the hooks' `PATH`, so a hook can
            name `pg_dumpall` or `curl` without a store path; `pkgs.bash` is always added (a NixOS
            unit's `PATH` has no shell, and hooks are often `[ "sh" "-c" "..." ]`).  btrsync's own
            `PATH` (the unit's) stays what the package needs.
          '';
        };
        extraPackages = mkOption {
          type = types.listOf (types.either types.package types.str);
          default = [ ];
          example = literalExpression "[ pkgs.curl ]";
          description = "The same as `hooks.path` (the name services.restic and others use); both lists are joined.";
        };
      };
      lockWait = mkOption {
        type = types.str;
        default = "0";
        description = "Wait this long for the job's or a target's lock (0: exit 11 at once).";
      };
      staleAfter = mkOption {
        type = types.str;
        default = "26h";
        description = "A target whose newest backup is older is stale (status, alerts).";
      };
      inhibitsSleep = mkOption {
        type = types.bool;
        default = false;
        description = ''
          Hold logind's sleep inhibitor lock while the job runs (as services.restic.backups.<name>.inhibitsSleep),
          so a laptop does not suspend mid-push.  btrsync takes the lock itself over D-Bus
          (`inhibit_sleep = true`), not under a `systemd-inhibit` wrapper: `systemctl stop` must
          reach btrsync for the run to be recorded as terminated and resumed by the next one.
          `systemd-inhibit --list` shows it while the job runs; without logind the run goes on
          with a warning.
        '';
      };
    };
  };
in
{
  options.services.btrsync.jobs = mkOption {
    type = types.attrsOf (types.submodule jobModule);
    default = { };
    description = ''
      Backup jobs, each with the unit `btrsync-<name>.service` (`btrsync run <name>`) and the
      timer `btrsync-<name>.timer`.
    '';
  };

  config = lib.mkIf cfg.enable {
    services.btrsync.settings.jobs = lib.mapAttrs (name: j: T.compact {
      enabled = j.enable;
      subvolumes = j.subvolumes;
      snapshot_dir = j.snapshotDir;
      schedule = j.schedule;
      randomized_delay = j.randomizedDelaySec;
      window = j.window;
      window_end = j.windowEnd;
      timezone = j.timezone;
      snapshots = if T.policyEmpty j.snapshots then null else T.policySettings j.snapshots;
      hooks = {
        inherit (j.hooks) pre post timeout;
        on_success = j.hooks.onSuccess;
        on_failure = j.hooks.onFailure;
        read_write_paths = j.hooks.readWritePaths;
        # a NixOS unit's PATH has no shell (coreutils, findutils, grep, sed, systemd): hooks get
        # bash ('sh -c ...', as the examples write them) after their own
        path = map (p: if builtins.isString p then p else "${lib.getBin p}/bin") (j.hooks.path ++ j.hooks.extraPackages ++ [ pkgs.bash ]);
      };
      lock_wait = j.lockWait;
      stale_after = j.staleAfter;
      inhibit_sleep = j.inhibitsSleep;
    }) cfg.jobs;

    assertions = lib.mapAttrsToList (n: j: {
      assertion = j.subvolumes != [ ];
      message = "services.btrsync.jobs.${n} is empty: set subvolumes to the btrfs subvolumes it backs up (or remove the job).";
    }) cfg.jobs;
  };
}
